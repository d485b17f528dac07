//! Command-line options of `ringlb bench` and the validated [`Plan`] a load runs from.
//!
//! Owns: the options, the defaults of every option (named constants, with why), and the checks
//! that make every load bounded in count and time. Durations and byte sizes are read in the
//! grammar of [`crate::units`], the same as in the config file ("10s", "1.5s", "64KiB", "64k").
//! Does not own any I/O.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::config::serde_name;
use crate::units;

/// `--connections` default: enough concurrent requests to keep a two-core proxy busy, the
/// concurrency of the `redis-benchmark -c 50` runs it is compared with.
pub const DEFAULT_CONNECTIONS: usize = 50;
/// `--duration` default when neither `--requests` nor `--bytes` bounds the run.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// `--duration` default when `--requests` or `--bytes` bounds the run: a safety cap, so a
/// stalled target never makes the load run forever.
pub const DEFAULT_CAP: Duration = Duration::from_secs(60);
/// `--size` default of the request/response modes: a small message, as a cache or database
/// request is.
pub const DEFAULT_MESSAGE: usize = 64;
/// `--size` default of `stream`: the chunk written per call; 64 KiB moves bulk data with few
/// system calls.
pub const DEFAULT_CHUNK: usize = 64 * 1024;
/// `--timeout` default: a reply (or connect) slower than this on loopback or a LAN is a fault.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest `--size`: one request must fit in memory many times over (one per connection).
pub const MAX_SIZE: usize = 16 * 1024 * 1024;
/// Largest UDP payload over IPv4.
pub const MAX_DATAGRAM: usize = 65_507;

/// Longest `--duration` or `--timeout`: far beyond any real load, and small enough that adding
/// it to the current time cannot overflow.
pub const MAX_DURATION_ARG: Duration = Duration::from_secs(1_000_000_000);

/// A `--duration` or `--timeout`: a duration in the grammar of [`crate::units`] (the config
/// file's), longer than zero and shorter than [`MAX_DURATION_ARG`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = units::parse_duration(text)
        .map_err(|reason| format!("{text:?} is not a duration: {reason}"))?;
    if d.is_zero() || d >= MAX_DURATION_ARG {
        return Err(format!(
            "{text:?}: must be longer than zero and shorter than {}",
            units::format_duration(MAX_DURATION_ARG)
        ));
    }
    Ok(d)
}

/// A `--bytes` count: a byte size in the grammar of [`crate::units`] (the config file's).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    units::parse_byte_size(text).map_err(|reason| format!("{text:?} is not a byte size: {reason}"))
}

/// A `--size` or `--reply-size`: a byte size from 1 byte to [`MAX_SIZE`].
fn parse_size(text: &str) -> Result<usize, String> {
    match parse_byte_count(text)? {
        n @ 1..=MAX_SIZE => Ok(n),
        _ => Err(format!("{text:?}: must be 1 byte to 16MiB")),
    }
}

/// A byte size that fits in memory (`idle`'s `--size`, checked against [`MAX_SIZE`] later).
fn parse_byte_count(text: &str) -> Result<usize, String> {
    usize::try_from(parse_bytes(text)?).map_err(|_| format!("{text:?} is too large"))
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!(
            "{text:?}: a rate is a positive number of requests per second"
        )),
    }
}

/// Options shared by the load modes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Address to load: "IP:port" or "host:port".
    pub target: String,
    /// Concurrent connections (UDP: sockets), spread over the threads.
    #[arg(long, default_value_t = DEFAULT_CONNECTIONS)]
    pub connections: usize,
    /// How long the load runs: a duration as in the config file ("10s", "1.5s", "500ms"; README
    /// "Configuration"). Default 10s, or a 60s cap with --requests/--bytes.
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Client threads, each with its own io_uring runtime. Default: the CPUs this process may use.
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// How long a connect or a reply may take before it counts as a "timeout" error: a duration
    /// as in the config file ("3s", "250ms") [default: 3s].
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Options of the request/response modes (`rr`, `connect`, `udp`).
#[derive(Debug, Clone, clap::Args)]
pub struct MessageArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Stop after this many requests in all (each failed attempt counts as one).
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Request size: a byte size as in the config file ("64", "1KiB", "1k"; README
    /// "Configuration"). The reply is expected to be as long (an echo).
    #[arg(short = 's', long, value_parser = parse_size)]
    pub size: Option<usize>,
    /// Open loop: send this many requests per second in all, each at its scheduled time, and
    /// measure latency from that time (queueing included, as wrk2 does).
    #[arg(short = 'r', long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Send this text as the request instead of --size bytes ("\r\n", "\n", "\t", "\\" escapes).
    #[arg(long)]
    pub payload: Option<String>,
    /// Expected reply size when the server is not an echo, a byte size as in the config file
    /// (default: the request size).
    #[arg(long, value_parser = parse_size)]
    pub reply_size: Option<usize>,
    /// Check that every reply equals its request (echo servers); a difference is a "mismatch".
    #[arg(long)]
    pub verify: bool,
}

/// Options of `stream`.
#[derive(Debug, Clone, clap::Args)]
pub struct StreamArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Bytes to send in all, split over the connections: a byte size as in the config file
    /// ("1GiB", "10GB"; README "Configuration"); then each connection half-closes and reads
    /// what comes back until the server closes.
    #[arg(short = 'b', long, value_parser = parse_bytes)]
    pub bytes: Option<u64>,
    /// Bytes written per call: a byte size as in the config file ("64KiB", "64k").
    #[arg(short = 's', long, value_parser = parse_size)]
    pub size: Option<usize>,
}

/// Options of `idle`.
#[derive(Debug, Clone, clap::Args)]
pub struct IdleArgs {
    /// Address to connect to.
    pub target: String,
    /// Connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// How long to hold them once open, a duration as in the config file ("30s", "2m"; README
    /// "Configuration"). The whole run is bounded by this plus --timeout.
    #[arg(short = 'd', long, value_parser = parse_duration, default_value = "30s")]
    pub duration: Duration,
    /// Bytes each connection sends (and reads back) once open, so that a proxy has connected
    /// its backend side too: a byte size as in the config file. 0 sends nothing.
    #[arg(short = 's', long, value_parser = parse_byte_count, default_value = "1")]
    pub size: usize,
    /// Client threads.
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// How long a connect or the first reply may take: a duration as in the config file.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub timeout: Duration,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// Which load a [`Plan`] drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A new connection per request.
    Connect,
    /// Requests and replies over persistent connections.
    Rr,
    /// Bulk transfer.
    Stream,
    /// Datagram request/response.
    Udp,
    /// Open connections and hold them idle.
    Idle,
}

impl Mode {
    /// The subcommand's name (its serde name, as in the JSON report).
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }
}

/// A validated load: every field checked, every bound set.
#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    pub target: SocketAddr,
    pub connections: usize,
    pub threads: usize,
    /// The run stops at this time after its start, whatever else bounds it.
    pub duration: Duration,
    /// Total request attempts (request/response modes).
    pub requests: Option<u64>,
    /// Total bytes to send (`stream`).
    pub bytes: Option<u64>,
    /// The request (request/response modes) or one write's worth of bytes (`stream`, `idle`).
    pub request: Vec<u8>,
    /// Bytes of each reply.
    pub reply_size: usize,
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub verify: bool,
    pub json: bool,
}

fn resolve(target: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(addr) = target.parse() {
        return Ok(addr);
    }
    target
        .to_socket_addrs()
        .with_context(|| {
            format!("cannot resolve target {target:?} (expected IP:port or host:port)")
        })?
        .next()
        .with_context(|| format!("target {target:?} resolves to no address"))
}

fn threads_for(requested: Option<usize>, connections: usize) -> anyhow::Result<usize> {
    let available = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = requested.unwrap_or(available);
    if threads == 0 || threads > 1024 {
        bail!("--threads must be 1 to 1024");
    }
    // A thread without a connection would have nothing to do.
    Ok(threads.min(connections))
}

fn check_connections(n: usize) -> anyhow::Result<()> {
    if n == 0 || n > 1_000_000 {
        bail!("--connections must be 1 to 1000000");
    }
    Ok(())
}

/// Replaces `\r`, `\n`, `\t` and `\\` escapes.
fn unescape(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            let mut b = [0u8; 4];
            out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            continue;
        }
        match chars.next() {
            Some('r') => out.push(b'\r'),
            Some('n') => out.push(b'\n'),
            Some('t') => out.push(b'\t'),
            Some('\\') | None => out.push(b'\\'),
            Some(other) => {
                out.push(b'\\');
                let mut b = [0u8; 4];
                out.extend_from_slice(other.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out
}

/// A recognisable, non-constant pattern: a proxy that mixes up bytes is caught by --verify.
pub fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 23) as u8).collect()
}

impl Plan {
    /// A request/response load (`rr`, `connect` or `udp`).
    pub fn message(mode: Mode, args: &MessageArgs) -> anyhow::Result<Plan> {
        let c = &args.common;
        check_connections(c.connections)?;
        let request = match (&args.payload, args.size) {
            (Some(_), Some(_)) => bail!("give --payload or --size, not both"),
            (Some(p), None) => unescape(p),
            (None, size) => pattern(size.unwrap_or(DEFAULT_MESSAGE)),
        };
        if request.is_empty() {
            bail!("--payload must not be empty");
        }
        let reply_size = args.reply_size.unwrap_or(request.len());
        if mode == Mode::Udp && (request.len() > MAX_DATAGRAM || reply_size > MAX_DATAGRAM) {
            bail!("a UDP request or reply is at most {MAX_DATAGRAM} bytes");
        }
        if args.verify && reply_size != request.len() {
            bail!(
                "--verify compares each reply with its request: --reply-size must equal the request size"
            );
        }
        if args.requests == Some(0) {
            bail!("--requests must be at least 1");
        }
        let duration = c.duration.unwrap_or(if args.requests.is_some() {
            DEFAULT_CAP
        } else {
            DEFAULT_DURATION
        });
        Ok(Plan {
            mode,
            target: resolve(&c.target)?,
            connections: c.connections,
            threads: threads_for(c.threads, c.connections)?,
            duration,
            requests: args.requests,
            bytes: None,
            request,
            reply_size,
            rate: args.rate,
            timeout: c.timeout.unwrap_or(DEFAULT_TIMEOUT),
            verify: args.verify,
            json: c.json,
        })
    }

    /// A `stream` load.
    pub fn stream(args: &StreamArgs) -> anyhow::Result<Plan> {
        let c = &args.common;
        check_connections(c.connections)?;
        if args.bytes == Some(0) {
            bail!("--bytes must be at least 1");
        }
        let duration = c.duration.unwrap_or(if args.bytes.is_some() {
            DEFAULT_CAP
        } else {
            DEFAULT_DURATION
        });
        Ok(Plan {
            mode: Mode::Stream,
            target: resolve(&c.target)?,
            connections: c.connections,
            threads: threads_for(c.threads, c.connections)?,
            duration,
            requests: None,
            bytes: args.bytes,
            request: pattern(args.size.unwrap_or(DEFAULT_CHUNK)),
            reply_size: 0,
            rate: None,
            timeout: c.timeout.unwrap_or(DEFAULT_TIMEOUT),
            verify: false,
            json: c.json,
        })
    }

    /// An `idle` hold.
    pub fn idle(args: &IdleArgs) -> anyhow::Result<Plan> {
        check_connections(args.connections)?;
        if args.size > MAX_SIZE {
            bail!("--size must be at most 16MiB");
        }
        Ok(Plan {
            mode: Mode::Idle,
            target: resolve(&args.target)?,
            connections: args.connections,
            threads: threads_for(args.threads, args.connections)?,
            // Opening takes at most --timeout per connection; holding takes --duration.
            duration: args.duration + args.timeout,
            requests: None,
            bytes: None,
            request: pattern(args.size),
            reply_size: args.size,
            rate: None,
            timeout: args.timeout,
            verify: false,
            json: args.json,
        })
    }

    /// The connection indices (0-based, over all threads) that thread `thread` drives.
    pub fn connections_of(&self, thread: usize) -> impl Iterator<Item = usize> + use<> {
        (thread..self.connections).step_by(self.threads)
    }

    /// Request attempts thread `thread` may make, when `--requests` bounds the run.
    pub fn requests_of(&self, thread: usize) -> Option<u64> {
        let total = self.requests?;
        let t = self.threads as u64;
        Some(total / t + u64::from((thread as u64) < total % t))
    }

    /// Bytes connection `index` sends, when `--bytes` bounds the run.
    pub fn bytes_of(&self, index: usize) -> Option<u64> {
        let total = self.bytes?;
        let c = self.connections as u64;
        Some(total / c + u64::from((index as u64) < total % c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_the_config_grammar_and_must_be_positive() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500us"), Ok(Duration::from_micros(500)));
        assert_eq!(
            parse_duration("1.5").unwrap_err(),
            "\"1.5\" is not a duration: a unit is missing: write ms, s, m or h after the number, \
             e.g. \"3s\""
        );
        assert_eq!(
            parse_duration("0s").unwrap_err(),
            "\"0s\": must be longer than zero and shorter than 1000000000s"
        );
        assert!(parse_duration("1000000000s").is_err());
        assert!(parse_duration("999999999s").is_ok());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration(" 3s").is_err());
    }

    #[test]
    fn byte_sizes_take_binary_and_decimal_units() {
        assert_eq!(parse_bytes("64KiB"), Ok(65536));
        assert_eq!(parse_bytes("64k"), Ok(65536));
        assert_eq!(parse_bytes("10MB"), Ok(10_000_000));
        assert_eq!(parse_bytes("64KB"), Ok(64_000));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert!(
            parse_bytes("1.5MiB")
                .unwrap_err()
                .starts_with("\"1.5MiB\" is not a byte size: ")
        );
        assert!(parse_size("0").is_err());
        assert!(parse_size("17MiB").is_err());
        assert_eq!(parse_size("16MiB"), Ok(MAX_SIZE));
        assert_eq!(parse_byte_count("0"), Ok(0));
    }

    #[test]
    fn payload_escapes_become_bytes() {
        assert_eq!(unescape(r"PING\r\n"), b"PING\r\n");
        assert_eq!(unescape(r"a\\b\x"), b"a\\b\\x");
    }

    fn plan(connections: usize, threads: usize, requests: Option<u64>, bytes: Option<u64>) -> Plan {
        Plan {
            mode: Mode::Rr,
            target: "127.0.0.1:1".parse().unwrap(),
            connections,
            threads,
            duration: DEFAULT_DURATION,
            requests,
            bytes,
            request: pattern(8),
            reply_size: 8,
            rate: None,
            timeout: DEFAULT_TIMEOUT,
            verify: false,
            json: false,
        }
    }

    #[test]
    fn requests_and_connections_split_exactly_over_threads() {
        let p = plan(5, 2, Some(7), None);
        assert_eq!(p.connections_of(0).collect::<Vec<_>>(), [0, 2, 4]);
        assert_eq!(p.connections_of(1).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(p.requests_of(0).unwrap() + p.requests_of(1).unwrap(), 7);
    }

    #[test]
    fn bytes_split_exactly_over_connections() {
        let p = plan(3, 1, None, Some(10));
        let total: u64 = (0..3).map(|i| p.bytes_of(i).unwrap()).sum();
        assert_eq!(total, 10);
    }
}
