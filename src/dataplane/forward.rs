//! One proxied TCP connection, from accept to close.
//!
//! Owns: the service slot, connection tracking for the connection's life, choosing and
//! connecting a backend (with retries over distinct candidates), moving bytes both ways through
//! bounded buffers, half-close and reset propagation, the idle timeout, and the access-log line.
//! It reports connect results for passive health detection and session persistence, and ends a
//! session when its backend's close event fires (marked down with `on_backend_down =
//! "shutdown"`, or disabled).
//!
//! Guarantees: every byte read from one side is written to the other before that direction is
//! shut down; a direction holds at most one buffer of `buffer_size` bytes and reads nothing more
//! until that buffer is written out, so a slow reader stalls its writer; when the function
//! returns, the service slot, the backend's active count and the tracking entry are released
//! (drop guards, also on cancellation).
//!
//! # Buffers
//!
//! A direction holds a buffer only while data moves, as HAProxy does. It waits for its source
//! with an io_uring poll for readability (`POLL_ADD`), which needs no buffer, then takes a buffer
//! from the worker's [`SpareBuffers`], reads with a non-blocking `recv(2)` and writes the bytes
//! out through io_uring (a full buffer is first offered to a non-blocking `send(2)`, see
//! [`send_now`]). A read that filled the buffer suggests more is queued: the direction keeps the
//! buffer and reads again at once (up to [`READ_STREAK`] times before it waits on io_uring
//! again, so other connections get their turn); any other read, or one that would block, gives
//! the buffer back before the next wait. So an idle connection holds
//! no forwarding buffer, a busy one keeps its buffer for as long as reads fill it, and the memory
//! bound is unchanged: at most 2 × `buffer_size` per connection while data is in flight, plus the
//! spares each worker keeps ([`SPARE_BUFFERS`] per buffer size).
//!
//! Why not receive into io_uring provided buffers (the kernel picks a buffer only when data
//! arrives, as the UDP replies do): compio 0.19 registers one buffer ring per runtime (group 1,
//! its size fixed when the runtime is built, here 64 KiB datagram buffers for UDP), and a ring is
//! a fixed set shared by every connection of the worker: writes stalled by slow readers would
//! hold its buffers and stall every other connection's reads (and UDP's replies). Spare buffers
//! come from the heap when none is left, so one connection never waits on another's.
//!
//! # Splice
//!
//! A direction whose read filled its buffer is a bulk transfer. When the service splices (the
//! default) and the worker has a pipe to spare, the direction goes on through [`pump_spliced`]:
//! socket to pipe to socket with splice(2), no copy through ringlb's memory, up to 64 KiB per
//! call (see `splice`). Small messages stay on the buffer path: a splice costs two calls where a
//! copy costs one recv.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Instant;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::driver::ToSharedFd;
use compio::driver::op::{Interest, PollOnce};
use compio::io::AsyncWriteExt;
use compio::net::TcpStream;

use crate::balancer::conntrack::{Conn, ConnId, ConnState};
use crate::control::{BackendState, ConnectFailure, ServiceState};

use super::splice::Pipe;
use super::worker::{Worker, is_resource_exhaustion};

/// How a proxied connection ended; the access log's `end` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    /// Both sides closed in order.
    Closed,
    /// The client reset (or failed) first; the backend was reset.
    ClientReset,
    /// The backend reset (or failed) first; the client was reset.
    BackendReset,
    /// No bytes moved either way for `idle_timeout`.
    IdleTimeout,
    /// The drain deadline passed.
    Shutdown,
    /// The backend was marked down (`on_backend_down = "shutdown"`) or disabled; both sides
    /// were reset.
    BackendDown,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Closed => "closed",
            End::ClientReset => "client_reset",
            End::BackendReset => "backend_reset",
            End::IdleTimeout => "idle_timeout",
            End::Shutdown => "shutdown",
            End::BackendDown => "backend_down",
        }
    }
}

/// The two directions of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    /// Client to backend.
    Up,
    /// Backend to client.
    Down,
}

/// How one direction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DirEnd {
    /// The reader sent EOF; every byte was written and the writer's side was shut down.
    Eof,
    /// Reading from the source failed (reset or error).
    ReadFailed,
    /// Writing to the destination failed (reset or error).
    WriteFailed,
}

/// Returns the service slot when dropped.
struct SlotGuard<'a>(&'a ServiceState);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.0.release_slot();
    }
}

/// Removes the tracking entry and wakes the drain when dropped.
struct TrackGuard<'a> {
    worker: &'a Worker,
    id: ConnId,
}

impl Drop for TrackGuard<'_> {
    fn drop(&mut self) {
        let mut table = self.worker.table.borrow_mut();
        table.remove(self.id);
        self.worker
            .stats
            .live
            .store(table.len() as u64, Ordering::Relaxed);
        drop(table);
        self.worker.conn_closed.notify(usize::MAX);
    }
}

/// Counts one connection open (or opening) to a backend while alive.
struct ActiveGuard<'a>(&'a BackendState);

impl<'a> ActiveGuard<'a> {
    fn new(backend: &'a BackendState) -> Self {
        backend.counters.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(backend)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one accepted client connection to its end.
pub(super) async fn serve(
    worker: Rc<Worker>,
    state: Arc<ServiceState>,
    client: TcpStream,
    peer: SocketAddr,
) {
    // The accept loop paused at the limit, but another worker may have taken the last slot in
    // the meantime: queue the connection until a slot frees rather than accept-then-close.
    while !state.try_acquire_slot() {
        let slot = pin!(state.wait_for_slot());
        let abort = pin!(worker.aborting());
        if let futures_util::future::Either::Right(_) =
            futures_util::future::select(slot, abort).await
        {
            return;
        }
    }
    let _slot = SlotGuard(&state);
    state.counters.accepted.fetch_add(1, Ordering::Relaxed);

    let started = Instant::now();
    let inserted = {
        let mut table = worker.table.borrow_mut();
        let inserted = table.insert(Conn::accepted(state.id, peer, started));
        worker
            .stats
            .live
            .store(table.len() as u64, Ordering::Relaxed);
        inserted
    };
    let id = match inserted {
        Ok(id) => id,
        Err(full) => {
            tracing::warn!(service = %state.config.name, client = %peer, "{full}: connection closed");
            return;
        }
    };
    let _track = TrackGuard {
        worker: &worker,
        id,
    };

    let (index, backend, _active, epoch) = match connect_backend(&worker, &state, peer).await {
        Ok(connected) => connected,
        Err(NoBackend::NoneReady) => {
            // Logged once per transition by the control side ("service down"), not here.
            state.counters.no_backend.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(service = %state.config.name, client = %peer,
                "no backend is ready: client connection closed");
            return;
        }
        Err(NoBackend::AllFailed) => {
            state.counters.no_backend.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(service = %state.config.name, client = %peer,
                "no backend could be reached: client connection closed");
            return;
        }
    };
    let backend_state = &state.backends[index];
    worker
        .table
        .borrow_mut()
        .established(id, backend_state.address(), Instant::now());
    backend_state
        .counters
        .connections
        .fetch_add(1, Ordering::Relaxed);

    let end = proxy(&worker, &state, index, epoch, id, &client, &backend).await;

    match end {
        End::ClientReset => reset_on_close(&backend),
        End::BackendReset => reset_on_close(&client),
        End::BackendDown => {
            reset_on_close(&backend);
            reset_on_close(&client);
            backend_state
                .counters
                .sessions_closed
                .fetch_add(1, Ordering::Relaxed);
        }
        End::Closed | End::IdleTimeout | End::Shutdown => {}
    }
    drop(backend);
    drop(client);

    let (up, down) = worker
        .table
        .borrow()
        .get(id)
        .map_or((0, 0), |c| (c.bytes_up, c.bytes_down));
    let counters = &backend_state.counters;
    counters.bytes_to_backend.fetch_add(up, Ordering::Relaxed);
    counters.bytes_to_client.fetch_add(down, Ordering::Relaxed);
    let duration = started.elapsed();
    counters
        .session_duration
        .record(worker.index, duration.as_millis() as u64);
    if state.config.access_log {
        tracing::info!(
            target: "ringlb::access",
            service = %state.config.name,
            client = %peer,
            backend = %backend_state.address(),
            bytes_up = up,
            bytes_down = down,
            duration_ms = duration.as_millis() as u64,
            end = end.as_str(),
        );
    }
}

/// Why no backend connection was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NoBackend {
    /// No backend was ready (none up, or all at their `max_connections`).
    NoneReady,
    /// Every candidate's connect failed or timed out.
    AllFailed,
}

/// Tries the service's distinct candidates in order, each within `connect_timeout`. On success
/// returns the backend's index, the stream, its active-count guard and the backend's close
/// epoch from before the connect (so a mark-down during the connect still closes the session).
async fn connect_backend<'a>(
    worker: &Worker,
    state: &'a ServiceState,
    peer: SocketAddr,
) -> Result<(usize, TcpStream, ActiveGuard<'a>, u64), NoBackend> {
    let config = &state.config;
    let attempts = config.retries as usize + 1;
    // One spare: slow start may ask the selector for one more than it returns.
    let mut candidates = Vec::with_capacity(attempts + 1);
    state.candidates(
        peer.ip(),
        &mut worker.rng.borrow_mut(),
        attempts,
        Instant::now(),
        &mut candidates,
    );
    if candidates.is_empty() {
        return Err(NoBackend::NoneReady);
    }
    for (attempt, index) in candidates.into_iter().enumerate() {
        if attempt > 0 {
            state.counters.retries.fetch_add(1, Ordering::Relaxed);
        }
        let backend = &state.backends[index];
        let active = ActiveGuard::new(backend);
        let epoch = backend.live.close_epoch();
        let address = backend.address();
        let connecting = Instant::now();
        let (failure, kind) = match compio::time::timeout(
            config.connect_timeout,
            TcpStream::connect(address),
        )
        .await
        {
            Ok(Ok(stream)) => {
                backend
                    .counters
                    .connect_latency
                    .record(worker.index, connecting.elapsed().as_micros() as u64);
                // Latency over throughput for request/response protocols, as on the client side.
                if let Err(e) = stream.set_nodelay(true) {
                    tracing::debug!(%address, error = %e, "cannot set TCP_NODELAY");
                }
                state.connect_succeeded(index);
                state.stick(peer.ip(), index, Instant::now());
                return Ok((index, stream, active, epoch));
            }
            Ok(Err(e)) if is_local_failure(&e) => {
                // Out of fds, local ports or memory: the backend is not at fault, so this must
                // never count against its health.
                state
                    .counters
                    .local_connect_failures
                    .fetch_add(1, Ordering::Relaxed);
                tracing::warn!(service = %config.name, backend = %address, error = %e,
                    "cannot open a backend connection: local resources exhausted");
                continue;
            }
            Ok(Err(e)) => (e.to_string(), ConnectFailure::of(&e)),
            Err(_) => (
                format!("no answer within {:?}", config.connect_timeout),
                ConnectFailure::Timeout,
            ),
        };
        backend.counters.connect_failed(kind);
        tracing::debug!(service = %config.name, backend = %address, reason = %failure, "connect failed");
        // Passive health detection: enough failures in a row mark the backend down at once.
        state.connect_failed(index, &failure);
    }
    Err(NoBackend::AllFailed)
}

/// Moves bytes both ways until both directions ended in order, one side failed, the connection
/// went idle, the drain deadline passed, or the backend's close event fired after `epoch`.
async fn proxy(
    worker: &Worker,
    state: &ServiceState,
    index: usize,
    epoch: u64,
    id: ConnId,
    client: &TcpStream,
    backend: &TcpStream,
) -> End {
    let mut up = pin!(pump(worker, state, id, Dir::Up, client, backend));
    let mut down = pin!(pump(worker, state, id, Dir::Down, backend, client));
    let mut idle = pin!(idle_timer(worker, id, state.config.idle_timeout));
    let mut abort = pin!(worker.aborting());
    let mut closed = pin!(backend_closed(worker, state, index, epoch));
    let mut up_end = None;
    let mut down_end = None;
    std::future::poll_fn(|cx| {
        if up_end.is_none()
            && let Poll::Ready(e) = up.as_mut().poll(cx)
        {
            up_end = Some(e);
            if e == DirEnd::Eof {
                worker
                    .table
                    .borrow_mut()
                    .set_state(id, ConnState::ClientClosed);
            }
        }
        if down_end.is_none()
            && let Poll::Ready(e) = down.as_mut().poll(cx)
        {
            down_end = Some(e);
            if e == DirEnd::Eof {
                worker
                    .table
                    .borrow_mut()
                    .set_state(id, ConnState::BackendClosed);
            }
        }
        match (up_end, down_end) {
            (Some(DirEnd::ReadFailed), _) | (_, Some(DirEnd::WriteFailed)) => {
                return Poll::Ready(End::ClientReset);
            }
            (Some(DirEnd::WriteFailed), _) | (_, Some(DirEnd::ReadFailed)) => {
                return Poll::Ready(End::BackendReset);
            }
            (Some(DirEnd::Eof), Some(DirEnd::Eof)) => return Poll::Ready(End::Closed),
            _ => {}
        }
        if idle.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::IdleTimeout);
        }
        if abort.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::Shutdown);
        }
        if closed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::BackendDown);
        }
        Poll::Pending
    })
    .await
}

/// Resolves once the sessions to backend `index` started at close `epoch` must close.
async fn backend_closed(worker: &Worker, state: &ServiceState, index: usize, epoch: u64) {
    let live = &state.backends[index].live;
    loop {
        if live.close_epoch() != epoch {
            return;
        }
        // A worker-local event (woken from this thread by `watch_closing`): registering on it
        // never contends with another thread.
        let listener = worker.sessions_closing.listen();
        if live.close_epoch() != epoch {
            return;
        }
        listener.await;
    }
}

/// One per (worker, service): relays the control plane's "sessions must close" to this
/// worker's sessions. The control plane wakes only these watchers (one per worker), never
/// sessions directly; see `control::availability` for why. The signal is shared by the
/// service's states across reloads, so the `state` it starts with serves for its whole life.
pub(super) async fn watch_closing(worker: Rc<Worker>, state: Arc<ServiceState>) {
    let mut seen = state.closing_generation();
    loop {
        seen = state.closing_after(seen).await;
        worker.sessions_closing.notify(usize::MAX);
    }
}

/// Copies one direction through buffers of `buffer_size` bytes until EOF or failure, holding a
/// buffer only while data moves (see the module doc); a bulk transfer goes on through a pipe
/// when the service splices ([`pump_spliced`]).
async fn pump(
    worker: &Worker,
    state: &ServiceState,
    id: ConnId,
    dir: Dir,
    from: &TcpStream,
    to: &TcpStream,
) -> DirEnd {
    let size = state.config.buffer_size;
    let mut writer = to;
    // The buffer kept after a read that filled it; `None` while waiting for data.
    let mut held: Option<Vec<u8>> = None;
    // Reads since this direction last waited on io_uring (see `READ_STREAK`).
    let mut streak = 0;
    loop {
        let mut buf = match held.take() {
            Some(buf) => buf,
            None => {
                streak = 0;
                if readable(from).await.is_err() {
                    return DirEnd::ReadFailed;
                }
                worker.spare_buffers.take(size)
            }
        };
        match recv_now(from, &mut buf) {
            Ok(0) => {
                worker.spare_buffers.give(size, buf);
                return shut_down_write(to);
            }
            Ok(n) => {
                // A full buffer (bulk transfer) is first offered to a non-blocking send(2),
                // which saves an io_uring round trip; what does not fit, and any smaller read
                // (see `send_now`), goes through io_uring, which waits for room. Until it
                // is out, this direction reads nothing more.
                let sent = if n == size {
                    match send_now(to, &buf) {
                        Ok(sent) => sent,
                        Err(e) if is_would_block(&e) => 0,
                        Err(_) => return DirEnd::WriteFailed,
                    }
                } else {
                    0
                };
                if sent < n {
                    streak = 0;
                    let BufResult(written, rest) = writer.write_all(buf.slice(sent..)).await;
                    buf = rest.into_inner();
                    if written.is_err() {
                        return DirEnd::WriteFailed;
                    }
                }
                record(worker, id, dir, n);
                // A read that filled the buffer is a bulk transfer: it goes on zero-copy
                // through a pipe when the service splices and the worker has one to spare.
                if n == size
                    && state.config.splice
                    && let Some(pipe) = worker.pipes.open(from, to)
                {
                    worker.spare_buffers.give(size, buf);
                    return pump_spliced(worker, state, id, dir, from, to, pipe).await;
                }
                streak += 1;
                if n == size && streak < READ_STREAK {
                    // Probably more queued: read again at once, with this buffer.
                    held = Some(buf);
                } else {
                    worker.spare_buffers.give(size, buf);
                }
            }
            // Nothing queued (the source was drained, or the wake-up was spurious): give the
            // buffer back and wait.
            Err(e) if is_would_block(&e) => worker.spare_buffers.give(size, buf),
            Err(_) => return DirEnd::ReadFailed,
        }
    }
}

/// The rest of a bulk direction, through `pipe` (see `splice`): the source's bytes are
/// spliced into the pipe and the pipe written out to the destination before anything more is
/// read, until EOF or failure. Ends as [`pump`] does.
async fn pump_spliced(
    worker: &Worker,
    state: &ServiceState,
    id: ConnId,
    dir: Dir,
    from: &TcpStream,
    to: &TcpStream,
    mut pipe: Pipe<'_>,
) -> DirEnd {
    // Fills since this direction last waited on io_uring (see `READ_STREAK`). The first fill
    // follows a read that filled the buffer, so more is probably queued: no wait before it.
    let mut streak = 0;
    loop {
        match pipe.fill(from) {
            Ok(0) => return shut_down_write(to),
            Ok(n) => {
                while pipe.queued() > 0 {
                    match pipe.drain(to) {
                        // The pipe is not empty, so a splice that moves nothing has failed.
                        Ok(0) => return DirEnd::WriteFailed,
                        Ok(_) => {}
                        Err(e) if is_would_block(&e) => {
                            if writable(to).await.is_err() {
                                return DirEnd::WriteFailed;
                            }
                        }
                        Err(_) => return DirEnd::WriteFailed,
                    }
                }
                record(worker, id, dir, n);
                state
                    .counters
                    .spliced_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                streak += 1;
                // A short fill drained the source; otherwise fill again at once, but let the
                // worker's other connections run every `READ_STREAK` fills.
                if n < SPLICE_FULL || streak >= READ_STREAK {
                    streak = 0;
                    if readable(from).await.is_err() {
                        return DirEnd::ReadFailed;
                    }
                }
            }
            Err(e) if is_would_block(&e) => {
                streak = 0;
                if readable(from).await.is_err() {
                    return DirEnd::ReadFailed;
                }
            }
            Err(_) => return DirEnd::ReadFailed,
        }
    }
}

/// A fill of at least this many bytes suggests more is queued behind it: half a default pipe,
/// as the pipe's 16 slots may fill before its 64 KiB do.
const SPLICE_FULL: usize = 32 * 1024;

/// Counts `n` bytes moved in direction `dir` on the connection's tracking entry.
fn record(worker: &Worker, id: ConnId, dir: Dir, n: usize) {
    let now = Instant::now();
    let mut table = worker.table.borrow_mut();
    match dir {
        Dir::Up => table.record_up(id, n as u64, now),
        Dir::Down => table.record_down(id, n as u64, now),
    }
}

/// Ends a direction at EOF: shuts down writing toward the other side (half-close; the other
/// direction keeps flowing until it ends too). shutdown(2) on a TCP socket never blocks, and
/// io_uring would run its SHUTDOWN opcode on a kernel worker thread (iou-wrk), so the plain
/// syscall is cheaper here.
fn shut_down_write(to: &TcpStream) -> DirEnd {
    match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
        Ok(()) => DirEnd::Eof,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => DirEnd::Eof,
        Err(_) => DirEnd::WriteFailed,
    }
}

/// Reads and sends in a row that one direction makes without waiting on io_uring, when every
/// read fills its buffer and every send goes out at once: the direction then waits for
/// readability once, so a bulk transfer lets the worker's other connections run at least every
/// `READ_STREAK` × `buffer_size` bytes (256 KiB at the default).
const READ_STREAK: u32 = 16;

/// Whether a non-blocking call found nothing to do (or was interrupted): try again later.
fn is_would_block(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// Sends what fits of `data` on `stream` now with a non-blocking `send(2)`; `WouldBlock` when
/// nothing does. No SIGPIPE on a closed peer: the error says it.
///
/// Used for full buffers only: sending small messages this way too cost request/response loads
/// (`ringlb bench rr`, 50 connections, 64 B) 16% of their throughput in interleaved runs
/// (38,600 against 45,900 req/s), while io_uring sends a loop turn's writes together: a send
/// that wakes a peer on this CPU may preempt the worker at once, a batch of sends only once.
fn send_now(stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
    socket2::SockRef::from(stream).send_with_flags(data, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
}

/// Resolves once `stream` has data to read, has reached EOF or has failed (an io_uring
/// `POLL_ADD`; dropping the future cancels it).
async fn readable(stream: &TcpStream) -> io::Result<()> {
    let poll = PollOnce::new(stream.to_shared_fd(), Interest::Readable);
    compio::runtime::submit(poll).await.0.map(drop)
}

/// Resolves once `stream` has room to write, or has failed (an io_uring `POLL_ADD`).
async fn writable(stream: &TcpStream) -> io::Result<()> {
    let poll = PollOnce::new(stream.to_shared_fd(), Interest::Writable);
    compio::runtime::submit(poll).await.0.map(drop)
}

/// Reads what is queued on `stream` into `buf` (cleared first; it has capacity for a read of
/// `capacity()` bytes) with a non-blocking `recv(2)`: `WouldBlock` when nothing is queued.
fn recv_now(stream: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.clear();
    let n = socket2::SockRef::from(stream)
        .recv_with_flags(buf.spare_capacity_mut(), libc::MSG_DONTWAIT)?;
    // SAFETY: recv(2) wrote `n` bytes at the start of the spare capacity it was given (a TCP
    // receive never returns more than the length passed), so after the (zero) length the first
    // `n` bytes are initialized.
    unsafe { buf.set_len(n) };
    Ok(n)
}

/// Forwarding buffers no direction holds right now, kept by each worker for the next read (one
/// thread: `RefCell`). Without them, every burst of data would allocate and free a buffer.
#[derive(Default)]
pub(super) struct SpareBuffers {
    /// (buffer size, spare buffers of exactly that capacity, empty): one entry per distinct
    /// `buffer_size` among the services, so a handful at most.
    sizes: RefCell<Vec<(usize, Vec<Vec<u8>>)>>,
}

/// Spare buffers a worker keeps per buffer size: enough for the writes of a few hundred busy
/// connections in flight at once to find a buffer without the allocator, few enough that the
/// spares stay small next to the live buffers they serve (2 MiB per worker at the 16 KiB
/// default). Buffers given back beyond it are freed.
const SPARE_BUFFERS: usize = 128;

impl SpareBuffers {
    /// A buffer with capacity for `size` bytes: a spare one if there is one, else a new one.
    fn take(&self, size: usize) -> Vec<u8> {
        let mut sizes = self.sizes.borrow_mut();
        sizes
            .iter_mut()
            .find(|(s, _)| *s == size)
            .and_then(|(_, spares)| spares.pop())
            .unwrap_or_else(|| Vec::with_capacity(size))
    }

    /// Keeps `buf`, taken for `size` bytes, for the next [`SpareBuffers::take`] of that size.
    fn give(&self, size: usize, mut buf: Vec<u8>) {
        buf.clear();
        let mut sizes = self.sizes.borrow_mut();
        let spares = match sizes.iter_mut().position(|(s, _)| *s == size) {
            Some(i) => &mut sizes[i].1,
            None => {
                sizes.push((size, Vec::new()));
                &mut sizes.last_mut().expect("just pushed").1
            }
        };
        if spares.len() < SPARE_BUFFERS {
            spares.push(buf);
        }
    }
}

/// Resolves once the connection has moved no byte for `idle`.
async fn idle_timer(worker: &Worker, id: ConnId, idle: std::time::Duration) {
    loop {
        let remaining = worker
            .table
            .borrow()
            .idle_remaining(id, idle, Instant::now());
        match remaining {
            Some(wait) => compio::time::sleep(wait).await,
            None => return,
        }
    }
}

/// Whether a connect failed for a reason local to this host rather than the backend.
fn is_local_failure(e: &io::Error) -> bool {
    is_resource_exhaustion(e) || e.raw_os_error() == Some(libc::EADDRNOTAVAIL)
}

/// Makes the coming close send a reset (SO_LINGER 0), so a reset on one side reaches the other.
fn reset_on_close(stream: &TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "cannot set SO_LINGER 0");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare_count(spares: &SpareBuffers, size: usize) -> usize {
        let sizes = spares.sizes.borrow();
        sizes
            .iter()
            .find(|(s, _)| *s == size)
            .map_or(0, |(_, v)| v.len())
    }

    #[test]
    fn a_buffer_given_back_is_taken_again_for_its_size_only() {
        let spares = SpareBuffers::default();
        let mut a = spares.take(1024);
        assert_eq!(a.capacity(), 1024);
        a.extend_from_slice(b"data");
        let at = a.as_ptr();
        spares.give(1024, a);
        let other = spares.take(2048);
        assert_eq!(other.capacity(), 2048);
        assert_ne!(other.as_ptr(), at, "another size gets a buffer of its own");
        let again = spares.take(1024);
        assert_eq!(again.as_ptr(), at, "the spare is reused");
        assert!(again.is_empty(), "a spare comes back empty");
        assert_eq!(spare_count(&spares, 1024), 0);
    }

    #[test]
    fn spares_beyond_the_bound_are_freed() {
        let spares = SpareBuffers::default();
        for _ in 0..SPARE_BUFFERS + 10 {
            spares.give(512, Vec::with_capacity(512));
        }
        assert_eq!(spare_count(&spares, 512), SPARE_BUFFERS);
    }
}
