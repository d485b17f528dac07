//! ringlb: a Layer-4 (TCP and UDP) load balancer for Linux on io_uring, one worker thread per core.
//!
//! # Layout
//!
//! The folders follow the three planes of `README.md`'s design section:
//!
//! - [`balancer`]: pure logic with no I/O, no clock reads and no config types: selection
//!   algorithms, the selection policy for a new connection over a view of live state (primaries
//!   and backups, persistence, slow-start demotion), the Maglev table, the per-worker
//!   connection-tracking and UDP flow tables, the health state machine (rise/fall, admin
//!   state, slow-start ramp), the stick table and the service identity. Tested without sockets.
//! - [`config`]: the TOML file, its validation and the typed configuration. No sockets.
//! - [`dataplane`]: the worker threads. Each owns a compio (io_uring) runtime, its own
//!   `SO_REUSEPORT` listening sockets, its slice of connection tracking and its UDP flows, and
//!   forwards bytes and datagrams. compio types never leave this module.
//! - [`control`]: what runs beside the workers: the published [`control::Snapshot`] they read
//!   lock-free with the per-backend availability atomics inside it (which the balancer's policy
//!   reads through a thin adapter), health and admin transitions, the
//!   health checker thread ([`control::health`], a tokio current-thread runtime that probes out
//!   of band), process-wide counters, and shutdown/drain coordination.
//! - [`admin`]: the operator's side: hot reload (applying a new config to the running
//!   instance), the admin HTTP API with `/metrics`, and the `ringlb status` / `ringlb
//!   connections` commands. Drives `control` and `dataplane` through their handles.
//! - [`demo`]: `ringlb demo`, a self-contained first look (echo backends, balancer, load).
//! - [`loadtool`]: `ringlb bench`, the load generator and echo/sink server used to measure ringlb
//!   against other proxies. It runs on its own compio runtimes and shares nothing with the
//!   balancer.

pub mod admin;
pub mod balancer;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod demo;
pub mod loadtool;
