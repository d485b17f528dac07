//! Rate-limited log lines: at most one line per reason per second, process-wide.
//!
//! Owns: the limiter ([`LogLimit`]: two atomics, no lock, pure logic over a given second), the
//! clock it counts in ([`now_second`]), and the reasons the data plane limits ([`Reason`], one
//! process-wide limiter each, shared by every worker). Does not own the lines: each caller asks
//! [`Reason::admit`] and, when admitted, writes its own line with `suppressed = N`, the events of
//! that reason that wrote no line since the previous one.
//!
//! Why: a refused backend, a service with no backend up, or ringlb out of descriptors fails every
//! connection or datagram the same way; one line per event would flood the log at the rate of
//! the traffic (and cost a write each). The written line names its own source (the client, the
//! backend): the last one seen when it was written. Counters in `/metrics` keep the exact
//! numbers; the log says what happens and how often.
//!
//! Every event is either written or counted in the `suppressed` of a later line of its reason
//! (or still pending): a suppressed event that races with the writer of a line is counted in the
//! next one, never lost.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One reason's limiter: the second of the last line written and the events suppressed since.
#[derive(Debug, Default)]
pub struct LogLimit {
    /// The second of the last line written, plus one; 0 before the first line.
    last: AtomicU64,
    /// Events suppressed since the last line.
    suppressed: AtomicU64,
}

impl LogLimit {
    pub const fn new() -> LogLimit {
        LogLimit {
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// One event at `second` (any monotonic count of whole seconds). `Some(n)`: write the line,
    /// `n` events having been suppressed since the previous one; `None`: the line of this second
    /// was written already, and this event is counted for the next.
    pub fn admit(&self, second: u64) -> Option<u64> {
        let stamp = second.saturating_add(1);
        let last = self.last.load(Ordering::Acquire);
        // One writer per second: the one whose swap of the stamp succeeds.
        if stamp > last
            && self
                .last
                .compare_exchange(last, stamp, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::AcqRel));
        }
        self.suppressed.fetch_add(1, Ordering::AcqRel);
        None
    }

    /// Events suppressed since the last line written.
    pub fn pending(&self) -> u64 {
        self.suppressed.load(Ordering::Acquire)
    }
}

/// Whole seconds since the process first asked (a monotonic clock).
pub fn now_second() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_secs()
}

/// The data plane's rate-limited lines, one limiter each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A TCP client closed: no backend was ready (none up, or all at `max_connections`).
    NoBackendReady,
    /// A TCP client closed: every candidate backend refused, failed or timed out.
    NoBackendReached,
    /// A backend connect failed for a local reason (out of fds, ports or memory).
    LocalConnect,
    /// A TCP client closed: the worker's connection table was full.
    TableFull,
    /// A TCP client closed: its PROXY header was refused (or it was not trusted to send one).
    ProxyRejected,
    /// An accept failed because ringlb is out of descriptors or memory.
    AcceptPaused,
    /// An accept failed for one connection (e.g. the client reset while queued).
    AcceptFailed,
    /// A UDP datagram dropped: no upstream socket could be opened.
    UdpUpstreamSocket,
    /// A UDP datagram dropped: no backend was ready.
    UdpNoBackend,
    /// A UDP datagram dropped: its send to the backend failed.
    UdpSend,
    /// A UDP reply dropped: its send to the client failed.
    UdpReply,
    /// A receive on a UDP service's socket failed.
    UdpReceive,
    /// A TCP client or UDP flow refused by `[service.access]`.
    AccessDenied,
    /// A TCP client refused by its per-client limits.
    ClientLimit,
}

impl Reason {
    /// Reasons there are (the last one's index, plus one).
    const COUNT: usize = Reason::ClientLimit as usize + 1;

    /// One event of this reason now: see [`LogLimit::admit`].
    pub fn admit(self) -> Option<u64> {
        static LIMITS: [LogLimit; Reason::COUNT] = [const { LogLimit::new() }; Reason::COUNT];
        LIMITS[self as usize].admit(now_second())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_second_carrying_what_was_suppressed() {
        let limit = LogLimit::new();
        assert_eq!(limit.admit(0), Some(0), "the first event writes its line");
        assert_eq!(limit.admit(0), None);
        assert_eq!(limit.admit(0), None);
        assert_eq!(limit.pending(), 2);
        assert_eq!(
            limit.admit(1),
            Some(2),
            "the next second's line counts them"
        );
        assert_eq!(limit.pending(), 0);
        assert_eq!(limit.admit(1), None);
        // A quiet stretch: the next event writes at once, with the one suppressed before it.
        assert_eq!(limit.admit(60), Some(1));
        assert_eq!(limit.admit(61), Some(0));
    }

    #[test]
    fn an_older_second_never_writes_again() {
        // A thread that read the clock before another wrote the next second's line.
        let limit = LogLimit::new();
        assert_eq!(limit.admit(5), Some(0));
        assert_eq!(limit.admit(4), None);
        assert_eq!(limit.admit(5), None);
        assert_eq!(limit.admit(6), Some(2));
    }

    #[test]
    fn limiters_are_independent() {
        let (a, b) = (LogLimit::new(), LogLimit::new());
        assert_eq!(a.admit(3), Some(0));
        assert_eq!(b.admit(3), Some(0), "another reason writes its own line");
        assert_eq!(a.admit(3), None);
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn racing_threads_write_one_line_per_second_and_lose_no_event() {
        const THREADS: u64 = 4;
        const SECONDS: u64 = 50;
        const PER_SECOND: u64 = 200;
        let limit = LogLimit::new();
        let (lines, reported) = std::thread::scope(|s| {
            let workers: Vec<_> = (0..THREADS)
                .map(|_| {
                    s.spawn(|| {
                        let (mut lines, mut reported) = (Vec::new(), 0);
                        for second in 0..SECONDS {
                            for _ in 0..PER_SECOND {
                                if let Some(n) = limit.admit(second) {
                                    lines.push(second);
                                    reported += n;
                                }
                            }
                        }
                        (lines, reported)
                    })
                })
                .collect();
            let mut lines = Vec::new();
            let mut reported = 0;
            for w in workers {
                let (l, r) = w.join().unwrap();
                lines.extend(l);
                reported += r;
            }
            (lines, reported)
        });
        let mut seconds = lines.clone();
        seconds.sort_unstable();
        seconds.dedup();
        assert_eq!(
            seconds.len(),
            lines.len(),
            "two lines in one second: {lines:?}"
        );
        let events = THREADS * SECONDS * PER_SECOND;
        assert_eq!(
            lines.len() as u64 + reported + limit.pending(),
            events,
            "every event is written or counted as suppressed"
        );
    }
}
