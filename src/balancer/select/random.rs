//! `random`: weighted random choice among ready backends.
//!
//! Weights are honoured (a backend of weight 3 is picked three times as often as one of weight
//! 1), so `random` is the stateless counterpart of `weighted_round_robin`; with equal weights it
//! is plain uniform random. Further candidates are drawn the same way without replacement
//! (weighted sampling among the ready backends not yet taken).

use super::{BackendView, Ctx};

/// Cost: one pass over the backends for the ready weight, then one pass per candidate.
pub(super) fn weighted_random<V: BackendView>(
    ctx: &Ctx<'_, V>,
    rng: &mut fastrand::Rng,
    out: &mut Vec<usize>,
) {
    let mut total: u64 = (0..ctx.n)
        .filter(|&i| ctx.view.ready(i))
        .map(|i| u64::from(ctx.weight(i)))
        .sum();
    while out.len() < ctx.max && total > 0 {
        let mut r = rng.u64(0..total);
        let mut picked = None;
        for i in 0..ctx.n {
            if !ctx.eligible(i, out) {
                continue;
            }
            let w = u64::from(ctx.weight(i));
            // Readiness may change during the call, leaving `r` past the end; then the last
            // eligible backend is taken.
            picked = Some((i, w));
            if r < w {
                break;
            }
            r -= w;
        }
        let Some((i, w)) = picked else { return };
        out.push(i);
        total = total.saturating_sub(w);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{FixedView, specs};
    use super::super::{Algorithm, Selector};
    use std::net::{IpAddr, Ipv4Addr};

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn random_picks_in_proportion_to_weight_among_ready_backends() {
        let s = Selector::new(Algorithm::Random, &specs(&[1, 3, 5, 2]), 0);
        let mut view = FixedView::all_ready(4);
        view.ready[3] = false;
        let mut rng = fastrand::Rng::with_seed(5);
        let mut out = Vec::new();
        let mut counts = [0u32; 4];
        let calls = 90_000;
        for _ in 0..calls {
            s.candidates(&view, CLIENT, &mut rng, 1, &mut out);
            counts[out[0]] += 1;
        }
        assert_eq!(counts[3], 0);
        // Expected 10k, 30k, 50k; 3 % slack is over 10 standard deviations.
        for (i, want) in [(0, 10_000.0), (1, 30_000.0), (2, 50_000.0)] {
            let got = f64::from(counts[i]);
            assert!((got - want).abs() < want * 0.03 + 300.0, "{counts:?}");
        }
    }

    #[test]
    fn random_further_candidates_favour_heavy_backends() {
        // With max = 2, the second candidate of a weight-1 first pick is the weight-100 backend
        // almost always.
        let s = Selector::new(Algorithm::Random, &specs(&[1, 100, 1]), 0);
        let view = FixedView::all_ready(3);
        let mut rng = fastrand::Rng::with_seed(9);
        let mut out = Vec::new();
        let mut second_heavy = 0;
        let mut first_light = 0;
        for _ in 0..20_000 {
            s.candidates(&view, CLIENT, &mut rng, 2, &mut out);
            if out[0] != 1 {
                first_light += 1;
                second_heavy += usize::from(out[1] == 1);
            }
        }
        assert!(first_light > 100, "{first_light}");
        assert!(
            second_heavy * 100 >= first_light * 95,
            "{second_heavy}/{first_light}"
        );
    }
}
