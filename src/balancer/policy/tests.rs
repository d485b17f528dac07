//! The policy over a plain in-memory service: no config, no budget, no atomics.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::balancer::health::slow_start_permille;
use crate::balancer::select::testing::specs;

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

/// A small prime Maglev table: property tests build many selectors.
const MAGLEV_SIZE: usize = 1009;

/// A service's backends and their live state, in memory.
#[derive(Clone, Debug)]
struct Backends {
    /// Healthy and enabled.
    up: Vec<bool>,
    /// At its own connection limit: up, but not ready.
    full: Vec<bool>,
    backup: Vec<bool>,
    active: Vec<u64>,
    /// When each backend's slow-start ramp began, if it is ramping.
    ramp_start: Vec<Option<Instant>>,
    /// Zero: no slow start.
    slow_start: Duration,
}

impl Backends {
    /// Every backend up, idle and not ramping; `backup` says which are backups.
    fn new(backup: &[bool]) -> Backends {
        let n = backup.len();
        Backends {
            up: vec![true; n],
            full: vec![false; n],
            backup: backup.to_vec(),
            active: vec![0; n],
            ramp_start: vec![None; n],
            slow_start: Duration::ZERO,
        }
    }
}

impl BackendView for Backends {
    fn len(&self) -> usize {
        self.up.len()
    }
    fn active(&self, i: usize) -> u64 {
        self.active[i]
    }
    fn ready(&self, i: usize) -> bool {
        self.up[i] && !self.full[i]
    }
}

impl ServiceView for Backends {
    fn primaries_up(&self) -> bool {
        (0..self.len()).any(|i| self.up[i] && !self.backup[i])
    }
    fn backups_up(&self) -> bool {
        (0..self.len()).any(|i| self.up[i] && self.backup[i])
    }
    fn is_backup(&self, i: usize) -> bool {
        self.backup[i]
    }
    fn slow_start(&self) -> bool {
        !self.slow_start.is_zero()
    }
    fn ramp_permille(&self, i: usize, now: Instant) -> u32 {
        self.ramp_start[i].map_or(1000, |start| {
            slow_start_permille(now.saturating_duration_since(start), self.slow_start)
        })
    }
}

/// Backends plus the groups built over them (weight 1 each).
struct Service {
    backends: Backends,
    primaries: Group,
    backups: Option<Group>,
}

impl Service {
    fn new(algorithm: Algorithm, backends: Backends) -> Service {
        let specs = specs(&vec![1; backends.len()]);
        let (backup, primary): (Vec<usize>, Vec<usize>) =
            (0..backends.len()).partition(|&i| backends.backup[i]);
        Service {
            primaries: Group::new(algorithm, &specs, primary, MAGLEV_SIZE),
            backups: (!backup.is_empty())
                .then(|| Group::new(algorithm, &specs, backup, MAGLEV_SIZE)),
            backends,
        }
    }

    fn candidates(&self, pick: Pick, rng: &mut fastrand::Rng, out: &mut Vec<usize>) {
        candidates(
            &self.backends,
            &self.primaries,
            self.backups.as_ref(),
            pick,
            rng,
            out,
        );
    }
}

fn pick(client: IpAddr, max: usize, now: Instant, sticky: Option<usize>) -> Pick {
    Pick {
        client,
        now,
        max,
        sticky,
    }
}

fn first_choices(s: &Service, n: usize, now: Instant) -> HashMap<usize, usize> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut out = Vec::new();
    let mut counts = HashMap::new();
    for k in 0..n {
        let client = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + k as u32));
        s.candidates(pick(client, 3, now, None), &mut rng, &mut out);
        if let Some(&first) = out.first() {
            *counts.entry(first).or_default() += 1;
        }
    }
    counts
}

#[test]
fn groups_keep_the_members_they_were_built_from() {
    let g = Group::new(
        Algorithm::RoundRobin,
        &specs(&[1, 2, 3]),
        vec![2, 0, 7],
        101,
    );
    assert_eq!(g.members(), [2, 0], "7 is out of range");
    assert_eq!(g.selector().backend_count(), 2);
    assert_eq!(g.selector().algorithm(), Algorithm::RoundRobin);
}

#[test]
fn backups_serve_only_while_no_primary_is_up() {
    let mut s = Service::new(
        Algorithm::RoundRobin,
        Backends::new(&[false, false, true, true]),
    );
    let now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(1);
    let mut out = Vec::new();
    s.candidates(pick(CLIENT, 4, now, None), &mut rng, &mut out);
    out.sort();
    assert_eq!(out, [0, 1], "primaries only, no backup even as a fallback");

    s.backends.up[0] = false;
    s.candidates(pick(CLIENT, 4, now, None), &mut rng, &mut out);
    assert_eq!(out, [1]);

    s.backends.up[1] = false;
    s.candidates(pick(CLIENT, 4, now, None), &mut rng, &mut out);
    out.sort();
    assert_eq!(out, [2, 3], "no primary up: backups");

    s.backends.up[1] = true;
    s.candidates(pick(CLIENT, 4, now, None), &mut rng, &mut out);
    assert_eq!(out, [1], "a primary is back: only primaries");
}

#[test]
fn a_primary_at_its_connection_limit_still_keeps_the_backups_out() {
    // Up is healthy and enabled; a full primary is up but not ready, so nothing is given.
    let mut s = Service::new(Algorithm::RoundRobin, Backends::new(&[false, true]));
    s.backends.full[0] = true;
    let mut out = vec![9];
    s.candidates(
        pick(CLIENT, 2, Instant::now(), None),
        &mut fastrand::Rng::with_seed(1),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn nothing_up_gives_no_candidate() {
    let mut s = Service::new(Algorithm::RoundRobin, Backends::new(&[false, true]));
    s.backends.up = vec![false, false];
    let mut out = vec![5];
    s.candidates(
        pick(CLIENT, 2, Instant::now(), Some(1)),
        &mut fastrand::Rng::with_seed(1),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn zero_max_gives_no_candidate() {
    let s = Service::new(Algorithm::RoundRobin, Backends::new(&[false, false]));
    let mut out = vec![5];
    s.candidates(
        pick(CLIENT, 0, Instant::now(), Some(1)),
        &mut fastrand::Rng::with_seed(1),
        &mut out,
    );
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_sticky_client_keeps_its_backend_while_it_is_ready() {
    let mut s = Service::new(
        Algorithm::RoundRobin,
        Backends::new(&[false, false, false, true]),
    );
    let now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(3);
    let mut out = Vec::new();
    for _ in 0..20 {
        s.candidates(pick(CLIENT, 2, now, Some(2)), &mut rng, &mut out);
        assert_eq!(out[0], 2, "round robin would rotate; the entry wins");
        assert_eq!(out.len(), 2);
        assert_ne!(out[1], 2);
    }
    // Not ready (down, or at its limit): the entry is not honoured.
    for (down, full) in [(true, false), (false, true)] {
        s.backends.up[2] = !down;
        s.backends.full[2] = full;
        s.candidates(pick(CLIENT, 3, now, Some(2)), &mut rng, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(!out.contains(&2), "{out:?}");
    }
}

#[test]
fn a_sticky_backend_moves_to_the_front_and_the_others_keep_their_order() {
    let now = Instant::now();
    let backends = Backends::new(&[false; 4]);
    let mut base = Vec::new();
    Service::new(Algorithm::RoundRobin, backends.clone()).candidates(
        pick(CLIENT, 4, now, None),
        &mut fastrand::Rng::with_seed(1),
        &mut base,
    );
    let mut out = Vec::new();
    Service::new(Algorithm::RoundRobin, backends).candidates(
        pick(CLIENT, 4, now, Some(2)),
        &mut fastrand::Rng::with_seed(1),
        &mut out,
    );
    let expected: Vec<usize> = std::iter::once(2)
        .chain(base.iter().copied().filter(|&i| i != 2))
        .collect();
    assert_eq!(base.len(), 4);
    assert_eq!(out, expected);
}

#[test]
fn a_client_stuck_to_a_backup_returns_to_the_primaries() {
    let mut s = Service::new(Algorithm::RoundRobin, Backends::new(&[false, true]));
    let now = Instant::now();
    let mut rng = fastrand::Rng::with_seed(3);
    let mut out = Vec::new();
    s.backends.up[0] = false;
    s.candidates(pick(CLIENT, 2, now, Some(1)), &mut rng, &mut out);
    assert_eq!(out, [1]);
    s.backends.up[0] = true;
    s.candidates(pick(CLIENT, 2, now, Some(1)), &mut rng, &mut out);
    assert_eq!(out, [0], "the backup is ready but not in the serving group");
}

#[test]
fn a_sticky_index_the_service_does_not_have_is_ignored() {
    let s = Service::new(Algorithm::RoundRobin, Backends::new(&[false, false]));
    let mut out = Vec::new();
    s.candidates(
        pick(CLIENT, 2, Instant::now(), Some(2)),
        &mut fastrand::Rng::with_seed(3),
        &mut out,
    );
    out.sort();
    assert_eq!(out, [0, 1]);
}

#[test]
fn a_recovering_backend_ramps_up_over_slow_start() {
    let start = Instant::now();
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::Random,
        Algorithm::LeastConn,
        Algorithm::SourceHash,
    ] {
        let mut backends = Backends::new(&[false; 3]);
        backends.slow_start = Duration::from_secs(10);
        backends.ramp_start[0] = Some(start);
        let s = Service::new(algorithm, backends);
        let n = 3000;
        let at = |secs: u64| {
            first_choices(&s, n, start + Duration::from_secs(secs))
                .get(&0)
                .copied()
                .unwrap_or(0)
        };
        // Its normal share is n / 3 = 1000.
        let early = at(1);
        let half = at(5);
        let full = at(20);
        assert!(early < 250, "{algorithm}: {early} at 10%");
        assert!((300..700).contains(&half), "{algorithm}: {half} at 50%");
        assert!(
            (800..1200).contains(&full),
            "{algorithm}: {full} after the ramp"
        );
    }
}

#[test]
fn least_conn_counts_a_ramping_backends_connections_against_its_share() {
    let start = Instant::now();
    let mut backends = Backends::new(&[false, false]);
    backends.slow_start = Duration::from_secs(10);
    backends.ramp_start[0] = Some(start);
    backends.active = vec![2, 10];
    let at = start + Duration::from_secs(1);
    // At 10%: 2 active count as 20, more than the other's 10.
    let view = GroupView {
        view: &backends,
        members: &[0, 1],
        ramp_at: Some(at),
    };
    assert_eq!(view.active(0), 20);
    assert_eq!(view.active(1), 10);
    let s = Service::new(Algorithm::LeastConn, backends);
    let mut rng = fastrand::Rng::with_seed(5);
    let mut out = Vec::new();
    for _ in 0..50 {
        s.candidates(pick(CLIENT, 2, at, None), &mut rng, &mut out);
        assert_eq!(
            out,
            [1, 0],
            "the other backend is less loaded for its share"
        );
    }
}

#[test]
fn ramp_shares_scale_active_counts_rounding_up() {
    assert_eq!(ramp_active(7, 1000), 7);
    assert_eq!(ramp_active(7, 1500), 7, "past the ramp: unchanged");
    assert_eq!(ramp_active(1, 300), 4, "1 / 0.3 = 3.33, rounded up");
    assert_eq!(ramp_active(0, 1), 0);
    assert_eq!(ramp_active(3, 0), 3000, "0 counts as 1 permille");
    assert_eq!(ramp_active(u64::MAX, 1), u64::MAX, "saturates");
}

#[test]
fn backends_up_at_start_do_not_ramp() {
    let mut backends = Backends::new(&[false, false]);
    backends.slow_start = Duration::from_secs(10);
    let s = Service::new(Algorithm::RoundRobin, backends);
    let counts = first_choices(&s, 1000, Instant::now());
    assert!(counts[&0] > 400 && counts[&1] > 400, "{counts:?}");
}

#[test]
fn a_ramping_backend_yields_even_when_one_candidate_is_asked() {
    // Slow start asks the selector for one spare, so the demoted backend has someone to yield
    // to; at 1 permille it is almost never first.
    let start = Instant::now();
    let mut backends = Backends::new(&[false, false]);
    backends.slow_start = Duration::from_secs(10);
    backends.ramp_start[0] = Some(start);
    let s = Service::new(Algorithm::RoundRobin, backends);
    let mut rng = fastrand::Rng::with_seed(9);
    let mut out = Vec::new();
    let mut firsts = 0;
    for _ in 0..1000 {
        s.candidates(pick(CLIENT, 1, start, None), &mut rng, &mut out);
        assert_eq!(out.len(), 1);
        firsts += usize::from(out[0] == 0);
    }
    assert!(firsts < 10, "{firsts} of 1000 at 1 permille");
}

#[test]
fn candidates_do_not_allocate_when_out_has_room_for_max_plus_one() {
    let start = Instant::now();
    let mut backends = Backends::new(&[false, false, false, false, true, true]);
    backends.slow_start = Duration::from_secs(10);
    backends.ramp_start[1] = Some(start);
    backends.active = vec![3, 0, 5, 1, 0, 0];
    let mut rng = fastrand::Rng::with_seed(1);
    for algorithm in Algorithm::ALL {
        let s = Service::new(algorithm, backends.clone());
        for max in 1..=4 {
            let mut out = Vec::with_capacity(max + 1);
            let ptr = out.as_ptr();
            for k in 0..50u32 {
                let client = IpAddr::V4(Ipv4Addr::from(k));
                let sticky = Some(k as usize % 4);
                let now = start + Duration::from_millis(u64::from(k) * 100);
                s.candidates(pick(client, max, now, sticky), &mut rng, &mut out);
                assert_eq!(out.len(), max, "{algorithm}");
            }
            assert_eq!(out.capacity(), max + 1, "{algorithm}, max {max}");
            assert_eq!(out.as_ptr(), ptr, "{algorithm}, max {max}");
        }
    }
}

/// A random service: up to 8 backends, some backups, some down or full, some ramping.
fn arb_backends() -> impl Strategy<Value = Backends> {
    (1usize..=8).prop_flat_map(|n| {
        (
            prop::collection::vec(any::<bool>(), n),
            prop::collection::vec(prop::bool::weighted(0.7), n),
            prop::collection::vec(prop::bool::weighted(0.2), n),
            prop::collection::vec(0u64..20, n),
            prop::collection::vec(prop::option::of(0u64..12_000), n),
            prop::option::of(1u64..10_000),
        )
            .prop_map(|(backup, up, full, active, ramp_ms, slow_start_ms)| {
                // Ramps started this many milliseconds before `now()`.
                let ramp_start = ramp_ms
                    .into_iter()
                    .map(|ms| ms.map(|ms| now() - Duration::from_millis(ms)))
                    .collect();
                Backends {
                    up,
                    full,
                    backup,
                    active,
                    ramp_start,
                    slow_start: Duration::from_millis(slow_start_ms.unwrap_or(0)),
                }
            })
    })
}

/// A fixed instant well after the process started, so ramps can begin before it.
fn now() -> Instant {
    static NOW: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *NOW.get_or_init(|| Instant::now() + Duration::from_secs(3600))
}

/// Whether the primaries serve, as the policy's contract says.
fn primaries_serve(b: &Backends) -> bool {
    b.primaries_up() || !b.backups_up()
}

proptest! {
    #[test]
    fn candidates_are_distinct_ready_serving_and_as_many_as_allowed(
        backends in arb_backends(),
        max in 0usize..=5,
        sticky in prop::option::of(0usize..10),
        ip in any::<u32>(),
        seed in any::<u64>(),
    ) {
        let serving_primaries = primaries_serve(&backends);
        let ready_serving = (0..backends.len())
            .filter(|&i| backends.ready(i) && backends.backup[i] != serving_primaries)
            .count();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = Vec::new();
        for algorithm in Algorithm::ALL {
            let s = Service::new(algorithm, backends.clone());
            // Several calls, so rotations and cursors move.
            for _ in 0..3 {
                s.candidates(pick(IpAddr::V4(Ipv4Addr::from(ip)), max, now(), sticky), &mut rng, &mut out);
                prop_assert!(out.len() <= max, "{algorithm}: {out:?}");
                prop_assert_eq!(out.len(), max.min(ready_serving), "{} {:?}", algorithm, out);
                prop_assert!(out.iter().all(|&i| i < backends.len() && backends.ready(i)),
                    "{algorithm}: {out:?}");
                let mut sorted = out.clone();
                sorted.sort_unstable();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), out.len(), "{} repeats: {:?}", algorithm, out);
            }
        }
    }

    #[test]
    fn no_backup_is_a_candidate_while_a_primary_is_up(
        backends in arb_backends(),
        max in 1usize..=5,
        sticky in prop::option::of(0usize..8),
        seed in any::<u64>(),
    ) {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = Vec::new();
        for algorithm in Algorithm::ALL {
            let s = Service::new(algorithm, backends.clone());
            s.candidates(pick(CLIENT, max, now(), sticky), &mut rng, &mut out);
            if backends.primaries_up() {
                prop_assert!(out.iter().all(|&i| !backends.backup[i]), "{algorithm}: {out:?}");
            } else {
                prop_assert!(out.iter().all(|&i| backends.backup[i]), "{algorithm}: {out:?}");
            }
        }
    }

    #[test]
    fn a_ready_sticky_entry_in_the_serving_group_comes_first(
        backends in arb_backends(),
        max in 1usize..=5,
        sticky in 0usize..8,
        seed in any::<u64>(),
    ) {
        let honoured = sticky < backends.len()
            && backends.ready(sticky)
            && backends.backup[sticky] != primaries_serve(&backends);
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut out = Vec::new();
        for algorithm in Algorithm::ALL {
            let s = Service::new(algorithm, backends.clone());
            for _ in 0..3 {
                s.candidates(pick(CLIENT, max, now(), Some(sticky)), &mut rng, &mut out);
                if honoured {
                    prop_assert_eq!(out.first(), Some(&sticky), "{}", algorithm);
                } else {
                    prop_assert!(!out.contains(&sticky), "{algorithm}: {out:?}");
                }
            }
        }
    }

    #[test]
    fn slow_start_at_a_full_share_changes_nothing(
        mut backends in arb_backends(),
        max in 0usize..=5,
        sticky in prop::option::of(0usize..8),
        ip in any::<u32>(),
        seed in any::<u64>(),
        ended_ms in prop::collection::vec(prop::option::of(0u64..5_000), 8),
    ) {
        // Ramps, where any, ended (began at least `slow_start` ago): every share is 1000.
        backends.slow_start = Duration::from_secs(10);
        for (i, start) in backends.ramp_start.iter_mut().enumerate() {
            *start = ended_ms[i].map(|ms| now() - Duration::from_millis(10_000 + ms));
        }
        let mut without = backends.clone();
        without.slow_start = Duration::ZERO;
        let client = IpAddr::V4(Ipv4Addr::from(ip));
        for algorithm in Algorithm::ALL {
            // Fresh selectors and the same seed: one call each from the same start.
            let mut with_out = Vec::new();
            Service::new(algorithm, backends.clone()).candidates(
                pick(client, max, now(), sticky),
                &mut fastrand::Rng::with_seed(seed),
                &mut with_out,
            );
            let mut without_out = Vec::new();
            Service::new(algorithm, without.clone()).candidates(
                pick(client, max, now(), sticky),
                &mut fastrand::Rng::with_seed(seed),
                &mut without_out,
            );
            prop_assert_eq!(with_out, without_out, "{}", algorithm);
        }
    }
}
