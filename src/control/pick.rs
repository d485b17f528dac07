//! Candidates for a new connection: which backends, in which order, taking health, admin
//! state, backups, session persistence and slow start into account.
//!
//! Owns: combining the selection algorithms (`balancer::select`, whose API is unchanged) with
//! the service's live state. Runs on the data path, on every new connection: no allocation when
//! `out` has room for `max + 1`, no lock except one stick-table shard when persistence is on.
//!
//! - Groups: candidates come from the primaries while some primary is up (healthy and enabled);
//!   from the backups only while none is. Each group has its own selector over its members, so
//!   rotations, weights and Maglev tables are those of the group.
//! - Persistence: a client's stick-table entry is honoured while its backend is ready and in the
//!   serving group (a client stuck to a backup returns to the primaries when one is back). The
//!   entry is written or refreshed once a connection is made ([`ServiceState::stick`]).
//! - Slow start: a backend ramping up after coming back is demoted behind the other candidates
//!   with probability `1 - p`, where `p` is its ramp share (`balancer::health::
//!   slow_start_permille`), so every algorithm gives it about `p` of its normal share without
//!   rebuilding selectors. `least_conn` and `power_of_two`, which would otherwise fill it up to
//!   the others' active counts, also count its active connections as `active / p` (that is,
//!   against `weight * p`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::balancer::{Algorithm, BackendView};

use super::snapshot::{Group, ServiceState};

/// The view one group's selector sees: positions in the group mapped to service indices.
struct GroupView<'a> {
    state: &'a ServiceState,
    members: &'a [usize],
    /// Set for load-based algorithms while slow start is configured.
    ramp: Option<(Instant, Duration)>,
}

impl BackendView for GroupView<'_> {
    fn len(&self) -> usize {
        self.members.len()
    }

    fn active(&self, i: usize) -> u64 {
        let index = self.members[i];
        let active = self.state.active(index);
        match self.ramp {
            Some((now, slow_start)) => {
                let permille = self.state.backends[index]
                    .live
                    .ramp_permille(now, slow_start);
                if permille >= 1000 {
                    active
                } else {
                    // active / p, rounded up; permille >= 1, so no division by zero.
                    (active * 1000).div_ceil(u64::from(permille))
                }
            }
            None => active,
        }
    }

    fn ready(&self, i: usize) -> bool {
        self.state.ready(self.members[i])
    }
}

impl ServiceState {
    /// The group new connections go to now: primaries while one is up, else backups (if any are
    /// up), else the primaries again (nothing is ready then).
    fn serving_group(&self) -> &Group {
        if self.primary_up.load(Ordering::Acquire) {
            return &self.primaries;
        }
        match &self.backups {
            Some(backups) if self.backup_up.load(Ordering::Acquire) => backups,
            _ => &self.primaries,
        }
    }

    /// Fills `out` (cleared first) with up to `max` distinct ready backends (indices into
    /// [`ServiceState::backends`]), best first, for a new connection from `client` at `now`.
    /// The data plane connects to `out[0]` and falls back to the next on failure. Empty when no
    /// backend is ready.
    pub fn candidates(
        &self,
        client: IpAddr,
        rng: &mut fastrand::Rng,
        max: usize,
        now: Instant,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        if max == 0 {
            return;
        }
        let group = self.serving_group();
        let slow_start = self.config.slow_start;
        let ramping = !slow_start.is_zero();
        let load_based = matches!(
            self.config.algorithm,
            Algorithm::LeastConn | Algorithm::PowerOfTwo
        );
        let view = GroupView {
            state: self,
            members: &group.members,
            ramp: (ramping && load_based).then_some((now, slow_start)),
        };
        // One more than asked while ramping, so a demoted backend has someone to yield to.
        let want = if ramping { max + 1 } else { max };
        group.selector.candidates(&view, client, rng, want, out);
        for c in out.iter_mut() {
            *c = group.members[*c];
        }
        if ramping {
            self.demote_ramping(out, rng, now);
        }
        if let Some(sticky) = self.sticky_backend(client, group, now) {
            if let Some(pos) = out.iter().position(|&i| i == sticky) {
                out.remove(pos);
            }
            out.insert(0, sticky);
        }
        out.truncate(max);
    }

    /// Moves a ramping first candidate behind the others with probability `1 - p`; repeats for
    /// the next first candidate, at most once per candidate.
    fn demote_ramping(&self, out: &mut [usize], rng: &mut fastrand::Rng, now: Instant) {
        for _ in 0..out.len().saturating_sub(1) {
            let permille = self.backends[out[0]]
                .live
                .ramp_permille(now, self.config.slow_start);
            if permille >= 1000 || rng.u32(0..1000) < permille {
                return;
            }
            out.rotate_left(1);
        }
    }

    /// The backend `client` sticks to, if that entry may be honoured now.
    fn sticky_backend(&self, client: IpAddr, group: &Group, now: Instant) -> Option<usize> {
        let table = self.stick.as_ref()?;
        let address = table.lookup(client, now)?;
        let &index = self.by_address.get(&address)?;
        let in_group = std::ptr::eq(group, &self.primaries) != self.backends[index].config.backup;
        (in_group && self.ready(index)).then_some(index)
    }

    /// Records that `client` was sent to backend `index` at `now` (persistence only): the entry
    /// is written, moved or refreshed.
    pub fn stick(&self, client: IpAddr, index: usize, now: Instant) {
        if let (Some(table), Some(backend)) = (&self.stick, self.backends.get(index)) {
            table.stick(client, backend.address(), now);
        }
    }

    /// The backend `client` is stuck to, if any (for the admin view and tests).
    pub fn stuck_to(&self, client: IpAddr, now: Instant) -> Option<SocketAddr> {
        self.stick.as_ref()?.lookup(client, now)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::Ipv4Addr;

    use super::*;
    use crate::balancer::health::Admin;
    use crate::config::Config;

    const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));

    fn service(extra: &str, backends: &[&str]) -> ServiceState {
        let mut text = format!("[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n{extra}\n");
        for (i, b) in backends.iter().enumerate() {
            text.push_str(&format!(
                "[[service.backend]]\naddress = \"127.0.0.1:{}\"\n{b}\n",
                9001 + i
            ));
        }
        let config = Config::parse(&text, "test").unwrap_or_else(|e| panic!("{e}"));
        super::super::backend::init_clock();
        let budget = std::sync::Arc::new(crate::control::ConnectionBudget::new(1000));
        ServiceState::new(config.services.into_iter().next().unwrap(), budget)
    }

    fn first_choices(s: &ServiceState, n: usize, now: Instant) -> HashMap<usize, usize> {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut out = Vec::new();
        let mut counts = HashMap::new();
        for k in 0..n {
            let client = IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + k as u32));
            s.candidates(client, &mut rng, 3, now, &mut out);
            if let Some(&first) = out.first() {
                *counts.entry(first).or_default() += 1;
            }
        }
        counts
    }

    #[test]
    fn backups_serve_only_while_no_primary_is_up() {
        let s = service("", &["", "", "backup = true", "backup = true"]);
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut out = Vec::new();
        s.candidates(CLIENT, &mut rng, 4, now, &mut out);
        out.sort();
        assert_eq!(out, [0, 1], "primaries only, no backup even as a fallback");

        s.mark_down(0, &"test");
        s.candidates(CLIENT, &mut rng, 4, now, &mut out);
        assert_eq!(out, [1]);

        s.mark_down(1, &"test");
        s.candidates(CLIENT, &mut rng, 4, now, &mut out);
        out.sort();
        assert_eq!(out, [2, 3], "no primary up: backups");

        s.mark_up(1, &"test", now);
        s.candidates(CLIENT, &mut rng, 4, now, &mut out);
        assert_eq!(out, [1], "a primary is back: only primaries");
    }

    #[test]
    fn a_drained_or_disabled_primary_counts_as_not_up() {
        let s = service("", &["", "backup = true"]);
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(1);
        let mut out = Vec::new();
        for admin in [Admin::Drain, Admin::Disabled] {
            s.set_admin(0, admin, now);
            s.candidates(CLIENT, &mut rng, 2, now, &mut out);
            assert_eq!(out, [1], "{admin}");
        }
        assert_eq!(s.set_admin(0, Admin::Enabled, now), Some(Admin::Disabled));
        s.candidates(CLIENT, &mut rng, 2, now, &mut out);
        assert_eq!(out, [0]);
        assert_eq!(s.set_admin(9, Admin::Enabled, now), None);
    }

    #[test]
    fn nothing_up_gives_no_candidate_and_the_service_reports_it() {
        let s = service("", &["", "backup = true"]);
        let now = Instant::now();
        assert!(s.available());
        s.mark_down(0, &"test");
        s.mark_down(1, &"test");
        assert!(!s.available());
        let mut out = vec![5];
        s.candidates(CLIENT, &mut fastrand::Rng::with_seed(1), 2, now, &mut out);
        assert!(out.is_empty());
        s.mark_up(1, &"test", now);
        assert!(s.available());
    }

    #[test]
    fn a_sticky_client_keeps_its_backend_while_it_is_ready() {
        let s = service(
            "[service.persistence]\nttl = \"10s\"",
            &["", "", "", "backup = true"],
        );
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut out = Vec::new();
        s.stick(CLIENT, 2, now);
        for _ in 0..20 {
            s.candidates(CLIENT, &mut rng, 2, now, &mut out);
            assert_eq!(out[0], 2, "round robin would rotate; the entry wins");
            assert_eq!(out.len(), 2);
            assert_ne!(out[1], 2);
        }
        // Not ready: the entry is not honoured (and the data plane will re-stick).
        s.mark_down(2, &"test");
        s.candidates(CLIENT, &mut rng, 3, now, &mut out);
        assert!(!out.contains(&2));
        // Expired: not honoured either.
        s.mark_up(2, &"test", now);
        let later = now + Duration::from_secs(11);
        let firsts: Vec<usize> = (0..6)
            .map(|_| {
                s.candidates(CLIENT, &mut rng, 1, later, &mut out);
                out[0]
            })
            .collect();
        assert!(firsts.iter().any(|&i| i != 2), "{firsts:?}");
    }

    #[test]
    fn a_client_stuck_to_a_backup_returns_to_the_primaries() {
        let s = service(
            "[service.persistence]\nttl = \"1h\"",
            &["", "backup = true"],
        );
        let now = Instant::now();
        let mut rng = fastrand::Rng::with_seed(3);
        let mut out = Vec::new();
        s.mark_down(0, &"test");
        s.candidates(CLIENT, &mut rng, 2, now, &mut out);
        assert_eq!(out, [1]);
        s.stick(CLIENT, 1, now);
        s.mark_up(0, &"test", now);
        s.candidates(CLIENT, &mut rng, 2, now, &mut out);
        assert_eq!(out, [0]);
        assert_eq!(
            s.stuck_to(CLIENT, now),
            Some(s.backends[1].address()),
            "the entry is kept, just not honoured"
        );
    }

    #[test]
    fn a_recovering_backend_ramps_up_over_slow_start() {
        for algorithm in ["round_robin", "random", "least_conn", "source_hash"] {
            let s = service(
                &format!("algorithm = \"{algorithm}\"\nslow_start = \"10s\""),
                &["", "", ""],
            );
            let start = Instant::now();
            s.mark_down(0, &"test");
            s.mark_up(0, &"test", start);
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
        let s = service(
            "algorithm = \"least_conn\"\nslow_start = \"10s\"",
            &["", ""],
        );
        let start = Instant::now();
        s.mark_down(0, &"test");
        s.mark_up(0, &"test", start);
        s.backends[0].counters.active.store(2, Ordering::Relaxed);
        s.backends[1].counters.active.store(10, Ordering::Relaxed);
        // At 10%: 2 active count as 20, more than the other's 10.
        let view = GroupView {
            state: &s,
            members: &s.primaries.members,
            ramp: Some((start + Duration::from_secs(1), s.config.slow_start)),
        };
        assert_eq!(view.active(0), 20);
        assert_eq!(view.active(1), 10);
    }

    #[test]
    fn backends_up_at_start_do_not_ramp() {
        let s = service("slow_start = \"10s\"", &["", ""]);
        let counts = first_choices(&s, 1000, Instant::now());
        assert!(counts[&0] > 400 && counts[&1] > 400, "{counts:?}");
    }
}
