//! The typed `[service.access]` and `[service.limits]` tables: which client sources a service
//! admits, and how many connections one client may hold and open.
//!
//! Owns: the settings as the operator wrote them, validated (`validate_access` checks them).
//! Does not own the lookup structures or the per-client table built from them
//! (`control::access`), nor where the check runs (`dataplane::admission`).

use std::fmt;
use std::time::Duration;

use ipnet::IpNet;

use crate::units::format_duration;

/// `[service.access]`: allow and deny lists of CIDR prefixes. A source in `deny` is refused
/// whatever `allow` says; with `allow` set, a source outside it is refused too.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    /// `None` (default): every source not denied is allowed.
    pub allow: Option<Vec<IpNet>>,
    /// Refused sources; deny wins over allow. Empty by default.
    pub deny: Vec<IpNet>,
}

/// A number of new connections per span of time, e.g. `"50/s"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Connections allowed per `per`, at least 1.
    pub count: u32,
    /// The span, longer than zero.
    pub per: Duration,
}

impl Rate {
    /// Tokens added per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.per.as_secs() {
            1 if self.per.subsec_nanos() == 0 => write!(f, "{}/s", self.count),
            60 if self.per.subsec_nanos() == 0 => write!(f, "{}/m", self.count),
            3600 if self.per.subsec_nanos() == 0 => write!(f, "{}/h", self.count),
            _ => write!(f, "{}/{}", self.count, format_duration(self.per)),
        }
    }
}

/// `[service.limits]` (TCP services): limits per client IP (an IPv6 client is its
/// `ipv6_prefix`), shared by every worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// `max_connections_per_client`: live connections of one client; `None`: no limit.
    pub max_connections: Option<u32>,
    /// `connection_rate_per_client`: new connections of one client, a token bucket refilled
    /// at this rate; `None`: no limit.
    pub rate: Option<Rate>,
    /// `rate_burst`: the bucket's size (connections a client may open at once after a quiet
    /// spell). Default: the rate's count.
    pub burst: u32,
    /// `ipv6_prefix`: the prefix length that makes one IPv6 client, 1 to 128. Default
    /// [`super::defaults::DEFAULT_CLIENT_IPV6_PREFIX`].
    pub ipv6_prefix: u8,
    /// `max_clients`: clients tracked at once; beyond it the least recently seen is evicted
    /// (and counted). Default [`super::defaults::DEFAULT_MAX_CLIENTS`].
    pub max_clients: usize,
}
