//! The health checker: the control-plane thread that probes backends out of band.
//!
//! Owns: one thread (`ringlb-health`) running a plain tokio current-thread runtime (epoll, per
//! the design), one task per checked backend, and each backend's [`HealthMachine`]. Workers
//! never run a probe and never wait on this thread.
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
//! Scope: the tasks are made from the snapshot given at start; a reload (a later issue) must
//! restart the checker with the new snapshot.

pub mod probe;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;

use event_listener::Event;

use crate::balancer::health::{HealthMachine, Transition};
use crate::config::HealthCheck;

use super::{ServiceState, Snapshot};

/// Tells the checker thread to stop.
#[derive(Debug, Default)]
struct Stop {
    stopped: AtomicBool,
    event: Event,
}

impl Stop {
    async fn wait(&self) {
        loop {
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            let listener = self.event.listen();
            if self.stopped.load(Ordering::Acquire) {
                return;
            }
            listener.await;
        }
    }
}

/// The running checker thread.
#[derive(Debug)]
pub struct HealthChecker {
    thread: Option<JoinHandle<()>>,
    stop: Arc<Stop>,
    backends: usize,
}

impl HealthChecker {
    /// Starts probing every backend of every service that has `[service.health]`. Returns
    /// `None` (no thread) when no service has checks.
    pub fn start(snapshot: &Snapshot) -> io::Result<Option<HealthChecker>> {
        let jobs: Vec<(Arc<ServiceState>, usize)> = snapshot
            .services
            .iter()
            .filter(|s| s.config.health.is_some())
            .flat_map(|s| (0..s.backends.len()).map(move |i| (s.clone(), i)))
            .collect();
        if jobs.is_empty() {
            return Ok(None);
        }
        let backends = jobs.len();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let stop = Arc::new(Stop::default());
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ringlb-health".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    for (service, index) in jobs {
                        tokio::spawn(watch(service, index));
                    }
                    stop2.wait().await;
                });
                // Dropping the runtime cancels every task; their probes' sockets close.
                drop(runtime);
            })?;
        tracing::info!(backends, "health checks started");
        Ok(Some(HealthChecker {
            thread: Some(thread),
            stop,
            backends,
        }))
    }

    /// Number of backends being checked.
    pub fn backends(&self) -> usize {
        self.backends
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

/// Where probes of `address` go: its host, and `check.port` when set.
fn probe_target(address: SocketAddr, check: &HealthCheck) -> SocketAddr {
    SocketAddr::new(address.ip(), check.port.unwrap_or(address.port()))
}

/// Probes one backend every `interval` until the runtime is dropped.
async fn watch(service: Arc<ServiceState>, index: usize) {
    let Some(check) = service.config.health.clone() else {
        return;
    };
    let backend = &service.backends[index];
    let target = probe_target(backend.address(), &check);
    let mut machine = HealthMachine::new(check.rise, check.fall, Instant::now());
    let mut passive_seen = backend.live.passive_downs();
    let mut ticks = tokio::time::interval(check.interval);
    // A probe that overran (it cannot: timeout <= interval) or a stalled thread does not cause
    // a burst of catch-up probes.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let result = probe::run(&check.probe, target, check.timeout).await;
        let now = Instant::now();
        let took_ms = now.duration_since(started).as_millis() as u64;
        let counters = &backend.counters;
        counters.probes.fetch_add(1, Ordering::Relaxed);
        let passive = backend.live.passive_downs();
        if passive != passive_seen {
            // The workers marked it down meanwhile (and logged it): agree before going on.
            passive_seen = passive;
            machine.force_down(now);
        }
        match &result {
            Ok(()) => tracing::debug!(service = %service.config.name, backend = %target,
                took_ms, "probe passed"),
            Err(failure) => {
                counters.probe_failures.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(service = %service.config.name, backend = %target,
                    took_ms, reason = %failure, "probe failed");
            }
        }
        match (machine.record(result.is_ok(), now), &result) {
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
    }
}
