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
//! shut down; a direction's buffer is `buffer_size` bytes and is not refilled until written out,
//! so a slow reader stalls its writer; when the function returns, the service slot, the backend's
//! active count and the tracking entry are released (drop guards, also on cancellation).

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
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::TcpStream;

use crate::balancer::conntrack::{Conn, ConnId, ConnState};
use crate::control::{BackendState, ConnectFailure, ServiceState};

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
        let inserted = table.insert(Conn::accepted(state.id.0, peer, started));
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
    let size = state.config.buffer_size;
    let mut up = pin!(pump(worker, id, Dir::Up, client, backend, size));
    let mut down = pin!(pump(worker, id, Dir::Down, backend, client, size));
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

/// Copies one direction through a buffer of `size` bytes until EOF or failure.
async fn pump(
    worker: &Worker,
    id: ConnId,
    dir: Dir,
    from: &TcpStream,
    to: &TcpStream,
    size: usize,
) -> DirEnd {
    let mut reader = from;
    let mut writer = to;
    let mut buf = Vec::with_capacity(size);
    loop {
        buf.clear();
        let BufResult(read, b) = reader.read(buf).await;
        buf = b;
        match read {
            Ok(0) => {
                // Half-close: the other direction keeps flowing until it ends too. shutdown(2)
                // on a TCP socket never blocks, and io_uring would run its SHUTDOWN opcode on a
                // kernel worker thread (iou-wrk), so the plain syscall is cheaper here.
                return match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
                    Ok(()) => DirEnd::Eof,
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => DirEnd::Eof,
                    Err(_) => DirEnd::WriteFailed,
                };
            }
            Ok(n) => {
                let BufResult(written, b) = writer.write_all(buf).await;
                buf = b;
                if written.is_err() {
                    return DirEnd::WriteFailed;
                }
                let now = Instant::now();
                let mut table = worker.table.borrow_mut();
                match dir {
                    Dir::Up => table.record_up(id, n as u64, now),
                    Dir::Down => table.record_down(id, n as u64, now),
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return DirEnd::ReadFailed,
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
