//! Candidates for a new connection: which backends, in which order, taking health, admin state,
//! backups, session persistence and slow start into account.
//!
//! Owns: combining the selection algorithms ([`Selector`], whose API is unchanged) with a
//! service's live state, read through [`ServiceView`]; and [`Group`], some of a service's
//! backends with the selector built over them.
//!
//! - Groups: candidates come from the primaries while some primary is up (healthy and enabled);
//!   from the backups only while none is. Each group has its own selector over its members, so
//!   rotations, weights and Maglev tables are those of the group.
//! - Persistence: the backend a client's stick-table entry names ([`Pick::sticky`]) comes first
//!   while it is ready and in the serving group (a client stuck to a backup returns to the
//!   primaries when one is back).
//! - Slow start: a backend ramping up after coming back is demoted behind the other candidates
//!   with probability `1 - p`, where `p` is its ramp share ([`ServiceView::ramp_permille`]), so
//!   every algorithm gives it about `p` of its normal share without rebuilding selectors.
//!   `least_conn` and `power_of_two`, which would otherwise fill it up to the others' active
//!   counts, also count its active connections as `active / p` (that is, against `weight * p`).
//!
//! Does not own: the live state (health, admin state, active counts, ramps and the "some
//! primary / backup is up" flags are the control plane's atomics, behind [`ServiceView`]), the
//! stick table (the caller looks the client up and passes the result; it also writes entries
//! once a connection is made), config types, or the clock (`now` is passed in).
//!
//! Runs on the data path, on every new connection: generic over the view (monomorphized, no
//! `dyn`), no allocation when `out` has room for `max + 1`, no lock.

use std::net::IpAddr;
use std::time::Instant;

use super::select::{Algorithm, BackendSpec, BackendView, Selector};

/// A service's live backend state as the policy reads it. Indices are positions in the
/// service's backend list (what candidates are); [`BackendView::ready`] and
/// [`BackendView::active`] are over the same indices.
pub trait ServiceView: BackendView {
    /// Whether some primary (non-backup) backend is up: healthy and enabled.
    fn primaries_up(&self) -> bool;
    /// Whether some backup backend is up.
    fn backups_up(&self) -> bool;
    /// Whether backend `i` is a backup.
    fn is_backup(&self, i: usize) -> bool;
    /// Whether the service has slow start (a backend that comes back ramps up); when false,
    /// [`ServiceView::ramp_permille`] is not called.
    fn slow_start(&self) -> bool;
    /// Share of its weight, in thousandths, backend `i` may use at `now`: 1000 when it is not
    /// ramping. A value of 0 counts as 1.
    fn ramp_permille(&self, i: usize, now: Instant) -> u32;
}

/// Some of a service's backends and the selector built over them.
#[derive(Debug)]
pub struct Group {
    /// Indices into the service's backend list; the selector's index `i` is `members[i]`.
    members: Box<[usize]>,
    selector: Selector,
}

impl Group {
    /// Builds the group of `members` (indices into `backends`, the service's whole list; those
    /// out of range are left out) with an `algorithm` selector over them. Call it off the data
    /// path: see [`Selector::new`] for what it builds and what `maglev_size` means.
    #[must_use]
    pub fn new(
        algorithm: Algorithm,
        backends: &[BackendSpec<'_>],
        mut members: Vec<usize>,
        maglev_size: usize,
    ) -> Group {
        members.retain(|&i| i < backends.len());
        let specs: Vec<BackendSpec<'_>> = members.iter().map(|&i| backends[i]).collect();
        Group {
            selector: Selector::new(algorithm, &specs, maglev_size),
            members: members.into_boxed_slice(),
        }
    }

    /// The members, as indices into the service's backend list.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// The selector over the members (its indices are positions in [`Group::members`]).
    pub fn selector(&self) -> &Selector {
        &self.selector
    }
}

/// What one call of [`candidates`] is for.
#[derive(Clone, Copy, Debug)]
pub struct Pick {
    /// The client of the new connection (or flow).
    pub client: IpAddr,
    /// The time the ramps are read at.
    pub now: Instant,
    /// How many candidates to give at most.
    pub max: usize,
    /// The backend the client's stick-table entry names, if any (persistence only). Honoured
    /// only while it is ready and in the serving group; an index out of range is ignored.
    pub sticky: Option<usize>,
}

/// Fills `out` (cleared first) with up to `pick.max` distinct ready backends (indices into the
/// service's backend list), best first, for a new connection from `pick.client`: from
/// `primaries` while [`ServiceView::primaries_up`], else from `backups` while
/// [`ServiceView::backups_up`]. The caller connects to `out[0]` and falls back to the next on
/// failure. Empty when no backend of the serving group is ready.
///
/// No allocation when `out` has room for `pick.max + 1`. Never panics for indices the view
/// covers (the groups' members and `pick.sticky` are below `view.len()`, or ignored).
pub fn candidates<V: ServiceView>(
    view: &V,
    primaries: &Group,
    backups: Option<&Group>,
    pick: Pick,
    rng: &mut fastrand::Rng,
    out: &mut Vec<usize>,
) {
    out.clear();
    if pick.max == 0 {
        return;
    }
    let (group, primaries_serve) = serving_group(view, primaries, backups);
    let ramping = view.slow_start();
    let load_based = matches!(
        group.selector.algorithm(),
        Algorithm::LeastConn | Algorithm::PowerOfTwo
    );
    let group_view = GroupView {
        view,
        members: &group.members,
        ramp_at: (ramping && load_based).then_some(pick.now),
    };
    // One more than asked while ramping, so a demoted backend has someone to yield to.
    let want = if ramping { pick.max + 1 } else { pick.max };
    group
        .selector
        .candidates(&group_view, pick.client, rng, want, out);
    for c in out.iter_mut() {
        *c = group.members[*c];
    }
    if ramping {
        demote_ramping(view, out, rng, pick.now);
    }
    let honoured = pick
        .sticky
        .filter(|&i| i < view.len() && view.is_backup(i) != primaries_serve && view.ready(i));
    if let Some(sticky) = honoured {
        match out.iter().position(|&i| i == sticky) {
            Some(pos) => out[..=pos].rotate_right(1),
            None => {
                // Only the first `max - 1` others can stay: cut first, so `out` never grows
                // past `max` here (slow start may have left `max + 1`).
                out.truncate(pick.max - 1);
                out.insert(0, sticky);
            }
        }
    }
    out.truncate(pick.max);
}

/// The group new connections go to now, and whether it is the primaries: primaries while one
/// is up, else backups (if any are up), else the primaries again (nothing is ready then).
fn serving_group<'g>(
    view: &impl ServiceView,
    primaries: &'g Group,
    backups: Option<&'g Group>,
) -> (&'g Group, bool) {
    if view.primaries_up() {
        return (primaries, true);
    }
    match backups {
        Some(backups) if view.backups_up() => (backups, false),
        _ => (primaries, true),
    }
}

/// Moves a ramping first candidate behind the others with probability `1 - p`; repeats for
/// the next first candidate, at most once per candidate.
fn demote_ramping(
    view: &impl ServiceView,
    out: &mut [usize],
    rng: &mut fastrand::Rng,
    now: Instant,
) {
    for _ in 0..out.len().saturating_sub(1) {
        let permille = view.ramp_permille(out[0], now);
        if permille >= 1000 || rng.u32(0..1000) < permille {
            return;
        }
        out.rotate_left(1);
    }
}

/// `active / p`, rounded up, for a backend at `permille` of its weight: its connections count
/// against `weight * p`.
fn ramp_active(active: u64, permille: u32) -> u64 {
    if permille >= 1000 {
        active
    } else {
        active
            .saturating_mul(1000)
            .div_ceil(u64::from(permille.max(1)))
    }
}

/// The view one group's selector sees: positions in the group mapped to service indices.
struct GroupView<'a, V> {
    view: &'a V,
    members: &'a [usize],
    /// Set for load-based algorithms while slow start is on: ramps are read at this time.
    ramp_at: Option<Instant>,
}

impl<V: ServiceView> BackendView for GroupView<'_, V> {
    fn len(&self) -> usize {
        self.members.len()
    }

    fn active(&self, i: usize) -> u64 {
        let index = self.members[i];
        let active = self.view.active(index);
        match self.ramp_at {
            Some(now) => ramp_active(active, self.view.ramp_permille(index, now)),
            None => active,
        }
    }

    fn ready(&self, i: usize) -> bool {
        self.view.ready(self.members[i])
    }
}

#[cfg(test)]
mod tests;
