//! The balancer core's selection policy (`balancer::policy`) over this plane's live state.
//!
//! Owns: reading [`ServiceState`] and its backends' atomics for the policy
//! ([`ServiceView`]: which group is up, readiness, active counts, backup flags, slow-start
//! ramps), looking a client up in the stick table, and writing entries once a connection is
//! made ([`ServiceState::stick`]). Does not own the policy itself (groups, persistence, slow
//! start: `balancer::policy`) nor the transitions that set the flags it reads (`availability`).
//!
//! Runs on the data path, on every new connection: no allocation when `out` has room for
//! `max + 1`, no lock except one stick-table shard when persistence is on.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::balancer::{Pick, ServiceView, policy};

use super::snapshot::ServiceState;

impl ServiceView for ServiceState {
    fn primaries_up(&self) -> bool {
        self.primary_up.load(Ordering::Acquire)
    }

    fn backups_up(&self) -> bool {
        self.backup_up.load(Ordering::Acquire)
    }

    fn is_backup(&self, i: usize) -> bool {
        self.backends[i].config.backup
    }

    fn slow_start(&self) -> bool {
        // An agent's weight below 100% lowers a backend's share the same way.
        !self.config.slow_start.is_zero() || self.config.agent.is_some()
    }

    fn ramp_permille(&self, i: usize, now: Instant) -> u32 {
        self.backends[i]
            .live
            .ramp_permille(now, self.config.slow_start)
    }
}

impl ServiceState {
    /// Fills `out` (cleared first) with up to `max` distinct ready backends (indices into
    /// [`ServiceState::backends`]), best first, for a new connection from `client` at `now`,
    /// as `balancer::policy::candidates` orders them. The data plane connects to `out[0]` and
    /// falls back to the next on failure. Empty when no backend is ready.
    pub fn candidates(
        &self,
        client: IpAddr,
        rng: &mut fastrand::Rng,
        max: usize,
        now: Instant,
        out: &mut Vec<usize>,
    ) {
        let sticky = match &self.stick {
            Some(table) if max > 0 => table
                .lookup(client, now)
                .and_then(|address| self.backend_index(address)),
            _ => None,
        };
        let pick = Pick {
            client,
            now,
            max,
            sticky,
        };
        policy::candidates(self, &self.primaries, self.backups.as_ref(), pick, rng, out);
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

    use std::time::Duration;

    use super::*;
    use crate::balancer::BackendView;
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
    fn a_backend_marked_up_again_ramps_from_that_moment_and_the_candidates_follow() {
        // The share each algorithm gives a ramping backend is the policy's to test; here: the
        // ramp the live state reports starts at `mark_up`, and `candidates` passes it on.
        let s = service("slow_start = \"10s\"", &["", "", ""]);
        let start = Instant::now();
        s.mark_down(0, &"test");
        s.mark_up(0, &"test", start);
        let at = |secs: u64| start + Duration::from_secs(secs);
        // Out of 3000 new clients its normal share is 1000. Read in time order: a read past
        // the ramp ends it for good.
        let firsts = |secs: u64| {
            first_choices(&s, 3000, at(secs))
                .get(&0)
                .copied()
                .unwrap_or(0)
        };
        assert_eq!(s.ramp_permille(0, at(1)), 100);
        let early = firsts(1);
        assert!(early < 250, "{early} at 10%");
        assert_eq!(s.ramp_permille(0, at(5)), 500);
        let full = firsts(20);
        assert_eq!(s.ramp_permille(0, at(20)), 1000);
        assert!((800..1200).contains(&full), "{full} after the ramp");
    }

    #[test]
    fn the_view_reads_a_ramping_backends_share_and_connections() {
        // What the policy's least_conn test starts from: at 10% with 2 active against 10.
        let s = service(
            "algorithm = \"least_conn\"\nslow_start = \"10s\"",
            &["", "backup = true"],
        );
        let start = Instant::now();
        s.mark_down(0, &"test");
        s.mark_up(0, &"test", start);
        s.backends[0].counters.active.store(2, Ordering::Relaxed);
        s.backends[1].counters.active.store(10, Ordering::Relaxed);
        let at = start + Duration::from_secs(1);
        assert!(ServiceView::slow_start(&s));
        assert_eq!(s.ramp_permille(0, at), 100);
        assert_eq!(s.ramp_permille(1, at), 1000, "never down: no ramp");
        assert_eq!((s.active(0), s.active(1)), (2, 10));
        assert_eq!((s.is_backup(0), s.is_backup(1)), (false, true));
        assert!(s.primaries_up() && s.backups_up());
        s.mark_down(1, &"test");
        assert!(s.primaries_up() && !s.backups_up());
    }

    #[test]
    fn backends_up_at_start_do_not_ramp() {
        let s = service("slow_start = \"10s\"", &["", ""]);
        let counts = first_choices(&s, 1000, Instant::now());
        assert!(counts[&0] > 400 && counts[&1] > 400, "{counts:?}");
    }
}
