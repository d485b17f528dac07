//! What can be wrong in a config file: the [`Problem`] half of a
//! [`ConfigError::Invalid`](super::ConfigError::Invalid), the other half being its
//! [`Location`](super::Location).
//!
//! Each variant carries the bad value as written or as parsed and whatever else its message
//! needs; the message is the text after `FILE:LINE:COLUMN: KEY: `. Finding the problems belongs
//! to `validate` and its siblings.

use std::net::{IpAddr, SocketAddr};

use super::defaults::{DEFAULT_HASH_TABLE_SIZE, MAX_SERVICE_NAME_LEN, MIN_HASH_SLOTS_PER_BACKEND};
use super::{AlertKind, HealthKind, Protocol, RoleName};
use crate::balancer::Algorithm;

/// What is wrong at a [`Location`] of a config file. Displayed as the part of the message after
/// the location.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Problem {
    /// The file is not UTF-8 text; the location is that of the first byte that is not.
    #[error(
        "the file is not UTF-8: {} at byte offset {offset}; save it as UTF-8",
        invalid_bytes(sequence)
    )]
    NotUtf8 {
        /// Offset of the first invalid byte from the start of the file.
        offset: usize,
        /// The invalid bytes (1 to 3), or none when the file ends inside a character.
        sequence: Vec<u8>,
    },
    /// The text is not valid TOML.
    #[error("TOML syntax error: {message}")]
    Syntax {
        /// The parser's description.
        message: String,
    },
    /// Valid TOML that does not fit the config's shape: unknown key, wrong type, unknown
    /// enumeration value, missing required key. The message comes from the deserializer.
    #[error("{message}")]
    Schema {
        /// The deserializer's description, e.g. "unknown field `bogus`, expected ...".
        message: String,
    },
    /// The file defines no `[[service]]`.
    #[error("the config defines no service (add a [[service]] table)")]
    NoServices,
    /// A service name is empty, too long or has characters other than letters, digits, `-_.`.
    #[error(
        "{value:?} is not a valid service name (use 1 to {MAX_SERVICE_NAME_LEN} letters, \
         digits, '-', '_' or '.')"
    )]
    BadServiceName {
        /// The name as written.
        value: String,
    },
    /// Two services have the same name.
    #[error("{value:?} is already the name of service[{first_index}] (line {first_line})")]
    DuplicateServiceName {
        /// The name.
        value: String,
        /// Index of the service that has it first.
        first_index: usize,
        /// Line of the first service's name.
        first_line: usize,
    },
    /// A listen address is not `IP:port`.
    #[error("{value:?} is not a socket address (IP:port)")]
    NotSocketAddr {
        /// The value as written.
        value: String,
    },
    /// Two services of the same protocol listen on the same address.
    #[error("{addr} is already the listen address of service {other:?} (line {other_line})")]
    DuplicateListen {
        /// The address.
        addr: SocketAddr,
        /// Name of the service that listens there first.
        other: String,
        /// Line of that service's listen address.
        other_line: usize,
    },
    /// A wildcard and a specific address of the same family, port and protocol: both would bind
    /// (SO_REUSEPORT) and the kernel would split the traffic between two services.
    #[error(
        "{addr} overlaps {other_addr}, the listen address of service {other:?} \
         (line {other_line}); use distinct ports"
    )]
    OverlappingListen {
        /// This service's address.
        addr: SocketAddr,
        /// The other service's address.
        other_addr: SocketAddr,
        /// The other service's name.
        other: String,
        /// Line of the other service's listen address.
        other_line: usize,
    },
    /// A duration is not written in the grammar of [`crate::units`] (a number and a unit).
    #[error("{value:?} is not a duration: {reason}")]
    BadDuration {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A byte size is not written in the grammar of [`crate::units`] (a whole number and an
    /// optional unit).
    #[error("{value:?} is not a byte size: {reason}")]
    BadByteSize {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A number, duration or size outside its allowed range.
    #[error("{value} is out of range: must be {allowed}")]
    OutOfRange {
        /// The value as written (strings quoted).
        value: String,
        /// The allowed range in words, e.g. "between 1 and 1000".
        allowed: String,
    },
    /// `hash_table_size` is not prime.
    #[error(
        "{value} is not a prime number; the Maglev table size must be prime \
         (e.g. the default {DEFAULT_HASH_TABLE_SIZE})"
    )]
    NotPrime {
        /// The size.
        value: usize,
    },
    /// `hash_table_size` (given or default) has too few slots for the number of backends.
    #[error(
        "{value} is too small for {backends} backends: Maglev needs \
         {MIN_HASH_SLOTS_PER_BACKEND} slots per backend, so set hash_table_size to a prime of at \
         least {minimum}"
    )]
    HashTableTooSmall {
        /// The size.
        value: usize,
        /// Number of backends of the service.
        backends: usize,
        /// Smallest acceptable size.
        minimum: usize,
    },
    /// An option that only the `source_hash` algorithm uses is set for another algorithm.
    #[error("applies only to algorithm = \"source_hash\", and this service uses {:?}", algorithm.name())]
    NotForAlgorithm {
        /// The service's algorithm.
        algorithm: Algorithm,
    },
    /// An option of one protocol is set on a service of the other.
    #[error(
        "applies only to protocol = \"{needs}\" services, and this service's protocol is \
         \"{protocol}\""
    )]
    WrongProtocol {
        /// The protocol the option belongs to.
        needs: Protocol,
        /// The service's protocol.
        protocol: Protocol,
    },
    /// A `[service.health]` key set for a check kind that does not use it.
    #[error("applies only to {applies_to}, and this check's kind is \"{kind}\"")]
    NotForHealthKind {
        /// The check's kind.
        kind: HealthKind,
        /// The kinds that take the key, in words.
        applies_to: &'static str,
    },
    /// A `role` that the check's kind cannot report.
    #[error("role \"{}\" does not apply to kind = \"{kind}\" (use {allowed})", role.name())]
    RoleNotForKind {
        /// The role as written.
        role: RoleName,
        /// The check's kind.
        kind: HealthKind,
        /// The roles the kind takes, in words.
        allowed: &'static str,
    },
    /// A probe timeout longer than the probe interval.
    #[error(
        "{timeout} is longer than the interval ({interval}): a probe must end before the \
         next one starts"
    )]
    TimeoutOverInterval {
        /// The timeout as written.
        timeout: String,
        /// The interval, as written or its default.
        interval: String,
    },
    /// The admin API's listen address is a TCP service's.
    #[error("{addr} is already the listen address of service {service:?}")]
    AdminListenTaken {
        /// The address.
        addr: SocketAddr,
        /// The service listening there.
        service: String,
    },
    /// An HTTP check's path that does not start with `/`.
    #[error("{value:?} is not a path: it must start with \"/\" (e.g. \"/primary\")")]
    HttpPath {
        /// The path as written.
        value: String,
    },
    /// A string option that must not be empty is.
    #[error("must not be empty")]
    Empty,
    /// An access-list entry is not a CIDR prefix (or a bare IP address).
    #[error(
        "{value:?} is not a CIDR prefix ({reason}); write e.g. \"10.0.0.0/8\" or \"2001:db8::/32\""
    )]
    NotPrefix {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A rate is not `N/unit` or `N/duration`.
    #[error(
        "{value:?} is not a rate: write a count, '/' and a unit or duration, e.g. \"50/s\", \
         \"600/m\" or \"5/100ms\" (count between 1 and {max})"
    )]
    BadRate {
        /// The value as written.
        value: String,
        /// The largest count.
        max: u32,
    },
    /// A key that only means something with another key.
    #[error("needs `{needs}` in the same table")]
    Needs {
        /// The key it needs.
        needs: &'static str,
    },
    /// A non-loopback admin address without a token.
    #[error(
        "{addr} is reachable from other hosts and the admin API has no token: anyone there \
         could change backends and reload. Set `token`, listen on loopback (127.0.0.1 or ::1), \
         or set `allow_open = true` to accept it"
    )]
    AdminOpen {
        /// The address.
        addr: SocketAddr,
    },
    /// Every backend of a service is a backup.
    #[error(
        "every backend of this service is a backup; at least one must be a primary \
         (backup = false)"
    )]
    NoPrimaryBackend,
    /// A service has no backend.
    #[error("a service needs at least one backend")]
    NoBackends,
    /// A backend address is not `IP:port`, `[IPv6]:port` or `host:port`.
    #[error("{value:?} is not a backend address (IP:port, [IPv6]:port or host:port)")]
    NotBackendAddr {
        /// The value as written.
        value: String,
    },
    /// A backend address has port 0.
    #[error("{value:?} has port 0, which cannot be connected to")]
    BackendPortZero {
        /// The value as written.
        value: String,
    },
    /// A backend host name did not resolve.
    #[error("cannot resolve {value:?}: {reason}")]
    Unresolvable {
        /// The value as written.
        value: String,
        /// The resolver's answer.
        reason: String,
    },
    /// Two backends of one service are the same address.
    #[error("{value:?} duplicates backend[{first_index}] (line {first_line}): both are {addr}")]
    DuplicateBackend {
        /// The value as written.
        value: String,
        /// The resolved address both have.
        addr: SocketAddr,
        /// Index of the first backend with it.
        first_index: usize,
        /// Line of the first backend's address.
        first_line: usize,
    },
    /// `accept_proxy = true` without a `trusted` list: no client could send a header.
    #[error(
        "accept_proxy = true needs a trusted list: the sources (such as \"10.0.0.0/8\") allowed to send a PROXY header"
    )]
    NoTrusted,
    /// `trusted` or `proxy_timeout` without `accept_proxy = true`.
    #[error("applies only with accept_proxy = true")]
    NeedsAcceptProxy,
    /// A `source` entry is not an IP address.
    #[error("{value:?} is not an IP address (a source address has no port: ringlb picks one)")]
    NotSourceAddr {
        /// The value as written.
        value: String,
    },
    /// A `source` entry is the wildcard address, a multicast or a broadcast address.
    #[error("{addr} cannot be a source address: give an address of this host's interfaces")]
    NotUnicastSource {
        /// The address.
        addr: IpAddr,
    },
    /// A `source` list has an address twice.
    #[error("{addr} is listed twice (first as source[{first_index}])")]
    DuplicateSource {
        /// The address.
        addr: IpAddr,
        /// Index of its first entry.
        first_index: usize,
    },
    /// A source address and a backend of different families (IPv4 and IPv6).
    #[error(
        "{source_addr} cannot reach backend {backend}: source addresses must be of the \
         backends' family (IPv4 or IPv6)"
    )]
    SourceFamily {
        /// The source address.
        source_addr: IpAddr,
        /// The backend's address.
        backend: SocketAddr,
    },
    /// A webhook URL that does not parse, or that ringlb cannot POST to.
    #[error("{value:?} is not a usable webhook URL: {reason}")]
    BadWebhookUrl {
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A webhook name is empty, too long or has characters other than letters, digits, `-_.`.
    #[error(
        "{value:?} is not a valid webhook name (use 1 to {MAX_SERVICE_NAME_LEN} letters, \
         digits, '-', '_' or '.')"
    )]
    BadWebhookName {
        /// The name as written.
        value: String,
    },
    /// Two webhooks have the same name, given or taken from their URLs' origin.
    #[error(
        "{value:?} is already the name of alert.webhook[{first_index}] (line \
         {first_line}){}",
        if *from_url { "; webhooks to the same host and port need a `name` each" } else { "" }
    )]
    DuplicateWebhookName {
        /// The name.
        value: String,
        /// Index of the webhook that has it first.
        first_index: usize,
        /// Line of the first webhook's name or URL.
        first_line: usize,
        /// Whether this name is the default one (the URL's origin).
        from_url: bool,
    },
    /// A CA file that cannot be read or holds no PEM certificate.
    #[error("cannot use {path:?} as CA certificates: {reason}")]
    BadCaFile {
        /// The path as written.
        path: String,
        /// Why.
        reason: String,
    },
    /// A webhook header whose name or value HTTP does not allow, or that ringlb sets itself.
    #[error("header {name:?}: {reason}")]
    BadHeader {
        /// The header's name as written.
        name: String,
        /// Why.
        reason: String,
    },
    /// A webhook's template is missing, misplaced or malformed.
    #[error("{reason}")]
    BadTemplate {
        /// What is wrong.
        reason: String,
    },
    /// `[runtime] instance_name` is empty, too long or holds control characters.
    #[error("{value:?} is not a usable instance name (1 to 253 characters, no control characters)")]
    BadInstanceName {
        /// The value as written.
        value: String,
    },
    /// A webhook lists an event twice.
    #[error("\"{event}\" is listed twice")]
    DuplicateEvent {
        /// The event.
        event: AlertKind,
    },
    /// A webhook's `events` is an empty list.
    #[error(
        "an empty list sends nothing; leave `events` out to send every event, or remove \
         the webhook"
    )]
    NoEvents,
    /// A `[service.discovery]` key of the other kind.
    #[error("applies only to kind = \"{applies_to}\", and this discovery's kind is \"{kind}\"")]
    NotForDiscoveryKind {
        /// The kind the key belongs to.
        applies_to: &'static str,
        /// The table's kind.
        kind: &'static str,
    },
    /// A key the discovery kind needs is missing.
    #[error("kind = \"{kind}\" needs `{key}` ({example})")]
    MissingDiscoveryKey {
        /// The table's kind.
        kind: &'static str,
        /// The missing key.
        key: &'static str,
        /// An example value.
        example: &'static str,
    },
    /// Both `token` and `token_file`.
    #[error("give the ACL token either as `token` or as `token_file`, not both")]
    TokenTwice,
    /// The token file cannot be read, or holds no token.
    #[error("cannot read the token from {path:?}: {reason}")]
    BadTokenFile {
        /// The path as written.
        path: String,
        /// Why.
        reason: String,
    },
    /// The Consul agent's address is not a usable URL.
    #[error("{value:?} is not a usable Consul agent address: {reason}")]
    BadRegistryAddress {
        /// The value as written.
        value: String,
        /// Why.
        reason: String,
    },
    /// A DNS discovery name is neither `host:port` nor an SRV name.
    #[error(
        "{value:?} is not a discovery name: write \"host:port\" for A/AAAA records or an SRV \
         name that starts with '_' (e.g. \"_postgres._tcp.orders.service.consul\")"
    )]
    BadDiscoveryName {
        /// The value as written.
        value: String,
    },
    /// `min_ttl` above `max_ttl`.
    #[error("min_ttl ({min:?}) is above max_ttl ({max:?})")]
    TtlOrder {
        /// `min_ttl`.
        min: std::time::Duration,
        /// `max_ttl`.
        max: std::time::Duration,
    },
}

/// What [`Problem::NotUtf8`] found, in words: "invalid bytes 0xE2 0x28".
fn invalid_bytes(sequence: &[u8]) -> String {
    if sequence.is_empty() {
        return "it ends inside a character".to_owned();
    }
    let hex: Vec<String> = sequence.iter().map(|b| format!("0x{b:02X}")).collect();
    let plural = if sequence.len() == 1 { "" } else { "s" };
    format!("invalid byte{plural} {}", hex.join(" "))
}
