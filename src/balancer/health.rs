//! Health state of a backend: rise/fall over check results, the operator's administrative state,
//! and the slow-start ramp of a recovered backend.
//!
//! Owns: the decision "is this backend healthy" from a sequence of check results (and passive
//! failure reports), when that decision changes, and how much of its weight a backend that just
//! recovered may use. Does not own: running checks (the probes in `control::health` say only
//! pass or fail, with a reason), publishing the state to the workers, or the clock: `now` is
//! passed in, so everything here is tested without sockets or sleeps (style guide item 4).
//!
//! Readiness for new connections is `healthy && admin == Enabled` ([`ready`]), where the admin
//! state is the operator's unless the operator left the backend enabled, in which case it is
//! the backend's agent's ([`effective_admin`], [`AgentState`]); the data plane adds its own
//! per-backend `max_connections` on top.

use std::fmt;
use std::time::{Duration, Instant};

/// What the operator asked of a backend, independent of its health.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Admin {
    /// Takes new connections when healthy (the default).
    Enabled,
    /// Takes no new connection; live ones run to their natural end.
    Drain,
    /// Takes no new connection, and live ones are closed at once.
    Disabled,
}

impl Admin {
    /// Every state, in declaration order.
    pub const ALL: [Admin; 3] = [Admin::Enabled, Admin::Drain, Admin::Disabled];

    /// Lower-case name, as logs (and later the admin API) show it.
    pub fn name(self) -> &'static str {
        match self {
            Admin::Enabled => "enabled",
            Admin::Drain => "drain",
            Admin::Disabled => "disabled",
        }
    }

    /// Whether a backend in this state may be chosen for a new connection (when healthy).
    pub fn accepts_new(self) -> bool {
        self == Admin::Enabled
    }

    /// Whether entering this state closes the backend's live sessions.
    pub fn closes_live(self) -> bool {
        self == Admin::Disabled
    }

    /// Compact encoding for an atomic byte.
    pub fn to_u8(self) -> u8 {
        match self {
            Admin::Enabled => 0,
            Admin::Drain => 1,
            Admin::Disabled => 2,
        }
    }

    /// Inverse of [`Admin::to_u8`]; unknown values read as `Disabled` (the safe side).
    pub fn from_u8(v: u8) -> Admin {
        match v {
            0 => Admin::Enabled,
            1 => Admin::Drain,
            _ => Admin::Disabled,
        }
    }
}

impl fmt::Display for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether a backend may be chosen for a new connection: healthy and enabled.
pub fn ready(healthy: bool, admin: Admin) -> bool {
    healthy && admin.accepts_new()
}

/// The admin state that rules a backend: the operator's when they took it out of service
/// (drain or disabled), else the agent's. The agent cannot bring back what the operator took out.
pub fn effective_admin(operator: Admin, agent: Admin) -> Admin {
    if operator == Admin::Enabled {
        agent
    } else {
        operator
    }
}

/// What a backend's agent (HAProxy's agent-check protocol) last said about it. Each report
/// changes only what it names; a backend whose agent never answered is `ready`, up, at 100%.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AgentState {
    /// `ready` (enabled), `drain` or `maint` (disabled).
    pub admin: Admin,
    /// The agent said `down` (or `fail`, `stopped`), and not `up` since.
    pub down: bool,
    /// Share of the backend's weight, 0..=100 (`75%`). 0 takes no new connection, as a drain.
    pub percent: u32,
}

impl Default for AgentState {
    fn default() -> Self {
        AgentState {
            admin: Admin::Enabled,
            down: false,
            percent: 100,
        }
    }
}

/// One agent line's words, parsed: `None` where the line said nothing of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentReport {
    /// `ready`, `drain` or `maint`.
    pub admin: Option<Admin>,
    /// `up` (true) or `down` / `fail` / `stopped` (false).
    pub up: Option<bool>,
    /// A weight as a percentage of the configured one.
    pub percent: Option<u32>,
}

impl AgentState {
    /// The state after `report`: what it names changes, the rest stays. A percentage above 100
    /// counts as 100 (the agent can lower a backend's share, not raise it above its weight).
    pub fn with(self, report: &AgentReport) -> AgentState {
        AgentState {
            admin: report.admin.unwrap_or(self.admin),
            down: report.up.map_or(self.down, |up| !up),
            percent: report.percent.map_or(self.percent, |p| p.min(100)),
        }
    }

    /// Whether the agent lets the backend take new connections (with the operator's state
    /// enabled): not down, not drained or in maintenance, a share above 0.
    pub fn accepts_new(self) -> bool {
        !self.down && self.admin.accepts_new() && self.percent > 0
    }

    /// Compact encoding for an atomic word: admin in bits 0-1, down in bit 2, percent above.
    pub fn to_u32(self) -> u32 {
        u32::from(self.admin.to_u8()) | (u32::from(self.down) << 2) | (self.percent.min(100) << 8)
    }

    /// Inverse of [`AgentState::to_u32`].
    pub fn from_u32(v: u32) -> AgentState {
        AgentState {
            admin: Admin::from_u8((v & 0b11) as u8),
            down: v & 0b100 != 0,
            percent: (v >> 8).min(100),
        }
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let admin = match self.admin {
            Admin::Enabled => "ready",
            Admin::Drain => "drain",
            Admin::Disabled => "maint",
        };
        let up = if self.down { "down" } else { "up" };
        write!(f, "{admin},{up},{}%", self.percent)
    }
}

/// A change of health the caller must publish and log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The backend became healthy.
    Up,
    /// The backend became unhealthy.
    Down,
}

/// Rise/fall hysteresis over check results, for one backend.
///
/// A backend starts healthy, so traffic flows from the first moment as it would without checks,
/// and the first result decides at once: a backend that is dead when ringlb starts is excluded
/// after one probe instead of `fall` of them. After that, `rise` consecutive passes bring an
/// unhealthy backend up and `fall` consecutive failures take a healthy one down; a result that
/// agrees with the current state resets the opposite streak.
#[derive(Clone, Debug)]
pub struct HealthMachine {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive results against the current state.
    streak: u32,
    /// No result has been recorded yet.
    fresh: bool,
    /// When the state last changed (or the machine was made).
    since: Instant,
}

impl HealthMachine {
    /// A healthy machine waiting for its first result. `rise` and `fall` below 1 count as 1.
    pub fn new(rise: u32, fall: u32, now: Instant) -> HealthMachine {
        HealthMachine {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: true,
            streak: 0,
            fresh: true,
            since: now,
        }
    }

    /// The same machine starting from `healthy` (a backend whose state is already known, e.g.
    /// down when its checker restarts). The first result that disagrees still flips it.
    pub fn starting_as(mut self, healthy: bool) -> HealthMachine {
        self.healthy = healthy;
        self
    }

    /// Whether the backend is healthy now.
    pub fn healthy(&self) -> bool {
        self.healthy
    }

    /// Whether the backend is between states: the last results disagree with its state but
    /// are not yet `fall` (or `rise`) in a row. Checks run at their fast pace meanwhile.
    pub fn settling(&self) -> bool {
        self.streak > 0
    }

    /// When the state last changed.
    pub fn since(&self) -> Instant {
        self.since
    }

    /// Records one check result; returns the transition it caused, if any.
    pub fn record(&mut self, passed: bool, now: Instant) -> Option<Transition> {
        let first = std::mem::replace(&mut self.fresh, false);
        if passed == self.healthy {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.healthy { self.fall } else { self.rise };
        if first || self.streak >= needed {
            Some(self.flip(now))
        } else {
            None
        }
    }

    /// Marks the backend down at once (passive detection: the data plane saw consecutive
    /// connect failures). Returns `Some(Down)` unless it was already down. Coming back still
    /// takes `rise` passing checks.
    pub fn force_down(&mut self, now: Instant) -> Option<Transition> {
        self.fresh = false;
        if !self.healthy {
            self.streak = 0;
            return None;
        }
        Some(self.flip(now))
    }

    fn flip(&mut self, now: Instant) -> Transition {
        self.healthy = !self.healthy;
        self.streak = 0;
        self.since = now;
        if self.healthy {
            Transition::Up
        } else {
            Transition::Down
        }
    }
}

/// Share of its weight, in thousandths (1..=1000), that a backend which became ready `elapsed`
/// ago may use when `slow_start` is configured: a linear ramp from 1 to 1000 over `slow_start`.
/// Never 0, so a ramping backend that is the only ready one still serves. `slow_start` of zero
/// means no ramp (1000).
pub fn slow_start_permille(elapsed: Duration, slow_start: Duration) -> u32 {
    if slow_start.is_zero() || elapsed >= slow_start {
        return 1000;
    }
    let ratio = elapsed.as_nanos() * 1000 / slow_start.as_nanos();
    // ratio < 1000 here, so the cast is exact.
    (ratio as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Instant {
        // A fixed base: tests only compare instants built from it.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    fn run(m: &mut HealthMachine, results: &[bool]) -> Vec<Option<Transition>> {
        results
            .iter()
            .enumerate()
            .map(|(i, &r)| m.record(r, t(i as u64 + 1)))
            .collect()
    }

    #[test]
    fn a_new_backend_is_healthy_and_a_first_failure_takes_it_down_at_once() {
        let mut m = HealthMachine::new(2, 3, t(0));
        assert!(m.healthy());
        assert_eq!(m.record(false, t(5)), Some(Transition::Down));
        assert!(!m.healthy());
        assert_eq!(m.since(), t(5));
    }

    #[test]
    fn a_first_pass_keeps_it_up_and_later_failures_need_fall_in_a_row() {
        let mut m = HealthMachine::new(2, 3, t(0));
        let got = run(&mut m, &[true, false, false, true, false, false, false]);
        assert_eq!(
            got,
            [None, None, None, None, None, None, Some(Transition::Down)]
        );
    }

    #[test]
    fn coming_back_needs_rise_passes_in_a_row() {
        let mut m = HealthMachine::new(3, 1, t(0));
        assert_eq!(m.record(false, t(1)), Some(Transition::Down));
        let got = run(&mut m, &[true, true, false, true, true, true]);
        assert_eq!(got, [None, None, None, None, None, Some(Transition::Up)]);
        assert!(m.healthy());
    }

    #[test]
    fn each_change_is_reported_once() {
        let mut m = HealthMachine::new(2, 2, t(0));
        let results = [
            true, false, false, false, false, true, true, true, true, false, true, false, false,
        ];
        let transitions: Vec<Transition> = run(&mut m, &results).into_iter().flatten().collect();
        assert_eq!(
            transitions,
            [Transition::Down, Transition::Up, Transition::Down]
        );
    }

    #[test]
    fn rise_and_fall_of_one_follow_every_result() {
        let mut m = HealthMachine::new(1, 1, t(0));
        let got = run(&mut m, &[true, false, true, true, false]);
        assert_eq!(
            got,
            [
                None,
                Some(Transition::Down),
                Some(Transition::Up),
                None,
                Some(Transition::Down)
            ]
        );
    }

    #[test]
    fn zero_rise_or_fall_counts_as_one() {
        let mut m = HealthMachine::new(0, 0, t(0));
        assert_eq!(
            run(&mut m, &[true, false, true]),
            [None, Some(Transition::Down), Some(Transition::Up)]
        );
    }

    #[test]
    fn forcing_down_is_immediate_once_and_recovery_needs_rise() {
        let mut m = HealthMachine::new(2, 5, t(0));
        m.record(true, t(1));
        assert_eq!(m.force_down(t(2)), Some(Transition::Down));
        assert_eq!(m.force_down(t(3)), None, "already down");
        assert_eq!(m.record(true, t(4)), None);
        assert_eq!(m.force_down(t(5)), None, "resets the rise streak");
        assert_eq!(m.record(true, t(6)), None);
        assert_eq!(m.record(true, t(7)), Some(Transition::Up));
    }

    #[test]
    fn forcing_down_before_any_check_counts_as_the_first_result() {
        let mut m = HealthMachine::new(2, 3, t(0));
        assert_eq!(m.force_down(t(1)), Some(Transition::Down));
        // The first-result shortcut is spent: rise applies.
        assert_eq!(m.record(true, t(2)), None);
        assert_eq!(m.record(true, t(3)), Some(Transition::Up));
    }

    #[test]
    fn a_backend_settles_from_a_disagreeing_result_until_it_is_confirmed_or_refuted() {
        let mut m = HealthMachine::new(2, 3, t(0));
        assert!(!m.settling());
        m.record(true, t(1));
        assert!(!m.settling(), "agreeing results are steady");
        m.record(false, t(2));
        assert!(m.settling(), "one failure of three");
        m.record(true, t(3));
        assert!(!m.settling(), "refuted");
        m.record(false, t(4));
        m.record(false, t(5));
        assert!(m.settling());
        assert_eq!(m.record(false, t(6)), Some(Transition::Down));
        assert!(!m.settling(), "confirmed");
        m.record(true, t(7));
        assert!(m.settling(), "one pass of two");
        assert_eq!(m.record(true, t(8)), Some(Transition::Up));
        assert!(!m.settling());
    }

    #[test]
    fn readiness_is_healthy_and_enabled() {
        assert!(ready(true, Admin::Enabled));
        assert!(!ready(false, Admin::Enabled));
        assert!(!ready(true, Admin::Drain));
        assert!(!ready(true, Admin::Disabled));
        assert!(Admin::Disabled.closes_live());
        assert!(!Admin::Drain.closes_live());
    }

    #[test]
    fn an_agent_report_changes_only_what_it_names() {
        let start = AgentState::default();
        assert!(start.accepts_new());
        let drained = start.with(&AgentReport {
            admin: Some(Admin::Drain),
            ..AgentReport::default()
        });
        assert_eq!(
            drained,
            AgentState {
                admin: Admin::Drain,
                ..start
            }
        );
        assert!(!drained.accepts_new());
        let down = drained.with(&AgentReport {
            up: Some(false),
            percent: Some(50),
            ..AgentReport::default()
        });
        assert_eq!(
            down,
            AgentState {
                admin: Admin::Drain,
                down: true,
                percent: 50
            }
        );
        let back = down.with(&AgentReport {
            admin: Some(Admin::Enabled),
            up: Some(true),
            percent: Some(250),
        });
        assert_eq!(back, start, "above 100% counts as 100%");
        let zero = start.with(&AgentReport {
            percent: Some(0),
            ..AgentReport::default()
        });
        assert!(!zero.accepts_new(), "0% takes no new connection");
        assert_eq!(zero.to_string(), "ready,up,0%");
        assert_eq!(down.to_string(), "drain,down,50%");
    }

    #[test]
    fn agent_states_round_trip_through_a_word() {
        for admin in Admin::ALL {
            for down in [false, true] {
                for percent in [0, 1, 75, 100] {
                    let a = AgentState {
                        admin,
                        down,
                        percent,
                    };
                    assert_eq!(AgentState::from_u32(a.to_u32()), a);
                }
            }
        }
    }

    #[test]
    fn the_operators_state_wins_over_the_agents() {
        for agent in Admin::ALL {
            assert_eq!(effective_admin(Admin::Enabled, agent), agent);
            assert_eq!(effective_admin(Admin::Drain, agent), Admin::Drain);
            assert_eq!(effective_admin(Admin::Disabled, agent), Admin::Disabled);
        }
    }

    #[test]
    fn admin_states_round_trip_through_a_byte() {
        for a in Admin::ALL {
            assert_eq!(Admin::from_u8(a.to_u8()), a);
        }
        assert_eq!(Admin::from_u8(200), Admin::Disabled);
    }

    #[test]
    fn slow_start_ramps_linearly_from_one_permille_to_full() {
        let ss = Duration::from_secs(10);
        assert_eq!(slow_start_permille(Duration::ZERO, ss), 1);
        assert_eq!(slow_start_permille(Duration::from_secs(1), ss), 100);
        assert_eq!(slow_start_permille(Duration::from_secs(5), ss), 500);
        assert_eq!(slow_start_permille(Duration::from_millis(9999), ss), 999);
        assert_eq!(slow_start_permille(ss, ss), 1000);
        assert_eq!(slow_start_permille(Duration::from_secs(60), ss), 1000);
        assert_eq!(slow_start_permille(Duration::ZERO, Duration::ZERO), 1000);
    }
}
