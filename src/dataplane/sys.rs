//! The data path's non-blocking socket calls, TCP and UDP alike, under one convention.
//!
//! io_uring does all the waiting; these calls are the "readiness plus syscall" half of the data
//! path: a `recv(2)` of what is already queued, a `send(2)` of what fits now, a look at a
//! socket's send queue or at the packets the kernel dropped at it. Owns: those calls, how their outcome is reported, and the `unsafe`
//! buffer-length updates after a receive into a buffer's spare capacity. Does not own: when to
//! call them or what to do when they would block (`forward`, `udp`), nor splice(2) (`splice`,
//! which reports through [`nonblocking`] too).
//!
//! # The convention
//!
//! Every call here returns `io::Result<Option<T>>`:
//! - `Ok(Some(v))`: the call did its work (`v` bytes, or the datagram's source, ...);
//! - `Ok(None)`: it would block (`EAGAIN`): nothing queued to read, or no room to send; the
//!   caller waits on io_uring and tries again;
//! - `Err(e)`: the socket failed (reset, refused, ...).
//!
//! A call interrupted by a signal (`EINTR`) is made again at once: a non-blocking call never
//! sleeps, so the retry costs nothing and no caller has to know about `EINTR`.
//!
//! Every send passes `MSG_NOSIGNAL` (a TCP send to a reset peer reports `EPIPE` instead of
//! raising SIGPIPE; UDP sockets never raise it) and `MSG_DONTWAIT`, so the calls never block
//! whatever the socket's own mode.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd};

use socket2::SockRef;

/// Flags of every send: never block, never raise SIGPIPE.
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// Runs one non-blocking call under the module's convention: `EAGAIN` becomes `Ok(None)`,
/// `EINTR` runs the call again.
pub(super) fn nonblocking<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<Option<T>> {
    loop {
        match call() {
            Ok(v) => return Ok(Some(v)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sends what fits of `data` now on a connected socket (`send(2)`): the bytes sent, `None`
/// when nothing fits. A UDP socket sends the whole datagram or nothing.
pub(super) fn send_now(socket: &impl AsFd, data: &[u8]) -> io::Result<Option<usize>> {
    let socket = SockRef::from(socket);
    nonblocking(|| socket.send_with_flags(data, SEND_FLAGS))
}

/// Sends one datagram now to `dest` on an unconnected socket (`sendto(2)`): the bytes sent,
/// `None` when the socket buffer is full.
pub(super) fn send_to_now(
    socket: &impl AsFd,
    data: &[u8],
    dest: SocketAddr,
) -> io::Result<Option<usize>> {
    let socket = SockRef::from(socket);
    let dest = dest.into();
    nonblocking(|| socket.send_to_with_flags(data, &dest, SEND_FLAGS))
}

/// Reads what is queued on a connected socket into `buf`, replacing its contents, at most
/// `len` bytes (`recv(2)`; one datagram on a UDP socket): the bytes read, `Ok(Some(0))` at a
/// TCP socket's EOF, `None` when nothing is queued.
pub(super) fn recv_now(
    socket: &impl AsFd,
    buf: &mut Vec<u8>,
    len: usize,
) -> io::Result<Option<usize>> {
    recv_flags(socket, buf, len, libc::MSG_DONTWAIT)
}

/// Copies what is queued on a connected socket into `buf`, replacing its contents, at most `len`
/// bytes, and leaves it queued (`recv(2)` with `MSG_PEEK`): the bytes copied, `Ok(Some(0))` at
/// EOF, `None` when nothing is queued.
pub(super) fn peek_now(
    socket: &impl AsFd,
    buf: &mut Vec<u8>,
    len: usize,
) -> io::Result<Option<usize>> {
    recv_flags(socket, buf, len, libc::MSG_DONTWAIT | libc::MSG_PEEK)
}

/// `recv(2)` with `flags` into `buf`, replacing its contents, at most `len` bytes: what
/// [`recv_now`] and [`peek_now`] return. `flags` include `MSG_DONTWAIT` and never `MSG_TRUNC`
/// (which would report more bytes than were written).
fn recv_flags(
    socket: &impl AsFd,
    buf: &mut Vec<u8>,
    len: usize,
    flags: libc::c_int,
) -> io::Result<Option<usize>> {
    let socket = SockRef::from(socket);
    buf.clear();
    buf.reserve(len);
    let n = nonblocking(|| socket.recv_with_flags(spare(buf, len), flags))?;
    if let Some(n) = n {
        // SAFETY: recv(2) wrote `n` bytes at the start of the spare capacity it was given, and
        // never more than the `len` bytes passed (no MSG_TRUNC), which `reserve` made sure the
        // buffer has; so after the (zero) length the first `n` bytes are initialized.
        unsafe { buf.set_len(n) };
    }
    Ok(n)
}

/// Receives one datagram already queued on `socket` into `buf`, replacing its contents, at most
/// `len` bytes (`recvfrom(2)`): the datagram's source, `None` when nothing is queued.
pub(super) fn recv_from_now(
    socket: &impl AsFd,
    buf: &mut Vec<u8>,
    len: usize,
) -> io::Result<Option<SocketAddr>> {
    let socket = SockRef::from(socket);
    buf.clear();
    buf.reserve(len);
    let received =
        nonblocking(|| socket.recv_from_with_flags(spare(buf, len), libc::MSG_DONTWAIT))?;
    let Some((n, source)) = received else {
        return Ok(None);
    };
    // SAFETY: recvfrom(2) wrote `n` bytes at the start of the spare capacity it was given, and
    // never more than the `len` bytes passed (no MSG_TRUNC), which `reserve` made sure the
    // buffer has; so after the (zero) length the first `n` bytes are initialized.
    unsafe { buf.set_len(n) };
    source
        .as_socket()
        .map(Some)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "datagram from a non-IP address"))
}

/// The first `len` bytes of `buf`'s spare capacity (it has at least that many).
fn spare(buf: &mut Vec<u8>, len: usize) -> &mut [MaybeUninit<u8>] {
    &mut buf.spare_capacity_mut()[..len]
}

/// Bytes in a TCP socket's send queue: written by ringlb but not yet acknowledged by the peer
/// (`SIOCOUTQ`). Zero once the peer's kernel holds everything ringlb wrote.
pub(super) fn unacked(socket: &impl AsFd) -> io::Result<usize> {
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ (the same number as TIOCOUTQ) writes one `int` through the pointer,
    // which points at a live local `c_int`; the descriptor is borrowed for the call.
    let ret = unsafe {
        libc::ioctl(
            socket.as_fd().as_raw_fd(),
            libc::TIOCOUTQ,
            &mut queued as *mut libc::c_int,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(queued).unwrap_or(0))
}

/// Packets the kernel dropped at a socket since it was opened (`SO_MEMINFO`'s
/// `SK_MEMINFO_DROPS`): for a UDP socket, mostly datagrams that arrived while its receive buffer
/// was full. A 32-bit count that wraps: callers keep the last reading and add the difference.
pub(super) fn kernel_drops(socket: &impl AsFd) -> io::Result<u32> {
    /// The kernel's `SK_MEMINFO_VARS`: the values `SO_MEMINFO` reports.
    const VARS: usize = libc::SK_MEMINFO_DROPS as usize + 1;
    let mut info = [0u32; VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt(2) writes at most `len` bytes through the pointer, which points at a
    // live local array of exactly `len` bytes, and writes the length it used through the second
    // pointer, a live local `socklen_t`; the descriptor is borrowed for the call.
    let ret = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    if (len as usize) < std::mem::size_of_val(&info) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "SO_MEMINFO reports no drop count",
        ));
    }
    Ok(info[libc::SK_MEMINFO_DROPS as usize])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream, UdpSocket};

    /// Calls `f` until it returns something (the loopback peer's bytes or reset may take a
    /// moment to land), within a deadline.
    fn poll<T>(mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "nothing within 5 s");
            std::thread::yield_now();
        }
    }

    fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    #[test]
    fn tcp_reports_nothing_queued_data_and_eof_alike() {
        let (mut a, b) = tcp_pair();
        let mut buf = Vec::new();
        assert_eq!(
            recv_now(&b, &mut buf, 16).unwrap(),
            None,
            "nothing queued yet"
        );
        a.write_all(b"hello, ringlb").unwrap();
        let n = poll(|| recv_now(&b, &mut buf, 5).unwrap());
        assert_eq!(n, 5, "at most `len` bytes");
        assert_eq!(buf, b"hello");
        let n = recv_now(&b, &mut buf, 64).unwrap();
        assert_eq!(n, Some(8));
        assert_eq!(buf, b", ringlb", "the buffer's contents are replaced");
        drop(a);
        let eof = poll(|| recv_now(&b, &mut buf, 64).unwrap());
        assert_eq!(eof, 0);
        assert!(buf.is_empty());
    }

    #[test]
    fn a_send_that_does_not_fit_reports_none_and_a_reset_peer_an_error() {
        let (a, b) = tcp_pair();
        let chunk = vec![7u8; 1 << 16];
        let mut sent = 0;
        // The peer never reads: the send buffer fills and a send reports `None`, not an error.
        while let Some(n) = send_now(&a, &chunk).unwrap() {
            sent += n;
            assert!(sent < 256 << 20, "the send buffer never filled");
        }
        let queued = unacked(&a).unwrap();
        assert!(
            queued > 0 && queued <= sent,
            "{queued} of the {sent} unread bytes wait in the send queue"
        );
        assert_eq!(unacked(&b).unwrap(), 0, "nothing sent the other way");
        socket2::SockRef::from(&b)
            .set_linger(Some(std::time::Duration::ZERO))
            .unwrap();
        drop(b);
        let failed = poll(|| send_now(&a, &chunk).err());
        assert!(
            matches!(failed.raw_os_error(), Some(libc::ECONNRESET | libc::EPIPE)),
            "{failed}"
        );
    }

    #[test]
    fn udp_sends_and_receives_datagrams_with_their_source() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = Vec::new();
        assert_eq!(recv_from_now(&b, &mut buf, 64).unwrap(), None);
        let sent = send_to_now(&a, b"ping", b.local_addr().unwrap()).unwrap();
        assert_eq!(sent, Some(4));
        let source = poll(|| recv_from_now(&b, &mut buf, 64).unwrap());
        assert_eq!(source, a.local_addr().unwrap());
        assert_eq!(buf, b"ping");
        b.connect(a.local_addr().unwrap()).unwrap();
        assert_eq!(send_now(&b, b"pong").unwrap(), Some(4));
        let n = poll(|| recv_now(&a, &mut buf, 64).unwrap());
        assert_eq!((n, buf.as_slice()), (4, &b"pong"[..]));
    }

    #[test]
    fn a_udp_socket_that_nobody_reads_counts_the_datagrams_the_kernel_drops() {
        let receiver = socket2::Socket::from(UdpSocket::bind("127.0.0.1:0").unwrap());
        // The smallest receive buffer the kernel allows: a few datagrams fill it.
        receiver.set_recv_buffer_size(1).unwrap();
        let receiver = UdpSocket::from(receiver);
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(kernel_drops(&receiver).unwrap(), 0, "nothing dropped yet");
        const SENT: u32 = 200;
        let datagram = [1u8; 1000];
        for _ in 0..SENT {
            sender
                .send_to(&datagram, receiver.local_addr().unwrap())
                .unwrap();
        }
        let dropped = kernel_drops(&receiver).unwrap();
        // Loopback delivers within the send: what is not queued was dropped.
        let mut buf = Vec::new();
        let mut queued = 0;
        while recv_from_now(&receiver, &mut buf, 2048).unwrap().is_some() {
            queued += 1;
        }
        assert!(dropped > 0, "{queued} of {SENT} queued, none dropped");
        assert_eq!(dropped + queued, SENT, "every datagram queued or dropped");
        assert_eq!(
            kernel_drops(&sender).unwrap(),
            0,
            "the sender dropped nothing"
        );
    }
}
