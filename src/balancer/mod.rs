//! Balancer core: choosing a backend for a new connection or flow.
//!
//! Owns pure selection logic: the six algorithms behind [`Selector`] (`select`), the policy
//! that combines them with a service's live state for each new connection (`policy`: primaries
//! and backups, session persistence, slow-start demotion), the Maglev consistent-hash table
//! (`maglev`), the connection-tracking table (`conntrack`) and the UDP flow table
//! (`flowtable`), the health state machine with rise/fall, admin state and the slow-start ramp
//! (`health`), the stick table of session persistence (`stick`), and [`ServiceId`], the
//! identity by which tracked connections name their service. Selectors and tables are built off
//! the data path from a backend set and then only read (plus lock-free atomics, and the stick
//! table's short per-shard locks), so every worker shares them through the snapshot.
//!
//! Does not own: I/O of any kind, clock reads (time is passed in where needed), config types,
//! running health probes, or the live per-backend state: readiness, active-connection counts,
//! the slow-start ramp and which group is up are read through [`BackendView`] and
//! [`ServiceView`], which the control plane implements over its shared atomics.

use std::fmt;

pub mod conntrack;
pub mod flowtable;
pub mod health;
pub mod maglev;
pub mod policy;
pub mod select;
pub mod stick;

pub use policy::{Group, Pick, ServiceView};
pub use select::{Algorithm, BackendSpec, BackendView, DEFAULT_MAGLEV_SIZE, Selector};

/// A service's identity, kept across reloads while its name stays; workers and tracked
/// connections refer to services by it (positions in the snapshot change with reloads). The
/// control plane hands them out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceId(pub u64);

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}
