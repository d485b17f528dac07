//! The local side of backend connections: which address they come from, and when their port is
//! chosen.
//!
//! Owns: binding a backend socket to a source address with `IP_BIND_ADDRESS_NO_PORT` (the
//! health probes bind theirs through [`bind_no_port`] too), each worker's rotation over a
//! backend's source addresses ([`Rotation`]), and connecting one candidate from those addresses
//! in turn ([`connect_from`]). Does not own: which addresses (the `source` key, checked by
//! `config`), the candidates, retries and timeout of a connect (`forward::connect`), or what a
//! local shortage means (`control::local`).
//!
//! Why: every connection ringlb closes toward a backend first holds its local port in
//! TIME_WAIT for a minute, and a local port can be reused only toward another destination. A
//! socket bound to `address:0` is normally given its port at bind time, from the whole
//! ephemeral range and unique per address whatever the destination; with
//! `IP_BIND_ADDRESS_NO_PORT` the kernel chooses it at connect time, per 4-tuple, as it does for
//! a socket that was never bound, so one local port serves every backend. Each source address
//! adds a full ephemeral range toward each backend: with `n` addresses ringlb can hold `n` times
//! as many connections (open or in TIME_WAIT) toward one backend.
//!
//! Per connection nothing is allocated: the rotation is one integer per backend address per
//! worker, kept in a map that grows only when a worker first connects to a backend.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use compio::net::{TcpSocket, TcpStream};
use socket2::SockRef;

/// Backend addresses a worker keeps a place for before it forgets them all (reloads that
/// replace backends again and again must not grow the map without bound).
const MAX_TRACKED_BACKENDS: usize = 4096;

/// Binds `socket` to `source` with the port left for the connect to choose
/// (`IP_BIND_ADDRESS_NO_PORT`). Fails with `EADDRNOTAVAIL` when `source` is not an address of
/// this host.
pub fn bind_no_port(socket: &impl AsFd, source: IpAddr) -> io::Result<()> {
    set_bind_address_no_port(socket)?;
    SockRef::from(socket).bind(&SocketAddr::new(source, 0).into())
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` on `socket` (IPv4 or IPv6, TCP or UDP; Linux 4.2 and later):
/// a later bind to port 0 takes no port, the connect (or first send) does.
pub fn set_bind_address_no_port(socket: &impl AsFd) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt(2) reads `optlen` bytes at `optval`, which points at `on`, a live
    // c_int of exactly that size; the descriptor is borrowed from `socket`, open for the call.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_fd().as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&raw const on).cast::<libc::c_void>(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// One worker's place in each backend's source list. Worker-local (a `RefCell` on the worker's
/// thread): no lock, no atomic shared with another worker.
#[derive(Debug, Default)]
pub(super) struct Rotation {
    next: RefCell<HashMap<SocketAddr, usize>>,
}

impl Rotation {
    /// The index, in a list of `len` source addresses, the next connection to `backend` starts
    /// from; each call moves that backend's place on by one.
    fn start(&self, backend: SocketAddr, len: usize) -> usize {
        let mut next = self.next.borrow_mut();
        if next.len() >= MAX_TRACKED_BACKENDS && !next.contains_key(&backend) {
            next.clear();
        }
        let place = next.entry(backend).or_insert(0);
        let start = *place % len;
        *place = start + 1;
        start
    }
}

/// Connects to `backend`. Without source addresses the kernel picks the local address and port.
/// With them, the connect comes from the address the worker's rotation is at for this backend;
/// when that address has no local port left toward the backend (`EADDRNOTAVAIL`, its ports held
/// by open or TIME_WAIT connections) the next address is tried, and so on once round the list.
/// Only when every address is out does the connect fail with `EADDRNOTAVAIL`, which the caller
/// counts as one local shortage.
pub(super) async fn connect_from(
    rotation: &Rotation,
    sources: &[IpAddr],
    backend: SocketAddr,
) -> io::Result<TcpStream> {
    if sources.is_empty() {
        return TcpStream::connect(backend).await;
    }
    let start = rotation.start(backend, sources.len());
    let mut last = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
    for k in 0..sources.len() {
        let source = sources[(start + k) % sources.len()];
        match connect_one(source, backend).await {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => last = e,
            done => return done,
        }
    }
    Err(last)
}

/// One connect from `source` to `backend`, its port chosen at connect time.
async fn connect_one(source: IpAddr, backend: SocketAddr) -> io::Result<TcpStream> {
    let socket = if backend.is_ipv4() {
        TcpSocket::new_v4().await?
    } else {
        TcpSocket::new_v6().await?
    };
    // A plain bind(2): with the port left to the connect it never waits, and unlike io_uring's
    // bind it needs no recent kernel.
    bind_no_port(&socket, source)?;
    socket.connect(backend).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_backend_rotates_over_its_sources_on_its_own() {
        let r = Rotation::default();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let starts: Vec<usize> = (0..5).map(|_| r.start(a, 3)).collect();
        assert_eq!(starts, [0, 1, 2, 0, 1]);
        // Interleaving another backend does not move `a`'s place.
        assert_eq!(r.start(b, 2), 0);
        assert_eq!(r.start(a, 3), 2);
        assert_eq!(r.start(b, 2), 1);
        assert_eq!(r.start(b, 2), 0);
        // A shorter list (after a reload) still gives an index inside it.
        assert!(r.start(a, 2) < 2);
    }

    #[test]
    fn the_rotation_forgets_backends_past_its_bound() {
        let r = Rotation::default();
        for port in 1..=MAX_TRACKED_BACKENDS as u16 {
            r.start(SocketAddr::from(([127, 0, 0, 1], port)), 2);
        }
        assert_eq!(r.next.borrow().len(), MAX_TRACKED_BACKENDS);
        r.start(SocketAddr::from(([127, 0, 0, 2], 1)), 2);
        assert_eq!(r.next.borrow().len(), 1);
    }

    /// The socket option is set: a bind to port 0 takes no port (getsockname says 0); the
    /// connect takes one, from the bound address.
    #[test]
    fn a_bound_socket_gets_its_port_only_when_it_connects() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        let source: IpAddr = "127.0.0.3".parse().unwrap();
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        bind_no_port(&socket, source).unwrap();
        let bound = socket.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(bound, SocketAddr::new(source, 0));
        socket.connect(&target.into()).unwrap();
        let connected = socket.local_addr().unwrap().as_socket().unwrap();
        assert_eq!(connected.ip(), source);
        assert_ne!(connected.port(), 0);
        let (_, peer) = listener.accept().unwrap();
        assert_eq!(peer, connected);
    }

    /// An address that is not this host's fails with EADDRNOTAVAIL, as an exhausted one does:
    /// the connect moves on to the next address, and fails only when none is left.
    #[test]
    fn a_connect_moves_past_an_unusable_source_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let target = listener.local_addr().unwrap();
        // TEST-NET-2: never an address of this host.
        let foreign: IpAddr = "198.51.100.7".parse().unwrap();
        let local: IpAddr = "127.0.0.2".parse().unwrap();
        let rt = crate::dataplane::ring_runtime().unwrap();
        rt.block_on(async {
            let rotation = Rotation::default();
            for _ in 0..2 {
                // Whichever address the rotation starts at, the connect comes from `local`.
                let stream = connect_from(&rotation, &[foreign, local], target)
                    .await
                    .unwrap();
                assert_eq!(stream.local_addr().unwrap().ip(), local);
                let (_, peer) = listener.accept().unwrap();
                assert_eq!(peer.ip(), local);
            }
            let err = connect_from(&rotation, &[foreign], target)
                .await
                .unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EADDRNOTAVAIL), "{err}");
            // No source addresses: the kernel's choice.
            let stream = connect_from(&rotation, &[], target).await.unwrap();
            assert_eq!(stream.peer_addr().unwrap(), target);
        });
    }
}
