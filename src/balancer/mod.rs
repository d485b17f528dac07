//! Balancer core: choosing a backend for a new connection or flow.
//!
//! Owns pure selection logic: the six algorithms behind [`Selector`] (`select`), the Maglev
//! consistent-hash table (`maglev`), the connection-tracking table (`conntrack`), the health
//! state machine with rise/fall, admin state and the slow-start ramp (`health`), and the stick
//! table of session persistence (`stick`). Selectors and tables are built off the data path from
//! a backend set and then only read (plus lock-free atomics, and the stick table's short
//! per-shard locks), so every worker shares them through the snapshot.
//!
//! Does not own: I/O of any kind, clock reads (time is passed in where needed), running health
//! probes, or the live per-backend state: readiness and active-connection counts are read
//! through [`BackendView`], which the control plane implements over its shared atomics.

pub mod conntrack;
pub mod flowtable;
pub mod health;
pub mod maglev;
pub mod select;
pub mod stick;

pub use select::{Algorithm, BackendSpec, BackendView, DEFAULT_MAGLEV_SIZE, Selector};
