//! The typed service-discovery settings: a service's `[service.discovery]` table.
//!
//! Only what the operator asked for; watching a registry belongs to `control::discovery`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Secret;

/// Where a backend of a service came from: written in the file, or listed by a registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// A `[[service.backend]]` table of the config file.
    #[default]
    Static,
    /// An instance listed by Consul's health API.
    Consul,
    /// An address a DNS name resolved to.
    Dns,
}

impl Origin {
    /// The name shown in `/status` and `/metrics`: "static", "consul" or "dns".
    pub fn name(self) -> &'static str {
        crate::names::serde_name(&self)
    }
}

/// A service's `[service.discovery]` table: the registry its backends come from, and the bound
/// on how many it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoverySettings {
    /// The registry and what to ask it.
    pub source: Discovery,
    /// Answers that list more instances are refused (the last good set stays). Default
    /// [`super::defaults::DEFAULT_DISCOVERY_MAX_BACKENDS`].
    pub max_backends: usize,
}

/// The registry a service's backends come from (`kind`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// `kind = "consul"`: Consul's health API, through the local agent.
    Consul(ConsulDiscovery),
    /// `kind = "dns"`: A/AAAA or SRV records.
    Dns(DnsDiscovery),
}

impl Discovery {
    /// The kind's name: "consul" or "dns".
    pub fn kind(&self) -> &'static str {
        match self {
            Discovery::Consul(_) => "consul",
            Discovery::Dns(_) => "dns",
        }
    }

    /// The origin of the backends this registry lists.
    pub fn origin(&self) -> Origin {
        match self {
            Discovery::Consul(_) => Origin::Consul,
            Discovery::Dns(_) => Origin::Dns,
        }
    }

    /// What is watched, for `/status` and logs: the Consul service at its agent, or the DNS
    /// name. Never holds a token.
    pub fn target(&self) -> String {
        match self {
            Discovery::Consul(c) => {
                let mut t = format!(
                    "{} at {}",
                    c.service,
                    c.address.origin().ascii_serialization()
                );
                if let Some(dc) = &c.datacenter {
                    t.push_str(&format!(" (dc {dc})"));
                }
                t
            }
            Discovery::Dns(d) => match d.port {
                Some(port) => format!("{}:{port}", d.name),
                None => d.name.clone(),
            },
        }
    }
}

/// `kind = "consul"`: a blocking query on `/v1/health/service/<service>` of the local agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsulDiscovery {
    /// The agent's base URL (`http` only), e.g. `http://127.0.0.1:8500`.
    pub address: url::Url,
    /// The Consul service name.
    pub service: String,
    /// Only instances that carry every one of these tags.
    pub tags: Vec<String>,
    /// The datacenter to ask (`dc`); `None`: the agent's own.
    pub datacenter: Option<String>,
    /// Only instances whose checks all pass. Default true.
    pub passing_only: bool,
    /// The ACL token sent as `X-Consul-Token` (from `token`, or read from `token_file` at load).
    pub token: Option<Secret>,
    /// The file the token was read from, when it came from one.
    pub token_file: Option<PathBuf>,
    /// How long a blocking query may wait for a change (Consul adds up to `wait / 16`).
    /// Default [`super::defaults::DEFAULT_CONSUL_WAIT`].
    pub wait: Duration,
    /// Instances with this tag become backups.
    pub backup_tag: Option<String>,
}

/// `kind = "dns"`: A/AAAA records of `name` (with `port`), or its SRV records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsDiscovery {
    /// The name to resolve: a host name (A/AAAA, with `port`), or an SRV name (starts with
    /// `_`, `port` is `None`: each record has its own).
    pub name: String,
    /// The resolver to ask; `None`: the system's (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// The shortest time between two resolutions, whatever the TTL says.
    pub min_ttl: Duration,
    /// The longest time between two resolutions, whatever the TTL says.
    pub max_ttl: Duration,
    /// The port of every address (A/AAAA names); `None` for SRV names.
    pub port: Option<u16>,
}
