//! UDP services on one worker: the listening socket, flows, upstream sockets and replies.
//!
//! Owns: for each UDP service of a worker, its `SO_REUSEPORT` socket (the kernel hashes each
//! client address to one worker's socket, so a flow lives on one worker), the worker's
//! [`FlowTable`] of that service, one upstream socket per flow and the task reading replies from
//! it, the idle-expiry timer, the per-datagram counters and the sampling of the socket's kernel
//! drops. Does not own backend choice (the
//! service's [`crate::balancer::Selector`], client IP as key), the table's rules (pure logic in
//! [`crate::balancer::flowtable`]) or when to stop ([`crate::control::Shutdown`]).
//!
//! This file is the client side (the service's socket, the flow table, the datagrams going up,
//! choosing a backend); `receive` reads the service's socket; `replies` reads each link's
//! upstream socket; `multishot` is the multishot receive both use; `flow` is a flow's state and
//! life (its link, how it ends, its access-log line); `upstream` is the backend side (what a
//! reply does, upstream sockets and their fds).
//!
//! # Flows
//!
//! A flow is (service, client address). Its first datagram picks a backend and opens an upstream
//! socket *connected* to it (an ephemeral port of its own, so replies read from it belong to that
//! client alone); client datagrams go up on it, and datagrams read from it go back to the client
//! from the service's socket, one datagram for one datagram, boundaries kept (up to 65,507 bytes
//! over IPv4, 65,527 over IPv6). A flow ends when:
//! - it moved no datagram either way for `udp_idle_timeout` (a timer task sleeps until the least
//!   recently used flow's deadline);
//! - the table is full and a new client arrives: the least recently used flow is evicted and
//!   counted. Each worker's table holds its share of `udp_max_flows` (the shares add up to
//!   `udp_max_flows`, at least one per worker), so a service never tracks more than
//!   `max(udp_max_flows, workers)` flows, whatever the number of source addresses;
//! - `udp_replies = n` is set and every client datagram got its `n` replies;
//! - the drain begins (SIGTERM): UDP sockets are closed at once and every flow is dropped, since
//!   a datagram protocol has nothing in flight to finish; TCP connections keep draining.
//!
//! Ending a flow cancels its reader task and closes its upstream socket. The fd is not closed
//! at once: the reader's pending io_uring receive (one-shot or multishot) holds it until the
//! kernel confirms the cancellation, one io_uring round trip later. Each worker counts a service's upstream fds
//! from opening to the actual close, and opens a new upstream socket only while the count is
//! below its share of `udp_max_flows` plus [`CLOSING_SLACK`](upstream::CLOSING_SLACK) (8) fds
//! still closing. So a service holds at most `max(udp_max_flows, workers) + 8 × workers`
//! upstream fds: one per tracked flow, and up to 8 per worker of ended flows not closed yet.
//! When a worker is at its count (more than 8 new clients within one round trip, with a full
//! table), its receive loop waits for a close before opening the next flow's socket: datagrams
//! arriving meanwhile, of any flow, wait in the service socket's buffer (the kernel drops them
//! if it fills, as for any UDP socket read too slowly), while the reader tasks keep sending the
//! replies of established flows.
//!
//! # Backend failures
//!
//! A backend whose port is closed answers with ICMP port unreachable; the connected upstream
//! socket then reports `ECONNREFUSED` (to its pending receive or to the next send). That counts
//! as a failure of the backend (`connect_failures`) for that flow: the flow drops its upstream
//! socket, remembers the backend, and its next client datagram goes to the best candidate it has
//! not failed on, on a new upstream socket (the flow follows it). The datagram that was refused is
//! lost, as on any UDP path; the client's retry reaches the new backend. Once every ready backend
//! failed a flow, it forgets its failures and starts over.
//!
//! # `udp_mode = "per_packet"`
//!
//! Every datagram picks a backend on its own. The flow (per client address) then holds one
//! *unconnected* upstream socket, and each datagram is sent to its backend with `sendto`: replies
//! from any backend arrive on that socket and go back to the flow's client. This keeps the bound
//! of one upstream socket per flow however many backends a client's datagrams reach, with no per-
//! datagram state. Replies whose source is not one of the service's backends are dropped (an
//! unconnected socket accepts datagrams from anyone), and so may be an empty reply: when a
//! one-shot pool receive takes it (see "Receiving replies"), its source is not reported; the
//! multishot receive reports it. An unconnected socket gets no ICMP errors, so per-packet mode
//! does not see refused backends; health checks will. Per-packet datagrams count in no backend's
//! active count, so `least_conn` and `power_of_two` see no UDP load there.
//!
//! # I/O and buffers
//!
//! io_uring wakes each task. Each link's reader waits on a receive of its upstream socket into
//! the worker's io_uring buffer pool (a provided buffer ring of [`REPLY_BUFFERS`] buffers of
//! [`MAX_DATAGRAM`] bytes, Linux 5.19+): the kernel takes a buffer only when a reply arrives, so
//! thousands of flows waiting for replies hold no buffer each, and the pool bounds datagram
//! memory per worker. When the pool is empty a reader waits for a buffer to come back; the
//! reply stays queued in its socket.
//!
//! ## Receiving replies
//!
//! A link's reader (`replies`) receives its first two replies with one-shot io_uring receives
//! into the pool, one request each. At its third wait it arms one multishot `recvmsg` into the
//! pool (`multishot`, the same receive as the service socket's): from then on each reply costs
//! one completion and no request, for the rest of the link's life. Not from the start, because
//! a multishot receive costs a request to arm and another to cancel when the flow ends, where
//! the one-shot way costs one per reply and nothing at the end once the flow's replies are all
//! in: a flow of one request and one or two replies (a DNS query, `udp_replies = 1`) would make
//! two requests where one serves it. A `recvmsg` even on a connected socket, not a plain multishot `recv`:
//! an empty reply would end a multishot `recv` (a completion of 0 bytes reads as the end of the
//! stream), while a `recvmsg` completion always carries its header; and per-packet mode needs
//! each reply's source.
//!
//! Each reply is handled as the one-shot way handles it (sent on at once, or with an io_uring
//! send when the service socket's buffer is full; counted; the flow ended once its replies are
//! all in), and its buffer goes back to the pool at once. The multishot receive ends when the
//! pool has no free buffer as a reply arrives (the reply stays queued on the socket), when the
//! kernel ends it, or when it fails: the reader then goes back to one-shot receives, which wait
//! for a buffer when the pool is dry, for 20 ms (a second after an error), then arms a new one
//! (at once when it merely ended after a reply). Errors that say the backend is not there
//! (ICMP refused or unreachable) end the link on either way. So a dry pool never stops a socket
//! from being read (readers wait for a buffer as on the one-shot way), and nothing is lost that
//! the one-shot way would not lose: replies that found no buffer wait in their socket, and a
//! flow's end drops what its socket held either way. One difference: while a reply waits for
//! room in the service socket (its buffer full, which every flow of the service waits on alike),
//! the link's multishot receive goes on taking its replies into pool buffers, where the one-shot
//! way leaves them in the socket; they go out as soon as there is room, but until then they hold
//! buffers that other readers may be waiting for.
//!
//! ## Receiving client datagrams
//!
//! The service's socket is read by one multishot `recvmsg` into the same pool (`receive`): armed
//! once, it completes once per datagram with the datagram, its source and a header in a pool
//! buffer, so a client datagram costs one completion and no system call to receive it (no
//! readiness poll, no receive that finds the queue empty). Each datagram is forwarded from its
//! pool buffer, which goes back to the pool at once (or after the io_uring send that a full
//! socket buffer calls for). Buffers are sized for the largest payload plus that header, so no
//! datagram is truncated.
//!
//! The multishot receive ends when the pool has no free buffer as a datagram arrives (a burst
//! larger than the pool, or buffers held by replies waiting to be sent): the kernel leaves that
//! datagram queued on the socket. It can also end by itself, or the kernel can refuse it. The loop
//! then reads the socket the fallback way: an io_uring `recvfrom` into the loop's own buffer, then
//! non-blocking receives of what is already queued (see below), for 20 ms after the pool ran dry (a
//! second after an error), then arms a new multishot receive (at once when it merely ended after a
//! datagram). So a dry pool never stops the service's socket from being read, a burst holds pool
//! buffers, which replies of other flows also need, only while the datagrams already taken are
//! being forwarded, and nothing is lost that the fallback way alone would not lose: what the pool
//! could not take stays in the socket's buffer, whose overflow the kernel counts as drops. Both
//! ways hand each datagram to the one [`UdpService::forward_up`].
//!
//! ## Non-blocking calls
//!
//! After each wake-up of the fallback receive, and of a reader on one-shot receives whose replies
//! queue up (while they come one at a time, a reader only probes every few wake-ups, so request
//! and response costs no receive that finds nothing), up to [`DRAIN_BATCH`] datagrams already queued on that socket are
//! taken with non-blocking `recvfrom` calls, and every datagram is first sent with a non-blocking
//! `send`/`sendto`, which succeeds whenever the socket buffer has room (a UDP send never waits for
//! its peer); only a full socket buffer sends through io_uring and waits. A burst thus costs one
//! trip round the event loop instead of two per datagram (the 100,000-datagram test runs about 3.5
//! times faster than with io_uring alone). This is the readiness-plus-syscall pattern the design
//! names for splice; io_uring still does all the waiting.
//!
//! Nothing is allocated per datagram by this module: the fallback receive reuses one 64 KiB buffer,
//! non-blocking reply receives use one 64 KiB scratch buffer per service (never held across an
//! await; only a reply that must wait for a full socket buffer is copied out). compio itself
//! allocates a small record per submitted operation, as on the TCP path. Counters are process-wide
//! atomics updated per datagram; what the kernel dropped at a service's socket (its receive buffer
//! full) is read from the socket once a second (`drops_loop`).

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::buf::IoBuf;
use compio::net::UdpSocket;
use event_listener::Event;
use futures_util::future::{Either, select};

use crate::balancer::flowtable::FlowTable;
use crate::config::UdpMode;
use crate::control::log_limit::Reason;
use crate::control::{ServiceId, ServiceState};

use super::worker::{LoopGuard, Retire, Worker};
use flow::{End, Link, Target, Upstream};
use upstream::{UpstreamFds, is_backend_failure, send_now};

mod flow;
mod multishot;
mod receive;
mod replies;
mod upstream;

/// The largest UDP payload: 65,527 bytes over IPv6 (65,507 over IPv4).
const MAX_PAYLOAD: usize = 65_527;

/// What a multishot receive writes into its buffer before each payload: an
/// `io_uring_recvmsg_out` header (four `u32`) and room for the source address (a
/// `sockaddr_storage`).
const MULTISHOT_HEADER: usize = 4 * 4 + std::mem::size_of::<libc::sockaddr_storage>();

/// Size of every datagram buffer, those of the worker's buffer pool included: the largest UDP
/// payload and the header a multishot receive puts before it, so no datagram is ever truncated.
pub(super) const MAX_DATAGRAM: usize = MAX_PAYLOAD + MULTISHOT_HEADER;

/// Buffers in each worker's io_uring buffer pool, for replies and for client datagrams of the
/// multishot receive. A buffer is held only from the moment a datagram arrives until it has been
/// sent on, so 128 cover 128 datagrams arriving in one turn of the event loop; memory is bounded
/// at 128 × 64 KiB = 8 MiB per worker.
pub(super) const REPLY_BUFFERS: u16 = 128;

/// Longest wait of a reader for a freed reply buffer before it tries again anyway (a buffer can
/// come back without a notification, e.g. when another reader's task is cancelled).
const BUFFER_RETRY: Duration = Duration::from_millis(5);

/// Pause after a failed receive on a service's socket, so a persistent error cannot spin.
const RECV_ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Datagrams taken with non-blocking receives after each io_uring wake-up of a socket (see
/// `receive_loop` and `replies::read_replies`): enough to empty a busy socket's queue in one
/// trip round the event loop, few enough (at most 2 MiB of 64 KiB datagrams) that one socket
/// does not keep the worker from its others for long.
pub(super) const DRAIN_BATCH: usize = 32;

/// How often each worker reads the drop count of its UDP service sockets.
const DROPS_SAMPLE: Duration = Duration::from_secs(1);

/// Sends of one client datagram: the first, and one more after the backend's refusal of an
/// earlier datagram surfaced on this send and the flow moved to another backend.
const SEND_ATTEMPTS: usize = 2;

/// A UDP service's socket for one worker and its share of the flow bound.
pub(super) struct UdpSetup {
    /// The service's identity.
    pub service: ServiceId,
    /// This worker's `SO_REUSEPORT` socket of the service.
    pub socket: std::net::UdpSocket,
    /// This worker's share of `udp_max_flows`.
    pub max_flows: usize,
}

/// Starts the receive loop, the expiry timer and the drop sampler of a UDP service on this
/// worker. All end once the drain begins or a reload retires the service; by then every flow
/// of the service is dropped.
pub(super) fn spawn(worker: &Rc<Worker>, setup: UdpSetup, retire: Rc<Retire>) -> io::Result<()> {
    // Register the reply buffer ring now, so a kernel without it stops the start with a reason.
    compio::runtime::Runtime::with_current(|rt| rt.buffer_pool()).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot set up the io_uring buffer ring for UDP replies (Linux 5.19+): {e}"),
        )
    })?;
    let Some(state) = worker.snapshot.load().service_by_id(setup.service).cloned() else {
        return Ok(());
    };
    let udp = &state.config.udp;
    let backends_v6 = state.backends.iter().any(|b| b.address().is_ipv6());
    let svc = Rc::new(UdpService {
        worker: worker.clone(),
        service: setup.service,
        name: state.config.name.clone(),
        socket: UdpSocket::from_std(setup.socket)?,
        flows: RefCell::new(FlowTable::new(setup.max_flows, udp.idle_timeout)),
        mode: udp.mode,
        replies: udp.replies,
        backends_v6,
        next_link: Cell::new(0),
        fds: UpstreamFds::new(setup.max_flows),
        warned_full: Cell::new(false),
        buffer_freed: worker.udp_buffer_freed.clone(),
        scratch: RefCell::new(Vec::with_capacity(MAX_DATAGRAM)),
        retire,
        last: RefCell::new(state.clone()),
    });
    let guard = worker.loop_started();
    compio::runtime::spawn(receive::receive_loop(svc.clone(), guard)).detach();
    let guard = worker.loop_started();
    compio::runtime::spawn(expire_loop(svc.clone(), guard)).detach();
    let guard = worker.loop_started();
    compio::runtime::spawn(drops_loop(svc, guard)).detach();
    Ok(())
}

/// One UDP service on one worker (one thread: `Rc` and `RefCell`).
struct UdpService {
    worker: Rc<Worker>,
    service: ServiceId,
    /// The service's name, for logs.
    name: String,
    /// Ends this service's loops on this worker when a reload removes it.
    retire: Rc<Retire>,
    /// The service's state last seen in a snapshot.
    last: RefCell<Arc<ServiceState>>,
    /// The service's socket: clients' datagrams arrive on it and replies leave from it.
    socket: UdpSocket,
    flows: RefCell<FlowTable<Upstream>>,
    mode: UdpMode,
    replies: Option<u32>,
    /// Per-packet mode: whether the shared upstream socket must reach IPv6 backends.
    backends_v6: bool,
    /// Identifies links, so a late event of an old upstream socket never acts on a new one.
    next_link: Cell<u64>,
    /// Upstream fds held, closing ones included: at most the table's capacity plus
    /// [`upstream::CLOSING_SLACK`].
    fds: Rc<UpstreamFds>,
    warned_full: Cell<bool>,
    /// Notified whenever a reply buffer goes back to the worker's pool.
    buffer_freed: Rc<Event>,
    /// Replies taken with non-blocking receives land here; never borrowed across an await.
    scratch: RefCell<Vec<u8>>,
}

/// Ends flows that have been idle for the idle timeout, sleeping until the next one is due.
async fn expire_loop(svc: Rc<UdpService>, _running: LoopGuard) {
    let mut drain = pin!(svc.worker.retiring(&svc.retire));
    loop {
        let wait = {
            let flows = svc.flows.borrow();
            // With no flow, any flow opened from now on is due an idle timeout from now at least.
            flows.next_expiry().map_or(flows.idle_timeout(), |due| {
                due.saturating_duration_since(Instant::now())
            })
        };
        if !wait.is_zero() {
            let sleep = pin!(compio::time::sleep(wait));
            if let Either::Right(_) = select(sleep, drain.as_mut()).await {
                return;
            }
        }
        let now = Instant::now();
        loop {
            let expired = svc.flows.borrow_mut().pop_expired(now);
            let Some(mut flow) = expired else { break };
            flow.value.state.counters.udp_flows_expired.inc();
            svc.log_end(&flow, End::IdleTimeout);
            flow.value.close_link();
        }
    }
}

/// Adds what the kernel dropped at the service's socket (receive buffer full) to the service's
/// `udp_kernel_drops`, every [`DROPS_SAMPLE`] and once more when the service's loops end on
/// this worker: one `getsockopt` per socket and second, never per datagram.
async fn drops_loop(svc: Rc<UdpService>, _running: LoopGuard) {
    let mut drain = pin!(svc.worker.retiring(&svc.retire));
    // The socket's count starts at zero when it is opened.
    let mut seen: u32 = 0;
    loop {
        let sleep = pin!(compio::time::sleep(DROPS_SAMPLE));
        let ended = matches!(select(sleep, drain.as_mut()).await, Either::Right(_));
        match super::sys::kernel_drops(&svc.socket) {
            Ok(total) => {
                let new = total.wrapping_sub(seen);
                seen = total;
                if new > 0 {
                    svc.current_state()
                        .counters
                        .udp_kernel_drops
                        .add(u64::from(new));
                }
            }
            Err(e) => {
                tracing::debug!(service = %svc.name, error = %e,
                    "cannot read the udp socket's drop count: kernel drops not counted");
                return;
            }
        }
        if ended {
            return;
        }
    }
}

impl UdpService {
    /// Sends one client datagram (all of `buf`) on to its flow's backend; returns the buffer.
    /// The one handling of a client datagram, whichever way it was received.
    async fn forward_up<B: IoBuf>(
        self: &Rc<Self>,
        mut buf: B,
        client: SocketAddr,
        candidates: &mut Vec<usize>,
    ) -> B {
        let len = buf.buf_len();
        for attempt in 0..SEND_ATTEMPTS {
            if self.fds.at_limit() {
                self.room_for_link(client).await;
            }
            let Some(target) = self.target(client, len, attempt == 0, candidates) else {
                self.current_state().counters.udp_datagrams_dropped.inc();
                return buf;
            };
            let sent = match send_now(&target.socket, buf.as_init(), target.dest) {
                Ok(Some(n)) => Ok(n),
                Err(e) => Err(e),
                Ok(None) => {
                    let BufResult(sent, b) = match target.dest {
                        None => target.socket.send(buf).await,
                        Some(dest) => target.socket.send_to(buf, dest).await,
                    };
                    buf = b;
                    sent
                }
            };
            match sent {
                Ok(_) => {
                    self.count_up(client, target.backend, len);
                    return buf;
                }
                Err(e) if self.mode == UdpMode::Flow && is_backend_failure(&e) => {
                    // An earlier datagram's ICMP error surfaced on this send: move and retry.
                    self.link_failed(client, target.link, &e, false);
                }
                Err(e) => {
                    if let Some(suppressed) = Reason::UdpSend.admit() {
                        tracing::debug!(service = %self.name, %client, error = %e, suppressed,
                            "udp send to backend failed");
                    }
                    break;
                }
            }
        }
        self.current_state().counters.udp_datagrams_dropped.inc();
        buf
    }

    /// The flow's destination for a datagram of `len` bytes from `client`, opening the flow or a
    /// new upstream socket when needed. `first` records the datagram in the table (once per
    /// datagram, not per attempt). `None`: the datagram is dropped.
    fn target(
        self: &Rc<Self>,
        client: SocketAddr,
        len: usize,
        first: bool,
        candidates: &mut Vec<usize>,
    ) -> Option<Target> {
        let now = Instant::now();
        let mut flows = self.flows.borrow_mut();
        let existing = if first {
            flows.record_up(&client, len, now)
        } else {
            flows.get_mut(&client)
        };
        if let Some(flow) = existing {
            let up = &mut flow.value;
            if up.link.is_none() {
                let link = self.open_link(&up.state, &mut up.failed, client, candidates)?;
                up.link = Some(link);
            }
            let link = up.link.as_ref()?;
            return self.aim(&up.state, link, client, candidates);
        }
        if !first {
            return None;
        }
        // A new flow: its client must pass the source ACL (a refused datagram opens nothing);
        // then evict one first if the table is full (`room_for_link` may have done it
        // already), so the table stays within its bound.
        drop(flows);
        let state = self.current_state();
        if !super::admission::admit_datagram(&state, client) {
            return None;
        }
        self.make_room();
        let link = self.open_link(&state, &mut Vec::new(), client, candidates)?;
        let target = self.aim(&state, &link, client, candidates);
        let mut up = Upstream::new(state);
        up.link = Some(link);
        let displaced = self.flows.borrow_mut().insert(client, len, up, now);
        drop(displaced);
        target
    }

    /// The destination of one datagram over `link`.
    fn aim(
        &self,
        state: &ServiceState,
        link: &Link,
        client: SocketAddr,
        candidates: &mut Vec<usize>,
    ) -> Option<Target> {
        let (dest, backend) = match self.mode {
            UdpMode::Flow => (None, link.backend),
            UdpMode::PerPacket => {
                let b = self.pick(state, client.ip(), &mut Vec::new(), candidates)?;
                let address = state.backends[b].address();
                (Some(self.per_packet_dest(address)), Some(b))
            }
        };
        Some(Target {
            link: link.id,
            socket: link.socket.clone(),
            dest,
            backend,
        })
    }

    /// Picks a backend for `client`, avoiding those in `failed` while others are ready.
    fn pick(
        &self,
        state: &ServiceState,
        ip: IpAddr,
        failed: &mut Vec<usize>,
        candidates: &mut Vec<usize>,
    ) -> Option<usize> {
        // Through the service's serving group: health, backups, slow start and persistence
        // apply to UDP flows as to TCP connections.
        state.candidates(
            ip,
            &mut self.worker.rng.borrow_mut(),
            failed.len() + 1,
            std::time::Instant::now(),
            candidates,
        );
        if let Some(&b) = candidates.iter().find(|b| !failed.contains(b)) {
            return Some(b);
        }
        // Every ready backend failed this flow: forget and start over.
        failed.clear();
        match candidates.first() {
            Some(&b) => Some(b),
            None => {
                state.counters.no_backend.inc();
                if let Some(suppressed) = Reason::UdpNoBackend.admit() {
                    tracing::debug!(service = %state.config.name, %ip, suppressed,
                        "udp: no backend is ready");
                }
                None
            }
        }
    }

    /// Per-packet mode: the address to send to from the shared (maybe dual-stack) socket.
    fn per_packet_dest(&self, backend: SocketAddr) -> SocketAddr {
        match backend {
            SocketAddr::V4(v4) if self.backends_v6 => {
                SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0).into()
            }
            other => other,
        }
    }

    /// Counts a datagram sent up, against the flow's service state (no `Arc` clone per datagram:
    /// its reference count is shared by every worker).
    fn count_up(&self, client: SocketAddr, backend: Option<usize>, len: usize) {
        let count = |state: &ServiceState| {
            state.counters.udp_datagrams_up.inc();
            if let Some(b) = backend.and_then(|b| state.backends.get(b)) {
                b.counters.bytes_to_backend.add(len as u64);
            }
        };
        match self.flows.borrow().get(&client) {
            Some(f) => count(&f.value.state),
            None => count(&self.current_state()),
        }
    }

    /// The service's state in the current snapshot (a reload may have changed its backends).
    /// A removed service keeps serving its last state until its loops are retired.
    fn current_state(&self) -> Arc<ServiceState> {
        let snapshot = self.worker.snapshot.load();
        match snapshot.service_by_id(self.service) {
            Some(state) => {
                if !Arc::ptr_eq(state, &self.last.borrow()) {
                    *self.last.borrow_mut() = state.clone();
                }
                state.clone()
            }
            None => self.last.borrow().clone(),
        }
    }

    /// Waits until a reply buffer may be free again (see [`wait_for_buffer`]).
    async fn wait_for_buffer(&self) {
        wait_for_buffer(&self.buffer_freed).await;
    }
}

/// Waits until a pool buffer may be free again: `freed` is notified when one goes back.
///
/// Not `control::wait::wait_until`: whether the pool has a buffer cannot be checked without
/// taking it (only a receive does), and a buffer can come back without a notification, so this
/// waits for one notification or `BUFFER_RETRY`, and the caller's receive is the check.
pub(super) async fn wait_for_buffer(freed: &Event) {
    let listener = freed.listen();
    let timeout = pin!(compio::time::sleep(BUFFER_RETRY));
    let _ = select(listener, timeout).await;
}
