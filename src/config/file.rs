//! The config file as written: serde structs that mirror the TOML, stage one of loading.
//!
//! Every table denies unknown keys. Optional keys are `Option` so that validation knows whether a
//! key was written (an option of the other protocol is an error even at its default value); the
//! defaults are filled in from [`super::defaults`] when the typed config is built. Values that
//! validation checks are `Spanned`, so its errors can point at them.

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use super::{
    AlertKind, HealthKind, HttpMethod, OnBackendDown, PersistenceKind, Protocol, RoleName, UdpMode,
};
use crate::balancer::Algorithm;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    /// `[runtime]`.
    pub(crate) runtime: Option<RuntimeFile>,
    /// `[[service]]` tables.
    pub(crate) service: Option<Spanned<Vec<Spanned<ServiceFile>>>>,
    /// `[admin]`.
    pub(crate) admin: Option<AdminFile>,
    /// `[alert]`.
    pub(crate) alert: Option<AlertFile>,
}

/// `[admin]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AdminFile {
    pub(crate) listen: Spanned<String>,
    pub(crate) token: Option<Spanned<String>>,
    pub(crate) max_connections: Option<Spanned<u32>>,
    pub(crate) header_timeout: Option<Spanned<DurationText>>,
    pub(crate) body_timeout: Option<Spanned<DurationText>>,
    pub(crate) require_backends: Option<bool>,
    pub(crate) protect_reads: Option<bool>,
    pub(crate) allow_open: Option<bool>,
}

/// `[runtime]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuntimeFile {
    pub(crate) workers: Option<Spanned<usize>>,
    pub(crate) pin_workers: Option<bool>,
    pub(crate) drain_timeout: Option<Spanned<DurationText>>,
    pub(crate) freebind: Option<bool>,
    pub(crate) log_format: Option<crate::logging::LogFormat>,
    pub(crate) instance_name: Option<Spanned<String>>,
}

/// One `[[service]]`. The `udp_*` keys fill [`super::UdpSettings`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceFile {
    pub(crate) name: Spanned<String>,
    pub(crate) listen: Spanned<String>,
    pub(crate) protocol: Option<Spanned<Protocol>>,
    pub(crate) algorithm: Option<Spanned<Algorithm>>,
    pub(crate) hash_table_size: Option<Spanned<usize>>,
    pub(crate) connect_timeout: Option<Spanned<DurationText>>,
    pub(crate) idle_timeout: Option<Spanned<DurationText>>,
    pub(crate) max_connections: Option<Spanned<u32>>,
    pub(crate) retries: Option<Spanned<u32>>,
    pub(crate) buffer_size: Option<Spanned<ByteSize>>,
    pub(crate) backlog: Option<Spanned<u32>>,
    pub(crate) splice: Option<Spanned<bool>>,
    pub(crate) access_log: Option<Spanned<bool>>,
    pub(crate) udp_idle_timeout: Option<Spanned<DurationText>>,
    pub(crate) udp_max_flows: Option<Spanned<usize>>,
    pub(crate) udp_replies: Option<Spanned<u32>>,
    pub(crate) udp_mode: Option<Spanned<UdpMode>>,
    pub(crate) on_backend_down: Option<Spanned<OnBackendDown>>,
    pub(crate) slow_start: Option<Spanned<DurationText>>,
    pub(crate) health: Option<Spanned<HealthFile>>,
    pub(crate) agent: Option<Spanned<AgentFile>>,
    pub(crate) persistence: Option<Spanned<PersistenceFile>>,
    /// TCP: local addresses backend connections are made from, in turn.
    pub(crate) source: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) discovery: Option<Spanned<DiscoveryFile>>,
    pub(crate) access: Option<Spanned<AccessFile>>,
    pub(crate) limits: Option<Spanned<LimitsFile>>,
    /// TCP: the PROXY header written first on each backend connection.
    pub(crate) send_proxy: Option<Spanned<crate::proxyproto::Version>>,
    /// TCP: clients from `trusted` start with a PROXY header.
    pub(crate) accept_proxy: Option<Spanned<bool>>,
    pub(crate) trusted: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) proxy_timeout: Option<Spanned<DurationText>>,
    pub(crate) backend: Option<Spanned<Vec<Spanned<BackendFile>>>>,
}

/// `[service.health]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthFile {
    pub(crate) kind: Option<Spanned<HealthKind>>,
    pub(crate) interval: Option<Spanned<DurationText>>,
    pub(crate) timeout: Option<Spanned<DurationText>>,
    pub(crate) rise: Option<Spanned<u32>>,
    pub(crate) fall: Option<Spanned<u32>>,
    /// Wider than a port so that validation, not serde, says what is wrong with 70000.
    pub(crate) port: Option<Spanned<u32>>,
    pub(crate) passive_failures: Option<Spanned<u32>>,
    pub(crate) role: Option<Spanned<RoleName>>,
    pub(crate) user: Option<Spanned<String>>,
    pub(crate) password: Option<Spanned<String>>,
    pub(crate) database: Option<Spanned<String>>,
    pub(crate) fast_interval: Option<Spanned<DurationText>>,
    pub(crate) method: Option<Spanned<HttpMethod>>,
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) expect_status: Option<Spanned<Vec<Spanned<u32>>>>,
    pub(crate) expect_body: Option<Spanned<String>>,
    pub(crate) host: Option<Spanned<String>>,
}

/// `[service.agent]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AgentFile {
    /// Wider than a port so that validation, not serde, says what is wrong with 70000.
    pub(crate) port: Spanned<u32>,
    pub(crate) interval: Option<Spanned<DurationText>>,
    pub(crate) timeout: Option<Spanned<DurationText>>,
}

/// `[service.persistence]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PersistenceFile {
    pub(crate) kind: Option<Spanned<PersistenceKind>>,
    pub(crate) ttl: Option<Spanned<DurationText>>,
    pub(crate) max_entries: Option<Spanned<usize>>,
}

/// `[service.access]`: CIDR prefixes as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AccessFile {
    pub(crate) allow: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) deny: Option<Spanned<Vec<Spanned<String>>>>,
}

/// `[service.limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LimitsFile {
    pub(crate) max_connections_per_client: Option<Spanned<u32>>,
    pub(crate) connection_rate_per_client: Option<Spanned<String>>,
    pub(crate) rate_burst: Option<Spanned<u32>>,
    pub(crate) ipv6_prefix: Option<Spanned<u32>>,
    pub(crate) max_clients: Option<Spanned<usize>>,
}

/// One `[[service.backend]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct BackendFile {
    pub(crate) address: Spanned<String>,
    pub(crate) weight: Option<Spanned<u32>>,
    pub(crate) max_connections: Option<Spanned<u32>>,
    pub(crate) backup: Option<Spanned<bool>>,
    /// Port of this backend's health checks, instead of `health.port` or the traffic port.
    pub(crate) health_port: Option<Spanned<u32>>,
    /// TCP: this backend's own source addresses, instead of the service's.
    pub(crate) source: Option<Spanned<Vec<Spanned<String>>>>,
    /// TCP: this backend's own `send_proxy`, instead of the service's.
    pub(crate) send_proxy: Option<Spanned<crate::proxyproto::Version>>,
}

/// `[service.discovery]`: the keys of both kinds; validation refuses those of the other kind.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoveryFile {
    pub(crate) kind: Spanned<DiscoveryKind>,
    pub(crate) max_backends: Option<Spanned<usize>>,
    // kind = "consul"
    pub(crate) address: Option<Spanned<String>>,
    pub(crate) service: Option<Spanned<String>>,
    pub(crate) tags: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) datacenter: Option<Spanned<String>>,
    pub(crate) passing_only: Option<Spanned<bool>>,
    pub(crate) token: Option<Spanned<String>>,
    pub(crate) token_file: Option<Spanned<String>>,
    pub(crate) wait: Option<Spanned<DurationText>>,
    pub(crate) backup_tag: Option<Spanned<String>>,
    // kind = "dns"
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) resolver: Option<Spanned<String>>,
    pub(crate) min_ttl: Option<Spanned<DurationText>>,
    pub(crate) max_ttl: Option<Spanned<DurationText>>,
}

/// `kind` of `[service.discovery]`; an unknown kind is a schema error that points at it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum DiscoveryKind {
    Consul,
    Dns,
}

/// `[alert]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AlertFile {
    /// `[[alert.webhook]]` tables.
    pub(crate) webhook: Option<Vec<Spanned<WebhookFile>>>,
    /// Extra CA certificates (PEM) every https webhook trusts, unless it names its own.
    pub(crate) ca_file: Option<Spanned<String>>,
}

/// One `[[alert.webhook]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WebhookFile {
    pub(crate) url: Spanned<String>,
    pub(crate) name: Option<Spanned<String>>,
    /// An unknown event name is a schema error that points at it.
    pub(crate) events: Option<Spanned<Vec<Spanned<AlertKind>>>>,
    pub(crate) timeout: Option<Spanned<DurationText>>,
    pub(crate) retries: Option<Spanned<u32>>,
    pub(crate) backoff: Option<Spanned<DurationText>>,
    pub(crate) format: Option<Spanned<super::alert::FormatName>>,
    pub(crate) template: Option<Spanned<String>>,
    /// Header name -> value, sent with every POST (tokens: never logged).
    pub(crate) headers: Option<Spanned<std::collections::BTreeMap<String, Spanned<String>>>>,
    pub(crate) ca_file: Option<Spanned<String>>,
}

/// A duration as written ("3s"); parsed during validation so that a bad one gets a typed error.
/// Only strings are accepted: a bare number has no unit.
#[derive(Debug)]
pub(crate) struct DurationText(pub(crate) String);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationText;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a duration string with a unit, such as \"250ms\", \"3s\", \"10m\" or \"1h\"",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationText, E> {
                Ok(DurationText(v.to_owned()))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// A byte size as written: an integer number of bytes, or a string such as "64KiB".
#[derive(Debug)]
pub(crate) enum ByteSize {
    /// An integer (may be negative or zero: validation says why that is wrong).
    Bytes(i64),
    /// A string, parsed during validation.
    Text(String),
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a byte size: a number of bytes or a string such as \"64KiB\" or \"1MiB\"",
                )
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                Ok(ByteSize::Bytes(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize::Bytes(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                Ok(ByteSize::Text(v.to_owned()))
            }
        }
        deserializer.deserialize_any(V)
    }
}
