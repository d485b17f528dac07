//! The process-wide connection budget derived from the open-files limit.
//!
//! Owns: how many proxied connections the process may hold at once so that it never runs out of
//! file descriptors mid-connection, and the wake-up for accept loops paused on it (relayed by
//! one task per worker, see [`ConnectionBudget::freed_after`]). Each proxied
//! TCP connection holds two descriptors (client and backend); the rest of the process (rings,
//! event fds, listeners, logs) needs a reserve. As HAProxy derives its `maxconn` from
//! `ulimit -n`, ringlb pauses accepting when the budget is spent, instead of accepting a client
//! and then failing to open its backend connection.
//!
//! The admin API's descriptors are kept aside too: its listener and at most `[admin]
//! max_connections` connections plus one newcomer (the admin server never holds more), so no
//! number of admin clients can spend descriptors the proxied connections were promised.
//! Does not own the admin cap itself, nor the services' own `max_connections`.

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam::utils::CachePadded;
use event_listener::Event;

use super::wait::wait_for;

/// Descriptors kept for everything that is not a proxied connection: two per worker ring
/// (io_uring fd and its wake-up eventfd), stdio, and the runtimes of the health checker, the
/// alerts and the admin API. 128 covers 16 workers with room to spare; listeners, one probe
/// socket per checked backend, splice pipes and the admin API's listener and connection cap
/// are added on top (see [`ConnectionBudget::for_config`]).
pub const FD_RESERVE: u64 = 128;

/// Descriptors one proxied connection holds: the client's socket and the backend's.
pub const FDS_PER_CONNECTION: u64 = 2;

/// Pipes one worker splices bulk transfers through at most (see the `splice` service option),
/// two descriptors each; kept aside from the budget when a TCP service splices.
pub const PIPES_PER_WORKER: u64 = 64;

/// A process-wide count of proxied connections against a fixed maximum.
#[derive(Debug)]
pub struct ConnectionBudget {
    max: u64,
    active: CachePadded<AtomicU64>,
    /// Slots freed so far, of any service or of the budget (see [`Self::freed_after`]).
    freed_count: AtomicU64,
    freed: Event,
}

impl ConnectionBudget {
    /// A budget of `max` concurrent connections.
    pub fn new(max: u64) -> ConnectionBudget {
        ConnectionBudget {
            max,
            active: CachePadded::new(AtomicU64::new(0)),
            freed_count: AtomicU64::new(0),
            freed: Event::new(),
        }
    }

    /// Raises the soft open-files limit to the hard limit (as HAProxy does) and sizes the budget
    /// from it, keeping `FD_RESERVE + listeners` descriptors aside (`listeners` counts every
    /// other descriptor the caller holds outside connections too).
    pub fn from_fd_limit(listeners: u64) -> ConnectionBudget {
        let limit = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read or raise the open-files limit");
                rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
            }
        };
        ConnectionBudget::new(Self::connections_for(limit, listeners))
    }

    /// The budget for running `config`: sized from the open-files limit, logged, with a warning
    /// when the services' `max_connections` add up to more than it allows. The admin API's
    /// listener and its `max_connections` are kept aside ([`admin_fds`](Self::admin_fds)).
    pub fn for_config(config: &crate::config::Config) -> ConnectionBudget {
        // Each worker's socket of each service, and the copy kept to hand to a successor in
        // a binary upgrade (`dataplane::handoff`).
        let listeners = 2 * (config.runtime.workers * config.services.len()) as u64;
        // Kept aside for the health checker (its runtime and one probe socket per checked
        // backend), so probes still run while the proxied connections use the whole budget.
        let probes = super::health::reserved_fds(config);
        let pipes = if config
            .services
            .iter()
            .any(|s| s.protocol == crate::config::Protocol::Tcp && s.splice)
        {
            config.runtime.workers as u64 * PIPES_PER_WORKER * 2
        } else {
            0
        };
        let admin = Self::admin_fds(config.admin.as_ref());
        let budget = ConnectionBudget::from_fd_limit(listeners + probes + pipes + admin);
        let wanted: u64 = config
            .services
            .iter()
            .map(|s| u64::from(s.max_connections))
            .sum();
        if wanted > budget.max() {
            tracing::warn!(
                budget = budget.max(),
                services_max_connections = wanted,
                "connection budget from the open-files limit is below the services' \
                 max_connections added up; accepting pauses at the budget (raise `ulimit -n`)"
            );
        } else {
            tracing::info!(
                budget = budget.max(),
                "connection budget from the open-files limit"
            );
        }
        budget
    }

    /// Descriptors the admin API holds at most: its listener, one per connection up to its cap,
    /// and the newcomer held while a slot is freed; none without an `[admin]` table.
    pub fn admin_fds(admin: Option<&crate::config::AdminSettings>) -> u64 {
        admin.map_or(0, |a| 2 + u64::from(a.max_connections))
    }

    /// How many proxied connections `fd_limit` descriptors allow.
    pub fn connections_for(fd_limit: u64, listeners: u64) -> u64 {
        fd_limit.saturating_sub(FD_RESERVE + listeners) / FDS_PER_CONNECTION
    }

    /// The maximum number of concurrent connections.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Connections currently counted.
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Acquire)
    }

    /// Takes one connection from the budget, if any is left.
    pub fn try_acquire(&self) -> bool {
        self.active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    /// Returns one connection; returns whether the budget was spent before (so waiters need a
    /// wake-up).
    pub fn release(&self) -> bool {
        self.active.fetch_sub(1, Ordering::AcqRel) >= self.max
    }

    /// Whether the budget is spent.
    pub fn exhausted(&self) -> bool {
        self.active() >= self.max
    }

    /// Counts a freed slot (of a service or of the budget) and wakes the relays waiting in
    /// [`Self::freed_after`].
    pub fn notify_freed(&self) {
        self.freed_count.fetch_add(1, Ordering::Release);
        self.freed.notify(usize::MAX);
    }

    /// Slots freed so far: where a relay starts counting (see [`Self::freed_after`]).
    pub fn freed_count(&self) -> u64 {
        self.freed_count.load(Ordering::Acquire)
    }

    /// Resolves with the count of freed slots once it has moved past `seen`.
    ///
    /// Only one task per worker waits here, and it relays the wake-up to the connections and
    /// accept loops of its own worker, which wait on a worker-local event (`dataplane::worker`).
    /// Waking a task of another thread pushes it onto that thread's wake queue, which is
    /// bounded: when every waiter listened here, a freed slot woke every waiting connection of
    /// every other worker, and two workers that each freed a slot while the other's queue was
    /// full each waited for the other to drain its queue, forever.
    pub async fn freed_after(&self, seen: u64) -> u64 {
        wait_for(&self.freed, || {
            let count = self.freed_count();
            (count != seen).then_some(count)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_follows_the_fd_limit() {
        assert_eq!(
            ConnectionBudget::connections_for(1024, 4),
            (1024 - 128 - 4) / 2
        );
        assert_eq!(ConnectionBudget::connections_for(100, 4), 0);
    }

    #[test]
    fn admin_cap_is_kept_aside() {
        let config = crate::config::Config::parse(
            "[admin]\nlisten = \"127.0.0.1:9090\"\nmax_connections = 100\n\n\
             [[service]]\nname = \"a\"\nlisten = \"127.0.0.1:8000\"\n\
             [[service.backend]]\naddress = \"127.0.0.1:9000\"\n",
            "<test>",
        )
        .unwrap();
        let admin = ConnectionBudget::admin_fds(config.admin.as_ref());
        assert_eq!(
            admin, 102,
            "the admin listener, 100 connections and one held newcomer"
        );
        assert_eq!(ConnectionBudget::admin_fds(None), 0);
        assert_eq!(
            ConnectionBudget::connections_for(4096, 2 + admin),
            (4096 - 128 - 2 - 102) / 2
        );
    }

    #[test]
    fn spent_budget_refuses_until_released() {
        let b = ConnectionBudget::new(2);
        assert!(b.try_acquire() && b.try_acquire());
        assert!(!b.try_acquire());
        assert!(b.exhausted());
        assert!(
            b.release(),
            "release from a spent budget must ask for a wake-up"
        );
        assert!(!b.release());
        assert_eq!(b.active(), 0);
    }
}
