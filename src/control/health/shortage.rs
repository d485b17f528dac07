//! Whether the health checker is in a local shortage: some probe could not run because ringlb
//! itself was out of ports, descriptors or memory.
//!
//! Owns: the one process-wide state "probes are stopped by a local shortage" over every probe
//! task, so that entering and leaving it is logged (warn, then info) and alerted
//! (`local_exhaustion`, then `local_recovery`) once per transition, never once per probe nor
//! once per backend. Does not own: classifying errors (`control::local`) or the backends'
//! health, which a shortage never changes (`super::watch` does not feed the backend's
//! `HealthMachine` with it).
//!
//! Each probe task holds a [`Mark`] while its last probe met a shortage; the state is "in a
//! shortage" while any mark is held. A mark is dropped when that task's next probe gets through
//! to the backend (whatever its result) or when the task ends (its backend left the config), so
//! a removed backend cannot keep the state stuck.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::AlertKind;
use crate::control::alerts::AlertPublisher;
use crate::control::local::LocalShortage;

/// The checker-wide shortage state, shared by its probe tasks.
#[derive(Debug, Default)]
pub struct Shortages {
    state: Mutex<State>,
    /// Where the transitions are alerted.
    alerts: AlertPublisher,
}

#[derive(Debug, Default)]
struct State {
    /// Marks held now.
    marks: usize,
    /// When the first of them was taken.
    since: Option<Instant>,
}

/// A transition of [`Shortages`], for the caller to log and alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The first probe met a shortage.
    Began,
    /// The last probe stopped by one got through again, after this long in the shortage.
    Ended(Duration),
}

impl Shortages {
    /// No shortage yet; transitions are alerted through `alerts`.
    pub fn new(alerts: AlertPublisher) -> Shortages {
        Shortages {
            state: Mutex::default(),
            alerts,
        }
    }

    /// Takes one mark; `Some(Began)` when it is the first.
    fn enter(&self, now: Instant) -> Option<Change> {
        let mut s = self.state.lock();
        s.marks += 1;
        if s.marks == 1 {
            s.since = Some(now);
            Some(Change::Began)
        } else {
            None
        }
    }

    /// Gives one mark back; `Some(Ended)` when it was the last.
    fn leave(&self, now: Instant) -> Option<Change> {
        let mut s = self.state.lock();
        s.marks = s.marks.saturating_sub(1);
        if s.marks > 0 {
            return None;
        }
        let since = s.since.take()?;
        Some(Change::Ended(now.saturating_duration_since(since)))
    }

    /// Whether some probe is stopped by a shortage now.
    pub fn active(&self) -> bool {
        self.state.lock().marks > 0
    }
}

/// One probe task's share of a shortage: held from its probe that met one to its next probe
/// that got through. Dropping it (the task ended) also gives the share back.
#[derive(Debug)]
pub struct Mark {
    shortages: Arc<Shortages>,
    service: String,
    backend: SocketAddr,
}

impl Mark {
    /// Takes a mark for the probe of `backend` (of `service`) that met `what`; logs and alerts
    /// when it is the first.
    pub fn take(
        shortages: &Arc<Shortages>,
        service: &str,
        backend: SocketAddr,
        what: LocalShortage,
        now: Instant,
    ) -> Mark {
        if shortages.enter(now) == Some(Change::Began) {
            tracing::warn!(service, %backend, reason = %what,
                "local shortage: health probes cannot run; backends keep their health until \
                 they can");
            shortages.alerts.publish(
                AlertKind::LocalExhaustion,
                service,
                Some(backend),
                &format_args!("{what}: health probes paused, backends keep their health"),
            );
        }
        Mark {
            shortages: shortages.clone(),
            service: service.to_owned(),
            backend,
        }
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        if let Some(Change::Ended(lasted)) = self.shortages.leave(Instant::now()) {
            let lasted_ms = lasted.as_millis() as u64;
            tracing::info!(service = %self.service, backend = %self.backend, lasted_ms,
                "local shortage over: health probes run again");
            self.shortages.alerts.publish(
                AlertKind::LocalRecovery,
                &self.service,
                Some(self.backend),
                &format_args!("health probes run again after {lasted:?}"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_changes_with_the_first_mark_taken_and_the_last_given_back() {
        let s = Arc::new(Shortages::default());
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(s.enter(t0), Some(Change::Began));
        assert_eq!(
            s.enter(t0),
            None,
            "a second backend short: no new transition"
        );
        assert_eq!(s.leave(t0 + Duration::from_millis(100)), None);
        assert!(s.active());
        assert_eq!(
            s.leave(t0 + Duration::from_millis(300)),
            Some(Change::Ended(Duration::from_millis(300)))
        );
        assert!(!s.active());
        assert_eq!(s.leave(t0), None, "never below zero");
        // Marks give their share back when dropped, e.g. when a task is aborted.
        let m1 = Mark::take(&s, "svc", a, LocalShortage::Ports, t0);
        let m2 = Mark::take(&s, "svc", b, LocalShortage::ProcessFds, t0);
        drop(m1);
        assert!(s.active());
        drop(m2);
        assert!(!s.active());
    }
}
