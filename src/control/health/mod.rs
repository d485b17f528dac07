//! The health checker: the control-plane thread that probes backends out of band.
//!
//! Owns: one thread (`ringlb-health`) running a plain tokio current-thread runtime (epoll, per
//! the design), one task per checked backend, and each backend's [`HealthMachine`]; and, for
//! services with `[service.agent]`, one agent task per backend ([`agent`]). Workers never run a
//! probe and never wait on this thread. The probes themselves are in [`probe`] (TCP, Redis,
//! PostgreSQL) and [`probe_http`] (HTTP).
//!
//! Pace: a task probes every `interval`, and every `fast_interval` while its backend is between
//! states (a result that disagrees with the backend's state but is not yet confirmed by `fall`
//! or `rise` in a row: [`HealthMachine::settling`]), so a change is confirmed quickly without
//! probing every backend fast all the time.
//!
//! How results reach the workers: a task applies each probe result to its backend's state
//! machine; a transition flips the backend's atomic health flag inside the shared
//! [`BackendState`](super::BackendState) (see `control::backend` for why atomics and not a
//! republished snapshot) through [`ServiceState::mark_down`] / [`ServiceState::mark_up`], which
//! log it once with its reason, close live sessions when the service asks for it, start the
//! slow-start ramp and update the service-level state. The next selection on any worker reads
//! the new flag; live sessions that must close are woken through the backend's close event.
//!
//! Passive detection runs on the workers (consecutive connect failures mark a backend down at
//! once); each task notices it through the backend's passive-down count before applying its next
//! result, so its machine agrees, and `rise` passing probes bring the backend back.
//!
//! Local shortages: a probe that cannot open its socket or connect because ringlb itself is out
//! of ports, descriptors or memory ([`ProbeFailure::Local`]) is neither a pass nor a failure:
//! the backend's machine is not fed, its last check says it was not checked and why, the
//! shortage is counted (`control::local`, source `probe`), and entering and leaving a shortage is
//! logged and alerted once for the whole checker ([`shortage`]). Without this, ringlb running out
//! of ephemeral ports (its own closed connections in TIME_WAIT) would mark every backend down.
//! The descriptors the checker needs are kept aside from the data plane's connection budget
//! ([`reserved_fds`]), so a data plane at its open-files limit does not stop the probes.
//!
//! Reloads: the tasks are keyed by (service name, backend address) and look their backend up in
//! the current snapshot for every result, so a reload only has to call
//! [`HealthChecker::sync`]: tasks of backends that stay keep running with their state, new
//! backends get a task, removed ones lose theirs.

pub mod agent;
pub mod probe;
pub mod probe_http;
pub mod shortage;

/// What the unit tests of the checks share.
#[cfg(test)]
pub(crate) mod test_util {
    /// Runs `f` to completion on a current-thread tokio runtime with I/O and timers enabled.
    pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }
}

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use event_listener::Event;
use parking_lot::Mutex;

use crate::balancer::health::{HealthMachine, Transition};
use crate::config::{AgentCheck, Config, HealthCheck};
use crate::control::local::{self, ShortageSource};
use crate::control::wait::wait_until;

use self::probe::ProbeFailure;
use self::shortage::{Mark, Shortages};
use super::{LastCheck, ServiceState, SharedSnapshot};

/// Descriptors the checker's tokio runtime holds for its life: its epoll instance and the
/// eventfd that wakes it.
pub const RUNTIME_FDS: u64 = 2;

/// Descriptors the health checker needs at most at once for `config`: its runtime's, and one
/// socket per checked backend and one per agent-checked backend (a probe or agent query opens
/// one socket, and a backend's next one starts only after the previous one ended). The connection budget keeps these aside
/// (`ConnectionBudget::for_config`), so probes still run while the data plane is at its limit.
/// The budget is sized at start: backends a reload adds are covered by the spare room of
/// `FD_RESERVE`.
pub fn reserved_fds(config: &Config) -> u64 {
    let probes: u64 = config
        .services
        .iter()
        .map(|s| {
            let tasks = u64::from(s.health.is_some()) + u64::from(s.agent.is_some());
            tasks * s.backends.len() as u64
        })
        .sum();
    if probes == 0 { 0 } else { RUNTIME_FDS + probes }
}

/// Tells the checker thread to stop.
#[derive(Debug, Default)]
struct Stop {
    stopped: AtomicBool,
    event: Event,
}

impl Stop {
    async fn wait(&self) {
        wait_until(&self.event, || self.stopped.load(Ordering::Acquire)).await
    }
}

/// The running checker thread.
#[derive(Debug)]
pub struct HealthChecker {
    thread: Option<JoinHandle<()>>,
    stop: Arc<Stop>,
    runtime: tokio::runtime::Handle,
    snapshot: SharedSnapshot,
    /// Whether probes are stopped by a local shortage, over all tasks.
    shortages: Arc<Shortages>,
    /// One probe task per checked backend and one agent task per backend of a service with an
    /// agent check.
    jobs: Mutex<HashMap<JobKey, Job>>,
}

/// A task's service name, backend address, and whether it is the agent's.
type JobKey = (String, SocketAddr, bool);

/// What a task runs with; a change restarts it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Settings {
    /// The health check and the backend's `health_port`.
    Health {
        check: HealthCheck,
        port: Option<u16>,
    },
    /// The agent check.
    Agent(AgentCheck),
}

/// A backend's probe or agent task and the settings it runs with.
#[derive(Debug)]
struct Job {
    settings: Settings,
    task: tokio::task::AbortHandle,
}

impl HealthChecker {
    /// Starts the checker thread and probes every backend of every service of the current
    /// snapshot that has `[service.health]`.
    pub fn start(snapshot: &SharedSnapshot) -> io::Result<HealthChecker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let handle = runtime.handle().clone();
        let stop = Arc::new(Stop::default());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ringlb-health".to_owned())
            .spawn(move || {
                runtime.block_on(stop2.wait());
                // Dropping the runtime cancels every task; their probes' sockets close.
                drop(runtime);
            })?;
        let checker = HealthChecker {
            thread: Some(thread),
            stop,
            runtime: handle,
            snapshot: snapshot.clone(),
            shortages: Arc::new(Shortages::new(snapshot.load().process().alerts.clone())),
            jobs: Mutex::new(HashMap::new()),
        };
        let backends = checker.sync();
        if backends > 0 {
            tracing::info!(backends, "health checks started");
        }
        Ok(checker)
    }

    /// Brings the probe tasks in line with the current snapshot (after a reload): a task for
    /// every checked backend, started for new ones, restarted where the check's settings
    /// changed, stopped for backends and services that are gone. A task that stays keeps its
    /// rise/fall state. Returns the number of backends checked now.
    pub fn sync(&self) -> usize {
        let snapshot = self.snapshot.load();
        let mut wanted: HashMap<JobKey, Settings> = HashMap::new();
        for service in &snapshot.services {
            for backend in &service.backends {
                let key = |agent| (service.config.name.clone(), backend.address(), agent);
                if let Some(check) = &service.config.health {
                    let settings = Settings::Health {
                        check: check.clone(),
                        port: backend.config.health_port,
                    };
                    wanted.insert(key(false), settings);
                }
                if let Some(agent) = &service.config.agent {
                    wanted.insert(key(true), Settings::Agent(agent.clone()));
                }
            }
        }
        let mut jobs = self.jobs.lock();
        jobs.retain(|key, job| {
            let keep = wanted.get(key) == Some(&job.settings);
            if !keep {
                job.task.abort();
            }
            keep
        });
        for (key, settings) in wanted {
            if jobs.contains_key(&key) {
                continue;
            }
            let (name, address) = (key.0.clone(), key.1);
            let task = match &settings {
                Settings::Health { check, .. } => self.runtime.spawn(watch(
                    self.snapshot.clone(),
                    self.shortages.clone(),
                    name,
                    address,
                    check.clone(),
                )),
                Settings::Agent(agent) => self.runtime.spawn(agent::watch(
                    self.snapshot.clone(),
                    name,
                    address,
                    agent.clone(),
                )),
            };
            let task = task.abort_handle();
            jobs.insert(key, Job { settings, task });
        }
        jobs.keys().filter(|(_, _, agent)| !agent).count()
    }

    /// Number of backends being checked.
    pub fn backends(&self) -> usize {
        self.jobs
            .lock()
            .keys()
            .filter(|(_, _, agent)| !agent)
            .count()
    }

    /// Stops probing and waits for the thread to end.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.stop.stopped.store(true, Ordering::Release);
        self.stop.event.notify(usize::MAX);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the health checker thread panicked");
        }
    }
}

impl Drop for HealthChecker {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Where probes of `address` go: its host, and the backend's `health_port`, else
/// `check.port`, else its own port.
fn probe_target(address: SocketAddr, health_port: Option<u16>, check: &HealthCheck) -> SocketAddr {
    let port = health_port.or(check.port).unwrap_or(address.port());
    SocketAddr::new(address.ip(), port)
}

/// The service named `name` in the current snapshot and the index of its backend at `address`.
fn locate(
    snapshot: &SharedSnapshot,
    name: &str,
    address: SocketAddr,
) -> Option<(Arc<ServiceState>, usize)> {
    let snapshot = snapshot.load();
    let service = snapshot.service(name)?;
    let index = service.backend_index(address)?;
    Some((service.clone(), index))
}

/// Probes one backend every `interval` until its task is aborted (the backend or its check
/// left the config) or the runtime is dropped. Each result is applied to the backend's state in
/// the snapshot current at that moment, so reloads in between are followed.
async fn watch(
    snapshot: SharedSnapshot,
    shortages: Arc<Shortages>,
    name: String,
    address: SocketAddr,
    check: HealthCheck,
) {
    let Some((service, index)) = locate(&snapshot, &name, address) else {
        return;
    };
    let target = probe_target(address, service.backends[index].config.health_port, &check);
    let live = service.backends[index].live.clone();
    let counters = service.backends[index].counters.clone();
    drop(service);
    // A backend that is down already (a task restarted by a reload) starts from that state.
    let mut machine =
        HealthMachine::new(check.rise, check.fall, Instant::now()).starting_as(live.healthy());
    let mut passive_seen = live.passive_downs();
    // Held while this backend's last probe could not run for a local shortage.
    let mut short: Option<Mark> = None;
    // The first probe runs at once; each next one `interval` after the start of the previous
    // (`fast_interval` while the machine is between states). A probe that overran (it cannot:
    // timeout <= interval) or a stalled thread does not cause a burst of catch-up probes.
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        let started = Instant::now();
        // The backend's source addresses as the current snapshot has them (a reload may change
        // them without restarting this task).
        let sources = locate(&snapshot, &name, address)
            .map(|(s, i)| s.backends[i].config.sources(&s.config.source).to_vec())
            .unwrap_or_default();
        let result = probe::run_from(&check.probe, target, &sources, check.timeout).await;
        let now = Instant::now();
        let took = now.duration_since(started);
        let took_ms = took.as_millis() as u64;
        if let Err(ProbeFailure::Local(what)) = &result {
            local::count(ShortageSource::Probe, *what);
            if short.is_none() {
                short = Some(Mark::take(&shortages, &name, target, *what, now));
            }
        } else {
            // The probe got through to the backend: this backend is out of the shortage.
            short = None;
            counters.probes.inc();
        }
        *counters.last_check.lock() = Some(LastCheck {
            at: SystemTime::now(),
            passed: result.is_ok(),
            reason: result
                .as_ref()
                .err()
                .map(|f| f.to_string())
                .unwrap_or_default(),
            took,
        });
        let passive = live.passive_downs();
        if passive != passive_seen {
            // The workers marked it down meanwhile (and logged it): agree before going on.
            passive_seen = passive;
            machine.force_down(now);
        }
        match &result {
            Ok(()) => tracing::debug!(service = %name, backend = %target,
                took_ms, "probe passed"),
            Err(failure @ ProbeFailure::Local(_)) => tracing::debug!(service = %name,
                backend = %target, reason = %failure, "probe not run"),
            Err(failure) => {
                counters.probe_failures.inc();
                tracing::debug!(service = %name, backend = %target,
                    took_ms, reason = %failure, "probe failed");
            }
        }
        let Some((service, index)) = locate(&snapshot, &name, address) else {
            return;
        };
        match (record(&mut machine, &result, now), &result) {
            (Some(Transition::Down), Err(failure)) => {
                service.mark_down(index, failure);
            }
            (Some(Transition::Up), _) => {
                let reason = format!(
                    "{} probe{} passed in a row",
                    check.rise,
                    if check.rise == 1 { "" } else { "s" }
                );
                service.mark_up(index, &reason, now);
            }
            _ => {}
        }
        let pace = if machine.settling() {
            check.fast_interval
        } else {
            check.interval
        };
        next = (next + pace).max(tokio::time::Instant::now());
    }
}

/// Applies one probe result to the backend's machine: a pass or a failure of the backend
/// counts for rise/fall; a local shortage is neither and leaves the machine as it was.
fn record(
    machine: &mut HealthMachine,
    result: &Result<(), ProbeFailure>,
    now: Instant,
) -> Option<Transition> {
    match result {
        Err(ProbeFailure::Local(_)) => None,
        _ => machine.record(result.is_ok(), now),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::control::local::LocalShortage;

    fn t(ms: u64) -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    const LOCAL: Result<(), ProbeFailure> = Err(ProbeFailure::Local(LocalShortage::Ports));
    const FAIL: Result<(), ProbeFailure> = Err(ProbeFailure::Refused);
    const PASS: Result<(), ProbeFailure> = Ok(());

    #[test]
    fn a_local_probe_failure_leaves_the_health_machine_alone() {
        // Fresh: the first real result still decides at once, however many local ones came
        // before.
        let mut m = HealthMachine::new(2, 1, t(0));
        for i in 1..=50 {
            assert_eq!(record(&mut m, &LOCAL, t(i)), None);
        }
        assert!(m.healthy());
        assert_eq!(m.since(), t(0));
        assert_eq!(record(&mut m, &FAIL, t(51)), Some(Transition::Down));

        // A local result neither counts toward `rise` nor breaks the streak.
        assert_eq!(record(&mut m, &PASS, t(52)), None);
        assert_eq!(record(&mut m, &LOCAL, t(53)), None);
        assert!(!m.healthy());
        assert_eq!(record(&mut m, &PASS, t(54)), Some(Transition::Up));

        // The same for `fall`.
        let mut m = HealthMachine::new(1, 3, t(0));
        assert_eq!(record(&mut m, &PASS, t(1)), None);
        let results = [FAIL, LOCAL, LOCAL, FAIL, LOCAL];
        for (i, r) in results.iter().enumerate() {
            assert_eq!(record(&mut m, r, t(2 + i as u64)), None);
        }
        assert!(m.healthy());
        assert_eq!(record(&mut m, &FAIL, t(10)), Some(Transition::Down));
    }
}
