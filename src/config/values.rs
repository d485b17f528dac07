//! Parsing of the value formats only config files use: backend addresses ("db1.local:5432") and
//! webhook URLs. Durations and byte sizes have their own grammar in [`crate::units`], shared with
//! `ringlb bench`. Errors are short reasons; the caller adds the location and the value.

use std::net::{SocketAddr, ToSocketAddrs};

/// Why a backend address was refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AddrProblem {
    /// Not `IP:port`, `[IPv6]:port` or `host:port`.
    NotAddress,
    /// Port 0.
    PortZero,
    /// The host did not resolve; the resolver's message.
    Unresolvable(String),
}

/// Turns a backend address as written into a socket address: `IP:port` and `[IPv6]:port` as they
/// are, `host:port` through the system resolver (first address returned), or refused as
/// unresolvable unless `resolve`.
pub(crate) fn resolve_backend(spec: &str, resolve: bool) -> Result<SocketAddr, AddrProblem> {
    if let Ok(addr) = spec.parse::<SocketAddr>() {
        return if addr.port() == 0 {
            Err(AddrProblem::PortZero)
        } else {
            Ok(addr)
        };
    }
    let (host, port) = spec.rsplit_once(':').ok_or(AddrProblem::NotAddress)?;
    if !is_host_name(host) || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddrProblem::NotAddress);
    }
    let port: u16 = port.parse().map_err(|_| AddrProblem::NotAddress)?;
    if port == 0 {
        return Err(AddrProblem::PortZero);
    }
    if !resolve {
        return Err(AddrProblem::Unresolvable(
            "host names are not resolved here".to_owned(),
        ));
    }
    let mut addrs = (host, port)
        .to_socket_addrs()
        .map_err(|e| AddrProblem::Unresolvable(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| AddrProblem::Unresolvable("the name has no addresses".to_owned()))
}

/// Checks a webhook URL as written: absolute, `http`, with a host. Errors are reasons in words.
pub(crate) fn parse_webhook_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => {
            "write an absolute URL, e.g. \"http://127.0.0.1:9999/hook\"".to_owned()
        }
        other => other.to_string(),
    })?;
    match url.scheme() {
        "http" | "https" => {}
        other => return Err(format!("the scheme must be http or https, not {other:?}")),
    }
    if url.host().is_none() {
        return Err("the URL has no host".to_owned());
    }
    Ok(url)
}

/// Whether `host` can be a DNS name: labels of letters, digits, `-` and `_`, and not all digits
/// and dots (that would be a malformed IPv4 address, such as "300.1.1.1").
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && host
            .strip_suffix('.')
            .unwrap_or(host)
            .split('.')
            .all(|label| !label.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_addresses_accept_ip_and_resolve_names() {
        assert_eq!(
            resolve_backend("127.0.0.1:6379", true),
            Ok("127.0.0.1:6379".parse().unwrap())
        );
        assert_eq!(
            resolve_backend("[::1]:5432", true),
            Ok("[::1]:5432".parse().unwrap())
        );
        let local = resolve_backend("localhost:6379", true).expect("localhost resolves");
        assert!(local.ip().is_loopback());
        assert_eq!(local.port(), 6379);
    }

    #[test]
    fn backend_addresses_refuse_malformed_values() {
        for bad in [
            "db1.local",
            "127.0.0.1",
            "127.0.0.1:99999",
            "300.1.1.1:80",
            "::1:5432",
            "db1.local:",
            "db1.local:+5",
            ":5432",
            "db 1:5432",
            "db1..local:5432",
            "http://db1:5432",
        ] {
            assert_eq!(
                resolve_backend(bad, true),
                Err(AddrProblem::NotAddress),
                "{bad:?}"
            );
        }
        assert_eq!(
            resolve_backend("127.0.0.1:0", true),
            Err(AddrProblem::PortZero)
        );
        assert_eq!(
            resolve_backend("localhost:0", true),
            Err(AddrProblem::PortZero)
        );
    }

    #[test]
    fn webhook_urls_are_absolute_http_urls_with_a_host() {
        let url = parse_webhook_url("http://127.0.0.1:9999/hook?x=1").unwrap();
        assert_eq!(url.port(), Some(9999));
        assert!(parse_webhook_url("http://alerts.example/a").is_ok());
        assert!(parse_webhook_url("http://[::1]:80/").is_ok());
        assert!(
            parse_webhook_url("127.0.0.1:9999/hook")
                .unwrap_err()
                .contains("absolute URL")
        );
        assert!(
            parse_webhook_url("/hook")
                .unwrap_err()
                .contains("absolute URL")
        );
        assert_eq!(
            parse_webhook_url("https://hooks.example/T0/SECRET")
                .unwrap()
                .scheme(),
            "https"
        );
        assert_eq!(
            parse_webhook_url("mailto:ops@example.com").unwrap_err(),
            "the scheme must be http or https, not \"mailto\""
        );
        assert_eq!(
            parse_webhook_url("http://127.0.0.1:70000/").unwrap_err(),
            "invalid port number"
        );
        assert_eq!(parse_webhook_url("http://").unwrap_err(), "empty host");
    }

    #[test]
    fn unknown_hosts_are_unresolvable() {
        // RFC 2606 reserves .invalid: it never resolves.
        assert!(matches!(
            resolve_backend("db9.invalid:5432", true),
            Err(AddrProblem::Unresolvable(_))
        ));
    }
}
