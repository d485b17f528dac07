//! The typed availability settings of a service: `[service.health]` (active and passive
//! checks), `[service.persistence]` (stick table), `on_backend_down` and `slow_start`.
//!
//! Only what the operator asked for; checks run in `control::health`, their state machine lives
//! in `balancer::health`, the stick table in `balancer::stick`.

use std::fmt;
use std::time::Duration;

use crate::names::serde_name;

/// What kind of check `[service.health]` runs, as written in `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthKind {
    /// A TCP connect: the backend accepts connections.
    Tcp,
    /// Redis: `PING` answered by `PONG` (and the replication role, when asked).
    Redis,
    /// PostgreSQL: log in and run a query (and the recovery state, when asked).
    Postgres,
    /// HTTP: a request whose status (and optionally body) must match, e.g. Patroni's REST API.
    Http,
    /// No active check: backends are always healthy.
    None,
}

impl HealthKind {
    /// The name used in config files (its serde name).
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

impl fmt::Display for HealthKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `role` as written; which values a kind takes is checked in validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoleName {
    /// Any role (the default).
    Any,
    /// Redis: `role:master` in `INFO replication`.
    Master,
    /// Redis: `role:slave` in `INFO replication`.
    Replica,
    /// PostgreSQL: `pg_is_in_recovery()` is false.
    Primary,
    /// PostgreSQL: `pg_is_in_recovery()` is true.
    Standby,
}

impl RoleName {
    /// The name used in config files (its serde name).
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

/// A password: kept out of `Debug` output and summaries.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The password itself, for the probe that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which replication role a Redis backend must report to pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisRole {
    /// PING is enough.
    Any,
    /// `role:master`.
    Master,
    /// `role:slave` (a replica).
    Replica,
}

/// Which recovery state a PostgreSQL backend must report to pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PostgresRole {
    /// The query succeeding is enough.
    Any,
    /// `pg_is_in_recovery()` is false: accepts writes.
    Primary,
    /// `pg_is_in_recovery()` is true: a hot standby.
    Standby,
}

impl RedisRole {
    /// The `role` value that asks for it, as in config files.
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

impl PostgresRole {
    /// The `role` value that asks for it, as in config files.
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

/// The request method of an HTTP check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    /// `GET` (the default).
    Get,
    /// `HEAD`: no body is read.
    Head,
    /// `OPTIONS`, as HAProxy's Patroni recipe sends.
    Options,
}

impl HttpMethod {
    /// The method as sent and written in config files.
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

/// What an HTTP check sends and which answers pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpProbe {
    /// The request method.
    pub method: HttpMethod,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Statuses that pass; empty: any 2xx.
    pub expect_status: Vec<u16>,
    /// A substring the body must contain.
    pub expect_body: Option<String>,
    /// The `Host` header; `None`: the probed address.
    pub host: Option<String>,
}

/// The probe an active check runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// TCP connect, then close.
    Tcp,
    /// Redis `PING` (after `AUTH` when a password is set), and `INFO replication` for a role.
    Redis {
        /// Role required to pass.
        role: RedisRole,
        /// ACL user name (Redis 6+), with `password`.
        user: Option<String>,
        /// Password for `AUTH`.
        password: Option<Secret>,
    },
    /// PostgreSQL login and `SELECT pg_is_in_recovery()`.
    Postgres {
        /// Role required to pass.
        role: PostgresRole,
        /// User to log in as.
        user: String,
        /// Password, when the server asks for one (md5 or SCRAM-SHA-256).
        password: Option<Secret>,
        /// Database to connect to.
        database: String,
    },
    /// An HTTP request; the status (and body, when asked) must match.
    Http(HttpProbe),
}

impl Probe {
    /// The config name of this probe's kind.
    pub fn kind(&self) -> HealthKind {
        match self {
            Probe::Tcp => HealthKind::Tcp,
            Probe::Redis { .. } => HealthKind::Redis,
            Probe::Postgres { .. } => HealthKind::Postgres,
            Probe::Http(_) => HealthKind::Http,
        }
    }
}

/// `[service.health]` with a kind other than `none`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// What is checked.
    pub probe: Probe,
    /// Time between the starts of two probes of one backend.
    pub interval: Duration,
    /// Time between probes while a backend is between states (a failure or a pass not yet
    /// confirmed by `fall` or `rise`); equal to `interval` when not set.
    pub fast_interval: Duration,
    /// How long one probe may take, connect included; at most `interval`.
    pub timeout: Duration,
    /// Consecutive passes that bring an unhealthy backend up.
    pub rise: u32,
    /// Consecutive failures that take a healthy backend down.
    pub fall: u32,
    /// Port probed instead of the backend's own (same host); a backend's `health_port` wins.
    pub port: Option<u16>,
    /// Consecutive connect failures seen by the workers that take a backend down at once;
    /// 0 turns passive detection off.
    pub passive_failures: u32,
}

/// What happens to live sessions when their backend is marked down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendDown {
    /// They run on (the backend may still answer them).
    Keep,
    /// They are closed at once (reset both ways).
    Shutdown,
}

impl OnBackendDown {
    /// The name used in config files (its serde name).
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

/// What a persistence entry is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PersistenceKind {
    /// The client's IP address.
    SourceIp,
}

impl PersistenceKind {
    /// The name used in config files (its serde name).
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

/// `[service.persistence]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// The key.
    pub kind: PersistenceKind,
    /// An entry lives this long after its last use.
    pub ttl: Duration,
    /// Entries held at most; beyond, the least recently used are evicted (counted).
    pub max_entries: usize,
}

/// `[service.agent]`: a TCP agent on each backend host tells ringlb the backend's state in one
/// line (HAProxy's `agent-check` protocol).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentCheck {
    /// The agent's port on the backend's host.
    pub port: u16,
    /// Time between the starts of two agent queries of one backend.
    pub interval: Duration,
    /// How long the connect and the line may take; at most `interval`.
    pub timeout: Duration,
}
