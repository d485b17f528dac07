//! The immutable view of services and backends that workers read for every new connection.
//!
//! Owns: [`Snapshot`], [`ServiceState`], the shared counters they carry, how one snapshot is
//! built from the one before ([`Snapshot::next`]), and handing out [`ServiceId`]s (the type is
//! the balancer core's). Does not own: which config a change leads to and the order in which it
//! is applied ([`crate::admin::Change`], the one path for changes), backend selection (the
//! policy is `balancer::policy`; `pick` adapts it to this state), health and admin transitions
//! (`availability`, `backend`) or any I/O. The process-wide values every service shares (the
//! connection budget, the alert publisher) come in as a [`ProcessWide`] made at start-up,
//! never through a global.
//!
//! A snapshot is built off the data path (selector tables included) and published through an
//! [`ArcSwap`]; a worker loads it with one atomic operation per accepted connection and never
//! waits on the control plane. The shared mutable state a worker touches per connection is the
//! cache-padded atomics in [`ServiceCounters`] and [`BackendCounters`], the worker's own shard of
//! a backend's latency histograms (a short lock no other worker takes below 16 workers), the
//! availability flags of [`super::BackendLive`] (read; written only on transitions), and, with
//! persistence, one short lock of a stick-table shard.
//!
//! Backends are split into two [`Group`]s, primaries and backups, each with its own selector
//! over its members (a selector's indices are positions in its group, mapped back to the
//! service's backend list when candidates are made). Backups get new connections only while no
//! primary is up; see `balancer::policy`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;
use event_listener::Event;
use parking_lot::Mutex;

use crate::balancer::stick::StickTable;
use crate::balancer::{BackendSpec, BackendView, ServiceId};
use crate::config::{Config, Service};

use super::access::Admission;
use super::alerts::AlertPublisher;
use super::backend::{BackendState, init_clock};
use super::histogram::LatencyHistogram;
use super::wait::wait_until;
use super::{ConnectionBudget, Counter};

/// Some of a service's backends and their selector (the balancer core's type).
pub(super) use crate::balancer::Group;

/// Where workers find the current [`Snapshot`].
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// What every service of one running process shares, whichever snapshot holds it: made once at
/// start-up and carried from each snapshot to the next.
#[derive(Clone, Debug)]
pub struct ProcessWide {
    /// The process-wide connection budget (from the open-files limit).
    pub budget: Arc<ConnectionBudget>,
    /// Where health and service transitions are published as alerts.
    pub alerts: AlertPublisher,
}

/// Every service and backend as the data plane must see them now.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped on every publication, so a worker can tell that something changed.
    pub version: u64,
    /// In config order; a worker's listeners refer to services by this index.
    pub services: Vec<Arc<ServiceState>>,
    /// Handed on to the next snapshot.
    process: ProcessWide,
}

impl Snapshot {
    /// Builds the first snapshot of a configuration (selector tables included), as the change
    /// from no service at all: version 1, every service and backend new.
    pub fn from_config(config: &Config, process: &ProcessWide) -> Snapshot {
        init_clock();
        let empty = Snapshot {
            version: 0,
            services: Vec::new(),
            process: process.clone(),
        };
        empty.next(config)
    }

    /// The values shared by every snapshot of this process.
    pub fn process(&self) -> &ProcessWide {
        &self.process
    }

    /// The snapshot that follows this one for `config`: each service and backend of `config`
    /// is built anew (selectors, groups, weights, limits) and takes over the identity and live
    /// state of the same one in this snapshot. Every snapshot is made here: the first (by
    /// [`Snapshot::from_config`], from an empty one) and each change's, by way of
    /// [`crate::admin::Change::next`], whose doc states what is kept and what is dropped.
    pub(crate) fn next(&self, config: &Config) -> Snapshot {
        Snapshot {
            version: self.version + 1,
            services: config
                .services
                .iter()
                .map(|s| {
                    let before = self.service(&s.name).map(|b| b.as_ref());
                    Arc::new(ServiceState::build(s.clone(), &self.process, before))
                })
                .collect(),
            process: self.process.clone(),
        }
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Arc<ServiceState>> {
        self.services.iter().find(|s| s.config.name == name)
    }

    /// The service with identity `id`.
    pub fn service_by_id(&self, id: ServiceId) -> Option<&Arc<ServiceState>> {
        self.services.iter().find(|s| s.id == id)
    }

    /// Publishes this snapshot so workers can load it.
    pub fn into_shared(self) -> SharedSnapshot {
        Arc::new(ArcSwap::from_pointee(self))
    }
}

/// A fresh [`ServiceId`] for a service new in this process (one that keeps its name across a
/// reload keeps its identity instead).
fn fresh_service_id() -> ServiceId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    ServiceId(NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Wakes the workers' watchers when some backend's live sessions must close; shared by every
/// snapshot's state of one service, so sessions that started under an older snapshot hear it.
#[derive(Debug, Default)]
pub(super) struct ClosingSignal {
    /// Bumped when some backend's live sessions must close (see `availability`).
    pub(super) generation: AtomicU64,
    /// Notified after each bump; one watcher task per worker listens, never a session.
    pub(super) event: Event,
}

/// One service: its settings, backends, the selectors built over them, and its stick table.
#[derive(Debug)]
pub struct ServiceState {
    /// Identity across reloads.
    pub id: ServiceId,
    /// The validated settings of this service.
    pub config: Service,
    /// Backends in config order; candidates are indices into this list.
    pub backends: Vec<BackendState>,
    /// The primary (non-backup) backends; never empty.
    pub(super) primaries: Group,
    /// The backups, when the service has any.
    pub(super) backups: Option<Group>,
    /// Session persistence, when configured (kept across reloads while its settings stay).
    pub(super) stick: Option<Arc<StickTable>>,
    /// Backend address -> index, to honour stick-table entries (which store addresses).
    pub(super) by_address: HashMap<SocketAddr, usize>,
    /// Whether some primary is up (healthy and enabled); kept by `availability`.
    pub(super) primary_up: AtomicBool,
    /// Whether some backup is up.
    pub(super) backup_up: AtomicBool,
    /// Serializes recomputing the two flags above, so each service-level change is logged once.
    /// Taken only on backend transitions, never per connection.
    pub(super) transitions: Mutex<()>,
    /// "Sessions must close" for this service, shared across reloads.
    pub(super) closing: Arc<ClosingSignal>,
    /// Process-wide counters of this service, shared across reloads.
    pub counters: Arc<ServiceCounters>,
    /// The process-wide connection budget (from the open-files limit) shared by all services.
    pub budget: Arc<ConnectionBudget>,
    /// Where this service's transitions are published (see `availability`).
    pub(super) alerts: AlertPublisher,
    /// Its source ACL and per-client table (see `access`; the table is kept across reloads
    /// while the limits stay the same).
    pub(super) admission: Admission,
    /// Whether some backend connection carries a PROXY header (`send_proxy` on the service or
    /// on any backend): derived once here, not per connection over every backend.
    pub sends_proxy: bool,
}

impl ServiceState {
    /// Builds the state of a service on its own, outside any snapshot, from its settings; its
    /// connections also count against `budget`, and it publishes no alerts (for tests and
    /// tools; a running ringlb builds its services through [`Snapshot::from_config`]).
    pub fn new(config: Service, budget: Arc<ConnectionBudget>) -> ServiceState {
        let process = ProcessWide {
            budget,
            alerts: AlertPublisher::disabled(),
        };
        ServiceState::build(config, &process, None)
    }

    /// Builds the service state; with `before` (the same service in the previous snapshot), its
    /// identity, counters, closing signal, stick table (same settings) and the live state of
    /// backends at the same address are carried over (see [`crate::admin::Change::next`]).
    fn build(
        config: Service,
        process: &ProcessWide,
        before: Option<&ServiceState>,
    ) -> ServiceState {
        let (backup, primary): (Vec<usize>, Vec<usize>) =
            (0..config.backends.len()).partition(|&i| config.backends[i].backup);
        let specs: Vec<BackendSpec<'_>> = config
            .backends
            .iter()
            .map(|b| BackendSpec {
                key: &b.spec,
                weight: b.weight,
            })
            .collect();
        let group = |members| Group::new(config.algorithm, &specs, members, config.hash_table_size);
        let primaries = group(primary);
        let backups = (!backup.is_empty()).then(|| group(backup));
        let stick = match (config.persistence.as_ref(), before) {
            (Some(p), Some(b)) if b.config.persistence.as_ref() == Some(p) => b.stick.clone(),
            (Some(p), _) => Some(Arc::new(StickTable::new(p.ttl, p.max_entries))),
            (None, _) => None,
        };
        let by_address = config
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.address, i))
            .collect();
        let backends: Vec<BackendState> = config
            .backends
            .iter()
            .map(|b| {
                let kept = before.and_then(|s| s.backend_at(b.address));
                match kept {
                    Some(old) => old.with_config(b.clone()),
                    None => BackendState::new(b.clone()),
                }
            })
            .collect();
        let admission = Admission::build(
            config.access.as_ref(),
            config.limits.as_ref(),
            before.map(|b| &b.admission),
        );
        let sends_proxy =
            config.send_proxy.is_some() || config.backends.iter().any(|b| b.send_proxy.is_some());
        let up = |members: &[usize]| members.iter().any(|&i| backends[i].live.up());
        let primary_up = up(primaries.members());
        let backup_up = backups.as_ref().is_some_and(|g| up(g.members()));
        ServiceState {
            id: before.map_or_else(fresh_service_id, |b| b.id),
            primary_up: AtomicBool::new(primary_up),
            backup_up: AtomicBool::new(backup_up),
            config,
            backends,
            primaries,
            backups,
            stick,
            by_address,
            transitions: Mutex::new(()),
            closing: before.map_or_else(Default::default, |b| b.closing.clone()),
            counters: before.map_or_else(Default::default, |b| b.counters.clone()),
            budget: process.budget.clone(),
            alerts: process.alerts.clone(),
            admission,
            sends_proxy,
        }
    }

    /// The per-client table, when the service has `[service.limits]`.
    pub fn client_table(&self) -> Option<&super::client_table::ClientTable> {
        self.admission.clients()
    }

    /// The backend at `address`, if the service has one.
    pub fn backend_at(&self, address: SocketAddr) -> Option<&BackendState> {
        self.by_address.get(&address).map(|&i| &self.backends[i])
    }

    /// The index of the backend at `address`, if the service has one.
    pub fn backend_index(&self, address: SocketAddr) -> Option<usize> {
        self.by_address.get(&address).copied()
    }

    /// The stick table, when the service has persistence.
    pub fn stick_table(&self) -> Option<&StickTable> {
        self.stick.as_deref()
    }

    /// Tries to take one of the service's `max_connections` slots and one connection of the
    /// process-wide budget. Exact across workers.
    pub fn try_acquire_slot(&self) -> bool {
        if !self.budget.try_acquire() {
            return false;
        }
        let max = u64::from(self.config.max_connections);
        let taken = self
            .counters
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !taken && self.budget.release() {
            self.budget.notify_freed();
        }
        taken
    }

    /// Gives a slot back and wakes workers whose accept loops paused at a limit.
    pub fn release_slot(&self) {
        let before = self.counters.active.fetch_sub(1, Ordering::AcqRel);
        let budget_was_spent = self.budget.release();
        if budget_was_spent || before >= u64::from(self.config.max_connections) {
            self.budget.notify_freed();
        }
    }

    /// Whether a new connection must wait: the service is at `max_connections` or the process
    /// at its connection budget.
    pub fn at_limit(&self) -> bool {
        self.counters.active.load(Ordering::Acquire) >= u64::from(self.config.max_connections)
            || self.budget.exhausted()
    }

    /// Resolves when a connection may be admitted again (or may be: callers re-check).
    /// `freed`: the waiting worker's local event, which its relay of
    /// [`ConnectionBudget::freed_after`] notifies on every freed slot.
    pub async fn wait_for_slot(&self, freed: &Event) {
        wait_until(freed, || !self.at_limit()).await
    }
}

impl BackendView for ServiceState {
    fn len(&self) -> usize {
        self.backends.len()
    }

    fn active(&self, i: usize) -> u64 {
        self.backends[i].counters.active.load(Ordering::Relaxed)
    }

    /// Healthy, enabled and under its own `max_connections`.
    fn ready(&self, i: usize) -> bool {
        let backend = &self.backends[i];
        if !backend.live.up() {
            return false;
        }
        match backend.config.max_connections {
            Some(max) => backend.counters.active.load(Ordering::Relaxed) < u64::from(max),
            None => true,
        }
    }
}

/// Process-wide counters of one service. Each hot field sits on its own cache line so workers
/// updating different counters do not contend.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Client connections currently holding a slot (accepted and not yet closed).
    pub active: CachePadded<AtomicU64>,
    /// Client connections accepted since start.
    pub accepted: CachePadded<Counter>,
    /// Client connections closed because no backend was ready or none could be reached.
    pub no_backend: Counter,
    /// TCP: client connections closed at their PROXY header (`accept_proxy`), per reason.
    pub proxy_rejected: crate::proxyproto::RejectCounters,
    /// Connects to a further candidate after one failed (`retries`).
    pub retries: Counter,
    /// Backend connects that failed for a local reason (out of fds, ports or memory); these say
    /// nothing about the backend's health.
    pub local_connect_failures: Counter,
    /// TCP: bytes moved socket to socket with splice(2) (both directions; see `splice`).
    pub spliced_bytes: Counter,
    /// Clients refused by `[service.access]` (TCP connections and UDP flows).
    pub refused_acl: Counter,
    /// TCP clients refused at `max_connections_per_client`.
    pub refused_client_connections: Counter,
    /// TCP clients refused over `connection_rate_per_client`.
    pub refused_client_rate: Counter,
    /// Clients evicted from the full per-client table (least recently seen first).
    pub client_evictions: Counter,
    /// UDP: flows tracked now, summed over workers.
    pub udp_flows_active: CachePadded<AtomicU64>,
    /// UDP: the most flows tracked at once since start.
    pub udp_flows_peak: AtomicU64,
    /// UDP: flows opened since start.
    pub udp_flows_opened: Counter,
    /// UDP: flows evicted because the flow table was full (least recently used first).
    pub udp_flows_evicted: Counter,
    /// UDP: flows ended by `udp_idle_timeout`.
    pub udp_flows_expired: Counter,
    /// UDP: flows ended by the `udp_replies` rule.
    pub udp_flows_answered: Counter,
    /// UDP: datagrams from clients sent on to a backend.
    pub udp_datagrams_up: CachePadded<Counter>,
    /// UDP: datagrams from backends sent back to a client.
    pub udp_datagrams_down: CachePadded<Counter>,
    /// UDP: datagrams dropped (no backend, no upstream socket, a failed send, a reply from an
    /// address that is not a backend).
    pub udp_datagrams_dropped: Counter,
    /// UDP: datagrams the kernel dropped at the service's sockets (receive buffer full), before
    /// ringlb saw them; each worker adds what its socket dropped about once a second.
    pub udp_kernel_drops: Counter,
}

/// Process-wide counters of one backend (kept across reloads while the backend stays).
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Connections open or being opened to this backend: what least_conn and power_of_two read.
    pub active: CachePadded<AtomicU64>,
    /// Connections established since start (UDP: flows bound to this backend).
    pub connections: Counter,
    /// Connect attempts that failed (refused, timed out, or another error); for UDP, flows whose
    /// upstream socket reported an error (ICMP port unreachable: refused).
    pub connect_failures: Counter,
    /// Of `connect_failures`: refused (TCP reset, or ICMP port unreachable for UDP).
    pub connect_refused: Counter,
    /// Of `connect_failures`: no answer within `connect_timeout`.
    pub connect_timeouts: Counter,
    /// Bytes sent from clients to this backend.
    pub bytes_to_backend: Counter,
    /// Bytes sent from this backend to clients.
    pub bytes_to_client: Counter,
    /// Live sessions closed because the backend was marked down (`on_backend_down =
    /// "shutdown"`) or disabled.
    pub sessions_closed: Counter,
    /// Health probes run.
    pub probes: Counter,
    /// Health probes that failed.
    pub probe_failures: Counter,
    /// Agent queries that changed nothing because of the agent: no connection, no line within
    /// the timeout, a line too long, or words the protocol does not have.
    pub agent_errors: Counter,
    /// Health transitions (down or up), from probes or passive detection.
    pub health_transitions: Counter,
    /// The last probe's result, when the backend is checked.
    pub last_check: Mutex<Option<LastCheck>>,
    /// Time to connect to the backend, in microseconds.
    pub connect_latency: LatencyHistogram,
    /// Length of proxied sessions (accept to close), in milliseconds.
    pub session_duration: LatencyHistogram,
}

/// The result of a backend's last health probe.
#[derive(Clone, Debug)]
pub struct LastCheck {
    /// When it finished (wall clock, for operators).
    pub at: SystemTime,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed; empty when it passed.
    pub reason: String,
    /// How long it took.
    pub took: std::time::Duration,
}

impl BackendCounters {
    /// Counts a failed connect and its kind.
    pub fn connect_failed(&self, kind: ConnectFailure) {
        self.connect_failures.inc();
        match kind {
            ConnectFailure::Refused => &self.connect_refused,
            ConnectFailure::Timeout => &self.connect_timeouts,
            ConnectFailure::Other => return,
        }
        .inc();
    }
}

/// Why a connect to a backend failed, as counted in [`BackendCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// Refused by the backend's host.
    Refused,
    /// No answer within the connect timeout.
    Timeout,
    /// Another error (unreachable, reset during the handshake...).
    Other,
}

impl ConnectFailure {
    /// The failure kind of a connect error.
    pub fn of(e: &std::io::Error) -> ConnectFailure {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectFailure::Refused,
            std::io::ErrorKind::TimedOut => ConnectFailure::Timeout,
            _ => ConnectFailure::Other,
        }
    }
}
