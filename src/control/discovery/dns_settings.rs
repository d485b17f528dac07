//! The settings of one DNS discovery watch, as the `[service.discovery]` config section gives
//! them to [`super::dns::DnsWatch`].
//!
//! Owns: the shape of those settings. Does not own: reading or checking them from the config
//! file (that is the config's job), nor resolving (that is [`super::dns`]).

use std::net::SocketAddr;
use std::time::Duration;

/// Where a service's backends come from in DNS, and how often to ask again.
#[derive(Clone, Debug, PartialEq)]
pub struct DnsDiscovery {
    /// An SRV name (starting with `_`, e.g. `_postgres._tcp.orders.service.consul`), or
    /// `host:port` / `host` (with [`DnsDiscovery::port`]) for A and AAAA records.
    pub name: String,
    /// The DNS server to ask (UDP, TCP when the answer is truncated); `None`: the system's
    /// resolvers (`/etc/resolv.conf`).
    pub resolver: Option<SocketAddr>,
    /// The shortest wait before asking again, whatever the record's TTL (a TTL of 0 included).
    pub min_ttl: Duration,
    /// The longest wait before asking again, whatever the record's TTL.
    pub max_ttl: Duration,
    /// The backends' port when `name` is a host name without one.
    pub port: Option<u16>,
}
