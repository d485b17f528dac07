//! Backend selection: the six algorithms behind one [`Selector`].
//!
//! Owns: turning a backend set into a [`Selector`] (off the data path: weight tables, Maglev
//! table) and, per new connection or flow, an ordered list of distinct ready candidates.
//! The data plane connects to the first and falls back to the next ones on failure.
//!
//! Does not own: readiness and load (read through [`BackendView`]: health, enabled flag,
//! `max_connections` and active counts live elsewhere), stickiness (stick table), connecting,
//! I/O or clocks. Nothing here blocks or locks: a `Selector` is immutable after [`Selector::new`]
//! except for one relaxed atomic cursor, so all workers share it through the snapshot.
//!
//! Algorithms, each in its own file:
//! - `rotation`: `round_robin`, `weighted_round_robin`;
//! - `random`: `random` (weighted);
//! - `load`: `least_conn`, `power_of_two`;
//! - `hash`: `source_hash` (Maglev over the client IP).
//!
//! Every algorithm returns `min(max, ready backends)` candidates when readiness does not
//! change during the call: after its own order it appends any ready backend it has not given.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::maglev::{self, Maglev};

mod hash;
mod load;
mod random;
mod rotation;

pub use hash::source_hash;
pub use rotation::WRR_MAX_CYCLE;

/// Maglev table size when the config names none (see [`maglev::DEFAULT_SIZE`] for why 65537).
pub const DEFAULT_MAGLEV_SIZE: usize = maglev::DEFAULT_SIZE;

/// A selection algorithm, as named in the config (`algorithm = "least_conn"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Each ready backend in turn; one shared rotation across all workers.
    RoundRobin,
    /// Smooth weighted round robin (nginx), precomputed over one cycle.
    WeightedRoundRobin,
    /// Random, with probability proportional to weight among ready backends.
    Random,
    /// Two random ready backends; the one with fewer active connections per weight wins.
    PowerOfTwo,
    /// Fewest active connections per weight; ties rotate.
    LeastConn,
    /// Maglev consistent hash of the client IP: a client keeps its backend.
    SourceHash,
}

impl Algorithm {
    /// Every algorithm, in declaration order.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::Random,
        Algorithm::PowerOfTwo,
        Algorithm::LeastConn,
        Algorithm::SourceHash,
    ];

    /// The config name (snake_case): the string serde reads and writes, taken from its derive.
    pub fn name(self) -> &'static str {
        crate::names::serde_name(&self)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One backend as the selector is built from it (off the data path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendSpec<'a> {
    /// Stable identity, e.g. `"10.0.0.1:5432"`; drives the Maglev permutations, so the same
    /// key gets the same slots in every process.
    pub key: &'a str,
    /// Relative weight, >= 1 (a 0 is treated as 1).
    pub weight: u32,
}

/// What a selection may see of the live backends, by index in the service's backend list
/// (the same order as the [`BackendSpec`]s the [`Selector`] was built from).
pub trait BackendView {
    /// Number of backends.
    fn len(&self) -> usize;
    /// Active connections of backend `i` (process-wide, shared atomics).
    fn active(&self, i: usize) -> u64;
    /// Whether backend `i` may take a connection now (healthy, enabled, under its
    /// `max_connections`).
    fn ready(&self, i: usize) -> bool;
    /// Whether there are no backends.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A shared cursor alone on its cache line, so the `fetch_add` of every worker does not
/// invalidate the line holding the selector's read-only fields. 128 bytes: x86 prefetches
/// cache lines in pairs and Apple/ARM big cores use 128-byte lines (crossbeam's `CachePadded`
/// uses the same figure).
#[repr(align(128))]
#[derive(Default)]
struct Cursor(AtomicUsize);

impl Cursor {
    /// Takes the next `n` turns of the shared rotation; returns the first.
    fn take(&self, n: usize) -> usize {
        // Relaxed: the cursor only spreads turns; it orders no other memory.
        self.0.fetch_add(n, Ordering::Relaxed)
    }
}

/// Built once per backend set off the data path, then shared by all worker threads.
/// Immutable except for a lock-free rotation cursor; `Send + Sync`, no locks.
pub struct Selector {
    algorithm: Algorithm,
    /// Per backend, >= 1.
    weights: Box<[u32]>,
    /// One smooth weighted round robin cycle (backend indices); only for
    /// `weighted_round_robin`, else empty.
    wrr: Box<[u32]>,
    /// Only for `source_hash`.
    maglev: Option<Maglev>,
    cursor: Cursor,
}

impl fmt::Debug for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Selector")
            .field("algorithm", &self.algorithm)
            .field("weights", &self.weights)
            .field("wrr_cycle", &self.wrr.len())
            .field("maglev", &self.maglev)
            .finish_non_exhaustive()
    }
}

impl Selector {
    /// Builds the selector for `backends` (their order defines the indices the view and the
    /// candidates use). Call it off the data path: `source_hash` builds a Maglev table of
    /// `maglev_size` slots (see [`Maglev::build`] for non-prime sizes) and
    /// `weighted_round_robin` precomputes its cycle (see [`WRR_MAX_CYCLE`]); other algorithms
    /// ignore `maglev_size`. Never panics; a weight of 0 counts as 1.
    #[must_use]
    pub fn new(algorithm: Algorithm, backends: &[BackendSpec<'_>], maglev_size: usize) -> Self {
        let weights: Box<[u32]> = backends.iter().map(|b| b.weight.max(1)).collect();
        let wrr = match algorithm {
            Algorithm::WeightedRoundRobin => rotation::wrr_cycle(&weights).into_boxed_slice(),
            _ => Box::new([]),
        };
        let maglev = match algorithm {
            Algorithm::SourceHash => Some(Maglev::build(backends, maglev_size)),
            _ => None,
        };
        Selector {
            algorithm,
            weights,
            wrr,
            maglev,
            cursor: Cursor::default(),
        }
    }

    /// The algorithm this selector runs.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Number of backends it was built from.
    pub fn backend_count(&self) -> usize {
        self.weights.len()
    }

    /// The Maglev table (`source_hash` only).
    pub fn maglev(&self) -> Option<&Maglev> {
        self.maglev.as_ref()
    }

    /// Fills `out` (cleared first) with up to `max` distinct backend indices, best first, only
    /// ready ones (as `view` says during the call). The data plane connects to `out[0]`; on
    /// connect failure it tries `out[1]`, and so on. `out` is empty when no backend is ready.
    ///
    /// No allocation when `out` already has capacity for `max`. Never panics. If `view` and the
    /// specs disagree on the number of backends, only indices below the smaller are used.
    pub fn candidates(
        &self,
        view: &impl BackendView,
        client: IpAddr,
        rng: &mut fastrand::Rng,
        max: usize,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let n = view.len().min(self.weights.len());
        if n == 0 || max == 0 {
            return;
        }
        let ctx = Ctx {
            view,
            n,
            weights: &self.weights,
            max,
        };
        match self.algorithm {
            Algorithm::RoundRobin => rotation::round_robin(&ctx, &self.cursor, out),
            Algorithm::WeightedRoundRobin => {
                rotation::weighted_round_robin(&ctx, &self.wrr, &self.cursor, out)
            }
            Algorithm::Random => random::weighted_random(&ctx, rng, out),
            Algorithm::PowerOfTwo => load::power_of_two(&ctx, rng, out),
            Algorithm::LeastConn => load::least_conn(&ctx, &self.cursor, out),
            Algorithm::SourceHash => {
                if let Some(m) = &self.maglev {
                    hash::source_hash_candidates(&ctx, m, client, out);
                }
            }
        }
    }
}

/// What every algorithm needs for one call.
struct Ctx<'a, V: BackendView> {
    view: &'a V,
    /// Backends considered: `0..n` (n >= 1).
    n: usize,
    weights: &'a [u32],
    /// Candidates wanted (>= 1).
    max: usize,
}

impl<V: BackendView> Ctx<'_, V> {
    fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1)
    }

    /// Ready and not yet a candidate.
    fn eligible(&self, i: usize, out: &[usize]) -> bool {
        self.view.ready(i) && !out.contains(&i)
    }

    fn ready_count(&self) -> usize {
        (0..self.n).filter(|&i| self.view.ready(i)).count()
    }

    /// Whether backend `a` has strictly fewer active connections per weight than `b`.
    fn less_loaded(&self, a: usize, b: usize) -> bool {
        less_loaded(
            self.view.active(a),
            self.weight(a),
            self.view.active(b),
            self.weight(b),
        )
    }

    /// Appends eligible backends in index order, starting at `start` and wrapping, until `out`
    /// holds `max`.
    fn fill_rotation(&self, start: usize, out: &mut Vec<usize>) {
        for k in 0..self.n {
            if out.len() >= self.max {
                return;
            }
            let i = (start + k) % self.n;
            if self.eligible(i, out) {
                out.push(i);
            }
        }
    }

    /// Appends eligible backends in the order `entries` names them (entries may repeat and may
    /// be out of range), until `out` holds `max` or no ready backend is left to find.
    ///
    /// The ready count is taken lazily after `n` entries, so the common case (enough distinct
    /// ready backends near the start) reads no more than it needs, and a walk never runs the
    /// whole table just because fewer than `max` backends are ready.
    fn fill_walk(&self, entries: impl Iterator<Item = usize>, out: &mut Vec<usize>) {
        let mut target = self.max;
        for (step, i) in entries.enumerate() {
            if step == self.n {
                target = target.min(self.ready_count());
            }
            if out.len() >= target {
                return;
            }
            if i < self.n && self.eligible(i, out) {
                out.push(i);
            }
        }
    }
}

/// `a_active / a_weight < b_active / b_weight`, exactly, by cross-multiplication in u128
/// (u64 x u32 cannot overflow it).
fn less_loaded(a_active: u64, a_weight: u32, b_active: u64, b_weight: u32) -> bool {
    u128::from(a_active) * u128::from(b_weight) < u128::from(b_active) * u128::from(a_weight)
}

#[cfg(test)]
pub(crate) mod testing {
    //! A plain backend view for tests and benches of the selector.
    use super::BackendView;

    /// Backends with fixed readiness and load.
    #[derive(Clone, Debug)]
    pub(crate) struct FixedView {
        pub(crate) ready: Vec<bool>,
        pub(crate) active: Vec<u64>,
    }

    impl FixedView {
        pub(crate) fn all_ready(n: usize) -> Self {
            FixedView {
                ready: vec![true; n],
                active: vec![0; n],
            }
        }
    }

    impl BackendView for FixedView {
        fn len(&self) -> usize {
            self.ready.len()
        }
        fn active(&self, i: usize) -> u64 {
            self.active[i]
        }
        fn ready(&self, i: usize) -> bool {
            self.ready[i]
        }
    }

    /// Specs `b0, b1, ...` with the given weights (keys leaked: tests only).
    pub(crate) fn specs(weights: &[u32]) -> Vec<super::BackendSpec<'static>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| super::BackendSpec {
                key: Box::leak(format!("10.1.{}.{}:6379", i / 256, i % 256).into_boxed_str()),
                weight,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{FixedView, specs};
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

    #[test]
    fn selector_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Selector>();
    }

    #[test]
    fn algorithm_names_are_the_serde_names() {
        #[derive(serde::Deserialize, serde::Serialize)]
        struct Conf {
            algorithm: Algorithm,
        }
        for a in Algorithm::ALL {
            let text = toml::to_string(&Conf { algorithm: a }).unwrap();
            assert_eq!(text.trim(), format!("algorithm = \"{}\"", a.name()));
            let back: Conf = toml::from_str(&text).unwrap();
            assert_eq!(back.algorithm, a);
            assert_eq!(a.to_string(), a.name());
        }
    }

    #[test]
    fn no_backends_or_zero_max_gives_no_candidates() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut out = vec![99];
        for a in Algorithm::ALL {
            Selector::new(a, &[], DEFAULT_MAGLEV_SIZE).candidates(
                &FixedView::all_ready(0),
                CLIENT,
                &mut rng,
                3,
                &mut out,
            );
            assert!(out.is_empty(), "{a}");
            let s = Selector::new(a, &specs(&[1, 1]), 101);
            s.candidates(&FixedView::all_ready(2), CLIENT, &mut rng, 0, &mut out);
            assert!(out.is_empty(), "{a}");
        }
    }

    #[test]
    fn a_view_longer_than_the_specs_is_cut_to_the_specs() {
        let mut rng = fastrand::Rng::with_seed(1);
        let mut out = Vec::new();
        for a in Algorithm::ALL {
            let s = Selector::new(a, &specs(&[1, 2]), 101);
            for _ in 0..20 {
                s.candidates(&FixedView::all_ready(5), CLIENT, &mut rng, 5, &mut out);
                assert_eq!(out.len(), 2, "{a}");
                assert!(out.iter().all(|&i| i < 2), "{a}: {out:?}");
            }
        }
    }

    #[test]
    fn candidates_do_not_allocate_when_out_has_capacity() {
        let mut rng = fastrand::Rng::with_seed(1);
        let view = FixedView::all_ready(10);
        for a in Algorithm::ALL {
            let s = Selector::new(a, &specs(&[3, 1, 2, 5, 1, 1, 4, 1, 2, 1]), 1009);
            for max in 1..=4 {
                let mut out = Vec::with_capacity(max);
                let ptr = out.as_ptr();
                for _ in 0..50 {
                    s.candidates(&view, CLIENT, &mut rng, max, &mut out);
                    assert_eq!(out.len(), max);
                }
                assert_eq!(out.capacity(), max, "{a}, max {max}");
                assert_eq!(out.as_ptr(), ptr, "{a}, max {max}");
            }
        }
    }

    /// Counts readiness reads, to check how much of a table a call walks.
    struct CountingView {
        inner: FixedView,
        reads: std::cell::Cell<usize>,
    }

    impl BackendView for CountingView {
        fn len(&self) -> usize {
            self.inner.len()
        }
        fn active(&self, i: usize) -> u64 {
            self.inner.active(i)
        }
        fn ready(&self, i: usize) -> bool {
            self.reads.set(self.reads.get() + 1);
            self.inner.ready(i)
        }
    }

    #[test]
    fn table_walks_stop_once_every_ready_backend_is_taken() {
        // Asking for more candidates than there are ready backends must not walk the whole
        // table (65537 slots, or a long weighted cycle) on every call.
        let mut rng = fastrand::Rng::with_seed(1);
        let mut out = Vec::new();
        for a in [Algorithm::SourceHash, Algorithm::WeightedRoundRobin] {
            let s = Selector::new(a, &specs(&[1, 50, 1, 7]), DEFAULT_MAGLEV_SIZE);
            let mut inner = FixedView::all_ready(4);
            inner.ready[1] = false;
            let view = CountingView {
                inner,
                reads: std::cell::Cell::new(0),
            };
            for _ in 0..10 {
                view.reads.set(0);
                s.candidates(&view, CLIENT, &mut rng, 4, &mut out);
                assert_eq!(out.len(), 3, "{a}");
                assert!(
                    view.reads.get() < 200,
                    "{a}: {} readiness reads",
                    view.reads.get()
                );
            }
        }
    }

    proptest! {
        #[test]
        fn every_algorithm_gives_distinct_ready_candidates_up_to_max(
            weights in prop::collection::vec(1u32..=5, 1..=12),
            ready_bits in any::<u16>(),
            active in prop::collection::vec(0u64..20, 12),
            max in 0usize..=6,
            ip in any::<u32>(),
            seed in any::<u64>(),
        ) {
            let n = weights.len();
            let view = FixedView {
                ready: (0..n).map(|i| ready_bits & (1 << i) != 0).collect(),
                active: active[..n].to_vec(),
            };
            let ready_count = view.ready.iter().filter(|&&r| r).count();
            let specs = specs(&weights);
            let mut rng = fastrand::Rng::with_seed(seed);
            let client = IpAddr::V4(Ipv4Addr::from(ip));
            let mut out = Vec::new();
            for a in Algorithm::ALL {
                let s = Selector::new(a, &specs, 1009);
                // Several calls, so rotations and cursors move.
                for _ in 0..4 {
                    s.candidates(&view, client, &mut rng, max, &mut out);
                    prop_assert!(out.iter().all(|&i| i < n && view.ready[i]), "{a}: {out:?}");
                    let mut sorted = out.clone();
                    sorted.sort_unstable();
                    sorted.dedup();
                    prop_assert_eq!(sorted.len(), out.len(), "{} repeats: {:?}", a, out);
                    prop_assert_eq!(out.len(), max.min(ready_count), "{} {:?}", a, out);
                }
            }
        }
    }
}
