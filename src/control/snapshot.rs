//! The immutable view of services and backends that workers read for every new connection.
//!
//! Owns: [`Snapshot`], [`ServiceState`], [`BackendState`] and the shared counters they carry.
//! Does not own: how a snapshot is chosen (config loading, later health and discovery) or any I/O.
//!
//! A snapshot is built off the data path (selector tables included) and published through an
//! [`ArcSwap`]; a worker loads it with one atomic operation per accepted connection and never
//! waits on the control plane. The only shared mutable state a worker touches per connection is
//! the cache-padded atomics in [`ServiceCounters`] and [`BackendCounters`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;
use crossbeam::utils::CachePadded;
use event_listener::Event;

use crate::balancer::{BackendSpec, BackendView, Selector};
use crate::config::{Backend, Config, Service};

/// Where workers find the current [`Snapshot`].
pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

/// Every service and backend as the data plane must see them now.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped on every publication, so a worker can tell that something changed.
    pub version: u64,
    /// In config order; a worker's listeners refer to services by this index.
    pub services: Vec<Arc<ServiceState>>,
}

impl Snapshot {
    /// Builds the first snapshot of a configuration (selector tables included).
    pub fn from_config(config: &Config) -> Snapshot {
        Snapshot {
            version: 1,
            services: config
                .services
                .iter()
                .map(|s| Arc::new(ServiceState::new(s.clone())))
                .collect(),
        }
    }

    /// Publishes this snapshot so workers can load it.
    pub fn into_shared(self) -> SharedSnapshot {
        Arc::new(ArcSwap::from_pointee(self))
    }
}

/// One service: its settings, backends, and the selector built over them.
#[derive(Debug)]
pub struct ServiceState {
    /// The validated settings of this service.
    pub config: Service,
    /// Backends in config order; selectors return indices into this list.
    pub backends: Vec<BackendState>,
    /// The algorithm's prebuilt state (Maglev table, weighted sequence, cursors).
    pub selector: Selector,
    /// Process-wide counters of this service.
    pub counters: ServiceCounters,
}

impl ServiceState {
    /// Builds the service state, including its selector, from its settings.
    pub fn new(config: Service) -> ServiceState {
        let specs: Vec<BackendSpec<'_>> = config
            .backends
            .iter()
            .map(|b| BackendSpec {
                key: &b.spec,
                weight: b.weight,
            })
            .collect();
        let selector = Selector::new(config.algorithm, &specs, config.hash_table_size);
        let backends = config
            .backends
            .iter()
            .map(|b| BackendState {
                config: b.clone(),
                counters: BackendCounters::default(),
            })
            .collect();
        ServiceState {
            config,
            backends,
            selector,
            counters: ServiceCounters::default(),
        }
    }

    /// Tries to take one of the service's `max_connections` slots. Exact across workers.
    pub fn try_acquire_slot(&self) -> bool {
        let max = u64::from(self.config.max_connections);
        self.counters
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back and wakes workers whose accept loops paused at the limit.
    pub fn release_slot(&self) {
        let before = self.counters.active.fetch_sub(1, Ordering::AcqRel);
        if before >= u64::from(self.config.max_connections) {
            self.counters.slot_freed.notify(usize::MAX);
        }
    }

    /// Whether the service is at its `max_connections` limit.
    pub fn at_limit(&self) -> bool {
        self.counters.active.load(Ordering::Acquire) >= u64::from(self.config.max_connections)
    }
}

impl BackendView for ServiceState {
    fn len(&self) -> usize {
        self.backends.len()
    }

    fn active(&self, i: usize) -> u64 {
        self.backends[i].counters.active.load(Ordering::Relaxed)
    }

    fn ready(&self, i: usize) -> bool {
        let backend = &self.backends[i];
        match backend.config.max_connections {
            Some(max) => backend.counters.active.load(Ordering::Relaxed) < u64::from(max),
            None => true,
        }
    }
}

/// One backend of a service and its shared counters.
#[derive(Debug)]
pub struct BackendState {
    /// The validated settings of this backend (resolved address, weight, limits).
    pub config: Backend,
    /// Counters shared by all workers.
    pub counters: BackendCounters,
}

impl BackendState {
    /// The address connections are made to.
    pub fn address(&self) -> SocketAddr {
        self.config.address
    }
}

/// Process-wide counters of one service. Each hot field sits on its own cache line so workers
/// updating different counters do not contend.
#[derive(Debug, Default)]
pub struct ServiceCounters {
    /// Client connections currently holding a slot (accepted and not yet closed).
    pub active: CachePadded<AtomicU64>,
    /// Client connections accepted since start.
    pub accepted: CachePadded<AtomicU64>,
    /// Client connections closed because no backend could be reached.
    pub no_backend: AtomicU64,
    /// Notified when a slot is freed while the service was at its limit.
    pub slot_freed: Event,
    /// UDP: flows tracked now, summed over workers.
    pub udp_flows_active: CachePadded<AtomicU64>,
    /// UDP: the most flows tracked at once since start.
    pub udp_flows_peak: AtomicU64,
    /// UDP: flows opened since start.
    pub udp_flows_opened: AtomicU64,
    /// UDP: flows evicted because the flow table was full (least recently used first).
    pub udp_flows_evicted: AtomicU64,
    /// UDP: flows ended by `udp_idle_timeout`.
    pub udp_flows_expired: AtomicU64,
    /// UDP: flows ended by the `udp_replies` rule.
    pub udp_flows_answered: AtomicU64,
    /// UDP: datagrams from clients sent on to a backend.
    pub udp_datagrams_up: CachePadded<AtomicU64>,
    /// UDP: datagrams from backends sent back to a client.
    pub udp_datagrams_down: CachePadded<AtomicU64>,
    /// UDP: datagrams dropped (no backend, no upstream socket, a failed send, a reply from an
    /// address that is not a backend).
    pub udp_datagrams_dropped: AtomicU64,
}

/// Process-wide counters of one backend.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Connections open or being opened to this backend: what least_conn and power_of_two read.
    pub active: CachePadded<AtomicU64>,
    /// Connections established since start (UDP: flows bound to this backend).
    pub connections: AtomicU64,
    /// Connect attempts that failed (refused, timed out, or another error); for UDP, flows whose
    /// upstream socket reported an error (ICMP port unreachable: refused).
    pub connect_failures: AtomicU64,
    /// Bytes sent from clients to this backend.
    pub bytes_to_backend: AtomicU64,
    /// Bytes sent from this backend to clients.
    pub bytes_to_client: AtomicU64,
}
