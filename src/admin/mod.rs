//! The operator's side of a running ringlb: hot reload, the admin HTTP API with its Prometheus
//! metrics, and the `ringlb status` / `ringlb connections` commands that read it.
//!
//! Owns: applying changes to the running instance in order ([`Instance`]: reload from the
//! file, weights and admin states through the API), the HTTP API ([`AdminServer`], axum on its
//! own control-plane thread) with the bounds on its connections (a cap, timeouts, size limits),
//! the metrics exposition, and the command-line client. It sits above [`crate::control`] and
//! [`crate::dataplane`] and drives both through their handles; the workers never run any of
//! this code.

mod api;
pub mod client;
mod exposition;
mod instance;
mod metrics;
mod serve;

pub use api::{AdminServer, BackendStatus, CheckStatus, ConnectionStatus, ServiceStatus, Status};
pub use instance::{ChangeError, ChangeReport, Instance};
pub use serve::{MAX_BODY_BYTES, MAX_HEADER_BYTES};
