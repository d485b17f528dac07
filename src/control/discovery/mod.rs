//! Service discovery: backend sets that come from a registry (Consul's catalog, DNS) and change
//! while ringlb runs.
//!
//! Owns: the sources (one watch per discovering service, on the control plane's discovery
//! thread, never on a worker), what a source answers ([`Answer`]) and why it did not
//! ([`DiscoveryError`]). Does not own: turning an answer into the next running config and
//! snapshot (that is [`crate::admin::Change`], the one path every change takes) or health.
//!
//! A source is a loop of [`Source::next`]: each call returns when the source has something to
//! say: Consul when its blocking query returns (the index moved, or the wait ended), DNS when
//! the record's TTL has run out and it was resolved again. The caller compares the answer with
//! the set it applied last and applies a change only when they differ.
//!
//! The runner (`runner`) drives the sources on the discovery thread, retries after faults,
//! applies answers and keeps the [`Board`] that `/status` and `/metrics` read; the Consul source
//! is `consul`, the DNS source `dns`.

pub mod consul;
pub mod dns;
mod runner;
mod status;

pub use runner::{BACKOFF_CAP, BACKOFF_FIRST, DiscoveryRunner, Target, backoff};
pub use status::{Board, WatchStatus};

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// One instance a registry lists for a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Discovered {
    /// Where to connect.
    pub address: SocketAddr,
    /// Relative weight, clamped to the config's range (1 to `MAX_WEIGHT`) by the source.
    pub weight: u32,
    /// A backup takes traffic only while no primary of the service is up (Consul: the
    /// `backup_tag`; DNS SRV: a priority above the lowest).
    pub backup: bool,
}

/// What a source answered: the whole current set (not a difference).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Every instance, sorted by address so equal sets compare equal.
    pub instances: Vec<Discovered>,
    /// What the registry said about this answer's freshness.
    pub version: Version,
}

/// The registry's own marker of an answer, shown in `/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// Consul's `X-Consul-Index`.
    ConsulIndex(u64),
    /// The DNS answer's TTL (after clamping to `[min_ttl, max_ttl]`).
    DnsTtl(Duration),
}

/// Why a source has no answer now; the last good set stays in place.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The registry could not be reached (refused, reset, unreachable).
    #[error("registry unreachable: {0}")]
    Unreachable(String),
    /// No answer within the source's time bound.
    #[error("registry did not answer within {0:?}")]
    Timeout(Duration),
    /// The registry refused the request's credentials (Consul 403 with an ACL token).
    #[error("registry refused the token: {0}")]
    Unauthorized(String),
    /// The registry answered with an error status.
    #[error("registry answered HTTP {0}")]
    Status(u16),
    /// The answer could not be read (not JSON, missing fields, a bad DNS packet).
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The answer lists more instances than the service's bound; it is not applied.
    #[error("answer lists {got} instances, over the bound of {max}")]
    TooMany {
        /// Instances in the answer.
        got: usize,
        /// The bound.
        max: usize,
    },
    /// The DNS resolver failed (SERVFAIL, no resolver answered).
    #[error("resolver failed: {0}")]
    Resolver(String),
}

/// A running watch on one service's registry entry.
pub trait Source {
    /// Waits until the source has an answer or an error to report, and returns it. Called in a
    /// loop by the discovery runner; between an error and the next call the runner waits a
    /// capped exponential backoff. Cancel-safe: dropping the future leaves nothing behind.
    fn next(&mut self) -> impl Future<Output = Result<Answer, DiscoveryError>> + Send;
}
