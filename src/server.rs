//! A running ringlb: its start-up in order, its one way to change, and its stop.
//!
//! Owns: the order in which the parts of a balancer start and stop, and what each is handed
//! (the connection budget and the alert publisher go to the snapshot's services as a
//! [`ProcessWide`], never through a global), the ready line, and the handles to reload, apply a
//! [`Change`], drain and stop. Does not own: command-line parsing or signals (`main` maps
//! SIGHUP to [`Server::reload`], the first SIGTERM or SIGINT to [`Server::drain_until`], a
//! second one to [`Shutdown::abort`]), nor what each part does once started.
//!
//! Start-up order, and why:
//!
//! 1. the connection budget, from the open-files limit (logged);
//! 2. the alerts thread, before anything can make a transition, so none goes unannounced;
//! 3. the first [`Snapshot`] of the config, whose services publish through those alerts;
//! 4. the health checker, on its own thread (probes never run on a worker); started before the
//!    workers so the process holds every descriptor of its own before it is ready;
//! 5. the data plane: every listener bound and every worker running its ring, or an error;
//! 6. the [`Instance`] that applies changes from then on;
//! 7. the discovery runner, on its own thread (idle while no service has
//!    `[service.discovery]`, so a reload may add one): it follows the health checker and needs the instance, through which its answers are applied
//!    (until its first answer a discovering service runs with its file's backends only);
//! 8. the admin API, when the config has `[admin]`.
//!
//! Stop runs the other way: the discovery runner first (so no change starts while the rest
//! stops), then the data plane, the health checker and the alerts.
//!
//! A start that fails at some step stops what the steps before it started. Once
//! [`Server::start`] returns, every listener is bound and the workers accept:
//! [`Server::ready_line`] says where.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::{AdminServer, Change, ChangeError, ChangeReport, Instance};
use crate::config::Config;
use crate::control::alerts::Alerts;
use crate::control::discovery::DiscoveryRunner;
use crate::control::health::HealthChecker;
use crate::control::{ConnectionBudget, ProcessWide, SharedSnapshot, Shutdown, Snapshot};
use crate::dataplane::{DataPlane, DataPlaneError, Inherited, Listening};

/// Why a ringlb could not start; whatever had started is stopped again.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The alerts thread could not start.
    #[error("cannot start alerts: {0}")]
    Alerts(#[source] io::Error),
    /// The health checker's thread could not start.
    #[error("cannot start health checks: {0}")]
    Health(#[source] io::Error),
    /// The discovery thread could not start.
    #[error("cannot start service discovery: {0}")]
    Discovery(#[source] io::Error),
    /// A listener could not be bound or a worker could not start.
    #[error(transparent)]
    DataPlane(#[from] DataPlaneError),
    /// The admin API could not listen (its error names the address).
    #[error(transparent)]
    Admin(io::Error),
}

/// A running balancer: workers, health checker, alerts, and the admin API when configured.
#[derive(Debug)]
pub struct Server {
    instance: Arc<Instance>,
    /// The workers; `None` once drained.
    dataplane: Option<DataPlane>,
    shutdown: Arc<Shutdown>,
    admin: Option<SocketAddr>,
    /// The discovery runner; `None` once stopped.
    discovery: Option<DiscoveryRunner>,
}

impl Server {
    /// Starts a balancer running `config` (see the module docs for the order). `file` is where
    /// `config` was loaded from: [`Server::reload`] reads it again; without one (a config
    /// given as text) reloads are refused. Blocking: binds every listener and waits until
    /// every worker runs.
    pub fn start(config: Config, file: Option<&Path>) -> Result<Server, StartError> {
        Server::start_with(config, file, Inherited::none())
    }

    /// [`Server::start`] taking the listening sockets `inherited` from systemd or from the
    /// ringlb this process replaces, where they fit (see [`Inherited`]); the other services
    /// bind their own.
    pub fn start_with(
        config: Config,
        file: Option<&Path>,
        inherited: Inherited,
    ) -> Result<Server, StartError> {
        let shutdown = Arc::new(Shutdown::new());
        let budget = Arc::new(ConnectionBudget::for_config(&config));
        let alerts = Alerts::start(
            &config.alerts.webhooks,
            config.runtime.instance_name.as_deref(),
        )
        .map_err(StartError::Alerts)?;
        let process = ProcessWide {
            budget: budget.clone(),
            alerts: alerts.publisher(),
        };
        let snapshot = Snapshot::from_config(&config, &process).into_shared();
        let health = HealthChecker::start(&snapshot).map_err(StartError::Health)?;
        let dataplane = DataPlane::start(
            &config,
            snapshot.clone(),
            &budget,
            shutdown.clone(),
            inherited,
        )?;
        let admin = config.admin.clone();
        let instance = Arc::new(Instance::new(
            file,
            config,
            snapshot,
            dataplane.handle(),
            health,
            alerts,
        ));
        let mut server = Server {
            instance,
            dataplane: Some(dataplane),
            shutdown,
            admin: None,
            discovery: None,
        };
        // Always started (an idle thread), so a reload may add a discovering service.
        server.discovery =
            Some(DiscoveryRunner::start(server.instance.clone()).map_err(StartError::Discovery)?);
        if let Some(admin) = admin {
            // On an error, dropping `server` stops what started.
            let api =
                AdminServer::start(admin, server.instance.clone()).map_err(StartError::Admin)?;
            server.admin = Some(api.address());
        }
        Ok(server)
    }

    /// The services and the addresses they listen on now (reloads may add, move or remove
    /// some), in config order.
    pub fn listening(&self) -> Vec<Listening> {
        self.instance.dataplane().listening()
    }

    /// The admin API's bound address, when the config has `[admin]`. It serves until the
    /// process exits.
    pub fn admin_address(&self) -> Option<SocketAddr> {
        self.admin
    }

    /// The config running now.
    pub fn config(&self) -> Arc<Config> {
        self.instance.config()
    }

    /// The published snapshot of services and backends.
    pub fn snapshot(&self) -> &SharedSnapshot {
        self.instance.snapshot()
    }

    /// The running instance, as the admin API sees it.
    pub fn instance(&self) -> &Arc<Instance> {
        &self.instance
    }

    /// How long a stop lets live connections finish (`[runtime] drain_timeout`).
    pub fn drain_timeout(&self) -> Duration {
        self.instance.config().runtime.drain_timeout
    }

    /// The shutdown coordination the workers follow: [`Shutdown::abort`] from another thread
    /// closes live connections while [`Server::drain_until`] waits (a second signal).
    pub fn shutdown(&self) -> Arc<Shutdown> {
        self.shutdown.clone()
    }

    /// Reads the config file again and applies it (see [`Instance::reload`]); logged either
    /// way. Blocking.
    pub fn reload(&self) -> Result<ChangeReport, ChangeError> {
        self.instance.reload()
    }

    /// Applies `change` to the running config: the one path for every change (see
    /// [`Instance::apply`] for the steps and [`Change::next`] for what is kept). Blocking.
    pub fn apply(&self, change: Change) -> Result<ChangeReport, ChangeError> {
        self.instance.apply(change)
    }

    /// Drains: stops accepting now, lets live connections finish until `deadline`, then closes
    /// the rest and waits for every worker to exit. Does nothing once drained.
    pub fn drain_until(&mut self, deadline: Instant) {
        if let Some(dataplane) = self.dataplane.take() {
            dataplane.drain_until(deadline);
        }
    }

    /// Stops: closes live connections at once unless [`Server::drain_until`] ran, then stops
    /// the health checks, then the alerts (whose last transitions still go out within their
    /// grace time).
    pub fn stop(mut self) {
        self.stop_parts();
    }

    fn stop_parts(&mut self) {
        if let Some(discovery) = self.discovery.take() {
            discovery.stop();
        }
        self.drain_until(Instant::now());
        self.instance.stop_control_plane();
    }

    /// The ready line: one line of JSON saying where this ringlb serves, meant for scripts and
    /// tests (`ringlb run` prints it on stdout once [`Server::start`] returned):
    ///
    /// ```json
    /// {"ready":{"pid":4242,"services":{"redis":"127.0.0.1:6379"},"admin":"127.0.0.1:9090"}}
    /// ```
    ///
    /// `services` maps each service's name to its bound address (ports chosen by the kernel
    /// for port 0 are filled in); `admin` is `null` without `[admin]`.
    pub fn ready_line(&self) -> String {
        let services: serde_json::Map<String, serde_json::Value> = self
            .listening()
            .into_iter()
            .map(|l| (l.service, l.address.to_string().into()))
            .collect();
        serde_json::json!({
            "ready": {
                "pid": std::process::id(),
                "services": services,
                "admin": self.admin.map(|a| a.to_string()),
            }
        })
        .to_string()
    }
}

impl Drop for Server {
    /// A server dropped without [`Server::stop`] (an error, a failed test) stops the same way.
    fn drop(&mut self) {
        self.stop_parts();
    }
}
