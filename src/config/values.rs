//! Parsing and printing of the value formats config files use: durations ("3s"), byte sizes
//! ("64KiB"), backend addresses ("db1.local:5432"). Errors are short reasons; the caller adds the
//! location and the value.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

const DURATION_FORMAT: &str = "write a whole number and a unit (ms, s, m or h) with no space, e.g. \"250ms\", \"3s\", \"10m\"";

/// Parses "250ms", "3s", "10m", "1h": ASCII digits followed by exactly one unit.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    if text.starts_with('-') {
        return Err("a duration cannot be negative");
    }
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(DURATION_FORMAT);
    }
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err("a unit is missing: write ms, s, m or h after the number, e.g. \"3s\""),
        _ => return Err(DURATION_FORMAT),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(millis_per_unit))
        .map(Duration::from_millis)
        .ok_or("the number is too large")
}

/// Prints a duration in the largest unit that shows it exactly: "10m", "1500ms".
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        _ if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        _ if ms.is_multiple_of(1_000) => format!("{}s", ms / 1_000),
        _ => format!("{ms}ms"),
    }
}

const SIZE_FORMAT: &str = "write a number of bytes, or a whole number and a unit (B, KiB, MiB or GiB) with no space, \
     e.g. 16384 or \"64KiB\"";

/// Parses "16384", "512B", "64KiB", "1MiB", "1GiB" into bytes.
pub(crate) fn parse_byte_size(text: &str) -> Result<u64, &'static str> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    if number.is_empty() {
        return Err(SIZE_FORMAT);
    }
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" | "K" | "k" | "MB" | "M" | "GB" | "G" => {
            return Err("use binary units (KiB, MiB, GiB), e.g. \"64KiB\"");
        }
        _ => return Err(SIZE_FORMAT),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or("the number is too large")
}

/// Prints bytes in the largest binary unit that shows them exactly: "16KiB", "1000B".
pub(crate) fn format_bytes(bytes: usize) -> String {
    const KIB: usize = 1 << 10;
    const MIB: usize = 1 << 20;
    match bytes {
        0 => "0B".to_owned(),
        _ if bytes.is_multiple_of(MIB) => format!("{}MiB", bytes / MIB),
        _ if bytes.is_multiple_of(KIB) => format!("{}KiB", bytes / KIB),
        _ => format!("{bytes}B"),
    }
}

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
/// are, `host:port` through the system resolver (first address returned).
pub(crate) fn resolve_backend(spec: &str) -> Result<SocketAddr, AddrProblem> {
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
        "http" => {}
        "https" => {
            return Err(
                "https is not supported (ringlb is built without TLS); use http://, e.g. to a \
                 relay on the same host"
                    .to_owned(),
            );
        }
        other => return Err(format!("the scheme must be http, not {other:?}")),
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
    fn durations_take_one_number_and_one_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn durations_refuse_words_spaces_signs_fractions_and_missing_units() {
        for bad in [
            "3 seconds",
            "3 s",
            "3seconds",
            "1.5s",
            "s",
            "",
            " 3s",
            "3s ",
            "1m30s",
            "+3s",
        ] {
            assert_eq!(parse_duration(bad), Err(DURATION_FORMAT), "{bad:?}");
        }
        assert_eq!(parse_duration("-1s"), Err("a duration cannot be negative"));
        assert!(
            parse_duration("30")
                .unwrap_err()
                .starts_with("a unit is missing")
        );
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Err("the number is too large")
        );
        assert_eq!(
            parse_duration("18446744073709551615h"),
            Err("the number is too large")
        );
    }

    #[test]
    fn durations_print_in_the_largest_exact_unit() {
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(7200)), "2h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn byte_sizes_take_binary_units() {
        assert_eq!(parse_byte_size("16384"), Ok(16384));
        assert_eq!(parse_byte_size("512B"), Ok(512));
        assert_eq!(parse_byte_size("16KiB"), Ok(16384));
        assert_eq!(parse_byte_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30));
        assert!(
            parse_byte_size("64KB")
                .unwrap_err()
                .starts_with("use binary units")
        );
        assert_eq!(parse_byte_size("16 KiB"), Err(SIZE_FORMAT));
        assert_eq!(parse_byte_size("KiB"), Err(SIZE_FORMAT));
        assert_eq!(parse_byte_size("-1KiB"), Err(SIZE_FORMAT));
    }

    #[test]
    fn byte_sizes_print_in_the_largest_exact_unit() {
        assert_eq!(format_bytes(16384), "16KiB");
        assert_eq!(format_bytes(1 << 20), "1MiB");
        assert_eq!(format_bytes(1000), "1000B");
    }

    #[test]
    fn backend_addresses_accept_ip_and_resolve_names() {
        assert_eq!(
            resolve_backend("127.0.0.1:6379"),
            Ok("127.0.0.1:6379".parse().unwrap())
        );
        assert_eq!(
            resolve_backend("[::1]:5432"),
            Ok("[::1]:5432".parse().unwrap())
        );
        let local = resolve_backend("localhost:6379").expect("localhost resolves");
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
                resolve_backend(bad),
                Err(AddrProblem::NotAddress),
                "{bad:?}"
            );
        }
        assert_eq!(resolve_backend("127.0.0.1:0"), Err(AddrProblem::PortZero));
        assert_eq!(resolve_backend("localhost:0"), Err(AddrProblem::PortZero));
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
        assert!(
            parse_webhook_url("https://127.0.0.1/")
                .unwrap_err()
                .starts_with("https is not supported")
        );
        assert_eq!(
            parse_webhook_url("mailto:ops@example.com").unwrap_err(),
            "the scheme must be http, not \"mailto\""
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
            resolve_backend("db9.invalid:5432"),
            Err(AddrProblem::Unresolvable(_))
        ));
    }
}
