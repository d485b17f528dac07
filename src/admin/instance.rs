//! The running balancer as the operator changes it: hot reload and the admin API's changes.
//!
//! Owns: the current [`Config`], the order in which a change is applied, and the reload
//! counters. Every change (a reload from the file, a weight set through the API, a backend list
//! from service discovery) is a [`Change`] applied by [`Instance::apply`], one at a time:
//!
//! 1. the change becomes the next config and the next [`Snapshot`] through [`Change::next`],
//!    whose doc states what is kept (identity, counters, health, admin state, stick entries,
//!    slow-start ramps) and what is dropped; an invalid change stops here;
//! 2. listeners the change adds or moves are bound ([`DataPlaneHandle::prepare`]); a bind
//!    failure stops the change here, with nothing changed;
//! 3. the snapshot is published, so new connections see the new backends and weights at once
//!    and live ones keep the state they started with;
//! 4. the workers take the new listeners and retire the removed ones
//!    ([`DataPlaneHandle::commit`]); a retired listener stops accepting, its live connections
//!    run to their end;
//! 5. the health checker follows ([`HealthChecker::sync`]), and so do the alert webhooks
//!    ([`Alerts::reconfigure`]).
//!
//! Live connections are never dropped by a change, and a listener that stays is never closed,
//! so new connections are not refused while it happens. `[runtime]` and `[admin]` take effect
//! only at the next start; a reload that changes them says so in the log.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use parking_lot::Mutex;

use crate::balancer::health::Admin;
use crate::config::{Config, ConfigError};
use crate::control::alerts::{AlertPublisher, AlertStats, Alerts};
use crate::control::discovery::{Board, Target};
use crate::control::health::HealthChecker;
use crate::control::{ConnectionBudget, Counter, SharedSnapshot, Snapshot};
use crate::dataplane::{DataPlaneError, DataPlaneHandle, Listening};

use super::change::{Change, Next, names_backend};

/// Why a reload or a change was not applied; the running config stays.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The config file is invalid (or unreadable).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A new listener could not be bound.
    #[error("{0}")]
    Listen(#[from] DataPlaneError),
    /// No service has that name.
    #[error("no service named {0:?}")]
    NoService(String),
    /// The service has no backend at that address.
    #[error("service {service:?} has no backend {backend}")]
    NoBackend {
        /// The service.
        service: String,
        /// The address asked for.
        backend: String,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// What a change did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChangeReport {
    /// The snapshot version now serving.
    pub version: u64,
    /// Services added.
    pub services_added: Vec<String>,
    /// Services removed (their live connections drain).
    pub services_removed: Vec<String>,
    /// Backends added, as "service/address".
    pub backends_added: Vec<String>,
    /// Backends removed, as "service/address" (their live connections run to their end).
    pub backends_removed: Vec<String>,
    /// Listeners opened by the change (new services, or moved ones).
    pub listening: Vec<ListeningReport>,
    /// Settings that need a restart and were left as they were.
    pub needs_restart: Vec<String>,
}

/// A listener a change opened.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ListeningReport {
    /// The service.
    pub service: String,
    /// The bound address.
    pub address: String,
}

/// The running balancer, for the control plane.
#[derive(Debug)]
pub struct Instance {
    /// The config file, when the config came from one (reload reads it again).
    file: Option<PathBuf>,
    /// The file's path, or the name of a config given as text (e.g. `<demo>`).
    source: PathBuf,
    config: ArcSwap<Config>,
    snapshot: SharedSnapshot,
    budget: Arc<ConnectionBudget>,
    dataplane: DataPlaneHandle,
    /// The health checker; `None` once stopped.
    health: Mutex<Option<HealthChecker>>,
    /// The alert sender; `None` once stopped.
    alerts: Mutex<Option<Alerts>>,
    /// Serializes changes.
    changing: Mutex<()>,
    /// The discovery status of each discovering service (written by the discovery runner).
    discovery: Board,
    started: Instant,
    started_wall: SystemTime,
    loaded_wall: Mutex<SystemTime>,
    /// Reloads applied, and reloads refused (invalid config or a bind failure).
    pub reloads: Counter,
    /// Reloads refused.
    pub reload_failures: Counter,
}

impl Instance {
    /// The instance running `config` (loaded from `file`, when it came from one), with the
    /// parts [`crate::Server::start`] started for it.
    pub fn new(
        file: Option<&Path>,
        config: Config,
        snapshot: SharedSnapshot,
        dataplane: DataPlaneHandle,
        health: HealthChecker,
        alerts: Alerts,
    ) -> Instance {
        let budget = snapshot.load().process().budget.clone();
        Instance {
            file: file.map(Path::to_owned),
            source: file.map_or_else(|| PathBuf::from(&config.source), Path::to_owned),
            config: ArcSwap::from_pointee(config),
            snapshot,
            budget,
            dataplane,
            health: Mutex::new(Some(health)),
            alerts: Mutex::new(Some(alerts)),
            changing: Mutex::new(()),
            discovery: Board::default(),
            started: Instant::now(),
            started_wall: SystemTime::now(),
            loaded_wall: Mutex::new(SystemTime::now()),
            reloads: Counter::new(),
            reload_failures: Counter::new(),
        }
    }

    /// The config running now.
    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// The config file's path; for a config given as text (the demo's), its name.
    pub fn path(&self) -> &Path {
        &self.source
    }

    /// The published snapshot.
    pub fn snapshot(&self) -> &SharedSnapshot {
        &self.snapshot
    }

    /// The workers.
    pub fn dataplane(&self) -> &DataPlaneHandle {
        &self.dataplane
    }

    /// The process-wide connection budget.
    pub fn budget(&self) -> &ConnectionBudget {
        &self.budget
    }

    /// The discovery status of each discovering service.
    pub fn discovery(&self) -> &Board {
        &self.discovery
    }

    /// The counters of the alerts (all zero once they are stopped).
    pub fn alert_stats(&self) -> AlertStats {
        self.snapshot.load().process().alerts.stats()
    }

    /// Time since start.
    pub fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// When the process started (wall clock).
    pub fn started_at(&self) -> SystemTime {
        self.started_wall
    }

    /// When the running config was loaded (wall clock).
    pub fn loaded_at(&self) -> SystemTime {
        *self.loaded_wall.lock()
    }

    /// Stops health checks, then alerts (whose last transitions still go out within their
    /// grace time). After a drain; changes are no longer applied to them afterwards.
    pub fn stop_control_plane(&self) {
        let _one_at_a_time = self.changing.lock();
        if let Some(health) = self.health.lock().take() {
            health.stop();
        }
        if let Some(alerts) = self.alerts.lock().take() {
            alerts.stop();
        }
    }

    /// Reads the config file again and applies it (SIGHUP, `POST /reload`). Blocking: reads
    /// the file, may resolve backend host names and binds listeners. A config given as text
    /// has no file to read: refused.
    pub fn reload(&self) -> Result<ChangeReport, ChangeError> {
        crate::systemd::reloading();
        let result = match &self.file {
            Some(file) => Config::load(file)
                .map_err(ChangeError::from)
                .and_then(|config| self.apply(Change::Replace(config))),
            None => Err(ChangeError::Invalid(format!(
                "{} is not a file: there is nothing to reload",
                self.source.display()
            ))),
        };
        match &result {
            Ok(report) => {
                self.reloads.inc();
                *self.loaded_wall.lock() = SystemTime::now();
                tracing::info!(
                    config = %self.source.display(),
                    version = report.version,
                    services_added = ?report.services_added,
                    services_removed = ?report.services_removed,
                    backends_added = ?report.backends_added,
                    backends_removed = ?report.backends_removed,
                    "config reloaded"
                );
            }
            Err(e) => {
                self.reload_failures.inc();
                tracing::error!(config = %self.source.display(), error = %e,
                    "reload refused: the running config stays");
            }
        }
        crate::systemd::reloaded(&crate::systemd::status_line(self));
        result
    }

    /// Sets the weight of one backend until the next reload (which takes the file's weight).
    pub fn set_weight(
        &self,
        service: &str,
        backend: &str,
        weight: u32,
    ) -> Result<ChangeReport, ChangeError> {
        let before = self
            .config()
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.backends.iter().find(|b| names_backend(b, backend)))
            .map(|b| (b.address, b.weight));
        let report = self.apply(Change::SetWeight {
            service: service.to_owned(),
            backend: backend.to_owned(),
            weight,
        })?;
        if let Some((address, from)) = before {
            tracing::info!(service, backend = %address, from, to = weight,
                "backend weight changed through the admin API");
        }
        Ok(report)
    }

    /// Sets a backend's admin state (enable, drain, disable); returns the previous one.
    pub fn set_admin(
        &self,
        service: &str,
        backend: &str,
        admin: Admin,
    ) -> Result<Admin, ChangeError> {
        let snapshot = self.snapshot.load();
        let state = snapshot
            .service(service)
            .ok_or_else(|| ChangeError::NoService(service.to_owned()))?;
        let no_backend = || ChangeError::NoBackend {
            service: service.to_owned(),
            backend: backend.to_owned(),
        };
        let index = state
            .backends
            .iter()
            .position(|b| names_backend(&b.config, backend))
            .ok_or_else(no_backend)?;
        state
            .set_admin(index, admin, Instant::now())
            .ok_or_else(no_backend)
    }

    /// Applies `change`: the one way the running config changes (see the module docs for the
    /// steps, and [`Change::next`] for what is kept and dropped). Blocking: may bind listeners.
    /// On an error nothing has changed.
    pub fn apply(&self, change: Change) -> Result<ChangeReport, ChangeError> {
        let _one_at_a_time = self.changing.lock();
        let current = self.snapshot.load_full();
        let Next {
            config,
            snapshot: next,
            needs_restart,
        } = change.next(&self.config(), &current)?;
        if !needs_restart.is_empty() {
            tracing::warn!(sections = ?needs_restart,
                "these settings take effect at the next start; the running ones stay");
        }
        let prepared = self.dataplane.prepare(&config)?;
        let next = Arc::new(next);
        self.snapshot.store(next.clone());
        let opened = self.dataplane.commit(prepared, &next);
        if let Some(health) = self.health.lock().as_ref() {
            health.sync();
        }
        if let Some(alerts) = self.alerts.lock().as_ref() {
            alerts.reconfigure(&config.alerts.webhooks);
        }
        let report = report(&current, &next, opened, needs_restart);
        self.config.store(Arc::new(config));
        Ok(report)
    }
}

/// The discovery runner applies its answers to the instance, through [`Instance::apply`].
impl Target for Instance {
    fn config(&self) -> Arc<Config> {
        Instance::config(self)
    }

    fn apply(&self, change: Change) -> Result<(), String> {
        Instance::apply(self, change)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn alerts(&self) -> AlertPublisher {
        self.snapshot.load().process().alerts.clone()
    }

    fn board(&self) -> &Board {
        &self.discovery
    }
}

/// What changed between two snapshots.
fn report(
    before: &Snapshot,
    after: &Snapshot,
    opened: Vec<Listening>,
    needs_restart: Vec<String>,
) -> ChangeReport {
    let names = |s: &Snapshot| -> Vec<String> {
        s.services.iter().map(|s| s.config.name.clone()).collect()
    };
    // (service, address) pairs, compared through a set (a discovered service may list tens of
    // thousands of backends); only the differences are formatted.
    fn backends(s: &Snapshot) -> Vec<(&str, SocketAddr)> {
        s.services
            .iter()
            .flat_map(|svc| {
                let name = svc.config.name.as_str();
                svc.backends.iter().map(move |b| (name, b.address()))
            })
            .collect()
    }
    let (old_names, new_names) = (names(before), names(after));
    let (old_backends, new_backends) = (backends(before), backends(after));
    let minus = |a: &[String], b: &[String]| -> Vec<String> {
        let b: HashSet<&String> = b.iter().collect();
        a.iter().filter(|x| !b.contains(x)).cloned().collect()
    };
    let minus_backends = |a: &[(&str, SocketAddr)], b: &[(&str, SocketAddr)]| -> Vec<String> {
        let b: HashSet<&(&str, SocketAddr)> = b.iter().collect();
        a.iter()
            .filter(|x| !b.contains(x))
            .map(|(service, address)| format!("{service}/{address}"))
            .collect()
    };
    ChangeReport {
        version: after.version,
        services_added: minus(&new_names, &old_names),
        services_removed: minus(&old_names, &new_names),
        backends_added: minus_backends(&new_backends, &old_backends),
        backends_removed: minus_backends(&old_backends, &new_backends),
        listening: opened
            .into_iter()
            .map(|l| ListeningReport {
                service: l.service,
                address: l.address.to_string(),
            })
            .collect(),
        needs_restart,
    }
}
