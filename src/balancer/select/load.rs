//! `least_conn` and `power_of_two`: choices by active connections per weight.
//!
//! Load is `active / weight`, compared exactly by cross-multiplication (no floats). Active
//! counts are the process-wide shared atomics, so every worker sees the same load; they are
//! read afresh for each comparison and may move during a call (that only blurs the order,
//! never breaks distinctness or readiness).

use super::{BackendView, Ctx, Cursor};

/// Random index draws `power_of_two` makes before falling back to counting the ready
/// backends. With half the backends not ready, 8 draws all miss with probability 1/256, so the
/// O(n) fallback is rare, and the result stays uniform over ready backends either way.
const RANDOM_DRAWS: usize = 8;

/// `least_conn`: lowest load first, then in increasing load. Among equal loads the scan starts
/// at a shared rotating offset, so equal backends alternate over consecutive calls.
/// Cost O(n x max) reads.
pub(super) fn least_conn<V: BackendView>(ctx: &Ctx<'_, V>, cursor: &Cursor, out: &mut Vec<usize>) {
    let start = cursor.take(1) % ctx.n;
    fill_by_load(ctx, start, out);
}

/// `power_of_two`: two distinct uniformly random ready backends; the less loaded goes first
/// (the first drawn on a tie), the other second, then the rest in increasing load.
pub(super) fn power_of_two<V: BackendView>(
    ctx: &Ctx<'_, V>,
    rng: &mut fastrand::Rng,
    out: &mut Vec<usize>,
) {
    let Some(a) = random_ready(ctx, rng, None) else {
        return;
    };
    let (first, second) = match random_ready(ctx, rng, Some(a)) {
        Some(b) if ctx.less_loaded(b, a) => (b, Some(a)),
        Some(b) => (a, Some(b)),
        None => (a, None),
    };
    out.push(first);
    // Pushed one by one, not extended then truncated: `out` may only have room for `max`.
    if let Some(second) = second
        && out.len() < ctx.max
    {
        out.push(second);
    }
    fill_by_load(ctx, a, out);
}

/// Appends eligible backends in increasing load until `out` holds `max`: each round scans all
/// backends from `start` (wrapping) and takes the first strictly least loaded.
fn fill_by_load<V: BackendView>(ctx: &Ctx<'_, V>, start: usize, out: &mut Vec<usize>) {
    while out.len() < ctx.max {
        let mut best: Option<usize> = None;
        for k in 0..ctx.n {
            let i = (start + k) % ctx.n;
            if !ctx.eligible(i, out) {
                continue;
            }
            if best.is_none_or(|b| ctx.less_loaded(i, b)) {
                best = Some(i);
            }
        }
        match best {
            Some(i) => out.push(i),
            None => return,
        }
    }
}

/// A uniformly random ready backend other than `except`, or `None` if there is none.
fn random_ready<V: BackendView>(
    ctx: &Ctx<'_, V>,
    rng: &mut fastrand::Rng,
    except: Option<usize>,
) -> Option<usize> {
    let ok = |i: usize| Some(i) != except && ctx.view.ready(i);
    for _ in 0..RANDOM_DRAWS {
        let i = rng.usize(0..ctx.n);
        if ok(i) {
            return Some(i);
        }
    }
    let count = (0..ctx.n).filter(|&i| ok(i)).count();
    if count == 0 {
        return None;
    }
    let nth = rng.usize(0..count);
    // Readiness may change between the count and this scan; then take the last one seen.
    let mut last = None;
    for (k, i) in (0..ctx.n).filter(|&i| ok(i)).enumerate() {
        if k == nth {
            return Some(i);
        }
        last = Some(i);
    }
    last
}

#[cfg(test)]
mod tests {
    use super::super::testing::{FixedView, specs};
    use super::super::{Algorithm, Selector, less_loaded};
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr};

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn load_le(view: &FixedView, w: &[u32], a: usize, b: usize) -> bool {
        !less_loaded(view.active[b], w[b], view.active[a], w[a])
    }

    #[test]
    fn least_conn_picks_the_fewest_active_per_weight() {
        // Loads: 3/1 = 3, 4/2 = 2, 9/3 = 3, 1/1 = 1 but not ready.
        let w = [1, 2, 3, 1];
        let s = Selector::new(Algorithm::LeastConn, &specs(&w), 0);
        let view = FixedView {
            ready: vec![true, true, true, false],
            active: vec![3, 4, 9, 1],
        };
        let mut out = Vec::new();
        let mut rng = fastrand::Rng::with_seed(1);
        for _ in 0..5 {
            s.candidates(&view, CLIENT, &mut rng, 1, &mut out);
            assert_eq!(out, [1]);
        }
    }

    #[test]
    fn least_conn_ties_rotate_over_consecutive_calls() {
        let s = Selector::new(Algorithm::LeastConn, &specs(&[1, 2, 1]), 0);
        // Loads 2, 2, 5: backends 0 and 1 tie.
        let view = FixedView {
            ready: vec![true; 3],
            active: vec![2, 4, 5],
        };
        let mut out = Vec::new();
        let mut rng = fastrand::Rng::with_seed(1);
        let firsts: Vec<usize> = (0..6)
            .map(|_| {
                s.candidates(&view, CLIENT, &mut rng, 1, &mut out);
                out[0]
            })
            .collect();
        assert!(firsts.iter().all(|&i| i == 0 || i == 1), "{firsts:?}");
        for pair in firsts.windows(3) {
            assert!(
                pair.contains(&0) && pair.contains(&1),
                "no rotation in {firsts:?}"
            );
        }
        // Two equal backends alternate strictly.
        let s = Selector::new(Algorithm::LeastConn, &specs(&[1, 1]), 0);
        let view = FixedView::all_ready(2);
        let firsts: Vec<usize> = (0..4)
            .map(|_| {
                s.candidates(&view, CLIENT, &mut rng, 1, &mut out);
                out[0]
            })
            .collect();
        assert_eq!(firsts, [0, 1, 0, 1]);
    }

    #[test]
    fn power_of_two_with_two_backends_always_picks_the_less_loaded() {
        for (active, want) in [([5, 2], 1), ([0, 1], 0)] {
            let s = Selector::new(Algorithm::PowerOfTwo, &specs(&[1, 1]), 0);
            let view = FixedView {
                ready: vec![true; 2],
                active: active.to_vec(),
            };
            let mut out = Vec::new();
            let mut rng = fastrand::Rng::with_seed(3);
            for _ in 0..200 {
                s.candidates(&view, CLIENT, &mut rng, 2, &mut out);
                assert_eq!(out, [want, 1 - want]);
            }
        }
    }

    #[test]
    fn power_of_two_never_picks_the_most_loaded_first() {
        let w = [1, 1, 1, 2];
        let s = Selector::new(Algorithm::PowerOfTwo, &specs(&w), 0);
        // Loads 0, 5, 10, 4: backend 2 loses every pair it is drawn in.
        let view = FixedView {
            ready: vec![true; 4],
            active: vec![0, 5, 10, 8],
        };
        let mut out = Vec::new();
        let mut rng = fastrand::Rng::with_seed(11);
        let mut first_counts = [0; 4];
        for _ in 0..2000 {
            s.candidates(&view, CLIENT, &mut rng, 1, &mut out);
            first_counts[out[0]] += 1;
        }
        assert_eq!(first_counts[2], 0, "{first_counts:?}");
        // Backend 0 wins every pair it is in: 3 of 6 pairs.
        assert!((900..1100).contains(&first_counts[0]), "{first_counts:?}");
    }

    proptest! {
        #[test]
        fn least_conn_gives_candidates_in_increasing_load(
            w in prop::collection::vec(1u32..=4, 1..=8),
            active in prop::collection::vec(0u64..12, 8),
            ready_bits in any::<u8>(),
        ) {
            let n = w.len();
            let view = FixedView {
                ready: (0..n).map(|i| ready_bits & (1 << i) != 0).collect(),
                active: active[..n].to_vec(),
            };
            let s = Selector::new(Algorithm::LeastConn, &specs(&w), 0);
            let mut out = Vec::new();
            s.candidates(&view, CLIENT, &mut fastrand::Rng::with_seed(1), n, &mut out);
            for pair in out.windows(2) {
                prop_assert!(load_le(&view, &w, pair[0], pair[1]), "{:?}", out);
            }
            if let Some(&first) = out.first() {
                for i in (0..n).filter(|&i| view.ready[i]) {
                    prop_assert!(load_le(&view, &w, first, i), "{} beats {}", i, first);
                }
            }
        }

        #[test]
        fn power_of_two_never_puts_the_more_loaded_of_its_picks_first(
            w in prop::collection::vec(1u32..=4, 2..=8),
            active in prop::collection::vec(0u64..12, 8),
            ready_bits in any::<u8>(),
            seed in any::<u64>(),
        ) {
            let n = w.len();
            let view = FixedView {
                ready: (0..n).map(|i| ready_bits & (1 << i) != 0).collect(),
                active: active[..n].to_vec(),
            };
            let s = Selector::new(Algorithm::PowerOfTwo, &specs(&w), 0);
            let mut out = Vec::new();
            let mut rng = fastrand::Rng::with_seed(seed);
            for _ in 0..8 {
                s.candidates(&view, CLIENT, &mut rng, n, &mut out);
                // out[0] and out[1] are the two picks; the rest follow in increasing load.
                if out.len() >= 2 {
                    prop_assert!(load_le(&view, &w, out[0], out[1]), "{:?}", out);
                }
                for pair in out.get(2..).unwrap_or_default().windows(2) {
                    prop_assert!(load_le(&view, &w, pair[0], pair[1]), "{:?}", out);
                }
            }
        }
    }
}
