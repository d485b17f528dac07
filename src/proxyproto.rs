//! The PROXY protocol (versions 1 and 2): the header ringlb writes first on a backend
//! connection (`send_proxy`) and the header it reads first from a trusted client
//! (`accept_proxy`), as bytes.
//!
//! Owns: parsing a header as ringlb accepts it ([`parse_header`]: which bytes belong to it, the
//! addresses it carries, why it is refused), building one ([`build_header`]), the length limits
//! ([`V1_MAX_LEN`], [`V2_MAX_LEN`]), the reasons a client's header is refused ([`Reject`]) and
//! their per-service counters ([`RejectCounters`]). Both directions use the `ppp` crate. No I/O
//! and no config types: reading the header off a socket within `proxy_timeout`, and which
//! sources are trusted, belong to `dataplane::forward::proxy_header`; the options to
//! `config`. The parser is fuzzed (`fuzz/`, target `proxy_header`).

use std::net::{IpAddr, SocketAddr};

use ppp::v2;

use crate::control::counter::Counter;

/// The longest version 1 header, CRLF included (the protocol's own limit).
pub const V1_MAX_LEN: usize = 107;

/// The longest version 2 header ringlb accepts: the 16-byte fixed part, then addresses and
/// TLVs. The protocol allows 16 + 65,535 bytes; the addresses take at most 216 (UNIX), and
/// the TLVs upstream balancers send (unique id, TLS details, cloud endpoint ids) fit with room
/// to spare in the rest.
pub const V2_MAX_LEN: usize = 16 + 2048;

/// The most bytes a header can take: a reader needs no more room than this.
pub const MAX_HEADER_LEN: usize = V2_MAX_LEN;

/// The signature that starts every version 2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The start of every version 1 header.
const V1_PREFIX: &[u8; 6] = b"PROXY ";

/// The two versions of the protocol, as `send_proxy` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Version {
    /// The text header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`.
    V1,
    /// The binary header.
    V2,
}

impl Version {
    /// The name used in config files: "v1" or "v2".
    pub fn name(self) -> &'static str {
        crate::names::serde_name(&self)
    }
}

/// A complete header read from a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Its length in bytes: what follows is the client's own data.
    pub len: usize,
    /// Its version.
    pub version: Version,
    /// The client and the address it connected to, as the sender saw them; `None` for a v2
    /// `LOCAL` command, a v1 `UNKNOWN` line or an address family ringlb does not route (UNIX,
    /// unspecified): the connection's own addresses stand.
    pub addresses: Option<(SocketAddr, SocketAddr)>,
}

/// What [`parse_header`] says of the bytes read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parse {
    /// A whole header is there.
    Complete(Parsed),
    /// Every byte so far belongs to a header that is not finished: read more (at most up to
    /// [`MAX_HEADER_LEN`] in all).
    Incomplete,
}

/// Why a client's header was refused; the `reason` label of
/// `ringlb_service_proxy_rejected_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// The connection came from a source outside `trusted`.
    Untrusted,
    /// The bytes are not a PROXY header (or a broken one).
    Malformed,
    /// Longer than [`V1_MAX_LEN`] (v1) or [`V2_MAX_LEN`] (v2).
    Oversized,
    /// The header did not complete within `proxy_timeout`.
    Timeout,
    /// The client closed (or reset) before its header was complete.
    Closed,
}

impl Reject {
    /// Every reason, in the order of [`RejectCounters`].
    pub const ALL: [Reject; 5] = [
        Reject::Untrusted,
        Reject::Malformed,
        Reject::Oversized,
        Reject::Timeout,
        Reject::Closed,
    ];

    /// The metric label and log word.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Untrusted => "untrusted",
            Reject::Malformed => "malformed",
            Reject::Oversized => "oversized",
            Reject::Timeout => "timeout",
            Reject::Closed => "closed",
        }
    }
}

/// Client connections refused at their PROXY header, per reason (one service's).
#[derive(Debug, Default)]
pub struct RejectCounters([Counter; Reject::ALL.len()]);

impl RejectCounters {
    /// Counts one refusal.
    pub fn inc(&self, reason: Reject) {
        self.0[reason as usize].inc();
    }

    /// The counter of `reason`.
    pub fn get(&self, reason: Reject) -> &Counter {
        &self.0[reason as usize]
    }
}

/// Parses the start of a client connection as a PROXY header (v1 or v2, told apart by their
/// first bytes). `Incomplete` only while every byte of `input` can still be part of a header no
/// longer than the limits, so a reader may consume what it has read and read on.
pub fn parse_header(input: &[u8]) -> Result<Parse, Reject> {
    if starts_like(input, V2_SIGNATURE) {
        parse_v2(input)
    } else if starts_like(input, V1_PREFIX) {
        parse_v1(input)
    } else {
        Err(Reject::Malformed)
    }
}

/// Whether `input` starts with `prefix`, or is a beginning of it.
fn starts_like(input: &[u8], prefix: &[u8]) -> bool {
    let n = input.len().min(prefix.len());
    input[..n] == prefix[..n]
}

fn parse_v1(input: &[u8]) -> Result<Parse, Reject> {
    let Some(cr) = input.iter().position(|&b| b == b'\r') else {
        return if input.len() >= V1_MAX_LEN {
            Err(Reject::Oversized)
        } else {
            Ok(Parse::Incomplete)
        };
    };
    let len = cr + 2;
    if len > V1_MAX_LEN {
        return Err(Reject::Oversized);
    }
    if input.len() < len {
        return Ok(Parse::Incomplete);
    }
    if input[cr + 1] != b'\n' {
        return Err(Reject::Malformed);
    }
    let header = ppp::v1::Header::try_from(&input[..len]).map_err(|_| Reject::Malformed)?;
    let addresses = match header.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        ppp::v1::Addresses::Tcp6(a) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        ppp::v1::Addresses::Unknown => None,
    };
    Ok(Parse::Complete(Parsed {
        len,
        version: Version::V1,
        addresses,
    }))
}

fn parse_v2(input: &[u8]) -> Result<Parse, Reject> {
    // The fixed part: signature, version and command, family and protocol, length.
    if input.len() < 16 {
        return Ok(Parse::Incomplete);
    }
    let len = 16 + usize::from(u16::from_be_bytes([input[14], input[15]]));
    if len > V2_MAX_LEN {
        return Err(Reject::Oversized);
    }
    if input.len() < len {
        // The fixed part is checked now, so a bad version or family is refused at once.
        return match v2::Header::try_from(&input[..16]) {
            Ok(_) | Err(v2::ParseError::Partial(..)) => Ok(Parse::Incomplete),
            Err(_) => Err(Reject::Malformed),
        };
    }
    let header = v2::Header::try_from(&input[..len]).map_err(|_| Reject::Malformed)?;
    if header.tlvs().any(|tlv| tlv.is_err()) {
        return Err(Reject::Malformed);
    }
    let addresses = match (header.command, header.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Some((
            SocketAddr::new(a.source_address.into(), a.source_port),
            SocketAddr::new(a.destination_address.into(), a.destination_port),
        )),
        (v2::Command::Proxy, v2::Addresses::Unix(_) | v2::Addresses::Unspecified) => None,
    };
    Ok(Parse::Complete(Parsed {
        len,
        version: Version::V2,
        addresses,
    }))
}

/// The header ringlb writes first on a backend connection: `client` connected to `service`.
/// Two addresses of different families (an IPv4 client on an IPv6 listener) are both written
/// as IPv6 (IPv4-mapped), which both versions carry.
pub fn build_header(version: Version, client: SocketAddr, service: SocketAddr) -> Vec<u8> {
    let (client, service) = same_family(client, service);
    match version {
        Version::V1 => ppp::v1::Addresses::from((client, service))
            .to_string()
            .into_bytes(),
        Version::V2 => v2::Builder::with_addresses(
            v2::Version::Two | v2::Command::Proxy,
            v2::Protocol::Stream,
            (client, service),
        )
        .build()
        // A header of two addresses is far below the 64 KiB the builder refuses.
        .unwrap_or_default(),
    }
}

/// `a` and `b` in one family: IPv4 when both are (or map to) IPv4, else IPv6.
fn same_family(a: SocketAddr, b: SocketAddr) -> (SocketAddr, SocketAddr) {
    let canonical = |s: SocketAddr| SocketAddr::new(s.ip().to_canonical(), s.port());
    let (a, b) = (canonical(a), canonical(b));
    if a.is_ipv4() == b.is_ipv4() {
        return (a, b);
    }
    let v6 = |s: SocketAddr| match s.ip() {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.to_ipv6_mapped()), s.port()),
        IpAddr::V6(_) => s,
    };
    (v6(a), v6(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn built_headers_parse_back_to_their_addresses() {
        for version in [Version::V1, Version::V2] {
            for (client, service) in [
                ("192.0.2.7:40000", "10.0.0.1:5432"),
                ("[2001:db8::7]:40000", "[2001:db8::1]:5432"),
            ] {
                let bytes = build_header(version, addr(client), addr(service));
                let mut input = bytes.clone();
                input.extend_from_slice(b"client data");
                let parsed = parse_header(&input).unwrap();
                assert_eq!(
                    parsed,
                    Parse::Complete(Parsed {
                        len: bytes.len(),
                        version,
                        addresses: Some((addr(client), addr(service))),
                    }),
                    "{version:?} {client}"
                );
            }
        }
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        let bytes = build_header(Version::V1, addr("192.0.2.7:1"), addr("[2001:db8::1]:2"));
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "PROXY TCP6 ::ffff:192.0.2.7 2001:db8::1 1 2\r\n"
        );
        let bytes = build_header(
            Version::V1,
            addr("[::ffff:192.0.2.7]:1"),
            addr("10.0.0.1:2"),
        );
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "PROXY TCP4 192.0.2.7 10.0.0.1 1 2\r\n"
        );
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        for version in [Version::V1, Version::V2] {
            let bytes = build_header(version, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
            for n in 0..bytes.len() {
                assert_eq!(parse_header(&bytes[..n]), Ok(Parse::Incomplete), "{n}");
            }
        }
    }

    #[test]
    fn local_and_unknown_keep_the_connection_addresses() {
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse_header(&local),
            Ok(Parse::Complete(Parsed {
                len: 16,
                version: Version::V2,
                addresses: None
            }))
        );
        assert_eq!(
            parse_header(b"PROXY UNKNOWN\r\nhello"),
            Ok(Parse::Complete(Parsed {
                len: 15,
                version: Version::V1,
                addresses: None
            }))
        );
    }

    #[test]
    fn broken_and_long_headers_are_refused() {
        assert_eq!(parse_header(b"GET / HTTP/1.1\r\n"), Err(Reject::Malformed));
        assert_eq!(
            parse_header(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"),
            Err(Reject::Malformed)
        );
        assert_eq!(
            parse_header(b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n"),
            Err(Reject::Malformed)
        );
        assert_eq!(parse_header(b"PROXY TCP4 x\rX"), Err(Reject::Malformed));
        let long = [b"PROXY ".as_slice(), &[b'1'; 120]].concat();
        assert_eq!(parse_header(&long), Err(Reject::Oversized));
        let mut big = V2_SIGNATURE.to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert_eq!(parse_header(&big), Err(Reject::Oversized));
        let mut bad_version = V2_SIGNATURE.to_vec();
        bad_version.extend_from_slice(&[0x31, 0x11, 0, 12]);
        assert_eq!(parse_header(&bad_version), Err(Reject::Malformed));
        // A TLV that claims more bytes than the header holds.
        let mut bad_tlv = build_header(Version::V2, addr("192.0.2.7:1"), addr("10.0.0.1:2"));
        bad_tlv[15] += 3;
        bad_tlv.extend_from_slice(&[0x04, 0x00, 0x09]);
        assert_eq!(parse_header(&bad_tlv), Err(Reject::Malformed));
    }
}
