//! One worker: a thread, its compio runtime, its listeners and its connection-tracking table.
//!
//! Owns: the accept loop of each service on this worker (with the pause at `max_connections` and
//! on fd exhaustion), and the worker's exit once a drain has closed its last connection.

use std::cell::RefCell;
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
}

/// Thread body: builds the runtime and serves until drained.
pub(super) fn run(setup: WorkerSetup) {
    let index = setup.index;
    let exited = setup.exited.clone();
    let mut builder = compio::runtime::RuntimeBuilder::new();
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
    });
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
            let slot = wait_for_slot(&state);
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

/// Resolves when the service may have a free slot again.
pub(super) async fn wait_for_slot(state: &ServiceState) {
    loop {
        if !state.at_limit() {
            return;
        }
        let listener = state.counters.slot_freed.listen();
        if !state.at_limit() {
            return;
        }
        listener.await;
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
