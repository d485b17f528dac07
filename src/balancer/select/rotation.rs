//! `round_robin` and `weighted_round_robin`: turns from one shared atomic cursor.
//!
//! Both take the first candidate at the cursor's next turn. When the backend at that turn is
//! not ready, the call takes the next ready one in order and then consumes the skipped turns
//! (one extra `fetch_add`), so while a backend is down its turns vanish instead of all
//! landing on its successor: ready backends keep their relative shares.
//! Across threads the cursor is shared, so the rotation is exact in aggregate, not per thread.

use super::{BackendView, Ctx, Cursor};

/// Longest precomputed weighted round robin cycle, in entries (4 bytes each, so 256 KiB).
/// 2^16 keeps every realistic weight set exact (after division by the gcd, 100 backends of
/// weights up to 655 fit) and bounds the O(cycle x backends) build. When the reduced weights
/// sum to more, each weight is scaled to `max(1, w * WRR_MAX_CYCLE / sum)` (rounded down), so
/// the cycle is at most `WRR_MAX_CYCLE + backends` long and shares are exact only to within
/// one turn per backend per cycle.
pub const WRR_MAX_CYCLE: usize = 1 << 16;

/// `round_robin`: next ready backend in the shared rotation, then the rest of the rotation.
pub(super) fn round_robin<V: BackendView>(ctx: &Ctx<'_, V>, cursor: &Cursor, out: &mut Vec<usize>) {
    let start = cursor.take(1) % ctx.n;
    let Some(skipped) = (0..ctx.n).find(|&k| ctx.view.ready((start + k) % ctx.n)) else {
        return;
    };
    if skipped > 0 {
        cursor.take(skipped);
    }
    let first = (start + skipped) % ctx.n;
    out.push(first);
    ctx.fill_rotation(first + 1, out);
}

/// `weighted_round_robin`: the next ready entry of the precomputed smooth cycle, then the
/// following entries of the cycle skipping repeats, then any ready backends.
pub(super) fn weighted_round_robin<V: BackendView>(
    ctx: &Ctx<'_, V>,
    cycle: &[u32],
    cursor: &Cursor,
    out: &mut Vec<usize>,
) {
    let len = cycle.len();
    if len == 0 {
        return;
    }
    let start = cursor.take(1) % len;
    let entry = |k: usize| cycle[(start + k) % len] as usize;
    let mut first = None;
    for k in 0..len {
        // After n misses, check once whether anything is ready at all, so an all-down set costs
        // n + n reads instead of a whole cycle.
        if k == ctx.n && ctx.ready_count() == 0 {
            return;
        }
        let i = entry(k);
        if i < ctx.n && ctx.view.ready(i) {
            first = Some((k, i));
            break;
        }
    }
    let Some((skipped, i)) = first else { return };
    if skipped > 0 {
        cursor.take(skipped);
    }
    out.push(i);
    ctx.fill_walk((skipped + 1..len).map(entry), out);
    ctx.fill_rotation(i + 1, out);
}

/// One cycle of nginx's smooth weighted round robin over `weights` (each >= 1): every step,
/// each backend's `current` grows by its weight, the largest `current` (first on ties) is
/// picked and loses the total. Weights are divided by their gcd first, so the cycle is
/// `sum(w / gcd)` long and backend `i` appears exactly `w_i / gcd` times in it (see
/// [`WRR_MAX_CYCLE`] for the cap). Cost O(cycle x backends), off the data path.
pub(super) fn wrr_cycle(weights: &[u32]) -> Vec<u32> {
    let reduced = reduce(weights.iter().map(|&w| u64::from(w.max(1))).collect());
    let mut total: u64 = reduced.iter().sum();
    let mut reduced = reduced;
    if total > WRR_MAX_CYCLE as u64 {
        let cap = WRR_MAX_CYCLE as u64;
        reduced = reduce(reduced.iter().map(|&w| (w * cap / total).max(1)).collect());
        total = reduced.iter().sum();
    }
    if reduced.iter().all(|&w| w == 1) {
        // What the loop below yields for equal weights, without its O(n^2) cost.
        return (0..weights.len() as u32).collect();
    }
    // total <= WRR_MAX_CYCLE + n. The `current`s sum to 0 after every step and each stays
    // above -total, so all lie within (-total, n * total): far inside i64.
    let total_i = total as i64;
    let mut current = vec![0i64; reduced.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, c) in current.iter_mut().enumerate() {
            *c += reduced[i] as i64;
        }
        for i in 1..current.len() {
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total_i;
        // Indices fit u32: a backend list that long could not be loaded into memory anyway.
        cycle.push(best as u32);
    }
    cycle
}

/// Divides every weight by the gcd of all of them.
fn reduce(weights: Vec<u64>) -> Vec<u64> {
    let g = weights.iter().fold(0, |g, &w| gcd(g, w));
    if g <= 1 {
        return weights;
    }
    weights.into_iter().map(|w| w / g).collect()
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::super::testing::{FixedView, specs};
    use super::super::{Algorithm, Selector};
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr};

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// First candidate of `calls` consecutive calls.
    fn firsts(s: &Selector, view: &FixedView, calls: usize) -> Vec<usize> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut out = Vec::new();
        (0..calls)
            .map(|_| {
                s.candidates(view, CLIENT, &mut rng, 1, &mut out);
                out[0]
            })
            .collect()
    }

    #[test]
    fn round_robin_over_three_ready_backends_gives_abcabc() {
        let s = Selector::new(Algorithm::RoundRobin, &specs(&[1, 1, 1]), 0);
        assert_eq!(firsts(&s, &FixedView::all_ready(3), 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn round_robin_further_candidates_continue_the_rotation() {
        let s = Selector::new(Algorithm::RoundRobin, &specs(&[1; 4]), 0);
        let mut view = FixedView::all_ready(4);
        view.ready[2] = false;
        let mut out = Vec::new();
        let mut rng = fastrand::Rng::with_seed(1);
        s.candidates(&view, CLIENT, &mut rng, 4, &mut out);
        assert_eq!(out, [0, 1, 3]);
        s.candidates(&view, CLIENT, &mut rng, 4, &mut out);
        assert_eq!(out, [1, 3, 0]);
    }

    #[test]
    fn round_robin_splits_evenly_while_a_backend_is_down() {
        let s = Selector::new(Algorithm::RoundRobin, &specs(&[1, 1, 1]), 0);
        let mut view = FixedView::all_ready(3);
        view.ready[1] = false;
        assert_eq!(firsts(&s, &view, 6), [0, 2, 0, 2, 0, 2]);
    }

    #[test]
    fn weighted_round_robin_is_smooth_like_nginx() {
        // nginx's own example: weights a=5, b=1, c=1.
        assert_eq!(wrr_cycle(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        let s = Selector::new(Algorithm::WeightedRoundRobin, &specs(&[5, 1, 1]), 0);
        assert_eq!(
            firsts(&s, &FixedView::all_ready(3), 14),
            [0, 0, 1, 0, 2, 0, 0].repeat(2)
        );
    }

    #[test]
    fn weighted_round_robin_keeps_weight_shares_among_ready_backends() {
        let s = Selector::new(Algorithm::WeightedRoundRobin, &specs(&[5, 1, 1]), 0);
        let mut view = FixedView::all_ready(3);
        view.ready[1] = false;
        // b's turn is skipped and consumed: a and c keep 5:1.
        assert_eq!(firsts(&s, &view, 12), [0, 0, 0, 2, 0, 0].repeat(2));
    }

    #[test]
    fn weighted_round_robin_further_candidates_follow_the_cycle_without_repeats() {
        let w = [2, 1, 3, 1, 4];
        assert_eq!(wrr_cycle(&w), [4, 2, 0, 4, 1, 2, 3, 4, 0, 2, 4]);
        let s = Selector::new(Algorithm::WeightedRoundRobin, &specs(&w), 0);
        let mut view = FixedView::all_ready(5);
        let mut out = Vec::new();
        let mut rng = fastrand::Rng::with_seed(1);
        // Distinct entries in cycle order (not index order) from the cursor's turn.
        s.candidates(&view, CLIENT, &mut rng, 5, &mut out);
        assert_eq!(out, [4, 2, 0, 1, 3]);
        s.candidates(&view, CLIENT, &mut rng, 3, &mut out);
        assert_eq!(out, [2, 0, 4]);
        // Not-ready ones are skipped in the continuation too.
        view.ready[4] = false;
        s.candidates(&view, CLIENT, &mut rng, 5, &mut out);
        assert_eq!(out, [0, 1, 2, 3]);
    }

    #[test]
    fn weighted_round_robin_reduces_weights_by_their_gcd() {
        assert_eq!(wrr_cycle(&[10, 2, 2]), wrr_cycle(&[5, 1, 1]));
        assert_eq!(wrr_cycle(&[4, 4]), [0, 1]);
    }

    #[test]
    fn weighted_round_robin_cycle_is_capped() {
        let cycle = wrr_cycle(&[u32::MAX, 1, 100_000, 7]);
        assert!(cycle.len() <= WRR_MAX_CYCLE + 4, "{}", cycle.len());
        for i in 0..4 {
            assert!(cycle.contains(&i), "backend {i} lost its turns");
        }
    }

    #[test]
    fn weighted_round_robin_with_nothing_ready_gives_nothing() {
        let s = Selector::new(Algorithm::WeightedRoundRobin, &specs(&[3, 1, 2]), 0);
        let view = FixedView {
            ready: vec![false; 3],
            active: vec![0; 3],
        };
        let mut out = vec![1];
        s.candidates(&view, CLIENT, &mut fastrand::Rng::with_seed(1), 3, &mut out);
        assert!(out.is_empty());
    }

    proptest! {
        #[test]
        fn weighted_round_robin_is_exact_over_a_cycle(
            weights in prop::collection::vec(1u32..=20, 1..=10),
        ) {
            let g = weights.iter().fold(0, |g, &w| gcd(g, u64::from(w)));
            let reduced: Vec<u64> = weights.iter().map(|&w| u64::from(w) / g).collect();
            let len: u64 = reduced.iter().sum();
            let s = Selector::new(Algorithm::WeightedRoundRobin, &specs(&weights), 0);
            let picks = firsts(&s, &FixedView::all_ready(weights.len()), len as usize);
            for (i, &w) in reduced.iter().enumerate() {
                let got = picks.iter().filter(|&&p| p == i).count() as u64;
                prop_assert_eq!(got, w, "backend {} in {:?}", i, picks);
            }
        }

        #[test]
        fn weighted_round_robin_is_smooth(
            weights in prop::collection::vec(1u32..=20, 1..=10),
        ) {
            // Smooth: in every prefix of the cycle, each backend's count stays close to its exact
            // share `picks * w / total`, so turns interleave instead of coming in bursts.
            // - Never a whole turn ahead: after each step `current_i = picks * w_i - total *
            //   count_i`, and a picked backend had the largest `current` (> 0, as they sum to
            //   total), so every `current_i > -total`. A burst (a,a,a,a,a,b,c) breaks this.
            // - Less than two turns behind: SWRR's lag has no tight published bound; over a
            //   hill-climbing search of this domain (<= 10 backends, weights <= 20) the worst lag
            //   was 1.25 turns, so 2 leaves margin while still catching starvation.
            let cycle = wrr_cycle(&weights);
            let reduced = reduce(weights.iter().map(|&w| u64::from(w)).collect());
            let total: u64 = reduced.iter().sum();
            let mut counts = vec![0u64; weights.len()];
            for (k, &i) in cycle.iter().enumerate() {
                counts[i as usize] += 1;
                let picks = k as u64 + 1;
                for (j, &c) in counts.iter().enumerate() {
                    let (have, fair) = (c * total, picks * reduced[j]);
                    prop_assert!(have < fair + total, "backend {} ahead after {} of {:?}", j, picks, cycle);
                    prop_assert!(fair < have + 2 * total, "backend {} behind after {} of {:?}", j, picks, cycle);
                }
            }
        }
    }
}
