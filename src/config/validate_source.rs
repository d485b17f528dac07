//! Stage two for the `source` key, of a service and of a backend: the local addresses ringlb
//! connects to backends from, in turn. Each must be a unicast IP address (no port: the kernel
//! picks one per connection), none twice, the list not empty, and every address of the family
//! of the backends it serves.
//!
//! Whether an address is configured on this host is not checked here (a config may be checked
//! on another machine): connects from an address the host lacks fail with `EADDRNOTAVAIL`, which
//! the data plane treats as a local shortage and answers by trying the next address.

use std::net::{IpAddr, SocketAddr};

use toml::Spanned;

use super::error::{ConfigError, Problem};
use super::validate::ServiceCheck;
use super::{Backend, Protocol};

/// A `source` list as written.
pub(super) type SourceFile = Option<Spanned<Vec<Spanned<String>>>>;

impl ServiceCheck<'_, '_> {
    /// A `source` list (of the service, or of a backend when `key` says so): TCP only, not
    /// empty, unicast IP addresses, none twice. Absent: an empty list.
    pub(super) fn source(
        &self,
        value: SourceFile,
        key: impl Fn() -> String,
    ) -> Result<Vec<IpAddr>, ConfigError> {
        self.only_for(Protocol::Tcp, &value, &key)?;
        let Some(list) = value else {
            return Ok(Vec::new());
        };
        let doc = self.doc;
        if list.get_ref().is_empty() {
            return Err(ConfigError::new(
                doc.at(list.span().start, key()),
                Problem::Empty,
            ));
        }
        let list = list.into_inner();
        let mut addrs: Vec<IpAddr> = Vec::with_capacity(list.len());
        for entry in list {
            let at = || doc.at(entry.span().start, key());
            let text = entry.get_ref();
            let addr: IpAddr = text.parse().map_err(|_| {
                ConfigError::new(
                    at(),
                    Problem::NotSourceAddr {
                        value: text.clone(),
                    },
                )
            })?;
            if !is_unicast(addr) {
                return Err(ConfigError::new(at(), Problem::NotUnicastSource { addr }));
            }
            if let Some(first_index) = addrs.iter().position(|a| *a == addr) {
                return Err(ConfigError::new(
                    at(),
                    Problem::DuplicateSource { addr, first_index },
                ));
            }
            addrs.push(addr);
        }
        Ok(addrs)
    }

    /// Every address of `source` (at `offset`, named `key`) is of the family of `backend`.
    pub(super) fn source_family(
        &self,
        source: &[IpAddr],
        backend: SocketAddr,
        offset: usize,
        key: impl Fn() -> String,
    ) -> Result<(), ConfigError> {
        match source.iter().find(|s| s.is_ipv4() != backend.is_ipv4()) {
            Some(s) => Err(ConfigError::new(
                self.doc.at(offset, key()),
                Problem::SourceFamily {
                    source_addr: *s,
                    backend,
                },
            )),
            None => Ok(()),
        }
    }

    /// The service's `source` (at `offset`) fits every backend that has no list of its own.
    pub(super) fn service_source_fits(
        &self,
        source: &[IpAddr],
        offset: usize,
        backends: &[Backend],
    ) -> Result<(), ConfigError> {
        for b in backends.iter().filter(|b| b.source.is_empty()) {
            self.source_family(source, b.address, offset, || self.key("source"))?;
        }
        Ok(())
    }
}

/// Not the wildcard, multicast or broadcast address: something a socket can be bound to and
/// connect from.
fn is_unicast(addr: IpAddr) -> bool {
    !addr.is_unspecified()
        && !addr.is_multicast()
        && !matches!(addr, IpAddr::V4(v4) if v4.is_broadcast())
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use crate::config::Config;

    const TWO_BACKENDS: &str = "[[service]]\nname = \"db\"\nlisten = \"127.0.0.1:7000\"\n\
                                SOURCE\n\
                                [[service.backend]]\naddress = \"127.0.0.1:5432\"\nOWN\n\
                                [[service.backend]]\naddress = \"127.0.0.1:5433\"\n";

    /// The two-backend config with `service` as the service's line and `own` as the first
    /// backend's extra line.
    fn config(service: &str, own: &str) -> String {
        TWO_BACKENDS.replace("SOURCE", service).replace("OWN", own)
    }

    fn error(text: &str) -> String {
        match Config::parse(text, "x.toml") {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn source_lists_parse_and_a_backend_list_replaces_the_services() {
        let text = config(
            "source = [\"127.0.0.2\", \"127.0.0.3\"]",
            "source = [\"127.0.0.9\"]",
        );
        let c = Config::parse(&text, "x.toml").unwrap_or_else(|e| panic!("{e}"));
        let s = &c.services[0];
        assert_eq!(s.source, ips(&["127.0.0.2", "127.0.0.3"]));
        assert_eq!(s.backends[0].source, ips(&["127.0.0.9"]));
        assert!(s.backends[1].source.is_empty());
        assert_eq!(s.backends[0].sources(&s.source), ips(&["127.0.0.9"]));
        assert_eq!(
            s.backends[1].sources(&s.source),
            ips(&["127.0.0.2", "127.0.0.3"])
        );
        let summary = c.summary();
        assert!(
            summary.contains(", from 127.0.0.2, 127.0.0.3\n"),
            "{summary}"
        );
        assert!(
            summary.contains("backend 127.0.0.1:5432 weight 1, from 127.0.0.9\n"),
            "{summary}"
        );
        // Absent everywhere: no bind.
        let plain = Config::parse(&config("", ""), "x.toml").unwrap();
        assert!(plain.services[0].source.is_empty());
        assert!(plain.services[0].backends[0].sources(&[]).is_empty());
        // IPv6 sources for IPv6 backends.
        let v6 = Config::parse(
            &config("source = [\"::1\"]", "")
                .replace("127.0.0.1:5432", "[::1]:5432")
                .replace("127.0.0.1:5433", "[::1]:5433"),
            "x.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v6.services[0].source, ips(&["::1"]));
    }

    #[test]
    fn bad_source_lists_are_refused_where_written() {
        assert_eq!(
            error(&config("source = []", "")),
            "x.toml:4:10: service[0].source: must not be empty"
        );
        assert_eq!(
            error(&config("source = [\"127.0.0.2:4000\"]", "")),
            "x.toml:4:11: service[0].source: \"127.0.0.2:4000\" is not an IP address (a source \
             address has no port: ringlb picks one)"
        );
        assert_eq!(
            error(&config("source = [\"db-host\"]", "")),
            "x.toml:4:11: service[0].source: \"db-host\" is not an IP address (a source address \
             has no port: ringlb picks one)"
        );
        assert_eq!(
            error(&config("source = [\"0.0.0.0\"]", "")),
            "x.toml:4:11: service[0].source: 0.0.0.0 cannot be a source address: give an \
             address of this host's interfaces"
        );
        assert_eq!(
            error(&config(
                "source = [\"127.0.0.2\", \"127.0.0.3\", \"127.0.0.2\"]",
                ""
            )),
            "x.toml:4:37: service[0].source: 127.0.0.2 is listed twice (first as source[0])"
        );
        // The service's list must fit every backend without a list of its own.
        assert_eq!(
            error(&config("source = [\"::1\"]", "")),
            "x.toml:4:10: service[0].source: ::1 cannot reach backend 127.0.0.1:5432: source \
             addresses must be of the backends' family (IPv4 or IPv6)"
        );
        assert_eq!(
            error(&config("source = [\"::1\"]", "source = [\"127.0.0.2\"]")),
            "x.toml:4:10: service[0].source: ::1 cannot reach backend 127.0.0.1:5433: source \
             addresses must be of the backends' family (IPv4 or IPv6)"
        );
        // A backend's own list is checked against that backend.
        assert_eq!(
            error(&config("", "source = [\"127.0.0.2\", \"::1\"]")),
            "x.toml:7:10: service[0].backend[0].source: ::1 cannot reach backend \
             127.0.0.1:5432: source addresses must be of the backends' family (IPv4 or IPv6)"
        );
        assert_eq!(
            error(&config("", "source = []")),
            "x.toml:7:10: service[0].backend[0].source: must not be empty"
        );
        // TCP only.
        assert_eq!(
            error(&config("protocol = \"udp\"\nsource = [\"127.0.0.2\"]", "")),
            "x.toml:5:10: service[0].source: applies only to protocol = \"tcp\" services, and \
             this service's protocol is \"udp\""
        );
        assert_eq!(
            error(&config("protocol = \"udp\"", "source = [\"127.0.0.2\"]")),
            "x.toml:7:10: service[0].backend[0].source: applies only to protocol = \"tcp\" \
             services, and this service's protocol is \"udp\""
        );
    }
}
