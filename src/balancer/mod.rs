//! Balancer core: choosing a backend for a new connection or flow.
//!
//! Owns pure selection logic: the six algorithms behind [`Selector`] (`select`), the Maglev
//! consistent-hash table (`maglev`), the connection-tracking table (`conntrack`) and the UDP
//! flow table (`flowtable`). Selectors and the Maglev table are built off the data path from a
//! backend set and then only read (plus lock-free atomics), so every worker shares them through
//! the snapshot; the two tables belong to one worker each.
//!
//! Does not own: I/O of any kind, clock reads (time is passed in where needed), health
//! probing, or the live per-backend state: readiness and active-connection counts are read
//! through [`BackendView`], which the data plane implements over its shared atomics.

pub mod conntrack;
pub mod flowtable;
pub mod maglev;
pub mod select;

pub use select::{Algorithm, BackendSpec, BackendView, DEFAULT_MAGLEV_SIZE, Selector};
