//! One proxied TCP connection, from accept to close.
//!
//! Owns: the connection's life: the service slot, connection tracking, the backend connection
//! (made by `connect`), the two directions (run by `pump`) and how they end together (half-close,
//! reset propagation, the idle timeout, the drain deadline, a backend's close event), and the
//! access-log line. Ends a session when its backend's close event fires (marked down with
//! `on_backend_down = "shutdown"`, or disabled). Does not own: backend choice and connect retries
//! (`connect`), moving the bytes of one direction (`pump`), the worker's spare buffers
//! (`buffers`) or pipes (`super::splice`), nor the socket calls themselves (`super::sys`).
//!
//! Guarantees: every byte read from one side is written to the other before that direction is
//! shut down; a direction holds at most one buffer of `buffer_size` bytes (or one pipe) and reads
//! nothing more until it is written out, so a slow reader stalls its writer; when [`serve`]
//! returns, the service slot, the backend's active count and the tracking entry are released
//! (drop guards, also on cancellation).
//!
//! # Resets
//!
//! When one side resets its connection (RST, no FIN) or fails, ringlb resets the other side, as
//! a reset; but first everything ringlb read from the failed side reaches the other side. The
//! direction from the failed side goes on: it reads what is still queued on the failed socket
//! (Linux returns queued data before it reports the reset), writes out its buffer or pipe, and
//! ends at the reset. Then ringlb waits until the other side's kernel has acknowledged all of it
//! (the socket's send queue is empty), since a close with `SO_LINGER` 0 discards what is still
//! queued; only then does it reset that side. So the other side receives a byte-exact prefix of
//! what the failed side sent, as long as what ringlb read, then the reset. The wait is bounded
//! by what ringlb holds and by the reader: when the other side takes no byte for `idle_timeout`
//! (or the drain deadline passes, or the backend's close event fires), ringlb resets it at
//! once. The direction toward the failed side ends at once: its bytes have nowhere to go.
//!
//! # The client address
//!
//! With `accept_proxy`, the first step of [`serve`] reads the client's PROXY header
//! (`proxy_header`) before anything else; from then on the address it gave is the client
//! everywhere: tracking (`/connections`), the balancer's `source_hash` and stick table, the
//! access log. A refused header closes the connection, which returns the slot it took at the
//! accept.
//!
//! The files: `connect` (choosing and connecting a backend, and the PROXY header written to
//! it), `pump` (one direction through buffers or a pipe), `buffers` (the worker's spare
//! forwarding buffers), `proxy_header` (the PROXY header read from a client), `wake_gate` (polling the
//! end signals only when one of them woke the task).

mod buffers;
mod connect;
mod proxy_header;
mod pump;
mod readiness;
mod wake_gate;

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use compio::net::TcpStream;

use crate::balancer::conntrack::{Conn, ConnId, ConnState};
use crate::control::ServiceState;
use crate::control::log_limit::Reason;
use crate::control::wait::wait_until;

use super::sys;
use super::worker::Worker;
pub(super) use buffers::SpareBuffers;
use connect::{NoBackend, connect_backend};
use pump::{Dir, DirEnd, pump};
use wake_gate::WakeGate;

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

/// A connection slot of a service (and of the process-wide budget), returned when dropped.
pub(super) struct Slot(Arc<ServiceState>);

impl Slot {
    /// Takes a slot of `state`, if one is free.
    pub(super) fn try_take(state: &Arc<ServiceState>) -> Option<Slot> {
        state.try_acquire_slot().then(|| Slot(state.clone()))
    }
}

impl Drop for Slot {
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

/// Serves one accepted client connection to its end. `slot`: the slot the accept loop took for
/// it, right after the accept (`None` when none was free: the connection then waits for one
/// here).
pub(super) async fn serve(
    worker: Rc<Worker>,
    state: Arc<ServiceState>,
    client: TcpStream,
    peer: SocketAddr,
    slot: Option<Slot>,
) {
    // First of all, the PROXY header of a trusted client: its source is the client from here
    // on, for every step below.
    let Some(ends) = proxy_header::accept(&state, &client, peer).await else {
        return;
    };
    let peer = ends.client;

    // Source ACL and per-client limits, on that client, before anything else is spent on it.
    let Some(_admitted) = super::admission::admit_tcp(&state, &client, peer) else {
        return;
    };
    // The accept loop pauses at the limit, but another worker may have taken the last slot
    // between its check and its accept: queue the connection until a slot frees rather than
    // accept-then-close.
    let _slot = match slot {
        Some(slot) => slot,
        None => loop {
            if let Some(slot) = Slot::try_take(&state) {
                break slot;
            }
            let slot = pin!(state.wait_for_slot(&worker.slot_freed));
            let abort = pin!(worker.aborting());
            if let futures_util::future::Either::Right(_) =
                futures_util::future::select(slot, abort).await
            {
                return;
            }
        },
    };
    state.counters.accepted.inc();

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
            if let Some(suppressed) = Reason::TableFull.admit() {
                tracing::warn!(service = %state.config.name, client = %peer, suppressed,
                    "{full}: connection closed");
            }
            return;
        }
    };
    let _track = TrackGuard {
        worker: &worker,
        id,
    };

    let connect::Connected {
        index,
        stream: backend,
        active: _active,
        epoch,
        header,
    } = match connect_backend(&worker, &state, ends).await {
        Ok(connected) => connected,
        Err(no_backend) => {
            state.counters.no_backend.inc();
            let end = match no_backend {
                NoBackend::NoneReady => {
                    // Logged once per transition by the control side ("service down"), not here.
                    if let Some(suppressed) = Reason::NoBackendReady.admit() {
                        tracing::debug!(service = %state.config.name, client = %peer, suppressed,
                            "no backend is ready: client connection closed");
                    }
                    "no_backend_ready"
                }
                NoBackend::AllFailed => {
                    if let Some(suppressed) = Reason::NoBackendReached.admit() {
                        tracing::warn!(service = %state.config.name, client = %peer, suppressed,
                            "no backend could be reached: client connection closed");
                    }
                    "no_backend_reached"
                }
            };
            log_access(&state, peer, &"-", (0, 0), started.elapsed(), end);
            return;
        }
    };
    let backend_state = &state.backends[index];
    worker
        .table
        .borrow_mut()
        .established(id, backend_state.address(), Instant::now());
    backend_state.counters.connections.inc();

    let end = proxy(
        &worker,
        &state,
        (index, epoch),
        id,
        (&client, &backend),
        header,
    )
    .await;

    match end {
        End::ClientReset => reset_on_close(&backend),
        End::BackendReset => reset_on_close(&client),
        End::BackendDown => {
            reset_on_close(&backend);
            reset_on_close(&client);
            backend_state.counters.sessions_closed.inc();
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
    counters.bytes_to_backend.add(up);
    counters.bytes_to_client.add(down);
    let duration = started.elapsed();
    counters
        .session_duration
        .record(worker.index, duration.as_millis() as u64);
    log_access(
        &state,
        peer,
        &backend_state.address(),
        (up, down),
        duration,
        end.as_str(),
    );
}

/// The access-log line (target `ringlb::access`) of one connection, when the service has
/// `access_log`: service, client, backend ("-" when none was reached), bytes each way, duration
/// and how it ended.
fn log_access(
    state: &ServiceState,
    peer: SocketAddr,
    backend: &dyn std::fmt::Display,
    (up, down): (u64, u64),
    duration: std::time::Duration,
    end: &str,
) {
    if state.config.access_log {
        tracing::info!(
            target: "ringlb::access",
            service = %state.config.name,
            client = %peer,
            backend = %backend,
            bytes_up = up,
            bytes_down = down,
            duration_ms = duration.as_millis() as u64,
            end,
        );
    }
}

/// Moves bytes both ways until both directions ended in order, one side failed, the connection
/// went idle, the drain deadline passed, or the backend's close event fired after `epoch`.
/// When one side failed, what ringlb read from it is passed on to the other side first (see
/// "Resets" in the module doc).
/// `header`: the PROXY header the backend must receive first, sent by the client-to-backend
/// direction with the client's first bytes.
async fn proxy(
    worker: &Worker,
    state: &ServiceState,
    (index, epoch): (usize, u64),
    id: ConnId,
    (client, backend): (&TcpStream, &TcpStream),
    header: Option<Vec<u8>>,
) -> End {
    // Set when a write to that side failed (see `pump`).
    let client_failed = Cell::new(false);
    let backend_failed = Cell::new(false);
    let mut up = pin!(pump(
        worker,
        state,
        id,
        Dir::Up,
        (client, backend),
        &client_failed,
        header,
    ));
    let mut down = pin!(pump(
        worker,
        state,
        id,
        Dir::Down,
        (backend, client),
        &backend_failed,
        None,
    ));
    let mut idle = pin!(idle_timer(worker, id, state.config.idle_timeout));
    let mut abort = pin!(worker.aborting());
    let mut closed = pin!(backend_closed(worker, state, index, epoch));
    // The signals rarely fire: they are polled only after one of them woke the task (a
    // wake-up is nearly always a direction's I/O).
    let signals = WakeGate::new();
    let mut up_end = None;
    let mut down_end = None;
    let end = std::future::poll_fn(|cx| {
        if up_end.is_none()
            && let Poll::Ready(e) = up.as_mut().poll(cx)
        {
            up_end = Some(e);
            match e {
                DirEnd::Eof => worker
                    .table
                    .borrow_mut()
                    .set_state(id, ConnState::ClientClosed),
                DirEnd::WriteFailed => backend_failed.set(true),
                DirEnd::ReadFailed => {}
            }
        }
        if down_end.is_none()
            && let Poll::Ready(e) = down.as_mut().poll(cx)
        {
            down_end = Some(e);
            match e {
                DirEnd::Eof => worker
                    .table
                    .borrow_mut()
                    .set_state(id, ConnState::BackendClosed),
                DirEnd::WriteFailed => client_failed.set(true),
                DirEnd::ReadFailed => {}
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
        signals.poll(cx, |cx| {
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
    })
    .await;

    // One side failed. The direction from it (the survivor) reads what that side sent before it
    // failed and writes it to the other side; then the other side's send queue is flushed, so
    // that its reset discards nothing ringlb read. The direction toward the failed side is dead.
    let (survivor_end, other) = match end {
        End::ClientReset => (up_end, backend),
        End::BackendReset => (down_end, client),
        _ => return end,
    };
    let survivor_end = match survivor_end {
        Some(e) => Some(e),
        None => {
            std::future::poll_fn(|cx| {
                let survivor = match end {
                    End::ClientReset => up.as_mut().poll(cx),
                    _ => down.as_mut().poll(cx),
                };
                if let Poll::Ready(e) = survivor {
                    return Poll::Ready(Some(e));
                }
                // A reader that does not read is not waited for beyond the idle timeout.
                if idle.as_mut().poll(cx).is_ready()
                    || abort.as_mut().poll(cx).is_ready()
                    || closed.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        }
    };
    if matches!(survivor_end, Some(DirEnd::Eof | DirEnd::ReadFailed)) {
        let mut flushed = pin!(flush(other, state.config.idle_timeout));
        std::future::poll_fn(|cx| {
            if flushed.as_mut().poll(cx).is_ready()
                || abort.as_mut().poll(cx).is_ready()
                || closed.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
    }
    end
}

/// Waits until the peer of `to` has acknowledged every byte written to it (the socket's send
/// queue is empty), so that a reset sent next discards nothing: a close with `SO_LINGER` 0
/// drops the send queue. Gives up once the queue has not shrunk for `idle` (a reader that does
/// not read), or when the queue cannot be read. No event says "send queue empty", so the queue
/// is looked at after pauses growing from [`FLUSH_PAUSE_MIN`] to [`FLUSH_PAUSE_MAX`], back to the
/// shortest after each sign of progress; this runs only between a reset and the close it causes.
async fn flush(to: &TcpStream, idle: Duration) {
    let mut least = usize::MAX;
    let mut progress = Instant::now();
    let mut pause = FLUSH_PAUSE_MIN;
    loop {
        let queued = match sys::unacked(to) {
            Ok(queued) => queued,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read a socket's send queue");
                return;
            }
        };
        if queued == 0 {
            return;
        }
        if queued < least {
            least = queued;
            progress = Instant::now();
            pause = FLUSH_PAUSE_MIN;
        } else if progress.elapsed() >= idle {
            return;
        }
        compio::time::sleep(pause).await;
        pause = (pause * 2).min(FLUSH_PAUSE_MAX);
    }
}

/// Shortest pause between two looks at a send queue being flushed before a reset.
const FLUSH_PAUSE_MIN: Duration = Duration::from_millis(1);

/// Longest pause between two looks at a send queue being flushed before a reset.
const FLUSH_PAUSE_MAX: Duration = Duration::from_millis(50);

/// Resolves once the sessions to backend `index` started at close `epoch` must close.
async fn backend_closed(worker: &Worker, state: &ServiceState, index: usize, epoch: u64) {
    let live = &state.backends[index].live;
    // A worker-local event (woken from this thread by `watch_closing`): registering on it
    // never contends with another thread.
    wait_until(&worker.sessions_closing, || live.close_epoch() != epoch).await
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

/// Resolves once the connection has moved no byte for `idle`.
async fn idle_timer(worker: &Worker, id: ConnId, idle: Duration) {
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

/// Makes the coming close send a reset (SO_LINGER 0), so a reset on one side reaches the other.
fn reset_on_close(stream: &TcpStream) {
    if let Err(e) = stream.set_zero_linger() {
        tracing::debug!(error = %e, "cannot set SO_LINGER 0");
    }
}
