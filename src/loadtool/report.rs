//! What a load measured: counters, latency histograms, errors by kind, and how they are shown
//! (a table for people, one JSON object for scripts).
//!
//! Owns: the error taxonomy ([`ErrorKind`]), per-thread counters that the progress line reads
//! while the load runs ([`Counters`]), merging threads' results into a [`Report`], printing, and
//! the text form of a latency histogram in the JSON report ([`encode_histogram`],
//! [`decode_histogram`]), which `bench merge` reads back.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2DeflateSerializer};
use serde::Serialize;

use super::args::{Mode, Plan};
use crate::config::serde_name;

/// Why a request, connection or transfer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorKind {
    /// The target refused the connection (TCP RST to SYN, or ICMP port unreachable for UDP).
    Refused,
    /// The peer reset the connection or it broke while writing.
    Reset,
    /// No connect or reply within `--timeout`.
    Timeout,
    /// The peer closed the connection before the whole reply came.
    Closed,
    /// The reply differed from the request (`--verify`).
    Mismatch,
    /// No local port or address left (ephemeral ports exhausted).
    Ports,
    /// No file descriptor left in this process or system.
    Fds,
    /// No route to the target.
    Unreachable,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// Every kind, in the order reports show them.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Refused,
        ErrorKind::Reset,
        ErrorKind::Timeout,
        ErrorKind::Closed,
        ErrorKind::Mismatch,
        ErrorKind::Ports,
        ErrorKind::Fds,
        ErrorKind::Unreachable,
        ErrorKind::Other,
    ];

    /// The name in reports and JSON (its serde name).
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }

    /// The kind of an operating-system error.
    pub fn of(e: &io::Error) -> ErrorKind {
        match e.raw_os_error() {
            Some(libc::ECONNREFUSED) => return ErrorKind::Refused,
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => return ErrorKind::Reset,
            Some(libc::ETIMEDOUT) => return ErrorKind::Timeout,
            Some(libc::EADDRNOTAVAIL | libc::EADDRINUSE) => return ErrorKind::Ports,
            Some(libc::EMFILE | libc::ENFILE) => return ErrorKind::Fds,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => return ErrorKind::Unreachable,
            _ => {}
        }
        match e.kind() {
            io::ErrorKind::UnexpectedEof => ErrorKind::Closed,
            io::ErrorKind::TimedOut => ErrorKind::Timeout,
            io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted => ErrorKind::Reset,
            _ => ErrorKind::Other,
        }
    }

    /// Whether the failure comes from this machine running out of something: the load backs
    /// off briefly instead of spinning on it.
    pub fn is_local_exhaustion(self) -> bool {
        matches!(self, ErrorKind::Ports | ErrorKind::Fds)
    }
}

/// A counter written by one thread and read by others (the progress line).
///
/// Only the owning thread adds, so a load and a store replace a locked read-modify-write.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`; call from the owning thread only.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0
            .store(self.0.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One thread's counters; cache-padded by the runner so threads do not share a line.
#[derive(Debug, Default)]
pub struct Counters {
    /// Completed requests (request/response modes).
    pub requests: Counter,
    /// Connections opened.
    pub connections: Counter,
    /// Payload bytes written.
    pub sent: Counter,
    /// Payload bytes read.
    pub received: Counter,
    /// Errors, indexed like [`ErrorKind::ALL`].
    pub errors: [Counter; 9],
}

impl Counters {
    /// Counts one error.
    pub fn error(&self, kind: ErrorKind) {
        self.errors[kind as usize].add(1);
    }

    /// All errors so far.
    pub fn error_total(&self) -> u64 {
        self.errors.iter().map(Counter::get).sum()
    }
}

/// Highest latency recorded, in nanoseconds (larger values are recorded as this).
const MAX_LATENCY_NS: u64 = 3_600 * 1_000_000_000;

/// A latency histogram in nanoseconds, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("static bounds are valid")
}

/// Records `d` into `h`, clamped to the histogram's range.
#[inline]
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(MAX_LATENCY_NS);
    h.saturating_record(ns.clamp(1, MAX_LATENCY_NS));
}

/// `h` as text: HdrHistogram's compressed V2 encoding (zlib-deflated) in standard base64, the
/// form of a histogram in HdrHistogram's interval logs, so that its other tools read it too.
pub fn encode_histogram(h: &Histogram<u64>) -> String {
    let mut bytes = Vec::new();
    V2DeflateSerializer::new()
        .serialize(h, &mut bytes)
        .expect("a histogram of u64 counts serialises into memory");
    BASE64.encode(bytes)
}

/// The histogram that [`encode_histogram`] (or another HdrHistogram V2 encoder) wrote as `text`.
pub fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    use anyhow::Context;
    let bytes = BASE64
        .decode(text.trim())
        .context("the histogram is not base64")?;
    Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("the histogram is not an HdrHistogram V2 encoding: {e:?}"))
}

/// What one thread measured.
#[derive(Debug)]
pub struct ThreadResult {
    pub elapsed: Duration,
    /// Latency from the intended send time (open loop) or the send (closed loop) to the reply.
    pub latency: Histogram<u64>,
    /// Open loop only: latency from the actual send to the reply (what an uncorrected tool shows).
    pub service: Histogram<u64>,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// The percentiles of `h` (nanoseconds), or `None` when it is empty.
    pub fn of(h: &Histogram<u64>) -> Option<Percentiles> {
        if h.is_empty() {
            return None;
        }
        let us = |ns: u64| (ns as f64 / 1e3 * 10.0).round() / 10.0;
        Some(Percentiles {
            count: h.len(),
            mean: (h.mean() / 1e3 * 10.0).round() / 10.0,
            p50: us(h.value_at_quantile(0.50)),
            p90: us(h.value_at_quantile(0.90)),
            p99: us(h.value_at_quantile(0.99)),
            p999: us(h.value_at_quantile(0.999)),
            max: us(h.max()),
        })
    }
}

/// The result of a whole load, as printed and as serialised with `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub mode: Mode,
    pub target: String,
    pub connections: usize,
    pub threads: usize,
    /// Request size (request/response modes) or write size (`stream`), bytes.
    pub size: usize,
    /// Requests per second asked for with `--rate` (open loop), or null.
    pub rate: Option<f64>,
    pub elapsed_s: f64,
    pub requests: u64,
    pub requests_per_s: f64,
    pub connections_opened: u64,
    pub connections_per_s: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sent_gbit_per_s: f64,
    pub received_gbit_per_s: f64,
    /// Corrected latency (from the intended send time under `--rate`), microseconds.
    pub latency_us: Option<Percentiles>,
    /// Under `--rate` only: latency from the actual send, which hides queueing.
    pub service_time_us: Option<Percentiles>,
    /// The whole histogram behind `latency_us` (nanoseconds, [`encode_histogram`]), for merging
    /// runs with `bench merge`; null when nothing was measured.
    pub latency_histogram: Option<String>,
    /// Errors by kind; every kind is present.
    pub errors: serde_json::Map<String, serde_json::Value>,
    pub errors_total: u64,
}

impl Report {
    /// Merges the threads' results.
    pub fn build(plan: &Plan, counters: &[&Counters], results: &[ThreadResult]) -> Report {
        let mut latency = histogram();
        let mut service = histogram();
        for r in results {
            latency.add(&r.latency).expect("same bounds");
            service.add(&r.service).expect("same bounds");
        }
        let elapsed = results
            .iter()
            .map(|r| r.elapsed)
            .max()
            .unwrap_or_default()
            .max(Duration::from_micros(1));
        let secs = elapsed.as_secs_f64();
        let sum = |f: fn(&Counters) -> &Counter| counters.iter().map(|c| f(c).get()).sum::<u64>();
        let requests = sum(|c| &c.requests);
        let opened = sum(|c| &c.connections);
        let sent = sum(|c| &c.sent);
        let received = sum(|c| &c.received);
        let mut errors = serde_json::Map::new();
        let mut errors_total = 0;
        for kind in ErrorKind::ALL {
            let n: u64 = counters.iter().map(|c| c.errors[kind as usize].get()).sum();
            errors_total += n;
            errors.insert(kind.name().to_string(), n.into());
        }
        let round = |x: f64, digits: i32| {
            let f = 10f64.powi(digits);
            (x * f).round() / f
        };
        Report {
            mode: plan.mode,
            target: plan.target.to_string(),
            connections: plan.connections,
            threads: plan.threads,
            size: plan.request.len(),
            rate: plan.rate,
            elapsed_s: round(secs, 4),
            requests,
            requests_per_s: round(requests as f64 / secs, 1),
            connections_opened: opened,
            connections_per_s: round(opened as f64 / secs, 1),
            bytes_sent: sent,
            bytes_received: received,
            sent_gbit_per_s: round(sent as f64 * 8.0 / secs / 1e9, 4),
            received_gbit_per_s: round(received as f64 * 8.0 / secs / 1e9, 4),
            latency_us: Percentiles::of(&latency),
            latency_histogram: (!latency.is_empty()).then(|| encode_histogram(&latency)),
            service_time_us: if plan.rate.is_some() {
                Percentiles::of(&service)
            } else {
                None
            },
            errors,
            errors_total,
        }
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let load = match self.rate {
            Some(r) => format!("open loop at {r} requests/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            s,
            "ringlb bench {} -> {}: {} connections, {} threads, {} bytes per {}, {}, {:.2} s",
            self.mode.name(),
            self.target,
            self.connections,
            self.threads,
            self.size,
            if self.mode == Mode::Stream {
                "write"
            } else {
                "request"
            },
            load,
            self.elapsed_s
        );
        let _ = writeln!(s);
        let _ = writeln!(s, "  {:<12} {:>14} {:>16}", "", "total", "per second");
        if self.mode != Mode::Stream && self.mode != Mode::Idle {
            let _ = writeln!(
                s,
                "  {:<12} {:>14} {:>16.1}",
                "requests", self.requests, self.requests_per_s
            );
        }
        if self.mode != Mode::Udp {
            let _ = writeln!(
                s,
                "  {:<12} {:>14} {:>16.1}",
                "connections", self.connections_opened, self.connections_per_s
            );
        }
        let _ = writeln!(
            s,
            "  {:<12} {:>14} {:>11.3} Gbit/s",
            "bytes sent", self.bytes_sent, self.sent_gbit_per_s
        );
        let _ = writeln!(
            s,
            "  {:<12} {:>14} {:>11.3} Gbit/s",
            "bytes recv", self.bytes_received, self.received_gbit_per_s
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "  {:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (us)", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let mut line = |name: &str, p: &Option<Percentiles>| {
            let _ = match p {
                Some(p) => writeln!(
                    s,
                    "  {:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
                    name, p.p50, p.p90, p.p99, p.p999, p.max, p.mean
                ),
                None => writeln!(s, "  {name:<12} {:>9}", "-"),
            };
        };
        line(
            if self.rate.is_some() {
                "corrected"
            } else {
                "latency"
            },
            &self.latency_us,
        );
        if self.rate.is_some() {
            line("service", &self.service_time_us);
        }
        let _ = writeln!(s);
        let listed: Vec<String> = self
            .errors
            .iter()
            .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(
            s,
            "  {:<12} {}",
            "errors",
            if listed.is_empty() {
                "none".to_string()
            } else {
                format!("{} ({})", self.errors_total, listed.join(", "))
            }
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names reports and JSON have always used.
    #[test]
    fn kinds_and_modes_keep_their_names() {
        let names: Vec<_> = ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(
            names,
            [
                "refused",
                "reset",
                "timeout",
                "closed",
                "mismatch",
                "ports",
                "fds",
                "unreachable",
                "other"
            ]
        );
        let modes = [Mode::Connect, Mode::Rr, Mode::Stream, Mode::Udp, Mode::Idle];
        let names: Vec<_> = modes.iter().map(|m| m.name()).collect();
        assert_eq!(names, ["connect", "rr", "stream", "udp", "idle"]);
        for m in modes {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
    }

    #[test]
    fn os_errors_map_to_kinds() {
        let refused = io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(ErrorKind::of(&refused), ErrorKind::Refused);
        let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
        assert_eq!(ErrorKind::of(&eof), ErrorKind::Closed);
        let ports = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
        assert!(ErrorKind::of(&ports).is_local_exhaustion());
    }

    #[test]
    fn histograms_survive_their_text_form() {
        let mut h = histogram();
        for us in [3, 40, 41, 900, 70_000] {
            record(&mut h, Duration::from_micros(us));
        }
        let back = decode_histogram(&encode_histogram(&h)).unwrap();
        assert_eq!(back, h);
        assert!(decode_histogram("not base64!").is_err());
        assert!(decode_histogram(&BASE64.encode(b"not a histogram")).is_err());
    }

    #[test]
    fn error_kinds_index_their_counters() {
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
        }
    }
}
