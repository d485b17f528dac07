//! What runs beside the workers and what they share with it.
//!
//! Owns: the published [`Snapshot`] of services and backends, the shared counters inside it, and
//! shutdown coordination. Does not own sockets: the data plane does all I/O. Later control-plane
//! parts (health probes, admin API, reload, discovery) live here and publish new snapshots.

mod budget;
mod shutdown;
mod snapshot;

pub use budget::ConnectionBudget;
pub use shutdown::Shutdown;
pub use snapshot::{
    BackendCounters, BackendState, ServiceCounters, ServiceState, SharedSnapshot, Snapshot,
};
