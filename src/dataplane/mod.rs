//! The data plane: worker threads, each with its own io_uring runtime (compio).
//!
//! Owns: worker threads and their runtimes, listening sockets, accepting, backend connects and
//! byte forwarding, each worker's connection-tracking table, and UDP flows. compio types stay
//! inside this module. Does not own: backend choice (the [`crate::balancer`] selectors, read
//! through the [`crate::control::Snapshot`]) or deciding when to shut down
//! ([`crate::control::Shutdown`]).
//!
//! This file starts and drains the workers and answers the control plane's questions. The
//! parts: `worker` (one worker's runtime, listeners and mailbox), `listener` (binding sockets),
//! `reload` (listeners across a reload: prepare, then commit), `handoff` (listening sockets
//! passed by systemd or by the ringlb this process replaces, and copies of its own to hand on),
//! `forward` (one TCP connection),
//! `source` (the local address and port of backend connections),
//! `splice` (pipes for bulk transfers), `udp` (UDP services and flows), and `sys` (the
//! non-blocking socket calls, one convention for TCP and UDP).
//!
//! Per connection, no lock is shared across workers except, with persistence, one stick-table
//! shard (chosen by the client's address) and, with `access_log`, stderr's (one line per
//! connection). The rest is lock-free or this worker's alone: the snapshot is loaded lock-free,
//! counters are atomics, the tracking table belongs to one thread, the two latency records (at
//! connect and at close) lock this worker's own shard of the backend's histogram (shared only
//! beyond 16 workers, and with a `/metrics` scrape while it merges), and the worker-local events
//! (a connection closed, its backend's sessions must close) take their listener-list lock on
//! this thread only. Rarer steps take shared locks: a slot freed while accepting is paused at a
//! limit notifies the budget's event, and a connect failure that marks a backend down takes its
//! service's transition lock.

mod admission;
mod forward;
mod handoff;
mod listener;
mod reload;
mod source;
mod splice;
mod sys;
mod udp;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use crossbeam::channel::{Receiver, RecvTimeoutError};
use crossbeam::utils::CachePadded;
use parking_lot::Mutex;

use crate::balancer::conntrack::{Conn, ConnState};
use crate::config::{Config, Protocol};
use crate::control::{ConnectionBudget, Counter, ServiceId, SharedSnapshot, Shutdown};

pub use handoff::{Inherited, Passed};
pub use listener::{
    BindOptions, UDP_SOCKET_BUFFER, bind_tcp, bind_tcp_with, bind_udp, bind_udp_with,
};
pub use reload::PreparedListeners;
use reload::{Bound, commands, log_listening, prepare};
pub use source::{bind_no_port, set_bind_address_no_port};

/// io_uring settings for a thread that owns its ring alone (a worker, a load-tool thread, a
/// `bench serve` thread). Only that thread submits (SINGLE_ISSUER), and the kernel runs
/// completion work only when the thread asks for completions (DEFER_TASKRUN, COOP_TASKRUN).
/// Without them, every readiness wake-up of a socket the ring polls interrupts the thread with
/// an IPI (`kick_process`): measured under `redis-benchmark -c 50`, 0.8 IPIs per request and a
/// third of the throughput. 4096 entries leave room for a read and a write per direction on
/// ~1,000 busy connections per loop turn.
///
/// A runtime takes one builder: `RuntimeBuilder::with_proactor` replaces any earlier one, so
/// further settings go onto this builder, never onto a second.
pub fn ring_settings() -> compio::driver::ProactorBuilder {
    let mut proactor = compio::driver::ProactorBuilder::new();
    proactor
        .single_issuer(true)
        .coop_taskrun(true)
        .defer_taskrun(true)
        .capacity(4096);
    proactor
}

/// A runtime on [`ring_settings`] for a thread that owns its ring alone and needs nothing more
/// of it (the load tool's threads).
pub fn ring_runtime() -> io::Result<compio::runtime::Runtime> {
    compio::runtime::RuntimeBuilder::new()
        .with_proactor(ring_settings())
        .build()
}

/// Errors starting the data plane; each names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    /// Another process (without `SO_REUSEPORT` sharing) holds the listen address.
    #[error("listen address {0} is already in use by another process")]
    ListenerAddressInUse(SocketAddr),
    /// The listen address is not assigned to this host (and `[runtime] freebind` is off).
    #[error(
        "cannot listen on {0}: the address is not assigned to this host; for a virtual address \
         that moves between hosts set `freebind = true` in [runtime] (or the sysctl \
         net.ipv4.ip_nonlocal_bind = 1)"
    )]
    AddressNotLocal(SocketAddr),
    /// Binding or listening failed for another reason.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address that could not be bound.
        address: SocketAddr,
        /// The operating system's error.
        source: io::Error,
    },
    /// A worker's io_uring runtime could not be created or could not take its listeners.
    #[error("cannot start the io_uring runtime: {0}")]
    Runtime(io::Error),
    /// A listening socket passed by systemd does not fit the service named like it.
    #[error("the socket passed for service {service} does not fit it: {reason}")]
    Inherited {
        /// The service.
        service: String,
        /// What does not fit.
        reason: String,
    },
    /// A worker thread could not be started.
    #[error("cannot start worker thread {index}: {source}")]
    Thread {
        /// The worker's index.
        index: usize,
        /// The operating system's error.
        source: io::Error,
    },
}

/// A service as it listens: its name and the address it was bound to (port 0 resolved).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listening {
    /// The service's name.
    pub service: String,
    /// The bound address.
    pub address: SocketAddr,
}

/// Identifies one bound listener (a service's sockets on every worker) across the workers, so
/// a reload can retire exactly that one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ListenerKey(u64);

impl ListenerKey {
    fn fresh() -> ListenerKey {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ListenerKey(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Counters of one worker, for `/metrics`.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Client connections accepted by this worker since start.
    pub accepts: CachePadded<Counter>,
    /// Connections this worker tracks now.
    pub live: CachePadded<AtomicU64>,
    /// When this worker's loop last turned, as milliseconds since [`WorkerStats::clock`]'s
    /// epoch plus one (0: never). Written by a timer task on the worker's ring at most every
    /// [`HEARTBEAT_EVERY`], read by `GET /health`.
    heartbeat: CachePadded<AtomicU64>,
}

/// How often a worker's timer task records that its loop turns. A store every 100 ms costs
/// nothing measurable; a stuck worker shows within the health check's staleness limit.
pub const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

impl WorkerStats {
    /// The monotonic clock heartbeats are measured on: time since the first call in this
    /// process.
    fn clock() -> std::time::Duration {
        static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed()
    }

    /// Records that the worker's loop turned now.
    pub(crate) fn beat(&self) {
        let ms = u64::try_from(Self::clock().as_millis()).unwrap_or(u64::MAX - 1);
        self.heartbeat.store(ms + 1, Ordering::Relaxed);
    }

    /// How long ago the worker's loop last turned; `None` before its first turn.
    pub fn since_beat(&self) -> Option<std::time::Duration> {
        let beat = self.heartbeat.load(Ordering::Relaxed).checked_sub(1)?;
        let now = u64::try_from(Self::clock().as_millis()).unwrap_or(u64::MAX);
        Some(std::time::Duration::from_millis(now.saturating_sub(beat)))
    }
}

/// One live tracked connection, as the admin API lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ConnInfo {
    /// The service's identity (see [`crate::control::ServiceId`]).
    pub service_id: u64,
    /// The client's address.
    pub client: SocketAddr,
    /// The backend's address, once connected.
    pub backend: Option<SocketAddr>,
    /// "connecting", "established", "client_closed" or "backend_closed".
    pub state: &'static str,
    /// Time since accept.
    pub age_ms: u64,
    /// Time since bytes last moved.
    pub idle_ms: u64,
    /// Bytes from the client to the backend so far.
    pub bytes_up: u64,
    /// Bytes from the backend to the client so far.
    pub bytes_down: u64,
    /// The worker that serves it.
    pub worker: usize,
}

impl ConnInfo {
    fn of(c: &Conn, worker: usize, now: Instant) -> ConnInfo {
        ConnInfo {
            service_id: c.service.0,
            client: c.client,
            backend: c.backend,
            state: match c.state {
                ConnState::Connecting => "connecting",
                ConnState::Established => "established",
                ConnState::ClientClosed => "client_closed",
                ConnState::BackendClosed => "backend_closed",
            },
            age_ms: now.saturating_duration_since(c.started).as_millis() as u64,
            idle_ms: now.saturating_duration_since(c.last_activity).as_millis() as u64,
            bytes_up: c.bytes_up,
            bytes_down: c.bytes_down,
            worker,
        }
    }
}

/// What the control plane keeps to reconfigure running workers and to ask them things.
#[derive(Debug)]
struct Control {
    mailboxes: Vec<async_channel::Sender<worker::Command>>,
    /// Bound listeners by service name, in config order.
    bound: Vec<(String, Bound)>,
}

/// A handle on the running workers for the control plane (admin API, reload): cheap to clone.
#[derive(Clone, Debug)]
pub struct DataPlaneHandle {
    control: Arc<Mutex<Control>>,
    stats: Arc<[Arc<WorkerStats>]>,
    workers: usize,
    shutdown: Arc<Shutdown>,
}

/// Running workers.
#[derive(Debug)]
pub struct DataPlane {
    threads: Vec<JoinHandle<()>>,
    exited: Receiver<usize>,
    shutdown: Arc<Shutdown>,
    snapshot: SharedSnapshot,
    handle: DataPlaneHandle,
}

impl DataPlane {
    /// Binds every service's listeners (or takes the `inherited` ones that fit, see
    /// `handoff`) and starts `config.runtime.workers` workers; no worker tracks more
    /// connections than `budget` allows the whole process.
    pub fn start(
        config: &Config,
        snapshot: SharedSnapshot,
        budget: &Arc<ConnectionBudget>,
        shutdown: Arc<Shutdown>,
        mut inherited: Inherited,
    ) -> Result<DataPlane, DataPlaneError> {
        let workers = config.runtime.workers.max(1);
        let prepared = prepare(&[], config, workers, &mut inherited)?;
        inherited.close_rest();
        let (initial, bound) = commands(prepared, &snapshot.load(), workers);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (exit_tx, exited) = crossbeam::channel::bounded(workers);
        let (ready_tx, ready) = crossbeam::channel::bounded(workers);
        let mut threads = Vec::with_capacity(workers);
        let mut mailboxes = Vec::with_capacity(workers);
        let mut stats = Vec::with_capacity(workers);
        for (index, initial) in initial.into_iter().enumerate() {
            let (mailbox_tx, mailbox) = async_channel::unbounded();
            mailboxes.push(mailbox_tx);
            let worker_stats = Arc::new(WorkerStats::default());
            stats.push(worker_stats.clone());
            let w = worker::WorkerSetup {
                index,
                pin_to: config.runtime.pin_workers.then_some(index % cpus),
                initial,
                mailbox,
                snapshot: snapshot.clone(),
                max_connections: usize::try_from(budget.max()).unwrap_or(usize::MAX),
                budget: budget.clone(),
                shutdown: shutdown.clone(),
                stats: worker_stats,
                exited: exit_tx.clone(),
                ready: ready_tx.clone(),
            };
            let thread = std::thread::Builder::new()
                .name(format!("ringlb-worker-{index}"))
                .spawn(move || worker::run(w))
                .map_err(|source| {
                    // Workers already started must not keep serving.
                    shutdown.abort();
                    DataPlaneError::Thread { index, source }
                })?;
            threads.push(thread);
        }
        drop(ready_tx);
        // Report readiness only once every worker runs its runtime and owns its listeners.
        for _ in 0..workers {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    shutdown.abort();
                    return Err(e);
                }
                Err(_) => {
                    shutdown.abort();
                    return Err(DataPlaneError::Runtime(io::Error::other(
                        "a worker exited while starting",
                    )));
                }
            }
        }
        for (name, b) in &bound {
            log_listening(name, b, workers);
        }
        Ok(DataPlane {
            threads,
            exited,
            snapshot,
            handle: DataPlaneHandle {
                control: Arc::new(Mutex::new(Control { mailboxes, bound })),
                stats: stats.into(),
                workers,
                shutdown: shutdown.clone(),
            },
            shutdown,
        })
    }

    /// The services and the addresses they listen on now.
    pub fn listening(&self) -> Vec<Listening> {
        self.handle.listening()
    }

    /// A handle for the control plane: reconfiguring listeners, listing connections, stats.
    pub fn handle(&self) -> DataPlaneHandle {
        self.handle.clone()
    }

    /// Drains: stops accepting now, lets live connections finish until `deadline`, then closes
    /// the rest and waits for every worker to exit.
    pub fn drain_until(self, deadline: Instant) {
        self.shutdown.drain();
        // The copies kept for a handoff: without them the workers' closes close the sockets,
        // so new connections are refused at once rather than queued where no one accepts.
        for (_, bound) in &mut self.handle.control.lock().bound {
            bound.sockets.clear();
        }
        let mut remaining = self.threads.len();
        while remaining > 0 {
            match self.exited.recv_deadline(deadline) {
                Ok(_) => remaining -= 1,
                Err(RecvTimeoutError::Timeout) => {
                    tracing::warn!(
                        workers = remaining,
                        "drain deadline reached: closing live connections"
                    );
                    self.shutdown.abort();
                    break;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
        log_udp_totals(&self.snapshot);
    }
}

impl DataPlaneHandle {
    /// The services and the addresses they listen on now.
    pub fn listening(&self) -> Vec<Listening> {
        self.control
            .lock()
            .bound
            .iter()
            .map(|(name, b)| Listening {
                service: name.clone(),
                address: b.address,
            })
            .collect()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Each worker's counters, by worker index.
    pub fn stats(&self) -> &[Arc<WorkerStats>] {
        &self.stats
    }

    /// Whether the drain began: the listeners are closed and no new connection is accepted.
    pub fn draining(&self) -> bool {
        self.shutdown.is_draining()
    }

    /// Up to `limit` live tracked connections of every worker (of one service, or all), as
    /// each worker sees them now. A worker that does not answer within `timeout` is left out.
    pub async fn connections(
        &self,
        service: Option<ServiceId>,
        limit: usize,
        timeout: std::time::Duration,
    ) -> Vec<ConnInfo> {
        let mut replies = Vec::new();
        {
            let control = self.control.lock();
            for mailbox in &control.mailboxes {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let command = worker::Command::Connections {
                    service,
                    limit,
                    reply,
                };
                if mailbox.try_send(command).is_ok() {
                    replies.push(answer);
                }
            }
        }
        let mut all = Vec::new();
        for answer in replies {
            if let Ok(Ok(list)) = tokio::time::timeout(timeout, answer).await {
                all.extend(list);
            }
        }
        all.sort_by_key(|c| std::cmp::Reverse(c.age_ms));
        all.truncate(limit);
        all
    }
}

/// Logs each UDP service's flow and datagram totals once the workers stopped: the last word on
/// a run's evictions and failures, after the admin API's `/metrics` has stopped answering.
fn log_udp_totals(snapshot: &SharedSnapshot) {
    for state in &snapshot.load().services {
        if state.config.protocol != Protocol::Udp {
            continue;
        }
        let c = &state.counters;
        let failures: u64 = state
            .backends
            .iter()
            .map(|b| b.counters.connect_failures.get())
            .sum();
        tracing::info!(
            service = %state.config.name,
            flows_opened = c.udp_flows_opened.get(),
            flows_peak = c.udp_flows_peak.load(Ordering::Relaxed),
            flows_evicted = c.udp_flows_evicted.get(),
            flows_expired = c.udp_flows_expired.get(),
            flows_answered = c.udp_flows_answered.get(),
            datagrams_up = c.udp_datagrams_up.get(),
            datagrams_down = c.udp_datagrams_down.get(),
            datagrams_dropped = c.udp_datagrams_dropped.get(),
            kernel_drops = c.udp_kernel_drops.get(),
            backend_failures = failures,
            "udp totals"
        );
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io;
    use std::os::fd::AsRawFd;

    use super::ring_runtime;

    /// Asks `ring` for completions from another thread: io_uring refuses that with EEXIST when
    /// the ring runs completion work only for its own thread (DEFER_TASKRUN).
    pub(crate) fn wait_from_another_thread(ring: std::os::fd::RawFd) -> io::Result<()> {
        std::thread::spawn(move || {
            const IORING_ENTER_GETEVENTS: libc::c_uint = 1;
            // SAFETY: io_uring_enter with nothing to submit and min_complete 0 reads no memory
            // of ours (no argument pointer, size 0); `ring` stays open while the runtime that
            // owns it lives, which outlives this joined thread.
            let ret = unsafe {
                libc::syscall(
                    libc::SYS_io_uring_enter,
                    ring,
                    0 as libc::c_uint,
                    0 as libc::c_uint,
                    IORING_ENTER_GETEVENTS,
                    std::ptr::null::<libc::c_void>(),
                    0 as libc::size_t,
                )
            };
            if ret < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        })
        .join()
        .expect("the probing thread does not panic")
    }

    #[test]
    fn rings_run_completion_work_only_for_their_own_thread() {
        let runtime = ring_runtime().unwrap();
        let err = wait_from_another_thread(runtime.as_raw_fd()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
        // The probe tells the two apart: a ring with default settings lets any thread wait.
        let plain = compio::runtime::RuntimeBuilder::new().build().unwrap();
        wait_from_another_thread(plain.as_raw_fd()).unwrap();
    }
}
