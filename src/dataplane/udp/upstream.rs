//! The backend side of UDP flows: upstream sockets, what a link's reply does (sent on to the
//! client, counted, the flow ended once its replies are all in), the socket calls the data path
//! makes itself (a non-blocking first send, socket creation), and the count of upstream fds each
//! service holds on a worker, closing ones included.
//!
//! Does not own the task that receives a link's replies (`replies`). See the parent module for
//! how flows, links and buffers fit together. Everything here runs on the worker's thread.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::Instant;

use compio::driver::ToSharedFd;
use compio::net::UdpSocket;
use event_listener::Event;
use socket2::{Domain, Protocol, Socket, Type};

use crate::balancer::flowtable::ReplyVerdict;
use crate::control::ServiceState;
use crate::control::log_limit::Reason;

use super::super::sys;
use super::{MAX_DATAGRAM, UdpService};

/// Upstream fds of ended links still closing that a service may hold on a worker beyond its
/// share of `udp_max_flows`. Closes take one io_uring round trip; this many in flight let a
/// burst of new clients with a full table open flows without waiting for each close in turn,
/// so the datagrams of established flows queued behind them are not held up, for a few fds.
pub(super) const CLOSING_SLACK: usize = 8;

/// The upstream fds of one service on one worker: those of its links, and those of ended links
/// not closed yet. Ending a link does not close its fd at once: its reader is cancelled on the
/// event loop's next turn, and the reader's pending io_uring receive (one-shot or multishot: the
/// op holds a reference to the fd either way) holds the fd until the kernel confirms the
/// cancellation (one io_uring round trip). A new upstream socket is opened
/// only while the count is below `limit` (the flow table's capacity plus [`CLOSING_SLACK`]),
/// so the fds held never exceed it.
pub(super) struct UpstreamFds {
    held: Cell<usize>,
    limit: usize,
    /// Notified whenever a held fd is closed.
    closed: Event,
}

impl UpstreamFds {
    /// The count for a flow table of `max_flows` flows.
    pub(super) fn new(max_flows: usize) -> Rc<UpstreamFds> {
        Rc::new(UpstreamFds {
            held: Cell::new(0),
            limit: max_flows + CLOSING_SLACK,
            closed: Event::new(),
        })
    }

    /// Whether no upstream socket may be opened now.
    pub(super) fn at_limit(&self) -> bool {
        self.held.get() >= self.limit
    }

    /// Counts the fd of a socket being opened, until the returned hold is dropped (by
    /// [`close_upstream`] once the fd is closed).
    pub(super) fn hold(self: &Rc<Self>) -> FdHold {
        self.held.set(self.held.get() + 1);
        FdHold(self.clone())
    }

    /// Resolves once an upstream socket may be opened (an fd being closed is).
    pub(super) async fn room(&self) {
        loop {
            if !self.at_limit() {
                return;
            }
            let listener = self.closed.listen();
            if !self.at_limit() {
                return;
            }
            listener.await;
        }
    }
}

/// One fd counted in [`UpstreamFds`]; dropping it uncounts the fd.
pub(super) struct FdHold(Rc<UpstreamFds>);

impl Drop for FdHold {
    fn drop(&mut self) {
        let fds = &self.0;
        fds.held.set(fds.held.get() - 1);
        fds.closed.notify(1);
    }
}

/// Closes an ended link's upstream socket (`socket`: the link's own handle, the reader's being
/// dropped with its task) once nothing else holds it, in particular the cancelled receive (one-shot
/// or multishot) still in the kernel, then releases its `hold`. A task per socket waits for that; the fd is closed
/// with a plain `close` as soon as it is free.
pub(super) fn close_upstream(socket: UdpSocket, hold: FdHold) {
    let fd = socket.to_shared_fd();
    drop(socket);
    compio::runtime::spawn(async move {
        // Resolves with the fd once every other reference is gone; dropping it closes it.
        drop(fd.take().await);
        drop(hold);
    })
    .detach();
}

/// What a reader does after one reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Step {
    /// Read the next reply.
    Next,
    /// The flow ended or moved on: the task ends.
    Stop,
    /// The service socket's buffer is full: send with io_uring, then [`UdpService::reply_sent`]
    /// (from this backend, with this verdict).
    Blocked(usize, Option<ReplyVerdict>),
}

impl UdpService {
    /// Records one reply of `link` from backend `from` (`None`: not from a backend of the
    /// service, dropped) and sends it on to the client with a non-blocking send.
    pub(super) fn reply_now(
        &self,
        state: &ServiceState,
        client: SocketAddr,
        link: u64,
        from: Option<usize>,
        data: &[u8],
    ) -> Step {
        let Some(from) = from else {
            state.counters.udp_datagrams_dropped.inc();
            return Step::Next;
        };
        let verdict = {
            let mut flows = self.flows.borrow_mut();
            if flows.get(&client).and_then(|f| f.value.link_id()) != Some(link) {
                // The flow moved on; this task is about to be cancelled.
                return Step::Stop;
            }
            flows.record_down(&client, data.len(), Instant::now(), self.replies)
        };
        match send_now(&self.socket, data, Some(client)) {
            Ok(None) => Step::Blocked(from, verdict),
            sent => {
                let sent = sent.map(|n| n.unwrap_or(0));
                self.reply_sent(state, client, link, from, data.len(), sent, verdict)
            }
        }
    }

    /// Counts a reply sent (or not) to the client, and ends the flow when its replies are all
    /// in.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn reply_sent(
        &self,
        state: &ServiceState,
        client: SocketAddr,
        link: u64,
        from: usize,
        len: usize,
        sent: io::Result<usize>,
        verdict: Option<ReplyVerdict>,
    ) -> Step {
        match sent {
            Ok(_) => {
                state.counters.udp_datagrams_down.inc();
                if let Some(b) = state.backends.get(from) {
                    b.counters.bytes_to_client.add(len as u64);
                }
            }
            Err(e) => {
                state.counters.udp_datagrams_dropped.inc();
                if let Some(suppressed) = Reason::UdpReply.admit() {
                    tracing::debug!(service = %state.config.name, %client, error = %e,
                        suppressed, "udp send to client failed");
                }
            }
        }
        if verdict == Some(ReplyVerdict::Done) && self.answered(client, link) {
            Step::Stop
        } else {
            Step::Next
        }
    }

    /// A link's upstream socket failed to receive: the link ends (see `link_failed`).
    pub(super) fn upstream_failed(
        &self,
        state: &ServiceState,
        client: SocketAddr,
        link: u64,
        e: &io::Error,
    ) {
        if !is_backend_failure(e) {
            tracing::debug!(service = %state.config.name, %client, error = %e,
                "udp upstream receive failed");
        }
        self.link_failed(client, link, e, true);
    }
}

/// The index of the backend `from` is (v4-mapped addresses compared as IPv4).
pub(super) fn backend_index(state: &ServiceState, from: SocketAddr) -> Option<usize> {
    let from = canonical(from);
    state.backends.iter().position(|b| b.address() == from)
}

pub(super) fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Sends one datagram at once with a non-blocking `send`/`sendto` (`dest`: unconnected
/// socket), the usual case for UDP, where the socket buffer has room: this saves an io_uring
/// round trip per datagram and gives a reply buffer back to the pool at once. `None` when the
/// socket buffer is full; the caller then waits on an io_uring send.
pub(super) fn send_now(
    socket: &UdpSocket,
    data: &[u8],
    dest: Option<SocketAddr>,
) -> io::Result<Option<usize>> {
    match dest {
        None => sys::send_now(socket, data),
        Some(dest) => sys::send_to_now(socket, data, dest),
    }
}

/// Receives one datagram already queued on `socket` into `buf` (its contents replaced) with a
/// non-blocking `recvfrom`, and returns its source; `None` when nothing is queued.
pub(super) fn recv_now(socket: &UdpSocket, buf: &mut Vec<u8>) -> io::Result<Option<SocketAddr>> {
    sys::recv_from_now(socket, buf, MAX_DATAGRAM)
}

/// Whether a receive into the buffer pool failed because the pool had no free buffer: the
/// kernel's ENOBUFS, which compio reports as `ResourceBusy`.
pub(super) fn is_pool_empty(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::ResourceBusy || e.raw_os_error() == Some(libc::ENOBUFS)
}

/// Errors of a connected upstream socket that mean the backend is not there (ICMP port or host
/// unreachable), as opposed to a local problem.
pub(super) fn is_backend_failure(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EHOSTDOWN)
    )
}

/// A new upstream socket on an ephemeral port (taken when it connects or first sends):
/// connected to `backend` (flow mode) or not (per-packet mode; dual-stack when `v6`, so it can
/// also reach IPv4 backends).
pub(super) fn open_upstream(
    v6: bool,
    backend: Option<SocketAddr>,
) -> io::Result<std::net::UdpSocket> {
    let (domain, any): (Domain, SocketAddr) = if v6 {
        (Domain::IPV6, (Ipv6Addr::UNSPECIFIED, 0).into())
    } else {
        (Domain::IPV4, (Ipv4Addr::UNSPECIFIED, 0).into())
    };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if v6 {
        socket.set_only_v6(false)?;
    }
    // The port is taken by the connect (flow mode) or the first send (per-packet mode), as for
    // every backend socket ringlb binds (see `dataplane::source`). UDP ports are unique per
    // local address whatever the destination, so this takes no fewer ports; it keeps one rule.
    crate::dataplane::set_bind_address_no_port(&socket)?;
    socket.bind(&any.into())?;
    if let Some(b) = backend {
        socket.connect(&b.into())?;
    }
    Ok(socket.into())
}

/// Test check: closes `socket` the way a flow's end does and asserts that its fd stays counted
/// (and open) while a cancelled receive may hold it, then is closed and uncounted within 5 s
/// (`never` is the failure message). The count must be at its limit before.
#[cfg(test)]
pub(super) async fn closes_then_uncounts(
    fds: &UpstreamFds,
    socket: UdpSocket,
    hold: FdHold,
    never: &str,
) {
    use futures_util::future::{Either, select};
    use std::pin::pin;

    let addr = socket.local_addr().unwrap();
    close_upstream(socket, hold);
    assert!(fds.at_limit(), "a closing fd is still counted");
    assert!(
        std::net::UdpSocket::bind(addr).is_err(),
        "the fd is still open"
    );
    let deadline = pin!(compio::time::sleep(std::time::Duration::from_secs(5)));
    let room = pin!(fds.room());
    if let Either::Right(_) = select(room, deadline).await {
        panic!("{never}");
    }
    assert!(!fds.at_limit());
    std::net::UdpSocket::bind(addr).expect("the fd is closed once uncounted");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn v4_mapped_addresses_compare_as_ipv4() {
        let v4: SocketAddr = "127.0.0.1:53".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:53".parse().unwrap();
        assert_eq!(canonical(mapped), v4);
        assert_eq!(canonical(v4), v4);
        let v6: SocketAddr = "[::1]:53".parse().unwrap();
        assert_eq!(canonical(v6), v6);
    }

    #[test]
    fn refusal_and_unreachable_are_backend_failures() {
        for errno in [libc::ECONNREFUSED, libc::EHOSTUNREACH, libc::ENETUNREACH] {
            assert!(is_backend_failure(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!is_backend_failure(&io::Error::from_raw_os_error(
            libc::ENOBUFS
        )));
    }

    /// What the reply reader relies on: with the worker's buffer pool empty, a receive fails
    /// with ENOBUFS (whether the datagram was already queued or arrives while the receive
    /// waits) and the datagram stays in its socket until a buffer comes back.
    #[test]
    fn an_empty_reply_pool_reports_enobufs_and_keeps_the_datagram() {
        let mut proactor = compio::driver::ProactorBuilder::new();
        proactor
            .buffer_pool_size(std::num::NonZeroU16::MIN)
            .buffer_pool_buffer_len(MAX_DATAGRAM);
        let rt = compio::runtime::RuntimeBuilder::new()
            .with_proactor(proactor)
            .build()
            .unwrap();
        rt.block_on(async {
            let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sender.send_to(b"first", a_addr).unwrap();
            sender.send_to(b"second", b_addr).unwrap();
            let held = a.recv_managed(0).await.unwrap().unwrap();
            assert_eq!(&held[..], b"first");
            let err = b.recv_managed(0).await.unwrap_err();
            assert!(is_pool_empty(&err), "{err:?}");
            drop(held);
            let got = b.recv_managed(0).await.unwrap().unwrap();
            assert_eq!(&got[..], b"second");
            // The same with the receive already waiting when the datagram arrives.
            let waiting = compio::runtime::spawn(async move { b.recv_managed(0).await });
            compio::time::sleep(Duration::from_millis(50)).await;
            sender.send_to(b"third", b_addr).unwrap();
            let err = waiting.await.unwrap().unwrap_err();
            assert!(is_pool_empty(&err), "{err:?}");
            drop(got);
        });
    }

    /// An ended link's fd stays counted while its reader's cancelled receive holds it, and the
    /// count drops only once the fd is closed (its port can be bound again).
    #[test]
    fn a_closing_upstream_fd_stays_counted_until_it_is_closed() {
        let rt = compio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let fds = UpstreamFds::new(0);
            // Fill the count up to its limit; the last one is the socket's.
            let others: Vec<FdHold> = (1..CLOSING_SLACK).map(|_| fds.hold()).collect();
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let hold = fds.hold();
            assert!(fds.at_limit());
            let addr = socket.local_addr().unwrap();
            // A reader whose receive is in flight: one datagram in, then it waits for the next.
            let first = Rc::new(Event::new());
            let reader = compio::runtime::spawn({
                let (socket, first) = (socket.clone(), first.clone());
                async move {
                    let _ = socket.recv(Vec::with_capacity(16)).await;
                    first.notify(1);
                    let _ = socket.recv(Vec::with_capacity(16)).await;
                }
            });
            let listener = first.listen();
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            sender.send_to(b"one", addr).unwrap();
            listener.await;
            drop(reader);
            closes_then_uncounts(&fds, socket, hold, "the closing fd was never closed").await;
            drop(others);
            assert_eq!(fds.held.get(), 0);
        });
    }

    #[test]
    fn upstream_sockets_are_connected_or_dual_stack() {
        let backend: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let s = open_upstream(false, Some(backend)).unwrap();
        assert_eq!(s.peer_addr().unwrap(), backend);
        assert_ne!(
            s.local_addr().unwrap().port(),
            0,
            "connected: a port is taken"
        );
        let s = open_upstream(true, None).unwrap();
        assert!(s.local_addr().unwrap().is_ipv6());
        assert!(s.peer_addr().is_err());
        // Unconnected: no port until the first send, which takes one.
        assert_eq!(s.local_addr().unwrap().port(), 0);
        let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.send_to(b"x", echo.local_addr().unwrap()).unwrap();
        let mut buf = [0; 4];
        let (_, from) = echo.recv_from(&mut buf).unwrap();
        assert_ne!(from.port(), 0);
        assert_eq!(s.local_addr().unwrap().port(), from.port());
    }
}
