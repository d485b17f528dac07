//! Latency histograms that every worker records into without contending: connect latency and
//! session duration per backend, exported by `/metrics`.
//!
//! Owns: [`LatencyHistogram`], a set of hdrhistogram shards, one per worker slot (worker index
//! modulo [`SHARDS`]), each behind its own lock on its own cache line. A worker locks only its
//! own shard, so the lock is uncontended on the data path, and workers recording at once never
//! write to the same cache line; the control plane locks each shard in turn to merge them when
//! scraped. A shard's histogram is allocated on its first record, so a histogram that never
//! recorded costs its [`SHARDS`] padded locks (a cache line each) and no more.

use crossbeam::utils::CachePadded;
use hdrhistogram::Histogram;
use parking_lot::Mutex;

/// Number of shards; workers beyond it share shards (and then, rarely, a lock).
pub const SHARDS: usize = 16;

/// Significant figures kept: values are exact to 1% (Prometheus buckets are far coarser).
const SIGFIG: u8 = 2;

/// The largest value recorded; larger ones are clamped to it (an hour in microseconds, or 41
/// days in milliseconds).
const MAX_VALUE: u64 = 3_600_000_000;

/// A sharded histogram of non-negative integer values (a unit chosen by the user of it).
#[derive(Debug)]
pub struct LatencyHistogram {
    shards: [Shard; SHARDS],
}

/// One shard: allocated on its first record; padded so that neighbouring workers' locks (taken
/// on every record) do not share a cache line.
type Shard = CachePadded<Mutex<Option<Box<Histogram<u64>>>>>;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            shards: std::array::from_fn(|_| CachePadded::new(Mutex::new(None))),
        }
    }
}

impl LatencyHistogram {
    /// Records `value` from worker `worker` (its index).
    pub fn record(&self, worker: usize, value: u64) {
        let mut shard = self.shards[worker % SHARDS].lock();
        let histogram = shard.get_or_insert_with(|| {
            // The bounds are constants that hdrhistogram accepts (1 <= low, high >= 2 * low,
            // sigfig <= 5), so this cannot fail.
            Box::new(
                Histogram::new_with_bounds(1, MAX_VALUE, SIGFIG)
                    .expect("constant histogram bounds are valid"),
            )
        });
        histogram.saturating_record(value.clamp(1, MAX_VALUE));
    }

    /// All shards merged; `None` when nothing was recorded.
    pub fn merged(&self) -> Option<Histogram<u64>> {
        let mut total: Option<Histogram<u64>> = None;
        for shard in &self.shards {
            let shard = shard.lock();
            let Some(h) = shard.as_deref() else { continue };
            match &mut total {
                Some(t) => {
                    // Same bounds on both sides: adding cannot fail.
                    let _ = t.add(h);
                }
                None => total = Some(h.clone()),
            }
        }
        total
    }
}

/// Cumulative counts at each upper bound (`le`), in the histogram's unit, as Prometheus wants
/// them: the number of values at or below each bound. The last bucket (+Inf) is the total.
pub fn cumulative(histogram: &Histogram<u64>, bounds: &[u64]) -> Vec<u64> {
    bounds
        .iter()
        .map(|&b| {
            if b == 0 {
                0
            } else {
                histogram.count_between(0, b)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_buckets_are_cumulative() {
        let h = LatencyHistogram::default();
        assert!(h.merged().is_none());
        for v in [100, 200, 300] {
            h.record(0, v);
        }
        h.record(1, 5_000);
        h.record(SHARDS + 1, 50_000);
        let m = h.merged().unwrap();
        assert_eq!(m.len(), 5);
        assert_eq!(cumulative(&m, &[250, 1_000, 10_000, 100_000]), [2, 3, 4, 5]);
        assert!(m.max() >= 49_500 && m.max() <= 50_500, "{}", m.max());
    }

    #[test]
    fn no_two_shards_share_a_cache_line() {
        let h = LatencyHistogram::default();
        let line = std::mem::align_of::<CachePadded<u8>>();
        assert!(line >= 64, "{line}");
        for pair in h.shards.windows(2) {
            let a = &*pair[0] as *const _ as usize;
            let b = &*pair[1] as *const _ as usize;
            assert_eq!(a / line + 1, b / line, "shards at {a:#x} and {b:#x}");
        }
    }

    #[test]
    fn out_of_range_values_are_clamped() {
        let h = LatencyHistogram::default();
        h.record(0, 0);
        h.record(0, u64::MAX);
        let m = h.merged().unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m.min(), 1);
    }
}
