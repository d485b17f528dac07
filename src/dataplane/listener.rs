//! Listening sockets, built with socket2 before the workers start.
//!
//! Owns: creating one `SO_REUSEPORT` TCP listener (or UDP socket) per (worker, service), so the
//! kernel spreads new connections (or client addresses) over the workers. Binding happens on the starting thread, so an address in use
//! is reported to the operator before any worker runs.
//!
//! With `[runtime] freebind`, listeners set `IP_FREEBIND` (`IPV6_FREEBIND`): they bind an
//! address this host does not have yet, such as a virtual address that keepalived moves to
//! this host on a failover, and start receiving the moment it arrives. The host-wide sysctl
//! `net.ipv4.ip_nonlocal_bind` (`net.ipv6.ip_nonlocal_bind`) does the same for every process.

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use super::DataPlaneError;

/// How listening sockets are bound, beyond their address.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindOptions {
    /// Set `IP_FREEBIND`: bind an address not (yet) assigned to this host.
    pub freebind: bool,
}

/// Binds `count` listeners on `addr` sharing the port through `SO_REUSEPORT`.
///
/// When `addr` has port 0, the first socket gets a port from the kernel and the others bind that
/// same port, so every worker serves one address. Returns the listeners and that address.
pub fn bind_tcp(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), DataPlaneError> {
    bind_tcp_with(addr, count, backlog, BindOptions::default())
}

/// [`bind_tcp`] with `options`.
pub fn bind_tcp_with(
    addr: SocketAddr,
    count: usize,
    backlog: u32,
    options: BindOptions,
) -> Result<(Vec<std::net::TcpListener>, SocketAddr), DataPlaneError> {
    bind_shared(addr, count, |a| bind_one(a, backlog, options))
        .map(|(v, a)| (v.into_iter().map(std::net::TcpListener::from).collect(), a))
}

/// Binds `count` sockets made by `bind` on `addr`, resolving port 0 once for all of them.
fn bind_shared(
    addr: SocketAddr,
    count: usize,
    bind: impl Fn(SocketAddr) -> io::Result<Socket>,
) -> Result<(Vec<Socket>, SocketAddr), DataPlaneError> {
    let mut sockets = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = bind(bound).map_err(|e| match e.kind() {
            io::ErrorKind::AddrInUse => DataPlaneError::ListenerAddressInUse(bound),
            io::ErrorKind::AddrNotAvailable => DataPlaneError::AddressNotLocal(bound),
            _ => DataPlaneError::Bind {
                address: bound,
                source: e,
            },
        })?;
        if bound.port() == 0 {
            bound = socket
                .local_addr()
                .ok()
                .and_then(|a| a.as_socket())
                .ok_or_else(|| DataPlaneError::Bind {
                    address: addr,
                    source: io::Error::other("the kernel gave no local address"),
                })?;
        }
        sockets.push(socket);
    }
    Ok((sockets, bound))
}

/// What a UDP service's listening socket asks for as receive and send buffer: 4 MiB holds about
/// 60 datagrams of the largest size, so a burst of them is not dropped while a worker is busy.
/// Linux caps it at `net.core.rmem_max` / `wmem_max` (212992 bytes by default; the kernel then
/// doubles it for bookkeeping); operators of busy UDP services raise those sysctls.
pub const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// Binds `count` UDP sockets on `addr` sharing the port through `SO_REUSEPORT`, one per worker:
/// the kernel hashes each client address to one of them, so a flow stays on one worker.
///
/// Port 0 is resolved as in [`bind_tcp`]. Returns the sockets and the bound address.
pub fn bind_udp(
    addr: SocketAddr,
    count: usize,
) -> Result<(Vec<std::net::UdpSocket>, SocketAddr), DataPlaneError> {
    bind_udp_with(addr, count, BindOptions::default())
}

/// [`bind_udp`] with `options`.
pub fn bind_udp_with(
    addr: SocketAddr,
    count: usize,
    options: BindOptions,
) -> Result<(Vec<std::net::UdpSocket>, SocketAddr), DataPlaneError> {
    bind_shared(addr, count, |a| bind_one_udp(a, options))
        .map(|(v, a)| (v.into_iter().map(std::net::UdpSocket::from).collect(), a))
}

/// Sets `IP_FREEBIND` (or `IPV6_FREEBIND`) on `socket` when `options` ask for it.
fn set_freebind(socket: &Socket, addr: SocketAddr, options: BindOptions) -> io::Result<()> {
    if !options.freebind {
        return Ok(());
    }
    if addr.is_ipv6() {
        socket.set_freebind_v6(true)
    } else {
        socket.set_freebind_v4(true)
    }
}

fn bind_one_udp(addr: SocketAddr, options: BindOptions) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    set_freebind(&socket, addr, options)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Best effort: the kernel silently caps both at its sysctl maximum.
    socket.set_recv_buffer_size(UDP_SOCKET_BUFFER)?;
    socket.set_send_buffer_size(UDP_SOCKET_BUFFER)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn bind_one(addr: SocketAddr, backlog: u32, options: BindOptions) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        // Dual-stack behaviour varies by host; a v6 listen address means v6 only.
        socket.set_only_v6(true)?;
    }
    set_freebind(&socket, addr, options)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux.
    socket.set_tcp_nodelay(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_gives_every_worker_the_same_port() {
        let (ls, addr) = bind_tcp("127.0.0.1:0".parse().unwrap(), 3, 16).unwrap();
        assert_ne!(addr.port(), 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), addr);
        }
    }

    /// Linux copies TCP_NODELAY from a listener to the sockets it accepts, so the data plane
    /// never sets it per client connection: the accepted socket has it without a setsockopt(2).
    #[test]
    fn accepted_connections_inherit_tcp_nodelay_from_the_listener() {
        let (ls, addr) = bind_tcp("127.0.0.1:0".parse().unwrap(), 1, 16).unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (accepted, _) = ls[0].accept().unwrap();
        assert!(accepted.nodelay().unwrap());
        // The kernel's default, for contrast: a plain listener's accepted sockets have Nagle.
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _other = std::net::TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let (accepted, _) = plain.accept().unwrap();
        assert!(!accepted.nodelay().unwrap());
    }

    #[test]
    fn udp_port_zero_gives_every_worker_the_same_port() {
        let (ss, addr) = bind_udp("127.0.0.1:0".parse().unwrap(), 3).unwrap();
        assert_ne!(addr.port(), 0);
        for s in &ss {
            assert_eq!(s.local_addr().unwrap(), addr);
        }
    }

    #[test]
    fn udp_address_held_by_another_process_is_reported_with_the_address() {
        let other = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        match bind_udp(addr, 1) {
            Err(DataPlaneError::ListenerAddressInUse(a)) => assert_eq!(a, addr),
            other => panic!("expected ListenerAddressInUse, got {other:?}"),
        }
    }

    #[test]
    fn address_held_by_another_process_is_reported_with_the_address() {
        // A plain listener without SO_REUSEPORT holds the port exclusively.
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = other.local_addr().unwrap();
        match bind_tcp(addr, 1, 16) {
            Err(DataPlaneError::ListenerAddressInUse(a)) => assert_eq!(a, addr),
            other => panic!("expected ListenerAddressInUse, got {other:?}"),
        }
    }
}
