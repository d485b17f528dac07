//! Counters: counts of events and bytes that only grow, added to by workers and control-plane
//! threads and read by `/metrics`, the admin API and tests.
//!
//! Owns: [`Counter`] and the memory ordering every counter uses. Does not own gauges (values
//! that also go down or are replaced, such as active connections, live flows or a peak): those
//! stay plain atomics with the orderings their own logic needs (a slot taken with
//! `fetch_update`, a peak kept with `fetch_max`).
//!
//! # Why relaxed ordering is enough
//!
//! A counter publishes nothing but its own value: no reader uses it to decide that some other
//! memory is ready to read, so no happens-before edge is needed, and `Relaxed` is the ordering
//! to use. Atomicity alone keeps every add (no increment is lost between workers), and
//! coherence keeps the value a reader sees from going backwards from one read to the next. What
//! relaxed loads do not give is a consistent cut across counters: two counters read one after
//! the other (say connect failures and, of those, refused) may each include or miss a
//! concurrent add, which `/metrics` tolerates (Prometheus counters are sampled, not snapshots).

use std::sync::atomic::{AtomicU64, Ordering};

/// A count that only grows, shared between threads; every access is `Relaxed` (see the module
/// docs for why that is enough). Wrap it in `CachePadded` where workers add to it per packet or
/// per connection.
#[repr(transparent)]
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    /// Adds one; returns the count after it (for a log line that reports it).
    #[inline]
    pub fn inc(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current count.
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_every_add_from_every_thread() {
        const THREADS: u64 = 4;
        const ADDS: u64 = 10_000;
        let counter = Arc::new(Counter::new());
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    for _ in 0..ADDS {
                        if t % 2 == 0 {
                            counter.inc();
                        } else {
                            counter.add(2);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(counter.get(), ADDS * (2 + 2 * 2));
    }

    #[test]
    fn inc_returns_the_count_after_it() {
        let counter = Counter::new();
        counter.add(4);
        assert_eq!(counter.inc(), 5);
        assert_eq!(counter.get(), 5);
    }
}
