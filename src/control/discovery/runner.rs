//! The discovery runner: one thread (a tokio current-thread runtime, like the health checker's)
//! with one watch task per discovering service and one supervisor that applies their answers.
//!
//! Owns: starting, restarting and stopping watches as the running config changes (a watch
//! whose service's `[service.discovery]` is unchanged keeps running across a reload), the
//! capped exponential backoff after a registry fault (100 ms doubling to 10 s), turning an
//! answer that differs from the applied set into a [`Change::SetBackends`] (the discovered
//! backends, with the service's defaults; the change path puts the file's in front), and the
//! per-service status ([`Board`]): counters, last update, last error, the failed/recovered
//! transitions (one log line and one alert each). Does not own: the change itself (the [`Target`], i.e. the
//! instance, applies it through the one change path) or talking to a registry (the sources).
//!
//! Changes stay serialized: only the supervisor applies, one at a time, each on a blocking
//! thread while it waits.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::consul::ConsulWatch;
use super::dns::DnsWatch;
use super::status::Board;
use super::{Answer, DiscoveryError, Source};
use crate::admin::Change;
use crate::config::{Backend, Config, Discovery, DiscoverySettings, Origin};
use crate::control::alerts::AlertPublisher;

/// First wait after a registry fault; it doubles after each further one.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(100);
/// Longest wait between two attempts after faults.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// How often the supervisor looks for a new running config (a reload) to follow.
const FOLLOW_EVERY: Duration = Duration::from_millis(100);

/// What the runner changes and reads: the running instance.
pub trait Target: Send + Sync + 'static {
    /// The config running now.
    fn config(&self) -> Arc<Config>;
    /// Applies [`Change::SetBackends`] through the one change path. Blocking.
    fn apply(&self, change: Change) -> Result<(), String>;
    /// Where discovery transitions are published as alerts.
    fn alerts(&self) -> AlertPublisher;
    /// The discovery status shown in `/status` and `/metrics`.
    fn board(&self) -> &Board;
}

/// The running discovery thread; stopped by [`DiscoveryRunner::stop`] or when dropped.
#[derive(Debug)]
pub struct DiscoveryRunner {
    thread: Option<std::thread::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

/// One message from a watch to the supervisor.
struct Report {
    service: String,
    generation: u64,
    result: Result<Answer, DiscoveryError>,
}

/// A running watch task.
struct Running {
    settings: DiscoverySettings,
    generation: u64,
    task: tokio::task::JoinHandle<()>,
}

impl DiscoveryRunner {
    /// Starts the discovery thread for `target`'s running config (and every config it runs
    /// later).
    pub fn start<T: Target>(target: Arc<T>) -> io::Result<DiscoveryRunner> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop, stopped) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("ringlb-discovery".to_owned())
            .spawn(move || {
                runtime.block_on(supervise(target, stopped));
                // Dropping the runtime cancels every watch; their connections close.
                drop(runtime);
            })?;
        Ok(DiscoveryRunner {
            thread: Some(thread),
            stop,
        })
    }

    /// Stops every watch and the thread; a change being applied finishes first.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let _ = self.stop.send(true);
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the discovery thread panicked");
        }
    }
}

impl Drop for DiscoveryRunner {
    fn drop(&mut self) {
        self.shut_down();
    }
}

async fn supervise<T: Target>(target: Arc<T>, mut stopped: watch::Receiver<bool>) {
    let (tx, mut rx) = mpsc::channel::<Report>(64);
    let mut running: HashMap<String, Running> = HashMap::new();
    let mut generation = 0u64;
    let mut followed: Option<Arc<Config>> = None;
    loop {
        let config = target.config();
        if !followed.as_ref().is_some_and(|f| Arc::ptr_eq(f, &config)) {
            follow(&config, &mut running, &mut generation, &tx, target.board());
            followed = Some(config);
        }
        tokio::select! {
            _ = stopped.changed() => break,
            () = tokio::time::sleep(FOLLOW_EVERY) => {}
            Some(report) = rx.recv() => {
                let current = running
                    .get(&report.service)
                    .is_some_and(|r| r.generation == report.generation);
                if current {
                    handle(&target, report).await;
                }
            }
        }
    }
    for (_, r) in running.drain() {
        r.task.abort();
    }
}

/// Starts, restarts and stops watches so that they match `config`.
fn follow(
    config: &Config,
    running: &mut HashMap<String, Running>,
    generation: &mut u64,
    tx: &mpsc::Sender<Report>,
    board: &Board,
) {
    running.retain(|name, r| {
        let keep = config
            .services
            .iter()
            .any(|s| &s.name == name && s.discovery.as_ref() == Some(&r.settings));
        if !keep {
            r.task.abort();
        }
        keep
    });
    for s in &config.services {
        let Some(settings) = &s.discovery else {
            continue;
        };
        if running.contains_key(&s.name) {
            continue;
        }
        *generation += 1;
        board.watching(&s.name, &settings.source);
        let task = tokio::spawn(watch_loop(
            s.name.clone(),
            settings.clone(),
            *generation,
            tx.clone(),
        ));
        running.insert(
            s.name.clone(),
            Running {
                settings: settings.clone(),
                generation: *generation,
                task,
            },
        );
    }
    board.retain(|name| running.contains_key(name));
}

/// Either source, so one loop drives both.
enum AnySource {
    Consul(Box<ConsulWatch>),
    Dns(Box<DnsWatch>),
}

impl AnySource {
    fn new(settings: &DiscoverySettings) -> Result<AnySource, DiscoveryError> {
        let max = settings.max_backends;
        Ok(match &settings.source {
            Discovery::Consul(c) => AnySource::Consul(Box::new(ConsulWatch::new(c, max)?)),
            Discovery::Dns(d) => AnySource::Dns(Box::new(DnsWatch::new(d, max)?)),
        })
    }

    async fn next(&mut self) -> Result<Answer, DiscoveryError> {
        match self {
            AnySource::Consul(s) => s.next().await,
            AnySource::Dns(s) => s.next().await,
        }
    }
}

/// One service's watch: answers and faults go to the supervisor; a fault waits the backoff.
async fn watch_loop(
    service: String,
    settings: DiscoverySettings,
    generation: u64,
    tx: mpsc::Sender<Report>,
) {
    let mut failures = 0u32;
    let mut source: Option<AnySource> = None;
    loop {
        let result = match &mut source {
            Some(s) => s.next().await,
            None => match AnySource::new(&settings) {
                Ok(s) => {
                    source = Some(s);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        let failed = result.is_err();
        let report = Report {
            service: service.clone(),
            generation,
            result,
        };
        if tx.send(report).await.is_err() {
            return;
        }
        if failed {
            tokio::time::sleep(backoff(failures)).await;
            failures = failures.saturating_add(1);
        } else {
            failures = 0;
        }
    }
}

/// The wait after the `n`th fault in a row (0 for the first).
pub fn backoff(n: u32) -> Duration {
    crate::control::alerts::retry_delay(BACKOFF_FIRST, BACKOFF_CAP, n)
}

/// Records a failed query or an answer that could not be applied; the first failure after a
/// success is logged and alerted (`discovery_down`), later ones only counted.
fn failed<T: Target>(target: &Arc<T>, service: &str, e: &DiscoveryError) {
    if target.board().failed(service, e) {
        tracing::warn!(service, reason = %e, "discovery failed: the last good backend set stays");
        target
            .alerts()
            .publish(crate::config::AlertKind::DiscoveryDown, service, None, e);
    }
}

/// Applies an answer that differs from the service's discovered set, and records the outcome.
async fn handle<T: Target>(target: &Arc<T>, report: Report) {
    let Report {
        service, result, ..
    } = report;
    let board = target.board();
    let answer = match result {
        Ok(answer) => answer,
        Err(e) => {
            failed(target, &service, &e);
            return;
        }
    };
    let config = target.config();
    let Some(s) = config.services.iter().find(|s| s.name == service) else {
        return;
    };
    let Some(settings) = &s.discovery else {
        return;
    };
    let origin = settings.source.origin();
    let statics: std::collections::HashSet<std::net::SocketAddr> = s
        .backends
        .iter()
        .filter(|b| b.origin == Origin::Static)
        .map(|b| b.address)
        .collect();
    let discovered: Vec<Backend> = answer
        .instances
        .iter()
        .filter(|d| !statics.contains(&d.address))
        .map(|d| Backend {
            address: d.address,
            spec: d.address.to_string(),
            weight: d.weight,
            max_connections: None,
            backup: d.backup,
            health_port: None,
            source: Vec::new(),
            origin,
            send_proxy: None,
        })
        .collect();
    let same = {
        let now: Vec<&Backend> = s
            .backends
            .iter()
            .filter(|b| b.origin != Origin::Static)
            .collect();
        now.len() == discovered.len() && now.iter().zip(&discovered).all(|(a, b)| *a == b)
    };
    let mut outcome = Ok(());
    if !same {
        // The discovered ones only: the change path puts the running file's static backends
        // in front, so a reload that lands meanwhile keeps its own.
        let change = Change::SetBackends {
            service: service.clone(),
            backends: discovered,
        };
        let t = target.clone();
        outcome = tokio::task::spawn_blocking(move || t.apply(change))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
    }
    match outcome {
        Ok(()) => {
            if board.answered(&service, &answer, !same) {
                tracing::info!(
                    service,
                    instances = answer.instances.len(),
                    "discovery recovered"
                );
                target.alerts().publish(
                    crate::config::AlertKind::DiscoveryUp,
                    &service,
                    None,
                    &format!("{} instances", answer.instances.len()),
                );
            }
        }
        Err(reason) => {
            let e = DiscoveryError::Malformed(format!("the answer was not applied: {reason}"));
            failed(target, &service, &e);
        }
    }
}
