//! One backend as every thread sees it: its settings, its counters, and its live availability
//! (health, admin state, session-closing signal, slow-start ramp, passive failure count).
//!
//! Owns: the atomics through which the control plane (probe results, admin changes) and the
//! workers (passive connect-failure reports, readiness reads) share a backend's state. Does not
//! own: the rise/fall decision (`balancer::health::HealthMachine`, kept by the probe task) or
//! logging and service-level consequences of a change (`ServiceState`, in `snapshot`).
//!
//! Why atomics in the shared state, not a republished snapshot: the same `BackendState` is
//! reached by the selector on every new connection *and* by every live session's forward task,
//! which holds the `Arc<ServiceState>` it started with. A flag flipped in place is seen by both
//! at their next read, with no allocation, no selector rebuild and no lag; a new snapshot would
//! be invisible to live sessions and would have to carry the counters over. The flags are
//! written only on transitions (rare), so the cache line they share stays in every core's
//! cache; the per-connection `active` counter sits on a line of its own.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam::utils::CachePadded;

use crate::balancer::health::{self, Admin, AgentState};
use crate::config::Backend;

use super::snapshot::BackendCounters;

/// The instant [`clock_nanos`] counts from; set when the first snapshot is built.
static CLOCK_BASE: OnceLock<Instant> = OnceLock::new();

/// `now` as nanoseconds since the process's clock base, plus one, so that 0 can mean "unset" in
/// an atomic. Saturates (an instant before the base reads as 1).
pub(crate) fn clock_nanos(now: Instant) -> u64 {
    let base = *CLOCK_BASE.get_or_init(Instant::now);
    let nanos = now.saturating_duration_since(base).as_nanos();
    u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
}

/// Fixes the clock base (idempotent); called when a snapshot is built so that later instants
/// are after it.
pub(crate) fn init_clock() {
    CLOCK_BASE.get_or_init(Instant::now);
}

/// One backend of a service: settings, counters and live availability.
///
/// The counters and the live state are shared (`Arc`) by the backend's states in successive
/// snapshots: a reload that keeps the backend keeps its counts, health and admin state, and
/// sessions that started under an older snapshot keep updating the same counters.
#[derive(Debug)]
pub struct BackendState {
    /// The validated settings of this backend (resolved address, weight, limits, backup).
    pub config: Backend,
    /// Counters shared by all workers.
    pub counters: Arc<BackendCounters>,
    /// Health, admin state and the signals derived from them.
    pub live: Arc<CachePadded<BackendLive>>,
}

impl BackendState {
    /// A backend that is healthy and enabled.
    pub fn new(config: Backend) -> BackendState {
        BackendState {
            config,
            counters: Arc::default(),
            live: Arc::new(CachePadded::new(BackendLive::default())),
        }
    }

    /// The same backend (counters and live state shared) with new settings.
    pub(crate) fn with_config(&self, config: Backend) -> BackendState {
        BackendState {
            config,
            counters: self.counters.clone(),
            live: self.live.clone(),
        }
    }

    /// The address connections are made to.
    pub fn address(&self) -> std::net::SocketAddr {
        self.config.address
    }
}

/// The shared, lock-free availability state of one backend.
#[derive(Debug)]
pub struct BackendLive {
    healthy: AtomicBool,
    admin: AtomicU8,
    /// Bumped whenever live sessions to the backend must be closed. The wake-up that makes
    /// sessions look at it is the service's (`ServiceState::closing_generation`), so that the
    /// control plane wakes one task per worker, not every session (see `availability`).
    close_epoch: AtomicU64,
    /// [`clock_nanos`] of the start of the current slow-start ramp; 0: no ramp.
    ramp_start: AtomicU64,
    /// Consecutive failed connects the workers saw (reset by a successful one).
    failures_in_row: AtomicU32,
    /// Bumped each time passive detection marks the backend down, so the probe task can bring
    /// its state machine in line.
    passive_downs: AtomicU64,
    /// What the backend's agent last said ([`AgentState::to_u32`]).
    agent: AtomicU32,
}

impl Default for BackendLive {
    fn default() -> Self {
        BackendLive {
            healthy: AtomicBool::new(true),
            admin: AtomicU8::new(Admin::Enabled.to_u8()),
            close_epoch: AtomicU64::new(0),
            ramp_start: AtomicU64::new(0),
            failures_in_row: AtomicU32::new(0),
            passive_downs: AtomicU64::new(0),
            agent: AtomicU32::new(AgentState::default().to_u32()),
        }
    }
}

impl BackendLive {
    /// Whether the last health decision was "healthy" (always true without checks).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// The operator's state.
    pub fn admin(&self) -> Admin {
        Admin::from_u8(self.admin.load(Ordering::Acquire))
    }

    /// What the backend's agent last said (the default when it has none).
    pub fn agent(&self) -> AgentState {
        AgentState::from_u32(self.agent.load(Ordering::Acquire))
    }

    /// Sets what the agent said; returns the previous state.
    pub(crate) fn set_agent(&self, agent: AgentState) -> AgentState {
        AgentState::from_u32(self.agent.swap(agent.to_u32(), Ordering::AcqRel))
    }

    /// Healthy and enabled (by the operator, and by the agent where the operator left it
    /// enabled): may be chosen for new connections (`max_connections` aside).
    pub fn up(&self) -> bool {
        let agent = self.agent();
        let admin = health::effective_admin(self.admin(), agent.admin);
        health::ready(self.healthy(), admin) && !agent.down && agent.percent > 0
    }

    /// Sets the health flag; returns whether this call changed it. Of several threads setting
    /// the same value at once, exactly one sees `true`.
    pub(crate) fn set_healthy(&self, healthy: bool) -> bool {
        self.healthy
            .compare_exchange(!healthy, healthy, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Sets the admin state; returns the previous one.
    pub(crate) fn set_admin(&self, admin: Admin) -> Admin {
        Admin::from_u8(self.admin.swap(admin.to_u8(), Ordering::AcqRel))
    }

    /// The current session-closing epoch; a session remembers it when it starts.
    pub fn close_epoch(&self) -> u64 {
        self.close_epoch.load(Ordering::Acquire)
    }

    /// Marks every live session to this backend as to be closed (sessions started before
    /// now see a newer epoch). The caller then wakes the workers.
    pub(crate) fn close_sessions(&self) {
        self.close_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Starts a slow-start ramp at `now`.
    pub(crate) fn start_ramp(&self, now: Instant) {
        self.ramp_start.store(clock_nanos(now), Ordering::Release);
    }

    /// Share of its weight, in thousandths, the backend may use at `now` under `slow_start`:
    /// 1000 when it is not ramping.
    /// An agent's weight below 100% scales the result (never below 1).
    pub fn ramp_permille(&self, now: Instant, slow_start: Duration) -> u32 {
        let ramp = self.slow_start_permille(now, slow_start);
        let percent = self.agent().percent;
        if percent >= 100 {
            ramp
        } else {
            (ramp * percent / 100).max(1)
        }
    }

    fn slow_start_permille(&self, now: Instant, slow_start: Duration) -> u32 {
        let start = self.ramp_start.load(Ordering::Acquire);
        if start == 0 || slow_start.is_zero() {
            return 1000;
        }
        let elapsed = Duration::from_nanos(clock_nanos(now).saturating_sub(start));
        let permille = health::slow_start_permille(elapsed, slow_start);
        if permille >= 1000 {
            // The ramp is over: later reads skip the arithmetic. A racing restart of the ramp
            // is not lost: compare_exchange leaves a newer start in place.
            let _ = self
                .ramp_start
                .compare_exchange(start, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
        permille
    }

    /// Counts a failed connect; returns whether `threshold` (>= 1) failures in a row are now
    /// reached or passed, i.e. passive detection should mark the backend down.
    pub(crate) fn connect_failed(&self, threshold: u32) -> bool {
        let in_row = self.failures_in_row.fetch_add(1, Ordering::AcqRel) + 1;
        threshold > 0 && in_row >= threshold
    }

    /// Counts a successful connect: the run of failures is over. Writes only when there was a
    /// run, so a healthy backend's line is not written on every connection.
    pub(crate) fn connect_succeeded(&self) {
        if self.failures_in_row.load(Ordering::Relaxed) != 0 {
            self.failures_in_row.store(0, Ordering::Relaxed);
        }
    }

    /// Forgets the run of failures (the backend came back).
    pub(crate) fn reset_failures(&self) {
        self.failures_in_row.store(0, Ordering::Release);
    }

    /// Records that passive detection marked the backend down.
    pub(crate) fn note_passive_down(&self) {
        self.passive_downs.fetch_add(1, Ordering::AcqRel);
    }

    /// How many times passive detection marked the backend down.
    pub fn passive_downs(&self) -> u64 {
        self.passive_downs.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_backend_is_up_and_admin_or_health_take_it_out() {
        let live = BackendLive::default();
        assert!(live.up());
        assert!(live.set_healthy(false));
        assert!(!live.set_healthy(false), "only one caller sees the change");
        assert!(!live.up());
        assert!(live.set_healthy(true));
        assert_eq!(live.set_admin(Admin::Drain), Admin::Enabled);
        assert!(!live.up());
        assert_eq!(live.set_admin(Admin::Enabled), Admin::Drain);
        assert!(live.up());
    }

    #[test]
    fn passive_failures_trip_at_the_threshold_and_success_resets_the_run() {
        let live = BackendLive::default();
        assert!(!live.connect_failed(3));
        assert!(!live.connect_failed(3));
        live.connect_succeeded();
        assert!(!live.connect_failed(3));
        assert!(!live.connect_failed(3));
        assert!(live.connect_failed(3));
        assert!(live.connect_failed(3), "past the threshold still reports");
        live.reset_failures();
        assert!(!live.connect_failed(3));
        assert!(!live.connect_failed(0), "0 is off");
    }

    #[test]
    fn a_ramp_rises_and_ends() {
        init_clock();
        let live = BackendLive::default();
        let ss = Duration::from_secs(10);
        let now = Instant::now();
        assert_eq!(live.ramp_permille(now, ss), 1000, "no ramp yet");
        live.start_ramp(now);
        assert_eq!(live.ramp_permille(now + Duration::from_secs(2), ss), 200);
        assert_eq!(live.ramp_permille(now + Duration::from_secs(11), ss), 1000);
        assert_eq!(
            live.ramp_permille(now + Duration::from_secs(1), ss),
            1000,
            "an ended ramp is cleared"
        );
    }
}
