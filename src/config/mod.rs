//! Configuration: reading, parsing and validating ringlb's TOML config into a typed [`Config`].
//!
//! This module owns the config file format and its rules. It opens no sockets and starts nothing;
//! the only I/O is reading the file and resolving backend host names (`host:port`) once at load.
//! Binding listeners belongs to `dataplane`, building selectors from a service to `balancer` and
//! `control`; this module only says what the operator asked for.
//!
//! Loading runs in three stages (style guide item 6):
//!
//! 1. `file`: serde structs that mirror the TOML, unknown keys denied; values that later checks
//!    look at keep their byte span.
//! 2. `validate`: per-value and cross-field checks (ranges, durations, duplicate names and listen
//!    addresses, options of the other protocol), defaults from [`defaults`]. Durations and byte
//!    sizes are parsed by [`crate::units`] (the grammar `ringlb bench` shares), backend
//!    addresses and webhook URLs in `values`; the `[service.health]` and
//!    `[service.persistence]` tables are checked in `validate_policy`, the backends in
//!    `validate_backend`, the `source` lists in `validate_source`, the `[alert]` table in
//!    `validate_alert`.
//! 3. The typed [`Config`] below, which the rest of ringlb uses.
//!
//! The names of the config's enumeration values (`"per_packet"`, `"backend_down"`) are those
//! of their serde derive; [`serde_name`] reads them back for summaries, logs and metrics.
//!
//! Every error is a [`ConfigError`]: a [`Location`] (file, line, column and key path) and a
//! [`Problem`] that says what is wrong with the value, e.g.
//! `config/x.toml:12:10: service[1].listen: "127.0.0.1:99999" is not a socket address (IP:port)`.
//!
//! Guarantee: a `Config` returned by [`Config::load`] or [`Config::parse`] has at least one service,
//! every service without `[service.discovery]` at least one backend, every number within the limits in [`defaults`], distinct
//! service names and no two services of one protocol on the same (or an overlapping) address;
//! every webhook has an `http` or `https` URL with a host, at least one event and a name no other has.

mod access;
mod alert;
mod alert_template;
pub mod defaults;
mod discovery;
mod error;
mod file;
mod policy;
mod problem;
mod summary;
mod validate;
mod validate_access;
mod validate_alert;
mod validate_backend;
mod validate_discovery;
mod validate_policy;
mod validate_proxy;
mod validate_runtime;
mod validate_source;
mod values;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub use access::{Access, ClientLimits, Rate};
pub use alert::{
    AlertKind, AlertKinds, AlertSettings, BodyFormat, CaFile, FormatName, Template, TemplateField,
    Webhook,
};
pub use discovery::{ConsulDiscovery, Discovery, DiscoverySettings, DnsDiscovery, Origin};
pub use error::{ConfigError, Location, Problem};
pub use policy::{
    AgentCheck, HealthCheck, HealthKind, HttpMethod, HttpProbe, OnBackendDown, Persistence,
    PersistenceKind, PostgresRole, Probe, RedisRole, RoleName, Secret,
};

use crate::balancer::Algorithm;
pub use crate::names::serde_name;
use error::Doc;

/// A loaded and validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file path it was loaded from, or the name given to [`Config::parse`] (e.g. `<embedded>`).
    pub source: String,
    /// Process-wide settings (`[runtime]`).
    pub runtime: Runtime,
    /// The services (`[[service]]`), in file order; never empty.
    pub services: Vec<Service>,
    /// The admin API (`[admin]`); `None`: no admin listener.
    pub admin: Option<AdminSettings>,
    /// Where alerts go (`[alert]`); no webhook when the table is absent.
    pub alerts: AlertSettings,
}

/// The admin HTTP API: the `[admin]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminSettings {
    /// Where the API listens (plain HTTP; keep it on loopback or a management network).
    pub listen: SocketAddr,
    /// When set, calls that change something need `Authorization: Bearer <token>`.
    pub token: Option<Secret>,
    /// Most admin connections open at once. Default [`defaults::DEFAULT_ADMIN_MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// How long a connection may take to send a request's line and headers (and, kept alive,
    /// to start its next request). Default [`defaults::DEFAULT_ADMIN_HEADER_TIMEOUT`].
    pub header_timeout: Duration,
    /// How long a request's body may take once its headers are in.
    /// Default [`defaults::DEFAULT_ADMIN_BODY_TIMEOUT`].
    pub body_timeout: Duration,
    /// Whether `GET /health` (and `ringlb status --check`) also needs every service to have a
    /// ready backend. Default [`defaults::DEFAULT_REQUIRE_BACKENDS`].
    pub require_backends: bool,
    /// With a token: `GET /metrics` and `GET /status` need it too (`GET /connections`, which
    /// shows client addresses, always does; `GET /health` never). Default false.
    pub protect_reads: bool,
    /// Accept a `listen` address other hosts can reach without a token. Default false: such
    /// a config is refused at load.
    pub allow_open: bool,
}

/// Process-wide settings: the `[runtime]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Runtime {
    /// Number of worker threads, each with its own io_uring. Default: the number of CPUs the
    /// process may use (`std::thread::available_parallelism`), capped at [`defaults::MAX_WORKERS`].
    pub workers: usize,
    /// Pin worker `i` to CPU `i`. Default [`defaults::DEFAULT_PIN_WORKERS`].
    pub pin_workers: bool,
    /// How long a stop waits for open connections to finish; zero closes them at once.
    /// Default [`defaults::DEFAULT_DRAIN_TIMEOUT`].
    pub drain_timeout: Duration,
    /// Bind listeners with `IP_FREEBIND`, so an address this host does not have yet (a
    /// virtual address held by another host) can be listened on. Default
    /// [`defaults::DEFAULT_FREEBIND`].
    pub freebind: bool,
    /// How log lines are written, unless `--log-format` says; `None`: not set (text).
    pub log_format: Option<crate::logging::LogFormat>,
    /// The name alerts give this ringlb; `None`: not set (the host name is used).
    pub instance_name: Option<String>,
}

/// Transport protocol of a service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// TCP: connections are accepted and forwarded to a backend connection.
    Tcp,
    /// UDP: datagrams are grouped into flows per client address.
    Udp,
}

impl Protocol {
    /// The name used in config files (its serde name): "tcp" or "udp".
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a UDP service spreads datagrams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UdpMode {
    /// All datagrams of a flow (one client address) go to the backend its first datagram chose.
    Flow,
    /// Every datagram chooses a backend anew (stateless protocols such as syslog or statsd).
    PerPacket,
}

impl UdpMode {
    /// The name used in config files (its serde name): "flow" or "per_packet".
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

/// One load-balanced service: a `[[service]]` table.
///
/// Options of the other protocol are refused when written; here they hold their defaults, and the
/// data plane does not use them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Unique name, 1 to [`defaults::MAX_SERVICE_NAME_LEN`] letters, digits, `-`, `_` or `.`.
    pub name: String,
    /// Address to listen on (`IP:port`; port 0 picks a free port).
    pub listen: SocketAddr,
    /// TCP or UDP. Default [`defaults::DEFAULT_PROTOCOL`].
    pub protocol: Protocol,
    /// Backend selection. Default [`defaults::DEFAULT_ALGORITHM`].
    pub algorithm: Algorithm,
    /// Maglev table size for `source_hash`: prime, at least
    /// [`defaults::MIN_HASH_SLOTS_PER_BACKEND`] per backend. Default
    /// [`defaults::DEFAULT_HASH_TABLE_SIZE`].
    pub hash_table_size: usize,
    /// TCP: how long a connect to a backend may take. Default [`defaults::DEFAULT_CONNECT_TIMEOUT`].
    pub connect_timeout: Duration,
    /// TCP: a connection with no bytes either way for this long is closed. Default
    /// [`defaults::DEFAULT_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// TCP: open client connections of this service, at least 1. Default
    /// [`defaults::DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: u32,
    /// TCP: further backends tried when a connect fails, at most [`defaults::MAX_RETRIES`].
    /// Default [`defaults::DEFAULT_RETRIES`].
    pub retries: u32,
    /// TCP: forwarding buffer per direction per connection, in bytes, between
    /// [`defaults::MIN_BUFFER_SIZE`] and [`defaults::MAX_BUFFER_SIZE`]. Default
    /// [`defaults::DEFAULT_BUFFER_SIZE`].
    pub buffer_size: usize,
    /// TCP: listen backlog, between 1 and [`defaults::MAX_BACKLOG`]. Default
    /// [`defaults::DEFAULT_BACKLOG`].
    pub backlog: u32,
    /// TCP: bulk transfers move socket to socket through a kernel pipe with splice(2), never
    /// copied through ringlb's memory. Default [`defaults::DEFAULT_SPLICE`].
    pub splice: bool,
    /// One log line per closed connection or expired flow. Default [`defaults::DEFAULT_ACCESS_LOG`].
    pub access_log: bool,
    /// UDP settings (the `udp_*` keys).
    pub udp: UdpSettings,
    /// Active and passive health checks (`[service.health]`); `None` when the table is absent
    /// or has `kind = "none"`: then every backend counts as healthy.
    pub health: Option<HealthCheck>,
    /// The agent check (`[service.agent]`): what each backend's agent says of its state;
    /// `None` when the table is absent.
    pub agent: Option<AgentCheck>,
    /// What happens to live sessions of a backend marked down. Default
    /// [`defaults::DEFAULT_ON_BACKEND_DOWN`].
    pub on_backend_down: OnBackendDown,
    /// How long a backend that became ready again ramps from a small to its full share; zero
    /// is off. Default [`defaults::DEFAULT_SLOW_START`].
    pub slow_start: Duration,
    /// Session persistence (`[service.persistence]`); `None` when absent.
    pub persistence: Option<Persistence>,
    /// TCP: the local addresses backend connections are made from, taken in turn (each worker
    /// rotates over them per backend); a backend with a `source` of its own uses that instead.
    /// Unicast, none twice, of the backends' family. Empty (default): no bind, the kernel picks
    /// the address.
    pub source: Vec<IpAddr>,
    /// Where further backends come from while ringlb runs (`[service.discovery]`); `None`:
    /// only the backends written in the file.
    pub discovery: Option<DiscoverySettings>,
    /// Which client sources are admitted (`[service.access]`); `None`: everyone.
    pub access: Option<Access>,
    /// TCP: per-client limits (`[service.limits]`); `None`: no limit per client.
    pub limits: Option<ClientLimits>,
    /// TCP: the PROXY header (`send_proxy`) written first on each backend connection, with the
    /// client's and the service's addresses; a backend's own `send_proxy` wins. `None`
    /// (default): no header.
    pub send_proxy: Option<crate::proxyproto::Version>,
    /// TCP: clients start with a PROXY header (`accept_proxy`, `trusted`, `proxy_timeout`);
    /// `None` (default): no header is read.
    pub accept_proxy: Option<AcceptProxy>,
    /// The backends: those written in the file, in file order, then those discovery found
    /// (see [`Backend::origin`]). No two with the same address. Without discovery never
    /// empty and at least one is not a backup; with discovery it may be empty (no candidate:
    /// the service is down until the registry lists an instance).
    pub backends: Vec<Backend>,
}

/// A service's `accept_proxy = true`: which clients must start with a PROXY header, and how
/// long it may take.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AcceptProxy {
    /// The sources allowed to send a header (`trusted`, never empty). Every other source is
    /// refused, since the service expects a header first.
    pub trusted: Vec<ipnet::IpNet>,
    /// How long the whole header may take to arrive. Default
    /// [`defaults::DEFAULT_PROXY_TIMEOUT`].
    pub timeout: Duration,
}

impl AcceptProxy {
    /// Whether a connection from `source` may send a header.
    pub fn trusts(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.trusted.iter().any(|net| net.contains(&source))
    }
}

/// The UDP settings of a service: its `udp_*` keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpSettings {
    /// `udp_idle_timeout`: a flow with no datagram either way for this long ends. Default
    /// [`defaults::DEFAULT_UDP_IDLE_TIMEOUT`].
    pub idle_timeout: Duration,
    /// `udp_max_flows`: flows tracked at once, at least 1; beyond it the least recently used flow
    /// is evicted. Default [`defaults::DEFAULT_UDP_MAX_FLOWS`].
    pub max_flows: usize,
    /// `udp_replies`: when set, a flow ends once this many reply datagrams have come back for each
    /// client datagram (1 for DNS). `None` (default): flows end by idle timeout only.
    pub replies: Option<u32>,
    /// `udp_mode`. Default [`defaults::DEFAULT_UDP_MODE`].
    pub mode: UdpMode,
}

/// One backend server: a `[[service.backend]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The address connected to, resolved at load time (first address of a host name).
    pub address: SocketAddr,
    /// The address as written, e.g. "db1.local:5432".
    pub spec: String,
    /// Relative weight, between 1 and [`defaults::MAX_WEIGHT`]. Default [`defaults::DEFAULT_WEIGHT`].
    pub weight: u32,
    /// TCP: open connections to this backend, at least 1; `None` (default): no limit of its own.
    pub max_connections: Option<u32>,
    /// A backup takes traffic only while no primary (non-backup) backend of its service is up.
    /// Default [`defaults::DEFAULT_BACKUP`].
    pub backup: bool,
    /// Port of this backend's health checks (`health_port`), instead of `health.port` or the
    /// traffic port; for clusters whose nodes expose their check endpoint on different ports.
    pub health_port: Option<u16>,
    /// TCP: this backend's own source addresses, used instead of the service's; empty
    /// (default): the service's.
    pub source: Vec<IpAddr>,
    /// Written in the file, or found by the service's discovery.
    pub origin: Origin,
    /// TCP: this backend's own `send_proxy`, used instead of the service's; `None` (default):
    /// the service's.
    pub send_proxy: Option<crate::proxyproto::Version>,
}

impl Backend {
    /// The PROXY header version written first on connections to this backend: its own
    /// `send_proxy`, else `service` (the service's); `None`: no header.
    pub fn send_proxy(
        &self,
        service: Option<crate::proxyproto::Version>,
    ) -> Option<crate::proxyproto::Version> {
        self.send_proxy.or(service)
    }

    /// The local addresses connections to this backend are made from: its own `source`, else
    /// `service_source` (the service's); empty when neither is set.
    pub fn sources<'a>(&'a self, service_source: &'a [IpAddr]) -> &'a [IpAddr] {
        if self.source.is_empty() {
            service_source
        } else {
            &self.source
        }
    }
}

impl Config {
    /// Reads, parses and validates the config file at `path`. A file that is not UTF-8 is
    /// refused with the line and column of its first invalid byte.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError::Read {
            path: path.to_path_buf(),
            source: Arc::new(e),
        })?;
        let source = path.display().to_string();
        let text = std::str::from_utf8(&bytes).map_err(|e| error::not_utf8(&source, &bytes, e))?;
        Config::parse(text, &source)
    }

    /// Parses and validates config text; `source` names it in errors and in [`Config::source`]
    /// (a path, or e.g. `<embedded>` for the built-in demo config).
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, source, true)
    }

    /// [`Config::parse`] without the network: a backend written as `host:port` is refused as
    /// unresolvable instead of being looked up; everything else is checked the same. The
    /// config fuzzer runs this, so that no input waits on a resolver.
    pub fn parse_offline(text: &str, source: &str) -> Result<Config, ConfigError> {
        Config::parse_with(text, source, false)
    }

    fn parse_with(text: &str, source: &str, resolve: bool) -> Result<Config, ConfigError> {
        let doc = Doc {
            source,
            text,
            resolve,
        };
        let deserializer = toml::de::Deserializer::parse(text).map_err(|e| doc.syntax(e))?;
        let file = serde_path_to_error::deserialize(deserializer).map_err(|e| doc.schema(e))?;
        validate::build(file, &doc)
    }
}
