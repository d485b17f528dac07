//! The operator's side of a running ringlb: hot reload, the admin HTTP API with its Prometheus
//! metrics, and the `ringlb status` / `ringlb connections` commands that read it.
//!
//! Owns: the one path for changes to the running config ([`Change`], and [`Instance::apply`]
//! which applies them in order: reload from the file, weights through the API, backend lists
//! from service discovery), admin states through the API, the HTTP API ([`AdminServer`], axum
//! on its own control-plane thread) with the bounds on its connections (a cap, timeouts, size
//! limits), the metrics exposition, and the command-line client. It sits above
//! [`crate::control`] and [`crate::dataplane`] and drives both through their handles; the
//! workers never run any of this code.

mod api;
mod change;
pub mod client;
mod exposition;
pub mod health;
mod instance;
mod metrics;
mod serve;

pub use api::{AdminServer, BackendStatus, CheckStatus, ConnectionStatus, ServiceStatus, Status};
pub use change::{Change, Next};
pub use instance::{ChangeError, ChangeReport, Instance, ListeningReport};
pub use serve::{MAX_BODY_BYTES, MAX_HEADER_BYTES};
