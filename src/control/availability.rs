//! Health and admin transitions of a service's backends, and what follows from them: the log
//! line (once per transition, with its reason), closing live sessions, the slow-start ramp, and
//! the service-level state (some backend up or not; primaries or backups serving).
//!
//! Owns: applying a decision to the shared state, and publishing each health and service-level
//! transition as an alert (a non-blocking push through the service's publisher;
//! [`super::alerts`] delivers it). Does not own: deciding (the probe task's `HealthMachine`, the
//! workers' passive failure count, the operator) or any I/O.
//!
//! Callers: the health checker thread (probe results), workers (passive detection, at most once
//! per transition thanks to the compare-and-swap in `BackendLive::set_healthy`), and the admin
//! API ([`ServiceState::set_admin`]). Each transition changes a backend's flag first, then
//! recomputes the service-level flags under the service's `transitions` lock, so every
//! service-level change is logged exactly once, whichever thread causes it.
//!
//! Closing live sessions crosses threads in two steps, and never wakes sessions directly from
//! here: the backend's close epoch is bumped, then the service's `closing` event is notified.
//! Only one watcher task per worker listens on it ([`ServiceState::closing_after`]); it wakes its
//! worker's sessions with a worker-local event, and each session compares its backend's epoch
//! with the one it started with. Why not one cross-thread listener per session: compio queues
//! wake-ups from other threads in a bounded queue (64 entries) and the waking thread spins while
//! it is full, and event-listener calls the wakers while holding its list lock; notifying
//! thousands of sessions from the health thread while a worker waits for that lock (to register
//! a new session) would deadlock both threads. With one listener per worker, a notification
//! queues at most one wake-up on each worker.

use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::balancer::health::{Admin, AgentState, effective_admin};
use crate::config::AlertKind::{BackendDown, BackendUp, ServiceDown, ServiceUp};
use crate::config::OnBackendDown;

use super::snapshot::{Group, ServiceState};
use super::wait::wait_for;

impl ServiceState {
    /// Marks backend `index` unhealthy because of `reason`. Returns whether this call made the
    /// change (and so logged it); `false` if it was already down.
    pub fn mark_down(&self, index: usize, reason: &dyn Display) -> bool {
        let Some(backend) = self.backends.get(index) else {
            return false;
        };
        if !backend.live.set_healthy(false) {
            return false;
        }
        backend.counters.health_transitions.inc();
        tracing::warn!(
            service = %self.config.name,
            backend = %backend.address(),
            reason = %reason,
            "backend down"
        );
        self.alerts.publish(
            BackendDown,
            &self.config.name,
            Some(backend.address()),
            reason,
        );
        if self.config.on_backend_down == OnBackendDown::Shutdown {
            backend.live.close_sessions();
            self.wake_closing();
        }
        self.refresh_availability();
        true
    }

    /// Marks backend `index` healthy again at `now` (starting its slow-start ramp). Returns
    /// whether this call made the change.
    pub fn mark_up(&self, index: usize, reason: &dyn Display, now: Instant) -> bool {
        let Some(backend) = self.backends.get(index) else {
            return false;
        };
        if !backend.live.set_healthy(true) {
            return false;
        }
        backend.counters.health_transitions.inc();
        backend.live.reset_failures();
        // A reader may see the flag a moment before the ramp: one connection at full weight.
        if !self.config.slow_start.is_zero() {
            backend.live.start_ramp(now);
        }
        tracing::info!(
            service = %self.config.name,
            backend = %backend.address(),
            reason = %reason,
            "backend up"
        );
        self.alerts.publish(
            BackendUp,
            &self.config.name,
            Some(backend.address()),
            reason,
        );
        self.refresh_availability();
        true
    }

    /// Passive detection: a worker failed to connect to backend `index` with `error`. After
    /// `health.passive_failures` failures in a row the backend is marked down at once; the
    /// probes bring it back. Off without `[service.health]` (nothing would bring it back).
    pub fn connect_failed(&self, index: usize, error: &dyn Display) {
        let Some(health) = &self.config.health else {
            return;
        };
        let Some(backend) = self.backends.get(index) else {
            return;
        };
        let threshold = health.passive_failures;
        if backend.live.connect_failed(threshold) && backend.live.healthy() {
            let reason = format!("{threshold} connect failures in a row (last: {error})");
            if self.mark_down(index, &reason) {
                backend.live.note_passive_down();
            }
        }
    }

    /// A worker connected to backend `index`: its run of connect failures is over.
    pub fn connect_succeeded(&self, index: usize) {
        if let Some(backend) = self.backends.get(index) {
            backend.live.connect_succeeded();
        }
    }

    /// Sets the operator's state of backend `index` at `now`; returns the previous state, or
    /// `None` if there is no such backend.
    ///
    /// - `Drain`: no new connections; live ones run to their end.
    /// - `Disabled`: no new connections, and live ones are closed at once.
    /// - `Enabled`: new connections again (ramping over `slow_start` when set).
    ///
    /// Health checks go on in every state, so a re-enabled backend's health is known.
    pub fn set_admin(&self, index: usize, admin: Admin, now: Instant) -> Option<Admin> {
        let backend = self.backends.get(index)?;
        let before = backend.live.set_admin(admin);
        if before == admin {
            return Some(before);
        }
        if admin == Admin::Enabled && !self.config.slow_start.is_zero() {
            backend.live.start_ramp(now);
        }
        tracing::info!(
            service = %self.config.name,
            backend = %backend.address(),
            from = before.name(),
            to = admin.name(),
            "backend admin state changed"
        );
        if admin.closes_live() {
            backend.live.close_sessions();
            self.wake_closing();
        }
        self.refresh_availability();
        Some(before)
    }

    /// Records what backend `index`'s agent said (`said`, its line) at `now`; returns the
    /// previous agent state, or `None` if there is no such backend. The operator's admin state
    /// wins over the agent's ([`effective_admin`]). Entering `maint` closes live sessions as
    /// disabling does; `down` closes them when the service's `on_backend_down` says so; being
    /// ready again starts the slow-start ramp.
    pub fn set_agent(
        &self,
        index: usize,
        agent: AgentState,
        said: &str,
        now: Instant,
    ) -> Option<AgentState> {
        let backend = self.backends.get(index)?;
        let before = backend.live.set_agent(agent);
        if before == agent {
            return Some(before);
        }
        let operator = backend.live.admin();
        let admin_before = effective_admin(operator, before.admin);
        let admin_now = effective_admin(operator, agent.admin);
        if agent.accepts_new() && !before.accepts_new() && !self.config.slow_start.is_zero() {
            backend.live.start_ramp(now);
        }
        tracing::info!(
            service = %self.config.name,
            backend = %backend.address(),
            from = %before,
            to = %agent,
            said,
            "backend agent state changed"
        );
        let maint = admin_now.closes_live() && !admin_before.closes_live();
        let down =
            agent.down && !before.down && self.config.on_backend_down == OnBackendDown::Shutdown;
        if maint || down {
            backend.live.close_sessions();
            self.wake_closing();
        }
        self.refresh_availability();
        Some(before)
    }

    /// Tells the workers' watchers that sessions of this service must be looked at.
    fn wake_closing(&self) {
        self.closing.generation.fetch_add(1, Ordering::AcqRel);
        self.closing.event.notify(usize::MAX);
    }

    /// The current closing generation; a watcher starts from it.
    pub fn closing_generation(&self) -> u64 {
        self.closing.generation.load(Ordering::Acquire)
    }

    /// Resolves once some backend's sessions must close after generation `seen`; returns the
    /// new generation. Meant for one watcher task per worker (see the module docs), not for
    /// sessions.
    pub async fn closing_after(&self, seen: u64) -> u64 {
        wait_for(&self.closing.event, || {
            let now = self.closing_generation();
            (now != seen).then_some(now)
        })
        .await
    }

    /// Whether some backend (primary or backup) is up.
    pub fn available(&self) -> bool {
        self.primary_up.load(Ordering::Acquire) || self.backup_up.load(Ordering::Acquire)
    }

    /// Recomputes whether some primary and some backup are up, and logs the service-level
    /// changes: down (no backend up) and up again; and, with backups, when they take over and
    /// when a primary is back.
    pub(super) fn refresh_availability(&self) {
        let _serial = self.transitions.lock();
        let any_up = |g: &Group| g.members().iter().any(|&i| self.backends[i].live.up());
        let primary = any_up(&self.primaries);
        let backup = self.backups.as_ref().is_some_and(any_up);
        let was_primary = self.primary_up.swap(primary, Ordering::AcqRel);
        let was_backup = self.backup_up.swap(backup, Ordering::AcqRel);
        let name = &self.config.name;
        match (was_primary || was_backup, primary || backup) {
            (true, false) => {
                tracing::warn!(
                    service = %name,
                    "service down: no backend is up, new connections are closed at once"
                );
                self.alerts
                    .publish(ServiceDown, name, None, &self.backends_up());
            }
            (false, true) => {
                tracing::info!(service = %name, "service up");
                self.alerts
                    .publish(ServiceUp, name, None, &self.backends_up());
            }
            _ => {}
        }
        if self.backups.is_some() {
            if was_primary && !primary && backup {
                tracing::warn!(
                    service = %name,
                    "no primary backend is up: backups take new connections"
                );
            } else if !was_primary && primary {
                tracing::info!(
                    service = %name,
                    "a primary backend is up: new connections go to primaries again"
                );
            }
        }
    }

    /// "N of M backends up", the reason given with a service's alerts.
    fn backends_up(&self) -> String {
        let up = self.backends.iter().filter(|b| b.live.up()).count();
        format!("{up} of {} backends up", self.backends.len())
    }
}
