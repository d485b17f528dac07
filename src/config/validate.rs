//! Stage two of loading: checks every value and the rules between values, fills in defaults and
//! builds the typed [`Config`]. Stops at the first error, checking in file order as far as that
//! is practical.

use std::fmt::Display;
use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::defaults::*;
use super::error::{ConfigError, Doc, Problem};
use super::file::{ByteSize, ConfigFile, DurationText, ServiceFile};
use super::{Config, Protocol, Service, UdpSettings};
use crate::balancer::Algorithm;
use crate::balancer::maglev::is_prime;
use crate::units::{parse_byte_size, parse_duration};

use super::validate_runtime::{admin, runtime};

/// Builds the typed config from the file structs.
pub(crate) fn build(file: ConfigFile, doc: &Doc<'_>) -> Result<Config, ConfigError> {
    let runtime = runtime(file.runtime, doc)?;
    let Some(list) = file.service else {
        return Err(ConfigError::new(doc.at(0, "service"), Problem::NoServices));
    };
    if list.get_ref().is_empty() {
        return Err(ConfigError::new(
            doc.at(list.span().start, "service"),
            Problem::NoServices,
        ));
    }
    let mut services: Vec<Service> = Vec::with_capacity(list.get_ref().len());
    let mut seen: Vec<Seen> = Vec::with_capacity(services.capacity());
    for (index, entry) in list.into_inner().into_iter().enumerate() {
        let mut check = ServiceCheck {
            doc,
            index,
            header: entry.span().start,
            seen: &seen,
            protocol: DEFAULT_PROTOCOL,
        };
        let (service, this) = check.service(entry.into_inner())?;
        services.push(service);
        seen.push(this);
    }
    let admin = match file.admin {
        Some(a) => Some(admin(a, &services, doc)?),
        None => None,
    };
    let alerts = super::validate_alert::settings(file.alert, doc)?;
    Ok(Config {
        source: doc.source.to_owned(),
        runtime,
        services,
        admin,
        alerts,
    })
}

/// What later services are checked against: an earlier service's name and listen address.
struct Seen {
    name: String,
    name_line: usize,
    listen: SocketAddr,
    listen_line: usize,
    protocol: Protocol,
}

/// Checks one `[[service]]`.
pub(super) struct ServiceCheck<'a, 'd> {
    pub(super) doc: &'a Doc<'d>,
    pub(super) index: usize,
    /// Byte offset of the service's table (its `[[service]]` header).
    pub(super) header: usize,
    seen: &'a [Seen],
    protocol: Protocol,
}

impl ServiceCheck<'_, '_> {
    pub(super) fn key(&self, key: &str) -> String {
        format!("service[{}].{key}", self.index)
    }

    /// Refuses `value` (present) when the service's protocol is not `needs`.
    pub(super) fn only_for<T>(
        &self,
        needs: Protocol,
        value: &Option<Spanned<T>>,
        key: impl FnOnce() -> String,
    ) -> Result<(), ConfigError> {
        match value {
            Some(v) if self.protocol != needs => Err(ConfigError::new(
                self.doc.at(v.span().start, key()),
                Problem::WrongProtocol {
                    needs,
                    protocol: self.protocol,
                },
            )),
            _ => Ok(()),
        }
    }

    fn tcp_only<T>(&self, value: &Option<Spanned<T>>, key: &str) -> Result<(), ConfigError> {
        self.only_for(Protocol::Tcp, value, || self.key(key))
    }

    fn udp_only<T>(&self, value: &Option<Spanned<T>>, key: &str) -> Result<(), ConfigError> {
        self.only_for(Protocol::Udp, value, || self.key(key))
    }

    /// An optional duration that must not be zero.
    fn duration(
        &self,
        value: &Option<Spanned<DurationText>>,
        key: &str,
        default: Duration,
    ) -> Result<Duration, ConfigError> {
        match value {
            Some(v) => duration(self.doc, v, self.key(key), false),
            None => Ok(default),
        }
    }

    /// An optional number within `min..=max`.
    fn number<T: Copy + PartialOrd + Display>(
        &self,
        value: &Option<Spanned<T>>,
        key: &str,
        min: T,
        max: Option<T>,
        default: T,
    ) -> Result<T, ConfigError> {
        match value {
            Some(v) => in_range(self.doc, v, self.key(key), min, max),
            None => Ok(default),
        }
    }

    /// A valid name that no earlier service has.
    fn name(&self, value: &Spanned<String>) -> Result<(), ConfigError> {
        let name = value.get_ref();
        let at = || self.doc.at(value.span().start, self.key("name"));
        if !is_service_name(name) {
            return Err(ConfigError::new(
                at(),
                Problem::BadServiceName {
                    value: name.clone(),
                },
            ));
        }
        match self.seen.iter().enumerate().find(|(_, o)| o.name == *name) {
            Some((first_index, first)) => Err(ConfigError::new(
                at(),
                Problem::DuplicateServiceName {
                    value: name.clone(),
                    first_index,
                    first_line: first.name_line,
                },
            )),
            None => Ok(()),
        }
    }

    /// An `IP:port` that collides with no earlier service of the same protocol.
    fn listen(&self, value: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        let at = || self.doc.at(value.span().start, self.key("listen"));
        let listen: SocketAddr = value.get_ref().parse().map_err(|_| {
            ConfigError::new(
                at(),
                Problem::NotSocketAddr {
                    value: value.get_ref().clone(),
                },
            )
        })?;
        for other in self.seen.iter().filter(|o| o.protocol == self.protocol) {
            match listen_clash(listen, other.listen) {
                Some(Clash::Same) => {
                    return Err(ConfigError::new(
                        at(),
                        Problem::DuplicateListen {
                            addr: listen,
                            other: other.name.clone(),
                            other_line: other.listen_line,
                        },
                    ));
                }
                Some(Clash::Overlap) => {
                    return Err(ConfigError::new(
                        at(),
                        Problem::OverlappingListen {
                            addr: listen,
                            other_addr: other.listen,
                            other: other.name.clone(),
                            other_line: other.listen_line,
                        },
                    ));
                }
                None => {}
            }
        }
        Ok(listen)
    }

    /// `hash_table_size`: only with `source_hash`, within range, prime. The check against the
    /// number of backends comes after the backends.
    fn hash_table_size(
        &self,
        value: &Option<Spanned<usize>>,
        algorithm: Algorithm,
    ) -> Result<usize, ConfigError> {
        let Some(size) = value else {
            return Ok(DEFAULT_HASH_TABLE_SIZE);
        };
        let at = || self.doc.at(size.span().start, self.key("hash_table_size"));
        if algorithm != Algorithm::SourceHash {
            return Err(ConfigError::new(
                at(),
                Problem::NotForAlgorithm { algorithm },
            ));
        }
        // The range first: it keeps the primality test's trial division short.
        let n = in_range(
            self.doc,
            size,
            self.key("hash_table_size"),
            2,
            Some(MAX_HASH_TABLE_SIZE),
        )?;
        if !is_prime(n) {
            return Err(ConfigError::new(at(), Problem::NotPrime { value: n }));
        }
        Ok(n)
    }

    fn service(&mut self, s: ServiceFile) -> Result<(Service, Seen), ConfigError> {
        let doc = self.doc;
        self.protocol = given(&s.protocol, DEFAULT_PROTOCOL);
        let algorithm = given(&s.algorithm, DEFAULT_ALGORITHM);

        let name = s.name.get_ref();
        self.name(&s.name)?;
        let listen = self.listen(&s.listen)?;
        let hash_table_size = self.hash_table_size(&s.hash_table_size, algorithm)?;

        self.tcp_only(&s.connect_timeout, "connect_timeout")?;
        let connect_timeout = self.duration(
            &s.connect_timeout,
            "connect_timeout",
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        self.tcp_only(&s.idle_timeout, "idle_timeout")?;
        let idle_timeout = self.duration(&s.idle_timeout, "idle_timeout", DEFAULT_IDLE_TIMEOUT)?;
        self.tcp_only(&s.max_connections, "max_connections")?;
        let max_connections = self.number(
            &s.max_connections,
            "max_connections",
            1,
            None,
            DEFAULT_MAX_CONNECTIONS,
        )?;
        self.tcp_only(&s.retries, "retries")?;
        let retries = self.number(&s.retries, "retries", 0, Some(MAX_RETRIES), DEFAULT_RETRIES)?;
        self.tcp_only(&s.buffer_size, "buffer_size")?;
        let buffer_size = match &s.buffer_size {
            Some(b) => self.buffer_size(b)?,
            None => DEFAULT_BUFFER_SIZE,
        };
        self.tcp_only(&s.backlog, "backlog")?;
        let backlog = self.number(&s.backlog, "backlog", 1, Some(MAX_BACKLOG), DEFAULT_BACKLOG)?;
        self.tcp_only(&s.splice, "splice")?;
        let splice = given(&s.splice, DEFAULT_SPLICE);
        let access_log = given(&s.access_log, DEFAULT_ACCESS_LOG);

        self.udp_only(&s.udp_idle_timeout, "udp_idle_timeout")?;
        self.udp_only(&s.udp_max_flows, "udp_max_flows")?;
        self.udp_only(&s.udp_replies, "udp_replies")?;
        self.udp_only(&s.udp_mode, "udp_mode")?;
        let udp = UdpSettings {
            idle_timeout: self.duration(
                &s.udp_idle_timeout,
                "udp_idle_timeout",
                DEFAULT_UDP_IDLE_TIMEOUT,
            )?,
            max_flows: self.number(
                &s.udp_max_flows,
                "udp_max_flows",
                1,
                None,
                DEFAULT_UDP_MAX_FLOWS,
            )?,
            replies: match &s.udp_replies {
                Some(r) => Some(in_range(doc, r, self.key("udp_replies"), 1, None)?),
                None => None,
            },
            mode: given(&s.udp_mode, DEFAULT_UDP_MODE),
        };

        let on_backend_down = given(&s.on_backend_down, DEFAULT_ON_BACKEND_DOWN);
        let slow_start = match &s.slow_start {
            // Zero is meaningful: no ramp.
            Some(d) => duration(doc, d, self.key("slow_start"), true)?,
            None => DEFAULT_SLOW_START,
        };
        let health = match s.health {
            Some(h) => self.health(h.into_inner())?,
            None => None,
        };
        let agent = match s.agent {
            Some(a) => Some(self.agent(a.into_inner())?),
            None => None,
        };
        let persistence = match s.persistence {
            Some(p) => Some(self.persistence(p.into_inner())?),
            None => None,
        };

        let source_offset = s.source.as_ref().map(|v| v.span().start);
        let source = self.source(s.source, || self.key("source"))?;
        let discovery = match s.discovery {
            Some(d) => Some(self.discovery(d)?),
            None => None,
        };
        let access = match s.access {
            Some(a) => Some(self.access(a.into_inner())?),
            None => None,
        };
        self.only_for(Protocol::Tcp, &s.limits, || self.key("limits"))?;
        let limits = match s.limits {
            Some(l) => Some(self.limits(l.into_inner())?),
            None => None,
        };
        self.tcp_only(&s.send_proxy, "send_proxy")?;
        let send_proxy = s.send_proxy.as_ref().map(|v| *v.get_ref());
        let accept_proxy = self.accept_proxy(s.accept_proxy, s.trusted, &s.proxy_timeout)?;
        let backends = self.backends(s.backend, discovery.is_some())?;
        if let Some(offset) = source_offset {
            self.service_source_fits(&source, offset, &backends)?;
        }

        if algorithm == Algorithm::SourceHash {
            let minimum = backends.len().saturating_mul(MIN_HASH_SLOTS_PER_BACKEND);
            if hash_table_size < minimum {
                // Point at the size, or at the algorithm when the size is the default.
                let offset = match (&s.hash_table_size, &s.algorithm) {
                    (Some(v), _) => v.span().start,
                    (None, Some(a)) => a.span().start,
                    (None, None) => self.header,
                };
                return Err(ConfigError::new(
                    doc.at(offset, self.key("hash_table_size")),
                    Problem::HashTableTooSmall {
                        value: hash_table_size,
                        backends: backends.len(),
                        minimum,
                    },
                ));
            }
        }

        let seen = Seen {
            name: name.clone(),
            name_line: doc.line(s.name.span().start),
            listen,
            listen_line: doc.line(s.listen.span().start),
            protocol: self.protocol,
        };
        let service = Service {
            name: s.name.into_inner(),
            listen,
            protocol: self.protocol,
            algorithm,
            hash_table_size,
            connect_timeout,
            idle_timeout,
            max_connections,
            retries,
            buffer_size,
            backlog,
            splice,
            access_log,
            udp,
            health,
            agent,
            on_backend_down,
            slow_start,
            persistence,
            source,
            discovery,
            access,
            limits,
            send_proxy,
            accept_proxy,
            backends,
        };
        Ok((service, seen))
    }

    fn buffer_size(&self, value: &Spanned<ByteSize>) -> Result<usize, ConfigError> {
        let at = || self.doc.at(value.span().start, self.key("buffer_size"));
        let (bytes, written) = match value.get_ref() {
            ByteSize::Bytes(n) => (u64::try_from(*n).ok(), n.to_string()),
            ByteSize::Text(text) => {
                let bytes = parse_byte_size(text).map_err(|reason| {
                    ConfigError::new(
                        at(),
                        Problem::BadByteSize {
                            value: text.clone(),
                            reason,
                        },
                    )
                })?;
                (Some(bytes), format!("{text:?}"))
            }
        };
        match bytes.and_then(|b| usize::try_from(b).ok()) {
            Some(b) if (MIN_BUFFER_SIZE..=MAX_BUFFER_SIZE).contains(&b) => Ok(b),
            _ => Err(ConfigError::new(
                at(),
                Problem::OutOfRange {
                    value: written,
                    allowed: format!(
                        "between 1KiB and 16MiB ({MIN_BUFFER_SIZE} and {MAX_BUFFER_SIZE} bytes)"
                    ),
                },
            )),
        }
    }
}

/// The value of an optional key that needs no check, or its default.
pub(super) fn given<T: Copy>(value: &Option<Spanned<T>>, default: T) -> T {
    value.as_ref().map_or(default, |v| *v.get_ref())
}

/// An optional duration (longer than zero) within `range`, or `default` when not given; out of
/// range is refused with `allowed` as the text of what is allowed.
pub(super) fn duration_within(
    doc: &Doc<'_>,
    value: &Option<Spanned<DurationText>>,
    key: String,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
    allowed: impl FnOnce() -> String,
) -> Result<Duration, ConfigError> {
    let Some(v) = value else {
        return Ok(default);
    };
    let d = duration(doc, v, key.clone(), false)?;
    if !range.contains(&d) {
        return Err(ConfigError::new(
            doc.at(v.span().start, key),
            Problem::OutOfRange {
                value: format!("{:?}", v.get_ref().0),
                allowed: allowed(),
            },
        ));
    }
    Ok(d)
}

/// Parses a duration value; zero is refused unless `allow_zero`.
pub(super) fn duration(
    doc: &Doc<'_>,
    value: &Spanned<DurationText>,
    key: String,
    allow_zero: bool,
) -> Result<Duration, ConfigError> {
    let text = &value.get_ref().0;
    let at = |key| doc.at(value.span().start, key);
    let d = parse_duration(text).map_err(|reason| {
        ConfigError::new(
            at(key.clone()),
            Problem::BadDuration {
                value: text.clone(),
                reason,
            },
        )
    })?;
    if d.is_zero() && !allow_zero {
        return Err(ConfigError::new(
            at(key),
            Problem::OutOfRange {
                value: format!("{text:?}"),
                allowed: "longer than zero".to_owned(),
            },
        ));
    }
    Ok(d)
}

/// Checks that a number is at least `min` and, if given, at most `max`.
pub(super) fn in_range<T: Copy + PartialOrd + Display>(
    doc: &Doc<'_>,
    value: &Spanned<T>,
    key: impl Into<String>,
    min: T,
    max: Option<T>,
) -> Result<T, ConfigError> {
    let v = *value.get_ref();
    if v >= min && max.is_none_or(|max| v <= max) {
        return Ok(v);
    }
    Err(ConfigError::new(
        doc.at(value.span().start, key),
        Problem::OutOfRange {
            value: v.to_string(),
            allowed: match max {
                Some(max) => format!("between {min} and {max}"),
                None => format!("at least {min}"),
            },
        },
    ))
}

/// Letters, digits, `-`, `_` and `.`; 1 to [`MAX_SERVICE_NAME_LEN`] of them.
pub(super) fn is_service_name(name: &str) -> bool {
    (1..=MAX_SERVICE_NAME_LEN).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// How two listen addresses of the same protocol collide.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Clash {
    /// The same address.
    Same,
    /// Same port and family, one of them the wildcard address.
    Overlap,
}

pub(super) fn listen_clash(a: SocketAddr, b: SocketAddr) -> Option<Clash> {
    if a.port() == 0 || b.port() == 0 {
        // Port 0: each bind gets a free port of its own (tests use this).
        return None;
    }
    if a == b {
        return Some(Clash::Same);
    }
    let overlap = a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip().is_unspecified() || b.ip().is_unspecified());
    overlap.then_some(Clash::Overlap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn listen_addresses_clash_when_equal_or_covered_by_a_wildcard() {
        assert_eq!(
            listen_clash(addr("127.0.0.1:7000"), addr("127.0.0.1:7000")),
            Some(Clash::Same)
        );
        assert_eq!(
            listen_clash(addr("0.0.0.0:7000"), addr("127.0.0.1:7000")),
            Some(Clash::Overlap)
        );
        assert_eq!(
            listen_clash(addr("[::1]:7000"), addr("[::]:7000")),
            Some(Clash::Overlap)
        );
        assert_eq!(
            listen_clash(addr("127.0.0.1:7000"), addr("127.0.0.2:7000")),
            None
        );
        assert_eq!(
            listen_clash(addr("127.0.0.1:7000"), addr("127.0.0.1:7001")),
            None
        );
        assert_eq!(listen_clash(addr("0.0.0.0:7000"), addr("[::1]:7000")), None);
        assert_eq!(listen_clash(addr("127.0.0.1:0"), addr("127.0.0.1:0")), None);
    }

    #[test]
    fn service_names_are_short_and_plain() {
        assert!(is_service_name("redis"));
        assert!(is_service_name("pg-primary_2.eu"));
        assert!(!is_service_name(""));
        assert!(!is_service_name("my service"));
        assert!(!is_service_name("ré"));
        assert!(!is_service_name(&"x".repeat(MAX_SERVICE_NAME_LEN + 1)));
    }
}
