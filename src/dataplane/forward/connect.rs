//! Choosing and connecting a connection's backend.
//!
//! Owns: trying the service's distinct candidates in order within `connect_timeout` (the retries),
//! the backend's active count while a connection to it is open or opening, and reporting each
//! connect's result for passive health detection, connect latency and session persistence, and
//! the PROXY header (`send_proxy`) the new connection must carry before any client byte (built
//! here, written by the client-to-backend direction together with the client's first bytes:
//! see `pump`). A
//! connect that fails for a local reason (out of fds, ports or memory) never counts against the
//! backend. Does not own: the local address a connect comes from (`source`, which also moves on
//! to the next source address when one is out of ports), which backends are candidates (the
//! service's selector, through [`ServiceState::candidates`]) or what happens once connected (the
//! parent module).

use std::io;
use std::sync::atomic::Ordering;
use std::time::Instant;

use compio::net::TcpStream;

use crate::control::{BackendState, ConnectFailure, ServiceState};
use crate::proxyproto::build_header;

use super::super::source::connect_from;
use super::super::worker::Worker;
use super::proxy_header::Ends;

/// Counts one connection open (or opening) to a backend while alive.
pub(super) struct ActiveGuard<'a>(&'a BackendState);

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

/// Why no backend connection was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NoBackend {
    /// No backend was ready (none up, or all at their `max_connections`).
    NoneReady,
    /// Every candidate's connect failed or timed out.
    AllFailed,
}

/// A backend connection made by [`connect_backend`].
pub(super) struct Connected<'a> {
    /// The backend's index in the service.
    pub index: usize,
    pub stream: TcpStream,
    /// Counts the connection in the backend's active count while it lives.
    pub active: ActiveGuard<'a>,
    /// The backend's close epoch from before the connect, so a mark-down during the connect
    /// still closes the session.
    pub epoch: u64,
    /// The PROXY header the backend must receive before any client byte (`send_proxy`).
    pub header: Option<Vec<u8>>,
}

/// Tries the service's distinct candidates in order, each within `connect_timeout`.
pub(super) async fn connect_backend<'a>(
    worker: &Worker,
    state: &'a ServiceState,
    ends: Ends,
) -> Result<Connected<'a>, NoBackend> {
    let config = &state.config;
    let peer = ends.client;
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
            state.counters.retries.inc();
        }
        let backend = &state.backends[index];
        let active = ActiveGuard::new(backend);
        let epoch = backend.live.close_epoch();
        let address = backend.address();
        let connecting = Instant::now();
        let header = backend
            .config
            .send_proxy(config.send_proxy)
            .zip(ends.service)
            .map(|(version, service)| build_header(version, peer, service));
        let (failure, kind) = match compio::time::timeout(
            config.connect_timeout,
            connect_from(
                &worker.sources,
                backend.config.sources(&config.source),
                address,
            ),
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
                return Ok(Connected {
                    index,
                    stream,
                    active,
                    epoch,
                    header,
                });
            }
            Ok(Err(e)) if is_local_failure(&e) => {
                // Out of fds, local ports or memory: the backend is not at fault, so this must
                // never count against its health.
                state.counters.local_connect_failures.inc();
                // One line per second, process-wide, counting those not written.
                let limit = crate::control::log_limit::Reason::LocalConnect;
                if let Some(suppressed) = limit.admit() {
                    tracing::warn!(service = %config.name, backend = %address, error = %e,
                        suppressed, "cannot open a backend connection: local resources exhausted");
                }
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

/// Whether a connect failed for a reason local to this host rather than the backend.
fn is_local_failure(e: &io::Error) -> bool {
    crate::control::local::connect_failed_locally(e)
}
