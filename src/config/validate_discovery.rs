//! Stage two for a service's `[service.discovery]` table: the kind, the keys each kind needs and
//! the ones it refuses, the Consul agent's address, the ACL token (read from `token_file` here,
//! once, so a missing file is an error at its line), the DNS name, and the ranges of `wait`,
//! `min_ttl`, `max_ttl` and `max_backends`.
//!
//! Nothing is contacted here: whether the agent or the resolver answers is discovery's business
//! while ringlb runs.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use toml::Spanned;

use super::Secret;
use super::defaults::*;
use super::discovery::{ConsulDiscovery, Discovery, DiscoverySettings, DnsDiscovery};
use super::error::{ConfigError, Problem};
use super::file::{DiscoveryFile, DiscoveryKind, DurationText};
use super::validate::{ServiceCheck, duration_within, given, in_range};

impl ServiceCheck<'_, '_> {
    /// The discovery settings of the service.
    pub(super) fn discovery(
        &self,
        table: Spanned<DiscoveryFile>,
    ) -> Result<DiscoverySettings, ConfigError> {
        let header = table.span().start;
        let d = table.into_inner();
        let doc = self.doc;
        let key = |k: &str| self.key(&format!("discovery.{k}"));
        let kind = *d.kind.get_ref();
        let kind_name = match kind {
            DiscoveryKind::Consul => "consul",
            DiscoveryKind::Dns => "dns",
        };
        let refuse = |value: Option<usize>, k: &str, applies_to: &'static str| match value {
            Some(offset) => Err(ConfigError::new(
                doc.at(offset, key(k)),
                Problem::NotForDiscoveryKind {
                    applies_to,
                    kind: kind_name,
                },
            )),
            None => Ok(()),
        };
        let missing = |k: &'static str, example: &'static str| {
            ConfigError::new(
                doc.at(header, key(k)),
                Problem::MissingDiscoveryKey {
                    kind: kind_name,
                    key: k,
                    example,
                },
            )
        };
        let max_backends = match &d.max_backends {
            Some(m) => in_range(
                doc,
                m,
                key("max_backends"),
                1,
                Some(MAX_DISCOVERY_MAX_BACKENDS),
            )?,
            None => DEFAULT_DISCOVERY_MAX_BACKENDS,
        };
        let source = match kind {
            DiscoveryKind::Consul => {
                for (offset, k) in [
                    (at(&d.name), "name"),
                    (at(&d.resolver), "resolver"),
                    (at(&d.min_ttl), "min_ttl"),
                    (at(&d.max_ttl), "max_ttl"),
                ] {
                    refuse(offset, k, "dns")?;
                }
                let address = d
                    .address
                    .as_ref()
                    .ok_or_else(|| missing("address", "e.g. \"http://127.0.0.1:8500\""))?;
                let address = parse_agent_url(address.get_ref()).map_err(|reason| {
                    ConfigError::new(
                        doc.at(address.span().start, key("address")),
                        Problem::BadRegistryAddress {
                            value: address.get_ref().clone(),
                            reason,
                        },
                    )
                })?;
                let service = d
                    .service
                    .as_ref()
                    .ok_or_else(|| missing("service", "the Consul service name"))?;
                self.not_empty(service, key("service"))?;
                let mut tags = Vec::new();
                if let Some(list) = &d.tags {
                    for t in list.get_ref() {
                        self.not_empty(t, key("tags"))?;
                        tags.push(t.get_ref().clone());
                    }
                }
                if let Some(dc) = &d.datacenter {
                    self.not_empty(dc, key("datacenter"))?;
                }
                if let Some(tag) = &d.backup_tag {
                    self.not_empty(tag, key("backup_tag"))?;
                }
                let (token, token_file) = match (&d.token, &d.token_file) {
                    (Some(_), Some(file)) => {
                        return Err(ConfigError::new(
                            doc.at(file.span().start, key("token_file")),
                            Problem::TokenTwice,
                        ));
                    }
                    (Some(t), None) => {
                        self.not_empty(t, key("token"))?;
                        (Some(Secret::new(t.get_ref().clone())), None)
                    }
                    (None, Some(file)) => {
                        let path = file.get_ref();
                        let bad = |reason: String| {
                            ConfigError::new(
                                doc.at(file.span().start, key("token_file")),
                                Problem::BadTokenFile {
                                    path: path.clone(),
                                    reason,
                                },
                            )
                        };
                        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
                        let token = text.trim();
                        if token.is_empty() {
                            return Err(bad("the file is empty".to_owned()));
                        }
                        (Some(Secret::new(token)), Some(PathBuf::from(path)))
                    }
                    (None, None) => (None, None),
                };
                let wait = bounded(
                    self,
                    &d.wait,
                    key("wait"),
                    DEFAULT_CONSUL_WAIT,
                    MIN_CONSUL_WAIT,
                    MAX_CONSUL_WAIT,
                )?;
                Discovery::Consul(ConsulDiscovery {
                    address,
                    service: service.get_ref().clone(),
                    tags,
                    datacenter: d.datacenter.as_ref().map(|v| v.get_ref().clone()),
                    passing_only: given(&d.passing_only, DEFAULT_CONSUL_PASSING_ONLY),
                    token,
                    token_file,
                    wait,
                    backup_tag: d.backup_tag.as_ref().map(|v| v.get_ref().clone()),
                })
            }
            DiscoveryKind::Dns => {
                for (offset, k) in [
                    (at(&d.address), "address"),
                    (at(&d.service), "service"),
                    (at(&d.tags), "tags"),
                    (at(&d.datacenter), "datacenter"),
                    (at(&d.passing_only), "passing_only"),
                    (at(&d.token), "token"),
                    (at(&d.token_file), "token_file"),
                    (at(&d.wait), "wait"),
                    (at(&d.backup_tag), "backup_tag"),
                ] {
                    refuse(offset, k, "consul")?;
                }
                let name = d.name.as_ref().ok_or_else(|| {
                    missing(
                        "name",
                        "\"host:port\" or an SRV name such as \"_pg._tcp.db.service.consul\"",
                    )
                })?;
                let (host, port) = split_dns_name(name.get_ref()).ok_or_else(|| {
                    ConfigError::new(
                        doc.at(name.span().start, key("name")),
                        Problem::BadDiscoveryName {
                            value: name.get_ref().clone(),
                        },
                    )
                })?;
                let resolver = match &d.resolver {
                    Some(r) => Some(r.get_ref().parse::<SocketAddr>().map_err(|_| {
                        ConfigError::new(
                            doc.at(r.span().start, key("resolver")),
                            Problem::NotSocketAddr {
                                value: r.get_ref().clone(),
                            },
                        )
                    })?),
                    None => None,
                };
                let min_ttl = bounded(
                    self,
                    &d.min_ttl,
                    key("min_ttl"),
                    DEFAULT_DNS_MIN_TTL,
                    Duration::from_millis(100),
                    MAX_DNS_TTL,
                )?;
                let max_ttl = bounded(
                    self,
                    &d.max_ttl,
                    key("max_ttl"),
                    DEFAULT_DNS_MAX_TTL.max(min_ttl),
                    Duration::from_millis(100),
                    MAX_DNS_TTL,
                )?;
                if min_ttl > max_ttl {
                    let offset = d.min_ttl.as_ref().map_or(header, |v| v.span().start);
                    return Err(ConfigError::new(
                        doc.at(offset, key("min_ttl")),
                        Problem::TtlOrder {
                            min: min_ttl,
                            max: max_ttl,
                        },
                    ));
                }
                Discovery::Dns(DnsDiscovery {
                    name: host,
                    resolver,
                    min_ttl,
                    max_ttl,
                    port,
                })
            }
        };
        Ok(DiscoverySettings {
            source,
            max_backends,
        })
    }

    fn not_empty(&self, value: &Spanned<String>, key: String) -> Result<(), ConfigError> {
        if value.get_ref().trim().is_empty() {
            return Err(ConfigError::new(
                self.doc.at(value.span().start, key),
                Problem::Empty,
            ));
        }
        Ok(())
    }
}

/// The byte offset of an optional key's value.
fn at<T>(value: &Option<Spanned<T>>) -> Option<usize> {
    value.as_ref().map(|v| v.span().start)
}

/// An optional duration within `min..=max`.
fn bounded(
    check: &ServiceCheck<'_, '_>,
    value: &Option<Spanned<DurationText>>,
    key: String,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    duration_within(check.doc, value, key, default, min..=max, || {
        format!("between {} and {}", show(min), show(max))
    })
}

fn show(d: Duration) -> impl Display {
    crate::units::format_duration(d)
}

/// The Consul agent's address: an absolute `http` URL with a host, and nothing after the
/// origin but `/`.
pub(super) fn parse_agent_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => {
            "write an absolute URL, e.g. \"http://127.0.0.1:8500\"".to_owned()
        }
        other => other.to_string(),
    })?;
    if url.scheme() != "http" {
        return Err(format!(
            "the scheme must be http (the local agent), not {:?}",
            url.scheme()
        ));
    }
    if url.host().is_none() {
        return Err("the URL has no host".to_owned());
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err("give the agent's origin only, without a path".to_owned());
    }
    Ok(url)
}

/// Splits a DNS discovery name: `host:port` gives the host and the port; an SRV name
/// (starting with `_`) gives itself and no port. `None` for anything else.
pub(super) fn split_dns_name(text: &str) -> Option<(String, Option<u16>)> {
    let label_ok = |h: &str| {
        !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    };
    if text.starts_with('_') {
        return (label_ok(text) && !text.contains(':')).then(|| (text.to_owned(), None));
    }
    let (host, port) = text.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|&p| p != 0)?;
    label_ok(host).then(|| (host.to_owned(), Some(port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_names_split_into_host_and_port_or_srv() {
        assert_eq!(
            split_dns_name("orders.internal:5432"),
            Some(("orders.internal".to_owned(), Some(5432)))
        );
        assert_eq!(
            split_dns_name("_postgres._tcp.orders.service.consul"),
            Some(("_postgres._tcp.orders.service.consul".to_owned(), None))
        );
        assert_eq!(split_dns_name("orders.internal"), None);
        assert_eq!(split_dns_name("orders.internal:0"), None);
        assert_eq!(split_dns_name("bad name:53"), None);
    }

    #[test]
    fn agent_urls_are_http_origins() {
        assert!(parse_agent_url("http://127.0.0.1:8500").is_ok());
        assert!(parse_agent_url("https://127.0.0.1:8500").is_err());
        assert!(parse_agent_url("127.0.0.1:8500").is_err());
        assert!(parse_agent_url("http://127.0.0.1:8500/v1").is_err());
    }
}
