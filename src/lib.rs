//! ringlb: a Layer-4 (TCP and UDP) load balancer for Linux on io_uring, one worker thread per core.
//!
//! # Layout
//!
//! The folders follow the three planes of `README.md`'s design section:
//!
//! - [`server`]: a running ringlb, [`Server`]: start-up in order (connection budget, alerts,
//!   first snapshot, health checker, data plane, instance, admin API), the ready line, reload,
//!   apply a change, drain and stop. `main.rs` only parses the command line and maps signals to
//!   these calls; `ringlb demo` starts the same `Server`.
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
//!   of band), alerts, process-wide counters, and shutdown/drain coordination.
//! - [`admin`]: the operator's side: the one path for changes ([`admin::Change`], applied by
//!   [`admin::Instance::apply`]), the admin HTTP API with `/metrics`, and the `ringlb status` /
//!   `ringlb connections` commands. Drives `control` and `dataplane` through their handles.
//! - [`demo`]: `ringlb demo`, a self-contained first look (echo backends, balancer, load).
//! - [`loadtool`]: `ringlb bench`, the load generator and echo/sink server used to measure ringlb
//!   against other proxies. It runs on its own compio runtimes and shares nothing with the
//!   balancer.
//! - [`logging`]: the log output (text or JSON lines on stderr) and its filter.
//! - [`systemd`]: the notify protocol (ready, reloading, stopping, status, the watchdog fed
//!   while every worker turns its loop) and the listening sockets systemd passes.
//! - [`upgrade`]: binary upgrade: the running process starts the new binary, hands it every
//!   listening socket over a Unix socket (`SCM_RIGHTS`), and drains once it is ready; the
//!   `ringlb upgrade` request socket.
//! - [`names`]: the names of enum values (`round_robin`, `per_packet`), read from their serde
//!   derive so no `name()` repeats a spelling by hand.
//! - [`proxyproto`]: the PROXY protocol header as bytes: parsing what a trusted client sends,
//!   building what a backend receives, the length limits and the reasons a header is refused.
//! - [`tls`]: the rustls crypto provider every HTTP client of ringlb is built with.
//! - [`units`]: the one grammar for durations (`"1.5s"`) and byte sizes (`"64KiB"`), shared by
//!   the config file and `ringlb bench`.
//!
//! # One connection
//!
//! The listening sockets are bound by `dataplane::listener` before the workers start, one per
//! worker and service (`SO_REUSEPORT`). A worker's accept loop (`dataplane::worker`) keeps the
//! service's state from the current snapshot (one atomic load, refreshed when the version
//! changes), pauses while the service or the process-wide [`control::ConnectionBudget`] is at
//! its limit, and hands each client to `dataplane::forward`. There the connection takes its slot
//! ([`control::ServiceState::try_acquire_slot`]), asks the service for candidates
//! (`control::pick`: the stick table, then the [`balancer`] selector over the backends that are
//! up), connects to the first that answers (after `passive_failures` failed connects a backend
//! is marked down through `control::availability`), is recorded in the worker's tracking table,
//! and has its bytes copied or spliced both ways until one side ends; the close updates the
//! counters and frees the slot.
//!
//! # One reload
//!
//! SIGHUP (`main.rs`) or `POST /reload` (`admin::api`) calls [`admin::Instance::reload`], which
//! loads and validates the file ([`config::Config::load`]) and applies
//! [`admin::Change::Replace`] through [`admin::Instance::apply`], the one door every change
//! takes (an admin weight and a service-discovery backend list too): [`admin::Change::next`]
//! builds the next config and snapshot, keeping the identity and live state of what stays (its
//! doc lists what is kept and dropped); the data plane binds the new listeners
//! ([`dataplane::DataPlaneHandle::prepare`]); the snapshot is published; the workers take the
//! new listeners and retire the old ones ([`dataplane::DataPlaneHandle::commit`]); the health
//! checker ([`control::health::HealthChecker::sync`]) and the alert webhooks follow.

pub mod admin;
pub mod balancer;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod demo;
pub mod loadtool;
pub mod logging;
pub mod names;
pub mod proxyproto;
pub mod server;
pub mod systemd;
pub mod tls;
pub mod units;
pub mod upgrade;

pub use server::Server;
