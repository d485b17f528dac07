//! The config layer's one error type, and turning byte offsets into lines and columns.
//!
//! Every variant but [`ConfigError::Read`] carries a [`Location`] (file, line, column, key path)
//! and the bad value as written or as parsed, so a message can be acted on without opening the
//! file.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use super::defaults::{DEFAULT_HASH_TABLE_SIZE, MAX_SERVICE_NAME_LEN, MIN_HASH_SLOTS_PER_BACKEND};
use super::{AlertKind, HealthKind, Protocol, RoleName};
use crate::balancer::Algorithm;

/// Where in a config file an error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file path as given to [`Config::load`](super::Config::load), or the source name given to
    /// [`Config::parse`](super::Config::parse).
    pub source: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Key path such as `service[1].listen`; empty for TOML syntax errors.
    pub key: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.source, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        Ok(())
    }
}

/// Why a config could not be loaded. Displayed as `FILE:LINE:COLUMN: KEY: what is wrong`.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The I/O error (shared so that the error stays `Clone`).
        source: Arc<std::io::Error>,
    },
    /// The text is not valid TOML.
    #[error("{at}: TOML syntax error: {message}")]
    Syntax {
        /// Where the parser stopped.
        at: Box<Location>,
        /// The parser's description.
        message: String,
    },
    /// Valid TOML that does not fit the config's shape: unknown key, wrong type, unknown
    /// enumeration value, missing required key. The message comes from the deserializer.
    #[error("{at}: {message}")]
    Schema {
        /// The offending key or value.
        at: Box<Location>,
        /// The deserializer's description, e.g. "unknown field `bogus`, expected ...".
        message: String,
    },
    /// The file defines no `[[service]]`.
    #[error("{at}: the config defines no service (add a [[service]] table)")]
    NoServices {
        /// Start of the file, or the empty `service` array.
        at: Box<Location>,
    },
    /// A service name is empty, too long or has characters other than letters, digits, `-_.`.
    #[error(
        "{at}: {value:?} is not a valid service name (use 1 to {MAX_SERVICE_NAME_LEN} letters, \
         digits, '-', '_' or '.')"
    )]
    BadServiceName {
        /// The name value.
        at: Box<Location>,
        /// The name as written.
        value: String,
    },
    /// Two services have the same name.
    #[error("{at}: {value:?} is already the name of service[{first_index}] (line {first_line})")]
    DuplicateServiceName {
        /// The second name.
        at: Box<Location>,
        /// The name.
        value: String,
        /// Index of the service that has it first.
        first_index: usize,
        /// Line of the first service's name.
        first_line: usize,
    },
    /// A listen address is not `IP:port`.
    #[error("{at}: {value:?} is not a socket address (IP:port)")]
    NotSocketAddr {
        /// The listen value.
        at: Box<Location>,
        /// The value as written.
        value: String,
    },
    /// Two services of the same protocol listen on the same address.
    #[error("{at}: {addr} is already the listen address of service {other:?} (line {other_line})")]
    DuplicateListen {
        /// The second listen value.
        at: Box<Location>,
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
        "{at}: {addr} overlaps {other_addr}, the listen address of service {other:?} \
         (line {other_line}); use distinct ports"
    )]
    OverlappingListen {
        /// The second listen value.
        at: Box<Location>,
        /// This service's address.
        addr: SocketAddr,
        /// The other service's address.
        other_addr: SocketAddr,
        /// The other service's name.
        other: String,
        /// Line of the other service's listen address.
        other_line: usize,
    },
    /// A duration is not written as a whole number and a unit.
    #[error("{at}: {value:?} is not a duration: {reason}")]
    BadDuration {
        /// The duration value.
        at: Box<Location>,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A byte size is not a number of bytes or a number with `B`, `KiB`, `MiB` or `GiB`.
    #[error("{at}: {value:?} is not a byte size: {reason}")]
    BadByteSize {
        /// The size value.
        at: Box<Location>,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A number, duration or size outside its allowed range.
    #[error("{at}: {value} is out of range: must be {allowed}")]
    OutOfRange {
        /// The value.
        at: Box<Location>,
        /// The value as written (strings quoted).
        value: String,
        /// The allowed range in words, e.g. "between 1 and 1000".
        allowed: String,
    },
    /// `hash_table_size` is not prime.
    #[error(
        "{at}: {value} is not a prime number; the Maglev table size must be prime \
         (e.g. the default {DEFAULT_HASH_TABLE_SIZE})"
    )]
    NotPrime {
        /// The size value.
        at: Box<Location>,
        /// The size.
        value: usize,
    },
    /// `hash_table_size` (given or default) has too few slots for the number of backends.
    #[error(
        "{at}: {value} is too small for {backends} backends: Maglev needs \
         {MIN_HASH_SLOTS_PER_BACKEND} slots per backend, so set hash_table_size to a prime of at \
         least {minimum}"
    )]
    HashTableTooSmall {
        /// The size value (or the algorithm, when the size is the default).
        at: Box<Location>,
        /// The size.
        value: usize,
        /// Number of backends of the service.
        backends: usize,
        /// Smallest acceptable size.
        minimum: usize,
    },
    /// An option that only the `source_hash` algorithm uses is set for another algorithm.
    #[error("{at}: applies only to algorithm = \"source_hash\", and this service uses {:?}", algorithm.name())]
    NotForAlgorithm {
        /// The option.
        at: Box<Location>,
        /// The service's algorithm.
        algorithm: Algorithm,
    },
    /// An option of one protocol is set on a service of the other.
    #[error(
        "{at}: applies only to protocol = \"{needs}\" services, and this service's protocol is \
         \"{protocol}\""
    )]
    WrongProtocol {
        /// The option.
        at: Box<Location>,
        /// The protocol the option belongs to.
        needs: Protocol,
        /// The service's protocol.
        protocol: Protocol,
    },
    /// A `[service.health]` key set for a check kind that does not use it.
    #[error("{at}: applies only to {applies_to}, and this check's kind is \"{kind}\"")]
    NotForHealthKind {
        /// The key.
        at: Box<Location>,
        /// The check's kind.
        kind: HealthKind,
        /// The kinds that take the key, in words.
        applies_to: &'static str,
    },
    /// A `role` that the check's kind cannot report.
    #[error("{at}: role \"{}\" does not apply to kind = \"{kind}\" (use {allowed})", role.name())]
    RoleNotForKind {
        /// The role value.
        at: Box<Location>,
        /// The role as written.
        role: RoleName,
        /// The check's kind.
        kind: HealthKind,
        /// The roles the kind takes, in words.
        allowed: &'static str,
    },
    /// A probe timeout longer than the probe interval.
    #[error(
        "{at}: {timeout} is longer than the interval ({interval}): a probe must end before the \
         next one starts"
    )]
    TimeoutOverInterval {
        /// The timeout value.
        at: Box<Location>,
        /// The timeout as written.
        timeout: String,
        /// The interval, as written or its default.
        interval: String,
    },
    /// The admin API's listen address is a TCP service's.
    #[error("{at}: {addr} is already the listen address of service {service:?}")]
    AdminListenTaken {
        /// The admin listen value.
        at: Box<Location>,
        /// The address.
        addr: SocketAddr,
        /// The service listening there.
        service: String,
    },
    /// A string option that must not be empty is.
    #[error("{at}: must not be empty")]
    Empty {
        /// The empty value.
        at: Box<Location>,
    },
    /// Every backend of a service is a backup.
    #[error(
        "{at}: every backend of this service is a backup; at least one must be a primary \
         (backup = false)"
    )]
    NoPrimaryBackend {
        /// The last backend's `backup` value.
        at: Box<Location>,
    },
    /// A service has no backend.
    #[error("{at}: a service needs at least one backend")]
    NoBackends {
        /// The empty `backend` array, or the service's header when there is none.
        at: Box<Location>,
    },
    /// A backend address is not `IP:port`, `[IPv6]:port` or `host:port`.
    #[error("{at}: {value:?} is not a backend address (IP:port, [IPv6]:port or host:port)")]
    NotBackendAddr {
        /// The address value.
        at: Box<Location>,
        /// The value as written.
        value: String,
    },
    /// A backend address has port 0.
    #[error("{at}: {value:?} has port 0, which cannot be connected to")]
    BackendPortZero {
        /// The address value.
        at: Box<Location>,
        /// The value as written.
        value: String,
    },
    /// A backend host name did not resolve.
    #[error("{at}: cannot resolve {value:?}: {reason}")]
    Unresolvable {
        /// The address value.
        at: Box<Location>,
        /// The value as written.
        value: String,
        /// The resolver's answer.
        reason: String,
    },
    /// Two backends of one service are the same address.
    #[error(
        "{at}: {value:?} duplicates backend[{first_index}] (line {first_line}): both are {addr}"
    )]
    DuplicateBackend {
        /// The second address value.
        at: Box<Location>,
        /// The value as written.
        value: String,
        /// The resolved address both have.
        addr: SocketAddr,
        /// Index of the first backend with it.
        first_index: usize,
        /// Line of the first backend's address.
        first_line: usize,
    },
    /// A webhook URL that does not parse, or that ringlb cannot POST to.
    #[error("{at}: {value:?} is not a usable webhook URL: {reason}")]
    BadWebhookUrl {
        /// The url value.
        at: Box<Location>,
        /// The value as written.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A webhook name is empty, too long or has characters other than letters, digits, `-_.`.
    #[error(
        "{at}: {value:?} is not a valid webhook name (use 1 to {MAX_SERVICE_NAME_LEN} letters, \
         digits, '-', '_' or '.')"
    )]
    BadWebhookName {
        /// The name value.
        at: Box<Location>,
        /// The name as written.
        value: String,
    },
    /// Two webhooks have the same name, given or taken from their URLs' origin.
    #[error(
        "{at}: {value:?} is already the name of alert.webhook[{first_index}] (line \
         {first_line}){}",
        if *from_url { "; webhooks to the same host and port need a `name` each" } else { "" }
    )]
    DuplicateWebhookName {
        /// The second name, or the second URL when its name is the default.
        at: Box<Location>,
        /// The name.
        value: String,
        /// Index of the webhook that has it first.
        first_index: usize,
        /// Line of the first webhook's name or URL.
        first_line: usize,
        /// Whether this name is the default one (the URL's origin).
        from_url: bool,
    },
    /// A webhook lists an event twice.
    #[error("{at}: \"{event}\" is listed twice")]
    DuplicateEvent {
        /// The second entry.
        at: Box<Location>,
        /// The event.
        event: AlertKind,
    },
    /// A webhook's `events` is an empty list.
    #[error(
        "{at}: an empty list sends nothing; leave `events` out to send every event, or remove \
         the webhook"
    )]
    NoEvents {
        /// The empty list.
        at: Box<Location>,
    },
}

impl ConfigError {
    /// Where in the file the error is; `None` for [`ConfigError::Read`].
    pub fn location(&self) -> Option<&Location> {
        use ConfigError::*;
        match self {
            Read { .. } => None,
            Syntax { at, .. }
            | Schema { at, .. }
            | NoServices { at }
            | BadServiceName { at, .. }
            | DuplicateServiceName { at, .. }
            | NotSocketAddr { at, .. }
            | DuplicateListen { at, .. }
            | OverlappingListen { at, .. }
            | BadDuration { at, .. }
            | BadByteSize { at, .. }
            | OutOfRange { at, .. }
            | NotPrime { at, .. }
            | HashTableTooSmall { at, .. }
            | NotForAlgorithm { at, .. }
            | WrongProtocol { at, .. }
            | NotForHealthKind { at, .. }
            | RoleNotForKind { at, .. }
            | TimeoutOverInterval { at, .. }
            | AdminListenTaken { at, .. }
            | Empty { at }
            | NoPrimaryBackend { at }
            | NoBackends { at }
            | NotBackendAddr { at, .. }
            | BackendPortZero { at, .. }
            | Unresolvable { at, .. }
            | DuplicateBackend { at, .. }
            | BadWebhookUrl { at, .. }
            | BadWebhookName { at, .. }
            | DuplicateWebhookName { at, .. }
            | DuplicateEvent { at, .. }
            | NoEvents { at } => Some(at),
        }
    }
}

/// The text being loaded and its name: turns byte offsets into [`Location`]s.
pub(crate) struct Doc<'a> {
    /// File path or other source name.
    pub(crate) source: &'a str,
    /// The whole file.
    pub(crate) text: &'a str,
}

impl Doc<'_> {
    /// The location of byte `offset`, for key path `key`. Boxed to keep `ConfigError` small.
    pub(crate) fn at(&self, offset: usize, key: impl Into<String>) -> Box<Location> {
        let (line, column) = line_col(self.text, offset);
        Box::new(Location {
            source: self.source.to_owned(),
            line,
            column,
            key: key.into(),
        })
    }

    /// The 1-based line of byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    /// A TOML syntax error (from parsing, before deserializing).
    pub(crate) fn syntax(&self, err: toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let mut message = err.message().to_owned();
        // "duplicate key" alone does not say which key; its span does.
        let snippet = self.text.get(span.clone()).unwrap_or("");
        if message == "duplicate key" && !snippet.is_empty() && !snippet.contains('\n') {
            message = format!("duplicate key `{snippet}`");
        }
        ConfigError::Syntax {
            // The parser always reports a span; offset 0 is only a fallback.
            at: self.at(span.start, ""),
            message,
        }
    }

    /// An error from deserializing into the file structs, with its key path.
    pub(crate) fn schema(&self, err: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let key = key_path(err.path());
        let inner = err.into_inner();
        ConfigError::Schema {
            // The deserializer reports a span for every error it raises; 0 is only a fallback.
            at: self.at(inner.span().map_or(0, |s| s.start), key),
            message: plain_words(inner.message()),
        }
    }
}

/// Replaces Rust type names at the end of serde's messages ("expected u32") with words.
fn plain_words(message: &str) -> String {
    for (rust, words) in [
        ("usize", "a whole number (0 or more)"),
        ("u32", "a whole number from 0 to 4294967295"),
    ] {
        if let Some(head) = message.strip_suffix(rust)
            && head.ends_with("expected ")
        {
            return format!("{head}{words}");
        }
    }
    message.to_owned()
}

/// Renders a serde path as `service[1].backend[0].weight`, leaving out the internal field that
/// `toml::Spanned` deserializes through.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__serde_spanned") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`. An offset past the end
/// means the end; one inside a character means that character.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_line_and_column() {
        let text = "ab\ncd\n\nxyz";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 1), (1, 2));
        assert_eq!(line_col(text, 2), (1, 3), "the newline ends line 1");
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 6), (3, 1), "an empty line");
        assert_eq!(line_col(text, 7), (4, 1));
        assert_eq!(line_col(text, 9), (4, 3));
    }

    #[test]
    fn offsets_past_the_end_mean_the_end() {
        assert_eq!(line_col("ab\ncd", 5), (2, 3));
        assert_eq!(line_col("ab\ncd", 500), (2, 3));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // "é" is two bytes, "→" three.
        let text = "name = \"é→x\"\n";
        let x = text.find('x').unwrap();
        assert_eq!(x, 13);
        assert_eq!(line_col(text, x), (1, 11));
        // An offset inside a multi-byte character means that character.
        assert_eq!(line_col(text, 9), (1, 9));
    }

    #[test]
    fn crlf_lines_count_like_lf_lines() {
        let text = "a = 1\r\nb = 2\r\n";
        assert_eq!(line_col(text, text.find('b').unwrap()), (2, 1));
    }

    #[test]
    fn serde_type_names_become_words() {
        assert_eq!(
            plain_words("invalid type: string \"two\", expected usize"),
            "invalid type: string \"two\", expected a whole number (0 or more)"
        );
        assert_eq!(
            plain_words("invalid value: integer `-2`, expected u32"),
            "invalid value: integer `-2`, expected a whole number from 0 to 4294967295"
        );
        assert_eq!(plain_words("missing field `u32`"), "missing field `u32`");
    }

    #[test]
    fn location_leaves_out_an_empty_key_path() {
        let doc = Doc {
            source: "x.toml",
            text: "a\nbc",
        };
        assert_eq!(doc.at(3, "").to_string(), "x.toml:2:2");
        assert_eq!(
            doc.at(3, "service[0].name").to_string(),
            "x.toml:2:2: service[0].name"
        );
    }

    #[test]
    fn read_errors_name_the_path() {
        let err = ConfigError::Read {
            path: PathBuf::from("/etc/ringlb/missing.toml"),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        assert_eq!(
            err.to_string(),
            "/etc/ringlb/missing.toml: cannot read config file: entity not found"
        );
        assert!(err.location().is_none());
    }
}
