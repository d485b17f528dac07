//! Stage two for `[service.access]` and `[service.limits]`: CIDR prefixes (or bare addresses,
//! taken as one host) with no host bits set; per-client numbers within their ranges; a rate
//! written `N/unit` or `N/duration`.
//!
//! Owns the rules of those two tables only; the typed result is [`super::Access`] and
//! [`super::ClientLimits`], and what the data plane makes of them is `control::access`.

use std::net::IpAddr;

use ipnet::IpNet;
use toml::Spanned;

use super::access::{Access, ClientLimits, Rate};
use super::defaults::{
    DEFAULT_CLIENT_IPV6_PREFIX, DEFAULT_MAX_CLIENTS, MAX_MAX_CLIENTS, MAX_RATE_COUNT,
};
use super::error::{ConfigError, Problem};
use super::file::{AccessFile, LimitsFile};
use super::validate::{ServiceCheck, in_range};
use crate::units::parse_duration;

/// A prefix list as written.
type PrefixList = Option<Spanned<Vec<Spanned<String>>>>;

impl ServiceCheck<'_, '_> {
    /// `[service.access]`: `allow` (absent: everyone; present: not empty) and `deny`.
    pub(super) fn access(&self, file: AccessFile) -> Result<Access, ConfigError> {
        let allow = match file.allow {
            Some(list) if list.get_ref().is_empty() => {
                return Err(ConfigError::new(
                    self.doc.at(list.span().start, self.key("access.allow")),
                    Problem::Empty,
                ));
            }
            list @ Some(_) => Some(self.prefixes(list, "access.allow")?),
            None => None,
        };
        let deny = self.prefixes(file.deny, "access.deny")?;
        Ok(Access { allow, deny })
    }

    fn prefixes(&self, list: PrefixList, key: &str) -> Result<Vec<IpNet>, ConfigError> {
        let Some(list) = list else {
            return Ok(Vec::new());
        };
        list.into_inner()
            .into_iter()
            .map(|entry| {
                parse_prefix(entry.get_ref()).map_err(|reason| {
                    ConfigError::new(
                        self.doc.at(entry.span().start, self.key(key)),
                        Problem::NotPrefix {
                            value: entry.get_ref().clone(),
                            reason,
                        },
                    )
                })
            })
            .collect()
    }

    /// `[service.limits]`.
    pub(super) fn limits(&self, file: LimitsFile) -> Result<ClientLimits, ConfigError> {
        let doc = self.doc;
        let key = |k: &str| self.key(&format!("limits.{k}"));
        let max_connections = match &file.max_connections_per_client {
            Some(v) => Some(in_range(
                doc,
                v,
                key("max_connections_per_client"),
                1,
                None,
            )?),
            None => None,
        };
        let rate = match &file.connection_rate_per_client {
            Some(v) => Some(parse_rate(v.get_ref()).ok_or_else(|| {
                ConfigError::new(
                    doc.at(v.span().start, key("connection_rate_per_client")),
                    Problem::BadRate {
                        value: v.get_ref().clone(),
                        max: MAX_RATE_COUNT,
                    },
                )
            })?),
            None => None,
        };
        let burst = match (&file.rate_burst, rate) {
            (Some(b), None) => {
                return Err(ConfigError::new(
                    doc.at(b.span().start, key("rate_burst")),
                    Problem::Needs {
                        needs: "connection_rate_per_client",
                    },
                ));
            }
            (Some(b), Some(_)) => in_range(doc, b, key("rate_burst"), 1, Some(MAX_RATE_COUNT))?,
            (None, Some(r)) => r.count,
            (None, None) => 0,
        };
        let ipv6_prefix = match &file.ipv6_prefix {
            Some(p) => in_range(doc, p, key("ipv6_prefix"), 1, Some(128))? as u8,
            None => DEFAULT_CLIENT_IPV6_PREFIX,
        };
        let max_clients = match &file.max_clients {
            Some(m) => in_range(doc, m, key("max_clients"), 1, Some(MAX_MAX_CLIENTS))?,
            None => DEFAULT_MAX_CLIENTS,
        };
        Ok(ClientLimits {
            max_connections,
            rate,
            burst,
            ipv6_prefix,
            max_clients,
        })
    }
}

/// A CIDR prefix with no host bits set, or a bare address (one host).
pub(super) fn parse_prefix(text: &str) -> Result<IpNet, String> {
    if !text.contains('/') {
        return text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| "not an IP address or prefix".to_owned());
    }
    let net: IpNet = text
        .parse()
        .map_err(|_| "not an address and a prefix length within its family".to_owned())?;
    if net.trunc() != net {
        return Err(format!("host bits are set: the network is {}", net.trunc()));
    }
    Ok(net)
}

/// `N/s`, `N/m`, `N/h` or `N/<duration>` (e.g. `5/100ms`), with `N` from 1 to
/// [`MAX_RATE_COUNT`] and a span longer than zero.
fn parse_rate(text: &str) -> Option<Rate> {
    let (count, per) = text.split_once('/')?;
    let count: u32 = count.trim().parse().ok()?;
    if !(1..=MAX_RATE_COUNT).contains(&count) {
        return None;
    }
    let per = match per.trim() {
        "s" => std::time::Duration::from_secs(1),
        "m" => std::time::Duration::from_secs(60),
        "h" => std::time::Duration::from_secs(3600),
        other => parse_duration(other).ok()?,
    };
    (!per.is_zero()).then_some(Rate { count, per })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{parse_prefix, parse_rate};
    use crate::config::{Config, Rate};

    const SERVICE: &str = "[[service]]\nname = \"db\"\nlisten = \"127.0.0.1:7000\"\nEXTRA\n\
                           [[service.backend]]\naddress = \"127.0.0.1:5432\"\n";

    fn with(extra: &str) -> Result<Config, String> {
        Config::parse(&SERVICE.replace("EXTRA", extra), "x.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn prefixes_parse_with_their_family_and_no_host_bits() {
        assert_eq!(
            parse_prefix("10.0.0.0/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(parse_prefix("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_prefix("192.0.2.7").unwrap().to_string(),
            "192.0.2.7/32"
        );
        assert_eq!(
            parse_prefix("10.0.0.1/8").unwrap_err(),
            "host bits are set: the network is 10.0.0.0/8"
        );
        assert!(parse_prefix("10.0.0.0/33").is_err());
        assert!(parse_prefix("2001:db8::/129").is_err());
        assert!(parse_prefix("db.local/24").is_err());
    }

    #[test]
    fn rates_take_a_unit_or_a_duration() {
        let r = |count, ms| {
            Some(Rate {
                count,
                per: Duration::from_millis(ms),
            })
        };
        assert_eq!(parse_rate("50/s"), r(50, 1000));
        assert_eq!(parse_rate("600/m"), r(600, 60_000));
        assert_eq!(parse_rate("5/100ms"), r(5, 100));
        assert_eq!(parse_rate("1/h"), r(1, 3_600_000));
        for bad in [
            "50",
            "0/s",
            "x/s",
            "50/",
            "50/0s",
            "50/fortnight",
            "2000000/s",
        ] {
            assert_eq!(parse_rate(bad), None, "{bad}");
        }
        assert_eq!(parse_rate("50/s").unwrap().to_string(), "50/s");
        assert_eq!(parse_rate("5/100ms").unwrap().to_string(), "5/100ms");
    }

    #[test]
    fn tables_parse_with_defaults() {
        let c = with(
            "[service.access]\nallow = [\"10.0.0.0/8\", \"::1\"]\ndeny = [\"10.0.66.0/24\"]\n\
             [service.limits]\nmax_connections_per_client = 20\n\
             connection_rate_per_client = \"50/s\"\n",
        )
        .unwrap();
        let s = &c.services[0];
        let access = s.access.as_ref().unwrap();
        assert_eq!(access.allow.as_ref().unwrap().len(), 2);
        assert_eq!(access.deny[0].to_string(), "10.0.66.0/24");
        let limits = s.limits.as_ref().unwrap();
        assert_eq!(limits.max_connections, Some(20));
        assert_eq!(limits.burst, 50, "the burst defaults to the rate's count");
        assert_eq!(limits.ipv6_prefix, 64);
        assert_eq!(limits.max_clients, 65_536);
        let summary = c.summary();
        assert!(
            summary.contains("  access: 2 prefixes allowed, 1 denied\n"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "  per client: max 20 connections, 50/s (burst 50); IPv6 per /64, 65536 \
                 clients tracked\n"
            ),
            "{summary}"
        );
        let plain = with("").unwrap();
        assert_eq!(plain.services[0].access, None);
        assert_eq!(plain.services[0].limits, None);
    }

    #[test]
    fn bad_values_are_refused_where_written() {
        assert_eq!(
            with("[service.access]\ndeny = [\"10.0.0.0/8\", \"10.1.2.3/16\"]").unwrap_err(),
            "x.toml:5:23: service[0].access.deny: \"10.1.2.3/16\" is not a CIDR prefix (host \
             bits are set: the network is 10.1.0.0/16); write e.g. \"10.0.0.0/8\" or \
             \"2001:db8::/32\""
        );
        assert_eq!(
            with("[service.access]\nallow = [\"nope\"]").unwrap_err(),
            "x.toml:5:10: service[0].access.allow: \"nope\" is not a CIDR prefix (not an IP \
             address or prefix); write e.g. \"10.0.0.0/8\" or \"2001:db8::/32\""
        );
        assert_eq!(
            with("[service.access]\nallow = []").unwrap_err(),
            "x.toml:5:9: service[0].access.allow: must not be empty"
        );
        assert_eq!(
            with("[service.limits]\nconnection_rate_per_client = \"fast\"").unwrap_err(),
            "x.toml:5:30: service[0].limits.connection_rate_per_client: \"fast\" is not a \
             rate: write a count, '/' and a unit or duration, e.g. \"50/s\", \"600/m\" or \
             \"5/100ms\" (count between 1 and 1000000)"
        );
        assert_eq!(
            with("[service.limits]\nrate_burst = 10").unwrap_err(),
            "x.toml:5:14: service[0].limits.rate_burst: needs `connection_rate_per_client` in \
             the same table"
        );
        assert_eq!(
            with("[service.limits]\nipv6_prefix = 129").unwrap_err(),
            "x.toml:5:15: service[0].limits.ipv6_prefix: 129 is out of range: must be between \
             1 and 128"
        );
        assert_eq!(
            with("[service.limits]\nmax_connections_per_client = 0").unwrap_err(),
            "x.toml:5:30: service[0].limits.max_connections_per_client: 0 is out of range: \
             must be at least 1"
        );
        assert!(
            with("protocol = \"udp\"\n[service.limits]\nmax_clients = 10")
                .unwrap_err()
                .contains("service[0].limits: applies only to protocol = \"tcp\" services"),
        );
        assert!(
            with("[service.access]\nallow = [\"10.0.0.0/8\"]\nbogus = 1")
                .unwrap_err()
                .contains("unknown field `bogus`"),
        );
    }
}
