//! DNS discovery: a service's backends from SRV records, or from the A and AAAA records of a
//! host name, asked again each time the answer's TTL runs out.
//!
//! Owns: one [`DnsWatch`] per discovering service (its resolver, the name it asks for and when
//! to ask again) and turning DNS answers into an [`Answer`]. Does not own: the config section
//! that names the watch, the backoff after an error (the discovery runner waits between calls)
//! or applying an answer.
//!
//! Every resolution asks the server again: the resolver's cache is emptied before each one, so a
//! record whose TTL is longer than `max_ttl` cannot hide a change. NXDOMAIN and NODATA are
//! answers (the registry lists no instance: the service goes down and says so); SERVFAIL, a
//! refusal, a timeout or no server answering are errors, and the caller keeps its last good set.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::lookup::Lookup;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::{Resolver, TokioResolver};
use tokio::time::Instant;

use super::{Answer, Discovered, DiscoveryError, Source, Version};
use crate::config::defaults::MAX_WEIGHT;

pub use crate::config::DnsDiscovery;

/// The longest one resolution (an SRV lookup and the lookups of its targets) may take before
/// it is reported as [`DiscoveryError::Timeout`].
pub const RESOLVE_BOUND: Duration = Duration::from_secs(10);

/// Per-query timeout when a resolver is configured (the system's come from resolv.conf).
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// What a watch asks for.
#[derive(Clone, Debug)]
enum Target {
    /// SRV records; each target resolved to its addresses.
    Srv(Name),
    /// A and AAAA records of a host, every address on `port`.
    Host { name: Name, port: u16 },
    /// A literal address: no DNS at all.
    Literal(SocketAddr),
}

/// A watch on one service's DNS records.
pub struct DnsWatch {
    resolver: TokioResolver,
    target: Target,
    min_ttl: Duration,
    max_ttl: Duration,
    max_backends: usize,
    /// When the last good answer's TTL runs out; `None`: resolve at once.
    due: Option<Instant>,
}

impl DnsWatch {
    /// A watch on `settings.name`, answering at most `max_backends` instances. Fails when the
    /// name cannot be a DNS name, when a port is missing or given twice, or when the system's
    /// resolver config cannot be read.
    pub fn new(settings: &DnsDiscovery, max_backends: usize) -> Result<DnsWatch, DiscoveryError> {
        let target = parse_target(&settings.name, settings.port)?;
        let resolver = build_resolver(settings.resolver)?;
        Ok(DnsWatch {
            resolver,
            target,
            min_ttl: settings.min_ttl,
            max_ttl: settings.max_ttl.max(settings.min_ttl),
            max_backends,
            due: None,
        })
    }

    /// One resolution, from scratch.
    async fn resolve(&self) -> Result<Answer, DiscoveryError> {
        self.resolver.clear_cache();
        let (mut instances, ttl) = match &self.target {
            Target::Srv(name) => self.resolve_srv(name).await?,
            Target::Host { name, port } => {
                let (ips, ttl) = self.addresses(name).await?;
                let instances = ips
                    .into_iter()
                    .map(|ip| Discovered {
                        address: SocketAddr::new(ip, *port),
                        weight: 1,
                        backup: false,
                    })
                    .collect();
                (instances, ttl)
            }
            Target::Literal(address) => (
                vec![Discovered {
                    address: *address,
                    weight: 1,
                    backup: false,
                }],
                None,
            ),
        };
        // One instance per address: a primary before a backup, then the larger weight.
        instances.sort_by(|a, b| {
            (a.address, a.backup, std::cmp::Reverse(a.weight)).cmp(&(
                b.address,
                b.backup,
                std::cmp::Reverse(b.weight),
            ))
        });
        instances.dedup_by(|later, first| later.address == first.address);
        if instances.len() > self.max_backends {
            return Err(DiscoveryError::TooMany {
                got: instances.len(),
                max: self.max_backends,
            });
        }
        // No record at all (NXDOMAIN, NODATA): ask again after the shortest wait.
        let ttl = ttl
            .unwrap_or(self.min_ttl)
            .clamp(self.min_ttl, self.max_ttl);
        Ok(Answer {
            instances,
            version: Version::DnsTtl(ttl),
        })
    }

    /// The SRV records of `name`, each target resolved to its addresses (from the answer's
    /// additional section when it has them, else by A and AAAA lookups).
    async fn resolve_srv(
        &self,
        name: &Name,
    ) -> Result<(Vec<Discovered>, Option<Duration>), DiscoveryError> {
        let Some(lookup) = self.lookup(name.clone(), RecordType::SRV).await? else {
            return Ok((Vec::new(), None));
        };
        let mut ttl = None;
        let srvs: Vec<_> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => {
                    ttl = min_ttl(ttl, r.ttl);
                    Some(srv.clone())
                }
                _ => None,
            })
            .collect();
        let Some(primary) = srvs.iter().map(|s| s.priority).min() else {
            return Ok((Vec::new(), None));
        };
        let mut instances = Vec::new();
        for srv in &srvs {
            // A target of "." says the service is decidedly not available there.
            if srv.target.is_root() {
                continue;
            }
            let mut ips = Vec::new();
            for r in lookup.additionals() {
                if r.name == srv.target
                    && let Some(ip) = record_ip(r)
                {
                    ips.push(ip);
                    ttl = min_ttl(ttl, r.ttl);
                }
            }
            if ips.is_empty() {
                let (found, found_ttl) = self.addresses(&srv.target).await?;
                ips = found;
                if let Some(t) = found_ttl {
                    ttl = Some(ttl.map_or(t, |old: Duration| old.min(t)));
                }
            }
            let weight = u32::from(srv.weight).clamp(1, MAX_WEIGHT);
            instances.extend(ips.into_iter().map(|ip| Discovered {
                address: SocketAddr::new(ip, srv.port),
                weight,
                backup: srv.priority > primary,
            }));
        }
        Ok((instances, ttl))
    }

    /// The A and AAAA addresses of `name` and the smallest TTL among them (`None` when there
    /// are none: the name does not exist or has no address).
    async fn addresses(
        &self,
        name: &Name,
    ) -> Result<(Vec<IpAddr>, Option<Duration>), DiscoveryError> {
        let (v4, v6) = tokio::join!(
            self.lookup(name.clone(), RecordType::A),
            self.lookup(name.clone(), RecordType::AAAA)
        );
        let (v4, v6) = (v4?, v6?);
        let mut ips = Vec::new();
        let mut ttl = None;
        for lookup in v4.iter().chain(v6.iter()) {
            for r in lookup.answers() {
                if let Some(ip) = record_ip(r) {
                    ips.push(ip);
                    ttl = min_ttl(ttl, r.ttl);
                }
            }
        }
        Ok((ips, ttl))
    }

    /// One query; `Ok(None)` for NXDOMAIN and NODATA.
    async fn lookup(&self, name: Name, kind: RecordType) -> Result<Option<Lookup>, DiscoveryError> {
        match self.resolver.lookup(name.clone(), kind).await {
            Ok(lookup) => Ok(Some(lookup)),
            Err(NetError::Dns(DnsError::NoRecordsFound(none)))
                if matches!(
                    none.response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) =>
            {
                Ok(None)
            }
            Err(NetError::Timeout) => Err(DiscoveryError::Timeout(self.resolver.options().timeout)),
            Err(e) => Err(DiscoveryError::Resolver(format!("{kind} {name}: {e}"))),
        }
    }
}

impl Source for DnsWatch {
    /// The first call resolves at once; a later one waits until the last good answer's TTL
    /// (clamped) has run out, then resolves again and returns the answer, changed or not. After
    /// an error the next call resolves at once (the caller has waited its backoff).
    async fn next(&mut self) -> Result<Answer, DiscoveryError> {
        if let Some(due) = self.due {
            tokio::time::sleep_until(due).await;
        }
        let result = match tokio::time::timeout(RESOLVE_BOUND, self.resolve()).await {
            Ok(result) => result,
            Err(_) => Err(DiscoveryError::Timeout(RESOLVE_BOUND)),
        };
        self.due = match &result {
            Ok(Answer {
                version: Version::DnsTtl(ttl),
                ..
            }) => Some(Instant::now() + *ttl),
            _ => None,
        };
        result
    }
}

/// Reads the settings' name: `_service._proto.domain` (SRV), `host:port`, `host` with `port`,
/// or a literal address.
fn parse_target(name: &str, port: Option<u16>) -> Result<Target, DiscoveryError> {
    let bad = |why: &str| DiscoveryError::Malformed(format!("discovery name {name:?}: {why}"));
    let dns_name = |s: &str| Name::from_ascii(s).map_err(|e| bad(&e.to_string()));
    if name.starts_with('_') {
        if port.is_some() {
            return Err(bad(
                "an SRV name takes its ports from the records, not `port`",
            ));
        }
        return Ok(Target::Srv(dns_name(name)?));
    }
    if let Ok(address) = name.parse::<SocketAddr>() {
        return match port {
            None => Ok(Target::Literal(address)),
            Some(_) => Err(bad("the port is given twice")),
        };
    }
    if let Ok(ip) = name.parse::<IpAddr>() {
        return match port {
            Some(port) => Ok(Target::Literal(SocketAddr::new(ip, port))),
            None => Err(bad("no port: write address:port or set `port`")),
        };
    }
    let (host, port) = match (name.rsplit_once(':'), port) {
        (Some((host, p)), None) if !host.contains(':') => {
            let p = p
                .parse::<u16>()
                .map_err(|_| bad("the port is not a number"))?;
            (host, p)
        }
        (Some(_), Some(_)) => return Err(bad("the port is given twice")),
        (None, Some(p)) => (name, p),
        _ => return Err(bad("no port: write host:port or set `port`")),
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    Ok(Target::Host {
        name: dns_name(host)?,
        port,
    })
}

/// A resolver asking `server` (UDP, then TCP when an answer is truncated), or the system's
/// resolvers when `None`. Both with the answer cache emptied before each resolution and no
/// `/etc/hosts` for a configured server.
fn build_resolver(server: Option<SocketAddr>) -> Result<TokioResolver, DiscoveryError> {
    let provider = TokioRuntimeProvider::default();
    let mut builder = match server {
        Some(server) => {
            let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                .into_iter()
                .map(|mut c| {
                    c.port = server.port();
                    c
                })
                .collect();
            let ns = NameServerConfig::new(server.ip(), true, connections);
            let mut builder = Resolver::builder_with_config(
                ResolverConfig::from_name_servers(vec![ns]),
                provider,
            );
            let opts = builder.options_mut();
            opts.use_hosts_file = ResolveHosts::Never;
            opts.timeout = QUERY_TIMEOUT;
            builder
        }
        None => Resolver::builder(provider).map_err(|e| {
            DiscoveryError::Resolver(format!("reading the system's resolver config: {e}"))
        })?,
    };
    let opts: &mut ResolverOpts = builder.options_mut();
    // Answers are never reused: each resolution empties the cache first; keep it small.
    opts.cache_size = 64;
    builder
        .build()
        .map_err(|e| DiscoveryError::Resolver(format!("building the resolver: {e}")))
}

fn record_ip(r: &Record) -> Option<IpAddr> {
    match &r.data {
        RData::A(a) => Some(IpAddr::V4(a.0)),
        RData::AAAA(a) => Some(IpAddr::V6(a.0)),
        _ => None,
    }
}

fn min_ttl(old: Option<Duration>, secs: u32) -> Option<Duration> {
    let new = Duration::from_secs(u64::from(secs));
    Some(old.map_or(new, |old| old.min(new)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, port: Option<u16>) -> String {
        match parse_target(name, port) {
            Ok(Target::Srv(n)) => format!("srv {n}"),
            Ok(Target::Host { name, port }) => format!("host {name} {port}"),
            Ok(Target::Literal(a)) => format!("literal {a}"),
            Err(e) => format!("error {e}"),
        }
    }

    #[test]
    fn names_are_read_as_srv_host_or_literal() {
        assert_eq!(
            target("_pg._tcp.orders.service.consul", None),
            "srv _pg._tcp.orders.service.consul"
        );
        assert_eq!(target("db.example:5432", None), "host db.example 5432");
        assert_eq!(target("db.example", Some(80)), "host db.example 80");
        assert_eq!(target("10.0.0.1:80", None), "literal 10.0.0.1:80");
        assert_eq!(target("[::1]:80", None), "literal [::1]:80");
        assert_eq!(target("::1", Some(80)), "literal [::1]:80");
        for (name, port) in [
            ("db.example", None),
            ("db.example:80", Some(80)),
            ("db.example:http", None),
            ("_pg._tcp.x", Some(5432)),
            (":80", None),
            ("::1", None),
        ] {
            assert!(
                target(name, port).starts_with("error "),
                "{name} {port:?} is refused"
            );
        }
    }
}
