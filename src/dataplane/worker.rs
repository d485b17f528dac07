//! One worker: a thread, its compio runtime, its listeners and its connection-tracking table.
//!
//! Owns: the accept loop of each service on this worker (with the pause at `max_connections` and
//! on fd exhaustion), and the worker's exit once a drain has closed its last connection.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use compio::net::TcpListener;
use crossbeam::channel::Sender;
use event_listener::Event;
use futures_util::future::{Either, select};

use crate::balancer::conntrack::ConnTable;
use crate::control::{ServiceState, SharedSnapshot, Shutdown};

use super::{DataPlaneError, forward, udp};

/// How long accepting pauses after the process ran out of file descriptors (or socket memory).
/// Short enough that accepts resume well within a second of fds being freed, long enough that a
/// saturated process does not spin on a failing accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Everything a worker thread is started with.
pub(super) struct WorkerSetup {
    pub index: usize,
    pub pin_to: Option<usize>,
    /// (service index in the snapshot, its listener for this worker)
    pub listeners: Vec<(usize, std::net::TcpListener)>,
    /// This worker's socket (and share of the flow bound) of each UDP service.
    pub udp: Vec<udp::UdpSetup>,
    pub snapshot: SharedSnapshot,
    pub shutdown: Arc<Shutdown>,
    pub exited: Sender<usize>,
    /// Told once the worker's runtime runs and owns its listeners (or why it could not).
    pub ready: Sender<Result<(), DataPlaneError>>,
}

/// State shared by the tasks of one worker (one thread, so `Rc` and `RefCell`).
pub(super) struct Worker {
    pub index: usize,
    pub snapshot: SharedSnapshot,
    pub shutdown: Arc<Shutdown>,
    pub table: RefCell<ConnTable>,
    pub rng: RefCell<fastrand::Rng>,
    /// Notified whenever a tracked connection ends (the drain waits on it).
    pub conn_closed: Event,
    /// Notified (from this thread) when some backend's live sessions must close: each session
    /// then compares its backend's close epoch with the one it started with.
    pub sessions_closing: Event,
    /// Set once the drain deadline passed; this worker's connections then close.
    aborted: Cell<bool>,
    /// Wakes this worker's connections when `aborted` is set. Local to the worker: only one
    /// task per worker listens on the process-wide [`Shutdown`], so a shutdown never makes
    /// thousands of connections contend on a shared lock or flood another thread's queue.
    abort_event: Event,
    /// TCP forwarding buffers between uses (see `forward`).
    pub spare_buffers: forward::SpareBuffers,
}

impl Worker {
    /// Resolves once this worker's live connections must close (drain deadline passed).
    pub async fn aborting(&self) {
        loop {
            if self.aborted.get() {
                return;
            }
            let listener = self.abort_event.listen();
            if self.aborted.get() {
                return;
            }
            listener.await;
        }
    }
}

/// Thread body: builds the runtime and serves until drained.
pub(super) fn run(setup: WorkerSetup) {
    let index = setup.index;
    let exited = setup.exited.clone();
    let mut builder = compio::runtime::RuntimeBuilder::new();
    // One thread submits to each ring (thread-per-core), so the kernel may skip cross-thread
    // synchronisation (SINGLE_ISSUER) and run completion work only when the worker asks for
    // completions (DEFER_TASKRUN, COOP_TASKRUN) instead of interrupting it. 4096 entries leave
    // room for a read and a write per direction on ~1,000 busy connections per loop turn.
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor
        .single_issuer(true)
        .coop_taskrun(true)
        .defer_taskrun(true)
        .capacity(4096);
    builder.with_proactor(proactor);
    if let Some(cpu) = setup.pin_to {
        builder.thread_affinity(HashSet::from([cpu]));
    }
    // UDP replies are received into the runtime's buffer pool (see `udp`); it is registered
    // with the kernel only when a UDP service asks for it.
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor
        .buffer_pool_size(
            std::num::NonZeroU16::new(udp::REPLY_BUFFERS).unwrap_or(std::num::NonZeroU16::MIN),
        )
        .buffer_pool_buffer_len(udp::MAX_DATAGRAM);
    builder.with_proactor(proactor);
    match builder.build() {
        Ok(runtime) => runtime.block_on(serve(setup)),
        Err(e) => {
            let _ = setup.ready.send(Err(DataPlaneError::Runtime(e)));
        }
    }
    // The receiver is gone only when the data plane was dropped; nothing is waiting then.
    let _ = exited.send(index);
}

async fn serve(setup: WorkerSetup) {
    let capacity: usize = {
        let snap = setup.snapshot.load();
        snap.services
            .iter()
            .map(|s| s.config.max_connections as usize)
            .sum()
    };
    let worker = Rc::new(Worker {
        index: setup.index,
        snapshot: setup.snapshot,
        shutdown: setup.shutdown,
        table: RefCell::new(ConnTable::new(capacity)),
        rng: RefCell::new(fastrand::Rng::new()),
        conn_closed: Event::new(),
        sessions_closing: Event::new(),
        aborted: Cell::new(false),
        abort_event: Event::new(),
        spare_buffers: forward::SpareBuffers::default(),
    });
    // The one listener of this worker on the process-wide abort; it fans out locally.
    let abort_relay = {
        let worker = worker.clone();
        compio::runtime::spawn(async move {
            worker.shutdown.aborting().await;
            worker.aborted.set(true);
            worker.abort_event.notify(usize::MAX);
        })
    };
    let mut listeners = Vec::with_capacity(setup.listeners.len());
    for (service, std_listener) in setup.listeners {
        match TcpListener::from_std(std_listener) {
            Ok(listener) => listeners.push((service, listener)),
            Err(e) => {
                let _ = setup.ready.send(Err(DataPlaneError::Runtime(e)));
                return;
            }
        }
    }
    // One per service: relays "close this backend's sessions" from the control plane locally.
    let closing_relays: Vec<_> = listeners
        .iter()
        .map(|&(service, _)| {
            compio::runtime::spawn(forward::watch_closing(worker.clone(), service))
        })
        .collect();
    let udp_tasks = match udp::spawn(&worker, setup.udp) {
        Ok(tasks) => tasks,
        Err(e) => {
            let _ = setup.ready.send(Err(DataPlaneError::Runtime(e)));
            return;
        }
    };
    let accepting: Vec<_> = listeners
        .into_iter()
        .map(|(service, listener)| {
            compio::runtime::spawn(accept_loop(worker.clone(), service, listener))
        })
        .chain(udp_tasks)
        .collect();
    // The receiver is gone only if start() already failed; this worker then drains at once.
    let _ = setup.ready.send(Ok(()));
    for task in accepting {
        // An accept loop returns once the drain began; its listener is closed by then. So does
        // a UDP service's loop, having dropped its flows.
        let _ = task.await;
    }
    wait_until_empty(&worker).await;
    drop(abort_relay);
    drop(closing_relays);
    tracing::debug!(worker = worker.index, "worker drained");
}

/// Resolves once the worker tracks no connection.
async fn wait_until_empty(worker: &Worker) {
    loop {
        if worker.table.borrow().is_empty() {
            return;
        }
        let listener = worker.conn_closed.listen();
        if worker.table.borrow().is_empty() {
            return;
        }
        listener.await;
    }
}

/// Accepts connections for one service until the drain begins, then closes the listener.
async fn accept_loop(worker: Rc<Worker>, service: usize, listener: TcpListener) {
    let shutdown = worker.shutdown.clone();
    let mut starved = false;
    loop {
        let state: Arc<ServiceState> = worker.snapshot.load().services[service].clone();
        if state.at_limit() {
            // Pause: leave new connections in the kernel's accept queue until a slot frees.
            let slot = state.wait_for_slot();
            futures_util::pin_mut!(slot);
            let drain = shutdown.draining();
            futures_util::pin_mut!(drain);
            if let Either::Right(_) = select(slot, drain).await {
                break;
            }
            continue;
        }
        let accept = listener.accept();
        futures_util::pin_mut!(accept);
        let drain = shutdown.draining();
        futures_util::pin_mut!(drain);
        match select(accept, drain).await {
            Either::Right(_) => break,
            Either::Left((Ok((stream, peer)), _)) => {
                if starved {
                    tracing::info!(service = %state.config.name, "accepting again");
                    starved = false;
                }
                compio::runtime::spawn(forward::serve(
                    worker.clone(),
                    state,
                    service,
                    stream,
                    peer,
                ))
                .detach();
            }
            Either::Left((Err(e), _)) => {
                if is_resource_exhaustion(&e) {
                    if !starved {
                        tracing::warn!(service = %state.config.name, error = %e,
                            "out of file descriptors or socket memory: accepting paused");
                        starved = true;
                    }
                    compio::time::sleep(ACCEPT_BACKOFF).await;
                } else {
                    // Per-connection failures (e.g. the client reset while queued) end one
                    // connection, not the listener.
                    tracing::debug!(service = %state.config.name, error = %e, "accept failed");
                }
            }
        }
    }
    drop(listener);
    tracing::debug!(worker = worker.index, service, "listener closed");
}

pub(super) fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
