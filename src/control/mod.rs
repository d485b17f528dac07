//! What runs beside the workers and what they share with it.
//!
//! Owns: the published [`Snapshot`] of services and backends, the shared counters ([`Counter`])
//! and live availability state inside it, the adapter through which the balancer core's
//! selection policy reads that state (`pick`; the policy itself, primaries and backups,
//! stickiness and slow start, is `balancer::policy`), health and admin transitions
//! (`availability`), the health checker thread ([`health`]), alerts to webhooks about those
//! transitions ([`alerts`], on their own thread), the classification and counts of ringlb's own
//! shortages of ports, descriptors and memory, which never count against a backend ([`local`]),
//! who may connect (source ACLs and per-client limits, [`access`] over [`client_table`]),
//! the process-wide rate limits of the data plane's repeated log lines ([`log_limit`]), shutdown
//! coordination, and the one way every waiter waits on an event for a condition (`wait`). Does
//! not own sockets of the data plane: the workers do all forwarding I/O; the only sockets here
//! are the probes' own, on the checker's thread, and the webhooks' connections, on the alerts
//! thread. The admin API and hot reload, which drive this module and the data plane together,
//! are in [`crate::admin`].

pub mod access;
pub mod alerts;
mod availability;
mod backend;
mod budget;
pub mod client_table;
pub mod counter;
pub mod discovery;
pub mod health;
pub mod histogram;
pub mod local;
pub mod log_limit;
mod pick;
mod shutdown;
mod snapshot;
pub(crate) mod wait;

pub use backend::{BackendLive, BackendState};
pub use budget::{ConnectionBudget, PIPES_PER_WORKER};
pub use counter::Counter;
pub use shutdown::Shutdown;
pub use snapshot::ProcessWide;
pub use snapshot::{
    BackendCounters, ConnectFailure, LastCheck, ServiceCounters, ServiceState, SharedSnapshot,
    Snapshot,
};

/// The balancer core's service identity, handed out here (kept across reloads by name).
pub use crate::balancer::ServiceId;
