//! Maglev consistent-hash lookup table (Eisenbud et al., NSDI 2016), weighted.
//!
//! Owns: building the table from a backend set, looking a hash up in it, and walking it
//! forward from a slot, plus the primality helpers that table sizes need ([`is_prime`],
//! [`next_prime`]) so config validation can reject a bad size with a useful message.
//!
//! Does not own: readiness (a walk yields every backend, ready or not: the selector filters),
//! hashing clients (see `select::source_hash`), I/O or clocks. Tables are built off the data
//! path and are immutable afterwards, so they are shared by all workers without locks.
//!
//! # How the table is built
//! Each backend gets a permutation of the slots, `offset + j * skip (mod size)`, where
//! `offset` and `skip` come from xxh3 of its key with two fixed seeds. Backends then take
//! turns claiming their next preferred free slot until the table is full. The turns are
//! weighted by stride scheduling: the next turn goes to the backend with the smallest
//! `(claims + 1) / weight` (exact rational comparison, ties to the backend whose key sorts
//! first), so after any number of turns every backend holds its weight share of the claimed
//! slots to within about one slot. With equal weights this is the round robin of the paper.
//!
//! The build runs over the backends sorted by key (then weight), never in listing order: the
//! permutations depend only on the keys and the turns only on the sorted order, so every ringlb
//! process given the same set of backend keys, weights and size gets the same table (the same
//! backend in every slot), whatever order its config lists them in and whatever backends it
//! had before a reload, on every platform and Rust version. Two balancers behind one virtual
//! address therefore send a `source_hash` client to the same backend.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::select::BackendSpec;

/// Table size used when the config names none: 65537 is prime and is the size the Maglev paper
/// evaluates; at 2 bytes a slot the table is 128 KiB, and it keeps shares and disruption
/// within the design's bounds (1 % and 1/N + 2 %) for up to 100 backends.
pub const DEFAULT_SIZE: usize = 65537;

/// Largest number of backends a table can hold. Slots are `u16` (half the cache footprint of
/// `u32`), and `u16::MAX` marks an empty slot during the build, so indices are `0..65535`.
/// Backends past this index get no slot (config validation should reject such sets).
pub const MAX_BACKENDS: usize = u16::MAX as usize;

/// Smallest table size [`Maglev::build`] uses: 2 is the smallest prime, and the permutation step
/// `skip % (size - 1) + 1` needs `size >= 2`.
pub const MIN_SIZE: usize = 2;

/// Sizes above this are clamped to it (then rounded up to a prime) by [`Maglev::build`]: 2^24
/// slots (32 MiB) leaves room for 100 slots per backend even at [`MAX_BACKENDS`], which is the
/// ratio the Maglev paper recommends, and keeps a typo in a config from allocating gigabytes.
pub const MAX_SIZE: usize = 1 << 24;

/// Marks a slot not yet claimed during the build; never present in a finished table.
const EMPTY: u16 = u16::MAX;

/// Seed of the hash that gives a backend its first preferred slot. Fixed forever: changing it
/// remaps every client of every `source_hash` service. (ASCII "ringlb" followed by 0x01.)
const OFFSET_SEED: u64 = 0x7269_6e67_6c62_0001;

/// Seed of the hash that gives a backend its permutation step. Must differ from
/// [`OFFSET_SEED`] so offset and step are independent; fixed forever like it.
const SKIP_SEED: u64 = 0x7269_6e67_6c62_0002;

/// A built Maglev table: `size` slots, each naming a backend by its index in the backend list
/// the table was built from.
///
/// Guarantee: when built from at least one backend, every slot holds a valid index
/// (`< backend_count()`), so [`Maglev::lookup`] returns `Some` and never panics.
#[derive(Clone, PartialEq, Eq)]
pub struct Maglev {
    table: Box<[u16]>,
    size: usize,
    backends: usize,
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The table itself is 65537 entries by default: far too long for a log line.
        f.debug_struct("Maglev")
            .field("size", &self.size)
            .field("backends", &self.backends)
            .finish_non_exhaustive()
    }
}

impl Maglev {
    /// Builds the table for `backends`: slot values are indices into `backends`, but which
    /// backend owns a slot does not depend on their order (see the module docs).
    ///
    /// Never panics. What it does with unusual input:
    /// - `size` is clamped to `MIN_SIZE..=MAX_SIZE` and, if not prime, rounded up to the next
    ///   prime (the permutations only cover every slot when the size is prime). Config
    ///   validation should reject a non-prime size with [`is_prime`] rather than rely on this.
    /// - a weight of 0 counts as 1 (config validation requires weights >= 1);
    /// - backends past [`MAX_BACKENDS`] get no slot;
    /// - with more backends than slots, or extreme weights, some backends get no slot
    ///   (keep `size` >= 100 x backends, as the paper recommends);
    /// - with no backends the table is empty and every lookup is `None`.
    ///
    /// Duplicate keys get the same permutation; keys are expected to be unique.
    ///
    /// Cost: O(size x (log backends + ln size)) time, 2 bytes per slot plus O(backends).
    #[must_use]
    pub fn build(backends: &[BackendSpec<'_>], size: usize) -> Maglev {
        let size = effective_size(size);
        let n = backends.len().min(MAX_BACKENDS);
        if n == 0 {
            return Maglev {
                table: Box::new([]),
                size,
                backends: 0,
            };
        }
        // Build over the backends in key order, so the listing order does not matter; slots
        // are translated back to listing indices at the end. Ties on the key (duplicates) fall
        // to the weight, then to the listing order, where identical specs are interchangeable.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| {
            (backends[a].key.as_bytes(), backends[a].weight)
                .cmp(&(backends[b].key.as_bytes(), backends[b].weight))
        });
        let sorted: Vec<&BackendSpec<'_>> = order.iter().map(|&i| &backends[i]).collect();
        // size fits in u64 (MAX_SIZE is 2^24), so the casts below are lossless.
        let size64 = size as u64;
        let mut cursors: Vec<Permutation> = sorted
            .iter()
            .map(|b| Permutation {
                pos: (xxh3_64_with_seed(b.key.as_bytes(), OFFSET_SEED) % size64) as usize,
                skip: (xxh3_64_with_seed(b.key.as_bytes(), SKIP_SEED) % (size64 - 1) + 1) as usize,
            })
            .collect();
        let mut turns: BinaryHeap<Turn> = sorted
            .iter()
            .enumerate()
            .map(|(index, b)| Turn {
                claims: 0,
                weight: u64::from(b.weight.max(1)),
                index,
            })
            .collect();
        let mut table = vec![EMPTY; size];
        let mut filled = 0;
        while filled < size {
            let Some(mut turn) = turns.pop() else { break };
            let cursor = &mut cursors[turn.index];
            // Terminates: size is prime and 1 <= skip < size, so the permutation visits every
            // slot once per `size` steps, and at least one slot is still EMPTY.
            while table[cursor.pos] != EMPTY {
                cursor.advance(size);
            }
            // order[i] < n <= MAX_BACKENDS = u16::MAX, so it fits and is never EMPTY.
            table[cursor.pos] = order[turn.index] as u16;
            cursor.advance(size);
            filled += 1;
            turn.claims += 1;
            turns.push(turn);
        }
        Maglev {
            table: table.into_boxed_slice(),
            size,
            backends: n,
        }
    }

    /// Number of slots (the prime actually used, see [`Maglev::build`]).
    pub fn size(&self) -> usize {
        self.size
    }

    /// Number of backends the table was built over (at most [`MAX_BACKENDS`]).
    pub fn backend_count(&self) -> usize {
        self.backends
    }

    /// The backend index at slot `hash % size`, or `None` if the table has no backends.
    #[must_use]
    pub fn lookup(&self, hash: u64) -> Option<usize> {
        let slot = self.slot(hash)?;
        self.table.get(slot).map(|&b| usize::from(b))
    }

    /// The backend index of every slot, starting at slot `hash % size` and going forward
    /// (wrapping) for exactly one pass over the table. Backends repeat: callers that want
    /// distinct backends (the selector) skip those they have already taken. The first item is
    /// [`Maglev::lookup`]`(hash)`. Empty if the table has no backends. Allocates nothing.
    pub fn walk(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.slot(hash).unwrap_or(0);
        let (head, tail) = self.table.split_at(start);
        tail.iter().chain(head).map(|&b| usize::from(b))
    }

    /// The whole table, slot by slot (for tests, admin views and diffs between two builds).
    pub fn table(&self) -> &[u16] {
        &self.table
    }

    fn slot(&self, hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        // The remainder is < size <= MAX_SIZE, so it fits in usize.
        Some((hash % self.size as u64) as usize)
    }
}

/// Where a backend is in its permutation of the slots.
struct Permutation {
    pos: usize,
    skip: usize,
}

impl Permutation {
    fn advance(&mut self, size: usize) {
        // pos < size and skip < size, so one subtraction brings the sum back into range.
        self.pos += self.skip;
        if self.pos >= size {
            self.pos -= size;
        }
    }
}

/// A backend's place in the stride schedule of turns. The heap pops the greatest, so the
/// ordering is "goes first": smaller `(claims + 1) / weight`, then smaller index in key order.
#[derive(PartialEq, Eq)]
struct Turn {
    claims: u64,
    weight: u64,
    index: usize,
}

impl Ord for Turn {
    fn cmp(&self, other: &Self) -> Ordering {
        // (a.claims + 1) / a.weight < (b.claims + 1) / b.weight, cross-multiplied. claims is at
        // most MAX_SIZE (2^24) and weight at most 2^32, so the products fit in u64.
        let mine = (self.claims + 1) * other.weight;
        let theirs = (other.claims + 1) * self.weight;
        theirs.cmp(&mine).then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Turn {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The table size [`Maglev::build`] really uses for a requested `size`.
fn effective_size(size: usize) -> usize {
    // A prime exists in [n, 2n] (Bertrand), so for n <= MAX_SIZE the fallback is unreachable.
    next_prime(size.clamp(MIN_SIZE, MAX_SIZE)).unwrap_or(DEFAULT_SIZE)
}

/// Whether `n` is prime. Exact for every `usize` (deterministic Miller-Rabin), fast enough for
/// config validation of any value.
#[must_use]
pub fn is_prime(n: usize) -> bool {
    // These 12 bases are a proven deterministic witness set for every n < 3.3 * 10^24, which
    // covers u64; checking them as small divisors first also settles n <= 37.
    const BASES: [u64; 12] = [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37];
    let Ok(n) = u64::try_from(n) else {
        return false;
    };
    if n < 2 {
        return false;
    }
    for p in BASES {
        if n.is_multiple_of(p) {
            return n == p;
        }
    }
    // n - 1 = d * 2^s with d odd.
    let s = (n - 1).trailing_zeros();
    let d = (n - 1) >> s;
    'bases: for a in BASES {
        let mut x = pow_mod(a, d, n);
        if x == 1 || x == n - 1 {
            continue;
        }
        for _ in 1..s {
            x = mul_mod(x, x, n);
            if x == n - 1 {
                continue 'bases;
            }
        }
        return false;
    }
    true
}

/// The smallest prime `>= n`, or `None` if there is none within `usize`.
#[must_use]
pub fn next_prime(n: usize) -> Option<usize> {
    (n..=usize::MAX).find(|&k| is_prime(k))
}

fn mul_mod(a: u64, b: u64, m: u64) -> u64 {
    // The remainder is < m, so narrowing back to u64 is lossless.
    (u128::from(a) * u128::from(b) % u128::from(m)) as u64
}

fn pow_mod(mut base: u64, mut exp: u64, m: u64) -> u64 {
    let mut acc = 1;
    base %= m;
    while exp > 0 {
        if exp & 1 == 1 {
            acc = mul_mod(acc, base, m);
        }
        base = mul_mod(base, base, m);
        exp >>= 1;
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn specs(keys: &[String], weights: &[u32]) -> Vec<BackendSpec<'static>> {
        keys.iter()
            .zip(weights)
            .map(|(k, &w)| BackendSpec {
                key: Box::leak(k.clone().into_boxed_str()),
                weight: w,
            })
            .collect()
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.0.{}.{}:5432", i / 256, i % 256))
            .collect()
    }

    fn counts(m: &Maglev) -> Vec<usize> {
        let mut c = vec![0; m.backend_count()];
        for &b in m.table() {
            c[usize::from(b)] += 1;
        }
        c
    }

    /// Slots whose backend differs between `before` (all backends) and `after` (built without
    /// backend `removed`, so its indices above `removed` are shifted down by one).
    fn moved_slots(before: &Maglev, after: &Maglev, removed: usize) -> usize {
        before
            .table()
            .iter()
            .zip(after.table())
            .filter(|&(&b, &a)| {
                let a = usize::from(a);
                let a_in_before = if a >= removed { a + 1 } else { a };
                usize::from(b) != a_in_before
            })
            .count()
    }

    #[test]
    fn is_prime_matches_trial_division() {
        let trial = |n: usize| {
            n >= 2
                && (2..n)
                    .take_while(|d| d * d <= n)
                    .all(|d| !n.is_multiple_of(d))
        };
        for n in 0..5000 {
            assert_eq!(is_prime(n), trial(n), "n = {n}");
        }
        assert!(is_prime(65537));
        assert!(is_prime(655_373));
        assert!(!is_prime(65536));
        // A strong pseudoprime to bases 2..=11 (would fool a short witness set).
        assert!(!is_prime(3_215_031_751));
        assert!(is_prime(18_446_744_073_709_551_557)); // largest prime below 2^64
        assert!(!is_prime(usize::MAX));
    }

    #[test]
    fn next_prime_rounds_up() {
        assert_eq!(next_prime(65536), Some(65537));
        assert_eq!(next_prime(65537), Some(65537));
        assert_eq!(next_prime(0), Some(2));
        assert_eq!(next_prime(usize::MAX), None);
    }

    #[test]
    fn build_rounds_a_non_prime_or_tiny_size_up_to_a_prime() {
        let k = keys(3);
        let s = specs(&k, &[1, 1, 1]);
        assert_eq!(Maglev::build(&s, 65536).size(), 65537);
        assert_eq!(Maglev::build(&s, 0).size(), 2);
        assert_eq!(Maglev::build(&s, 10).size(), 11);
        assert_eq!(
            Maglev::build(&s, usize::MAX).size(),
            next_prime(MAX_SIZE).unwrap()
        );
    }

    #[test]
    fn empty_backend_set_gives_no_lookup_and_an_empty_walk() {
        let m = Maglev::build(&[], DEFAULT_SIZE);
        assert_eq!(m.lookup(12345), None);
        assert_eq!(m.walk(12345).count(), 0);
    }

    #[test]
    fn every_slot_is_filled_and_the_walk_covers_the_table_once() {
        let k = keys(7);
        let m = Maglev::build(&specs(&k, &[1, 2, 3, 1, 1, 5, 1]), 1009);
        assert!(m.table().iter().all(|&b| usize::from(b) < 7));
        let walked: Vec<usize> = m.walk(1000).collect();
        assert_eq!(walked.len(), 1009);
        assert_eq!(walked[0], m.lookup(1000).unwrap());
        assert_eq!(walked[9], usize::from(m.table()[0]));
    }

    #[test]
    fn equal_weights_split_the_table_to_within_one_slot() {
        let k = keys(10);
        let m = Maglev::build(&specs(&k, &[1; 10]), DEFAULT_SIZE);
        let c = counts(&m);
        assert!(c.iter().all(|&x| x == 6553 || x == 6554), "{c:?}");
    }

    #[test]
    fn table_is_the_same_for_the_same_keys_in_every_build() {
        let k = keys(5);
        let a = Maglev::build(&specs(&k, &[1, 2, 3, 4, 5]), 4099);
        let b = Maglev::build(&specs(&k, &[1, 2, 3, 4, 5]), 4099);
        assert_eq!(a, b);
    }

    #[test]
    fn table_is_stable_across_versions() {
        // Golden values: if these change, every source_hash client of every deployment moves.
        // Only update them on purpose, and say so in the release notes. The table matches an
        // independent implementation of the paper's build (Python, the `xxhash` package).
        let k = keys(3);
        let m = Maglev::build(&specs(&k, &[1, 1, 1]), 13);
        assert_eq!(m.table(), GOLDEN_TABLE_13);
    }
    const GOLDEN_TABLE_13: &[u16] = &[1, 1, 1, 1, 0, 2, 0, 2, 2, 0, 0, 2, 0];

    /// The table as backend keys, slot by slot: comparable between builds whose lists differ
    /// in order.
    fn by_key<'a>(m: &Maglev, s: &[BackendSpec<'a>]) -> Vec<&'a str> {
        m.table().iter().map(|&b| s[usize::from(b)].key).collect()
    }

    #[test]
    fn the_same_set_in_any_order_gives_the_same_backend_in_every_slot() {
        let k = keys(9);
        let w = [1, 2, 3, 1, 1, 4, 2, 1, 5];
        let reference = specs(&k, &w);
        let want = by_key(&Maglev::build(&reference, 4099), &reference);
        let mut rng = fastrand::Rng::with_seed(7);
        let mut shuffled = reference.clone();
        shuffled.reverse();
        for round in 0..20 {
            let m = Maglev::build(&shuffled, 4099);
            assert_eq!(by_key(&m, &shuffled), want, "order {round}");
            rng.shuffle(&mut shuffled);
        }
    }

    #[test]
    fn a_backend_added_then_removed_leaves_the_table_of_a_fresh_build() {
        let k = keys(6);
        let all = specs(&k, &[1, 2, 1, 3, 1, 1]);
        let fresh = Maglev::build(&all[..5], 1009);
        // The extra backend listed first, as a reload might put it.
        let mut with_extra = vec![all[5]];
        with_extra.extend_from_slice(&all[..5]);
        let grown = Maglev::build(&with_extra, 1009);
        assert_ne!(by_key(&grown, &with_extra), by_key(&fresh, &all[..5]));
        // Reloaded without it, listed in another order.
        let mut back: Vec<_> = all[..5].to_vec();
        back.rotate_left(2);
        let shrunk = Maglev::build(&back, 1009);
        assert_eq!(by_key(&shrunk, &back), by_key(&fresh, &all[..5]));
    }

    /// Share check for one backend set: each backend's share of the slots is within 1 % (of the
    /// table) of its weight share.
    fn assert_shares(weights: &[u32]) {
        let k = keys(weights.len());
        let m = Maglev::build(&specs(&k, weights), DEFAULT_SIZE);
        let total: u32 = weights.iter().sum();
        for (i, &c) in counts(&m).iter().enumerate() {
            let share = c as f64 / m.size() as f64;
            let want = f64::from(weights[i]) / f64::from(total);
            assert!(
                (share - want).abs() <= 0.01,
                "backend {i}: share {share}, weight share {want}"
            );
        }
    }

    /// Disruption check: removing backend `removed` moves at most its weight share + 2 % of
    /// the slots.
    fn assert_removal_moves_few(weights: &[u32], removed: usize) {
        let k = keys(weights.len());
        let all = specs(&k, weights);
        let mut rest = all.clone();
        rest.remove(removed);
        let before = Maglev::build(&all, DEFAULT_SIZE);
        let after = Maglev::build(&rest, DEFAULT_SIZE);
        let total: u32 = weights.iter().sum();
        let bound = f64::from(weights[removed]) / f64::from(total) + 0.02;
        let moved = moved_slots(&before, &after, removed) as f64 / before.size() as f64;
        assert!(
            moved <= bound,
            "moved {moved} > bound {bound} (weights {weights:?})"
        );
    }

    proptest! {
        // Each case builds 65537-slot tables; 8 cases per backend count keep the debug-build
        // test run short while still drawing fresh weights each run.
        #![proptest_config(ProptestConfig::with_cases(8))]

        #[test]
        fn each_backend_share_is_within_one_percent_of_its_weight_share(
            n in prop::sample::select(vec![2usize, 3, 10, 50, 100]),
            seed in any::<u64>(),
        ) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let weights: Vec<u32> = (0..n).map(|_| rng.u32(1..=10)).collect();
            assert_shares(&weights);
        }

        #[test]
        fn removing_one_backend_moves_few_slots(
            n in prop::sample::select(vec![2usize, 3, 10, 50, 100]),
            seed in any::<u64>(),
        ) {
            let mut rng = fastrand::Rng::with_seed(seed);
            let weights: Vec<u32> = (0..n).map(|_| rng.u32(1..=10)).collect();
            let removed = rng.usize(0..n);
            assert_removal_moves_few(&weights, removed);
        }
    }

    #[test]
    fn removing_one_of_equal_backends_moves_few_slots() {
        for n in [2, 3, 10, 50, 100] {
            for removed in [0, n / 2, n - 1] {
                assert_removal_moves_few(&vec![1; n], removed);
            }
        }
    }
}
