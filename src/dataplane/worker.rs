//! One worker: a thread, its compio runtime, its listeners and its connection-tracking table.
//!
//! Owns: the accept loop of each service on this worker (with the pause at `max_connections` and
//! on fd exhaustion), the worker's mailbox (listeners added and retired by reloads, connection
//! listings for the admin API), the worker's heartbeat (a timer task on its ring that records
//! every `HEARTBEAT_EVERY` that the loop turns, for `GET /health` and the systemd watchdog),
//! and the worker's exit once a drain has closed its last connection. Debug builds also carry
//! a test hook that stalls worker 0 (`stall_for_tests`); release builds do not.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use compio::net::TcpStream;
use compio::runtime::fd::PollFd;
use crossbeam::channel::Sender;
use event_listener::Event;
use futures_util::future::{Either, select};

use crate::balancer::conntrack::ConnTable;
use crate::control::log_limit::Reason;
use crate::control::wait::wait_until;
use crate::control::{ConnectionBudget, ServiceId, ServiceState, SharedSnapshot, Shutdown};

use super::{ConnInfo, DataPlaneError, ListenerKey, WorkerStats, forward, udp};

/// How long accepting pauses after the process ran out of file descriptors (or socket memory).
/// Short enough that accepts resume well within a second of fds being freed, long enough that a
/// saturated process does not spin on a failing accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most this many connections are accepted in a row before the accept loop waits for
/// readiness again (which lets the worker's other tasks run under a flood of connections).
const ACCEPT_BURST: usize = 64;

/// While wake-ups find one connection each, every this many wake-ups the accept loop still
/// tries a second accept, to notice that connections now come faster (see [`AcceptPace`]).
const ACCEPT_PROBE_EVERY: u32 = 8;

/// How many accepts the accept loop tries after one readiness wake-up.
///
/// Accepting until `accept(2)` fails with `EAGAIN` costs one failed system call per wake-up:
/// when connections come one at a time, that doubles the accepts per connection. A readiness
/// poll is an io_uring request, batched with the worker's other requests, and completes at once
/// when another connection is already queued. So while wake-ups find one connection each, the
/// loop accepts one and waits again (a poll instead of a failed accept), and only every
/// [`ACCEPT_PROBE_EVERY`] wake-ups tries a second; once a wake-up finds two or more, it accepts
/// until `EAGAIN` (or [`ACCEPT_BURST`]) again.
#[derive(Debug, Default)]
struct AcceptPace {
    /// Whether the last wake-up whose accepts ended at `EAGAIN` found two or more connections.
    bursting: bool,
    /// Wake-ups while not bursting (every [`ACCEPT_PROBE_EVERY`]th tries a second accept).
    single: u32,
}

impl AcceptPace {
    /// Whether to try accept number `attempt` (from 1) since the last readiness wake-up.
    fn tries(&self, attempt: usize) -> bool {
        match attempt {
            1 => true,
            2 => self.bursting || self.single % ACCEPT_PROBE_EVERY == ACCEPT_PROBE_EVERY - 1,
            // The second accept took a connection: they queue up.
            n => n <= ACCEPT_BURST,
        }
    }

    /// The loop waits for readiness again after `attempts` accepts since the last wake-up; the
    /// last one found the queue empty (`EAGAIN`) when `drained`.
    fn waits(&mut self, attempts: usize, drained: bool) {
        // `attempts - 1` connections were queued. A spurious wake-up (none) says nothing.
        if drained && attempts >= 2 {
            self.bursting = attempts > 2;
        }
        if !self.bursting {
            self.single = self.single.wrapping_add(1);
        }
    }
}

/// Everything a worker thread is started with.
pub(super) struct WorkerSetup {
    pub index: usize,
    pub pin_to: Option<usize>,
    /// The listeners and UDP sockets this worker starts with, as the same commands a reload
    /// sends later.
    pub initial: Vec<Command>,
    /// Where later commands (reload, connection listings) arrive.
    pub mailbox: async_channel::Receiver<Command>,
    pub snapshot: SharedSnapshot,
    /// The process-wide connection budget's maximum, which bounds this worker's table.
    pub max_connections: usize,
    /// The process-wide connection budget, whose freed slots the worker relays to its own
    /// waiters.
    pub budget: Arc<ConnectionBudget>,
    pub shutdown: Arc<Shutdown>,
    pub stats: Arc<WorkerStats>,
    pub exited: Sender<usize>,
    /// Told once the worker's runtime runs and owns its listeners (or why it could not).
    pub ready: Sender<Result<(), DataPlaneError>>,
}

/// What the control plane asks of a running worker.
pub(super) enum Command {
    /// Start accepting for a TCP service on this worker's share of a new listener.
    AddTcp {
        service: ServiceId,
        key: ListenerKey,
        listener: std::net::TcpListener,
    },
    /// Start serving a UDP service on this worker's socket.
    AddUdp {
        key: ListenerKey,
        setup: udp::UdpSetup,
    },
    /// Stop accepting on a listener (its connections run to their end; a UDP service's flows
    /// are dropped).
    Retire { key: ListenerKey },
    /// List up to `limit` tracked connections (of one service, or all).
    Connections {
        service: Option<ServiceId>,
        limit: usize,
        reply: tokio::sync::oneshot::Sender<Vec<ConnInfo>>,
    },
}

/// A one-way flag of one worker's thread that tasks can wait for: set once, never cleared.
/// Worker-local (`Cell` and a local event), so waiting on it never contends with another thread.
#[derive(Default)]
pub(super) struct LocalFlag {
    set: Cell<bool>,
    event: Event,
}

impl LocalFlag {
    /// Sets the flag and wakes every task waiting for it.
    pub fn set(&self) {
        self.set.set(true);
        self.event.notify(usize::MAX);
    }

    /// Whether the flag is set.
    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    /// Resolves once the flag is set.
    pub async fn wait(&self) {
        wait_until(&self.event, || self.set.get()).await
    }
}

/// Set when a reload removed or moved a listener's service: its loops on this worker end before
/// the drain does.
pub(super) type Retire = LocalFlag;

/// State shared by the tasks of one worker (one thread, so `Rc` and `RefCell`).
pub(super) struct Worker {
    pub index: usize,
    pub snapshot: SharedSnapshot,
    pub shutdown: Arc<Shutdown>,
    pub stats: Arc<WorkerStats>,
    pub table: RefCell<ConnTable>,
    pub rng: RefCell<fastrand::Rng>,
    /// Notified whenever a tracked connection ends (the drain waits on it).
    pub conn_closed: Event,
    /// Notified (from this thread) when some backend's live sessions must close: each session
    /// then compares its backend's close epoch with the one it started with.
    pub sessions_closing: Event,
    /// Set once the drain deadline passed; this worker's connections then close. Local to the
    /// worker: only one task per worker listens on the process-wide [`Shutdown`], so a
    /// shutdown never makes thousands of connections contend on a shared lock or flood another
    /// thread's queue.
    aborted: LocalFlag,
    /// Notified (from this thread, by the relay in [`serve`]) whenever a connection slot of
    /// any service, or of the process-wide budget, was freed. The accept loops paused at a
    /// limit and the connections queued for a slot wait on it, never on the process-wide
    /// budget itself (see [`ConnectionBudget::freed_after`]).
    pub slot_freed: Event,
    /// The listeners this worker serves, by key, to retire them on reload.
    listeners: RefCell<HashMap<ListenerKey, Rc<Retire>>>,
    /// Listener loops (TCP accept loops, UDP receive and expiry loops) still running.
    loops: Cell<usize>,
    /// Notified when a listener loop ends.
    loop_ended: Event,
    /// Notified whenever a UDP reply buffer goes back to this worker's pool.
    pub udp_buffer_freed: Rc<Event>,
    /// TCP forwarding buffers between uses (see `forward`).
    pub spare_buffers: forward::SpareBuffers,
    /// Pipes of the directions that splice (see `splice`).
    pub pipes: super::splice::Pipes,
    /// This worker's place in each backend's source addresses (see `source`).
    pub sources: super::source::Rotation,
}

impl Worker {
    /// Resolves once this worker's live connections must close (drain deadline passed).
    pub async fn aborting(&self) {
        self.aborted.wait().await;
    }

    /// Resolves once a listener's loops must end: the drain began or a reload retired it.
    pub async fn retiring(&self, retire: &Retire) {
        let drain = std::pin::pin!(self.shutdown.draining());
        let retired = std::pin::pin!(retire.wait());
        select(drain, retired).await;
    }

    /// Counts a listener loop as running until the returned guard drops.
    pub fn loop_started(self: &Rc<Self>) -> LoopGuard {
        self.loops.set(self.loops.get() + 1);
        LoopGuard(self.clone())
    }
}

/// Marks a listener loop as ended when dropped (also on cancellation).
pub(super) struct LoopGuard(Rc<Worker>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        self.0.loops.set(self.0.loops.get() - 1);
        self.0.loop_ended.notify(usize::MAX);
    }
}

/// Thread body: builds the runtime and serves until drained.
pub(super) fn run(setup: WorkerSetup) {
    let index = setup.index;
    let exited = setup.exited.clone();
    match runtime(setup.pin_to) {
        Ok(runtime) => runtime.block_on(serve(setup)),
        Err(e) => {
            let _ = setup.ready.send(Err(DataPlaneError::Runtime(e)));
        }
    }
    // The receiver is gone only when the data plane was dropped; nothing is waiting then.
    let _ = exited.send(index);
}

/// The worker's io_uring runtime: [`super::ring_settings`], the buffer pool UDP replies are
/// received into (registered with the kernel only when a UDP service asks for it, see `udp`),
/// and the optional CPU pin.
fn runtime(pin_to: Option<usize>) -> io::Result<compio::runtime::Runtime> {
    let mut proactor = super::ring_settings();
    proactor
        .buffer_pool_size(
            std::num::NonZeroU16::new(udp::REPLY_BUFFERS).unwrap_or(std::num::NonZeroU16::MIN),
        )
        .buffer_pool_buffer_len(udp::MAX_DATAGRAM);
    let mut builder = compio::runtime::RuntimeBuilder::new();
    builder.with_proactor(proactor);
    if let Some(cpu) = pin_to {
        builder.thread_affinity(HashSet::from([cpu]));
    }
    builder.build()
}

async fn serve(setup: WorkerSetup) {
    // Every connection is also bounded by the process-wide budget (from the fd limit), and
    // services may come and go with reloads: the budget bounds this worker's table.
    let capacity = setup.max_connections;
    let worker = Rc::new(Worker {
        index: setup.index,
        snapshot: setup.snapshot,
        shutdown: setup.shutdown,
        stats: setup.stats,
        table: RefCell::new(ConnTable::new(capacity)),
        rng: RefCell::new(fastrand::Rng::new()),
        conn_closed: Event::new(),
        sessions_closing: Event::new(),
        aborted: LocalFlag::default(),
        slot_freed: Event::new(),
        listeners: RefCell::new(HashMap::new()),
        loops: Cell::new(0),
        loop_ended: Event::new(),
        udp_buffer_freed: Rc::new(Event::new()),
        spare_buffers: forward::SpareBuffers::default(),
        pipes: super::splice::Pipes::default(),
        sources: super::source::Rotation::default(),
    });
    // The one listener of this worker on the process-wide abort; it fans out locally.
    let abort_relay = {
        let worker = worker.clone();
        compio::runtime::spawn(async move {
            worker.shutdown.aborting().await;
            worker.aborted.set();
        })
    };
    // The one task of this worker woken across threads when a slot is freed; it wakes this
    // worker's waiters from its own thread.
    let slot_relay = {
        let worker = worker.clone();
        let budget = setup.budget;
        compio::runtime::spawn(async move { relay_freed_slots(&budget, &worker.slot_freed).await })
    };
    // The heartbeat `GET /health` reads: it only advances while this worker's loop turns.
    let heartbeat = {
        let worker = worker.clone();
        compio::runtime::spawn(async move {
            loop {
                worker.stats.beat();
                compio::time::sleep(super::HEARTBEAT_EVERY).await;
            }
        })
    };
    #[cfg(debug_assertions)]
    stall_for_tests(&worker);
    for command in setup.initial {
        if let Err(e) = handle(&worker, command) {
            let _ = setup.ready.send(Err(DataPlaneError::Runtime(e)));
            return;
        }
    }
    // The receiver is gone only if start() already failed; this worker then drains at once.
    let _ = setup.ready.send(Ok(()));
    // Commands from the control plane until the drain begins. One task per worker waits on
    // the channel, so a command wakes one task on this thread.
    {
        let drain = std::pin::pin!(worker.shutdown.draining());
        let mailbox = std::pin::pin!(async {
            while let Ok(command) = setup.mailbox.recv().await {
                if let Err(e) = handle(&worker, command) {
                    tracing::error!(worker = worker.index, error = %e,
                        "cannot take a new listener: its service is not served by this worker");
                }
            }
            // The data plane was dropped: nothing can reconfigure this worker any more; keep
            // serving until the drain.
            std::future::pending::<()>().await;
        });
        select(drain, mailbox).await;
    }
    // Every listener loop ends on the drain; their listeners are closed by then.
    wait_until(&worker.loop_ended, || worker.loops.get() == 0).await;
    wait_until_empty(&worker).await;
    drop(abort_relay);
    drop(slot_relay);
    drop(heartbeat);
    tracing::debug!(worker = worker.index, "worker drained");
}

/// Wakes this worker's waiters for a connection slot (on `local`) each time the process frees
/// one: the only task of the worker that another thread wakes for it (see
/// [`ConnectionBudget::freed_after`]).
async fn relay_freed_slots(budget: &ConnectionBudget, local: &Event) {
    let mut seen = budget.freed_count();
    loop {
        seen = budget.freed_after(seen).await;
        local.notify(usize::MAX);
    }
}

/// A test hook, compiled into debug builds only (`cfg(debug_assertions)`): with
/// `RINGLB_TEST_STALL_WORKER=AFTER_MS:FOR_MS`, worker 0 blocks its thread for `FOR_MS` once
/// `AFTER_MS` have passed, as a stuck worker would (the watchdog and `GET /health` must see
/// it). Release builds, the ones operators run, do not contain this code, so no environment
/// can stall a production worker.
#[cfg(debug_assertions)]
fn stall_for_tests(worker: &Rc<Worker>) {
    let Some((after, stall)) = std::env::var("RINGLB_TEST_STALL_WORKER")
        .ok()
        .and_then(|v| {
            let (a, f) = v.split_once(':')?;
            Some((a.parse::<u64>().ok()?, f.parse::<u64>().ok()?))
        })
    else {
        return;
    };
    if worker.index != 0 {
        return;
    }
    compio::runtime::spawn(async move {
        compio::time::sleep(Duration::from_millis(after)).await;
        tracing::warn!("test hook: stalling worker 0 for {stall} ms");
        std::thread::sleep(Duration::from_millis(stall));
    })
    .detach();
}

/// Carries out one command of the control plane.
fn handle(worker: &Rc<Worker>, command: Command) -> io::Result<()> {
    match command {
        Command::AddTcp {
            service,
            key,
            listener,
        } => {
            // Accepts are non-blocking calls after a readiness wait (see `accept_loop`).
            listener.set_nonblocking(true)?;
            let listener = PollFd::new(listener)?;
            let retire = Rc::new(Retire::default());
            worker.listeners.borrow_mut().insert(key, retire.clone());
            let guard = worker.loop_started();
            let worker = worker.clone();
            compio::runtime::spawn(async move {
                accept_loop(&worker, service, listener, &retire).await;
                drop(guard);
            })
            .detach();
        }
        Command::AddUdp { key, setup } => {
            let retire = Rc::new(Retire::default());
            udp::spawn(worker, setup, retire.clone())?;
            worker.listeners.borrow_mut().insert(key, retire);
        }
        Command::Retire { key } => {
            if let Some(retire) = worker.listeners.borrow_mut().remove(&key) {
                retire.set();
            }
        }
        Command::Connections {
            service,
            limit,
            reply,
        } => {
            let now = Instant::now();
            let list = worker
                .table
                .borrow()
                .iter()
                .filter(|c| service.is_none_or(|s| s == c.service))
                .take(limit)
                .map(|c| ConnInfo::of(c, worker.index, now))
                .collect();
            // The asker may have given up (timeout); nothing to do then.
            let _ = reply.send(list);
        }
    }
    Ok(())
}

/// Resolves once the worker tracks no connection.
async fn wait_until_empty(worker: &Worker) {
    wait_until(&worker.conn_closed, || worker.table.borrow().is_empty()).await
}

/// Takes the service's state from the published snapshot when its version moved past
/// `version`. Not there: the service was removed, and the control plane retires the listener
/// right after; until then, the last state serves.
fn follow(worker: &Worker, id: ServiceId, version: &mut u64, state: &mut Arc<ServiceState>) {
    let snapshot = worker.snapshot.load();
    if snapshot.version != *version {
        *version = snapshot.version;
        if let Some(current) = snapshot.service_by_id(id) {
            *state = current.clone();
        }
    }
}

/// Accepts connections for one service until the drain begins or a reload retires the
/// listener, then closes the listener. Follows the service's state through reloads.
///
/// Each accept is a non-blocking `accept(2)` after an io_uring readiness poll, not an io_uring
/// accept: ending the loop then cancels only a poll, and a connection is either taken (and
/// served, also while draining) or left in the queue. A cancelled io_uring accept that had
/// already taken a connection would lose it, and the listening sockets are shared with the
/// process that replaces this one in a binary upgrade, which must find every connection this
/// one did not take.
async fn accept_loop(
    worker: &Rc<Worker>,
    id: ServiceId,
    listener: PollFd<std::net::TcpListener>,
    retire: &Retire,
) {
    let Some(mut state) = worker.snapshot.load().service_by_id(id).cloned() else {
        return;
    };
    // One per (worker, service): relays "close this backend's sessions" locally.
    let closing = std::pin::pin!(forward::watch_closing(worker.clone(), state.clone()));
    let accepting = std::pin::pin!(async {
        let mut version = worker.snapshot.load().version;
        // While accepts fail for want of resources: whether the pause was logged.
        let mut starved: Option<bool> = None;
        let mut stop = std::pin::pin!(worker.retiring(retire));
        // Accepts tried since the last readiness wait.
        let mut burst = 0;
        let mut pace = AcceptPace::default();
        loop {
            // A change publishes a new state for the service (backends, weights, limits).
            follow(worker, id, &mut version, &mut state);
            if state.at_limit() {
                // Pause: leave new connections in the kernel's accept queue until a slot frees.
                let slot = std::pin::pin!(state.wait_for_slot(&worker.slot_freed));
                if let Either::Right(_) = select(slot, stop.as_mut()).await {
                    break;
                }
                continue;
            }
            if retire.is_set() || worker.shutdown.is_draining() {
                break;
            }
            // After a burst (or a connection, see `AcceptPace`), one readiness wait lets the
            // worker's other tasks run.
            burst += 1;
            let tried = pace.tries(burst);
            let attempt = if tried {
                listener.accept()
            } else {
                Err(io::ErrorKind::WouldBlock.into())
            };
            let accepted = match attempt {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    pace.waits(burst - usize::from(!tried), tried);
                    burst = 0;
                    let ready = std::pin::pin!(listener.accept_ready());
                    match select(ready, stop.as_mut()).await {
                        Either::Right(_) => break,
                        Either::Left((Ok(()), _)) => continue,
                        Either::Left((Err(e), _)) => Err(e),
                    }
                }
                other => other.and_then(|(s, peer)| Ok((TcpStream::from_std(s)?, peer))),
            };
            match accepted {
                Ok((stream, peer)) => {
                    // The accept may have waited across a change (discovery's first backends,
                    // a removed one): serve the connection with the state published now.
                    follow(worker, id, &mut version, &mut state);
                    // Said only when the pause was: both lines are as rare as the limited one.
                    if starved.take() == Some(true) {
                        tracing::info!(service = %state.config.name, "accepting again");
                    }
                    worker.stats.accepts.inc();
                    // The slot is taken here, before the next accept looks at the limit: the
                    // connection's task runs later, and a burst of accepts that left the taking
                    // to it would accept past the limit (and past the fd budget) before any of
                    // them counted.
                    let slot = forward::Slot::try_take(&state);
                    compio::runtime::spawn(forward::serve(
                        worker.clone(),
                        state.clone(),
                        stream,
                        peer,
                        slot,
                    ))
                    .detach();
                }
                Err(e) => {
                    if is_resource_exhaustion(&e) {
                        // Once per pause of this listener, and one line per second
                        // process-wide however many listeners pause and resume.
                        if starved.is_none() {
                            let said = Reason::AcceptPaused.admit().inspect(|&suppressed| {
                                tracing::warn!(service = %state.config.name, error = %e,
                                    suppressed,
                                    "out of file descriptors or socket memory: accepting paused");
                            });
                            starved = Some(said.is_some());
                        }
                        compio::time::sleep(ACCEPT_BACKOFF).await;
                    } else if let Some(suppressed) = Reason::AcceptFailed.admit() {
                        // Per-connection failures (e.g. the client reset while queued) end one
                        // connection, not the listener.
                        tracing::debug!(service = %state.config.name, error = %e, suppressed,
                            "accept failed");
                    }
                }
            }
        }
    });
    select(accepting, closing).await;
    // The listener closes as this function returns (after the future borrowing it).
    tracing::debug!(worker = worker.index, service = %id, "listener closed");
}

/// Whether an accept failed because ringlb is out of descriptors or memory (every shortage but
/// local ports, which an accept does not use).
pub(super) fn is_resource_exhaustion(e: &io::Error) -> bool {
    use crate::control::local::LocalShortage;
    matches!(LocalShortage::of(e), Some(s) if s != LocalShortage::Ports)
}

#[cfg(test)]
#[path = "worker_tests.rs"]
mod tests;
