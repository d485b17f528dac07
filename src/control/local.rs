//! Local shortages: ringlb itself out of ports, file descriptors or memory.
//!
//! Owns: the one classification of an I/O error as a shortage of ringlb's own resources
//! ([`LocalShortage::of`]), used by the data plane's backend connects and by the health probes,
//! and the process-wide counts of them by source and reason ([`counts`], shown in `/metrics` as
//! `ringlb_local_shortages_total`). Does not own: what a shortage changes (nothing about a
//! backend's health: the callers make sure of that), logging it, or alerting about it (the
//! health checker logs and alerts each transition into and out of a shortage).
//!
//! Why it matters: when ringlb runs out of ephemeral ports (its closed backend connections sit in
//! TIME_WAIT) or of descriptors, every connect fails whatever the backend does. Counting those
//! failures against the backends would mark every backend, and so every service, down for a
//! problem that is ringlb's own.

use std::fmt;
use std::io;

use super::Counter;

/// A resource of ringlb's own that ran out. Copy, one byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LocalShortage {
    /// No local port (or address) left to connect from: `EADDRNOTAVAIL`, typically every
    /// ephemeral port held by live or TIME_WAIT sockets toward that destination.
    Ports,
    /// The process's open-files limit is reached: `EMFILE`.
    ProcessFds,
    /// The system-wide open-files limit is reached: `ENFILE`.
    SystemFds,
    /// The kernel has no socket buffer space left: `ENOBUFS`.
    Buffers,
    /// The kernel could not allocate memory: `ENOMEM`.
    Memory,
}

impl LocalShortage {
    /// Every shortage, in the order `/metrics` lists them.
    pub const ALL: [LocalShortage; 5] = [
        LocalShortage::Ports,
        LocalShortage::ProcessFds,
        LocalShortage::SystemFds,
        LocalShortage::Buffers,
        LocalShortage::Memory,
    ];

    /// The shortage `e` reports, or `None` when `e` says something about the peer or the network
    /// (refused, unreachable, reset, timed out, ...).
    pub fn of(e: &io::Error) -> Option<LocalShortage> {
        match e.raw_os_error()? {
            libc::EADDRNOTAVAIL => Some(LocalShortage::Ports),
            libc::EMFILE => Some(LocalShortage::ProcessFds),
            libc::ENFILE => Some(LocalShortage::SystemFds),
            libc::ENOBUFS => Some(LocalShortage::Buffers),
            libc::ENOMEM => Some(LocalShortage::Memory),
            _ => None,
        }
    }

    /// The `reason` label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            LocalShortage::Ports => "ports",
            LocalShortage::ProcessFds => "fds",
            LocalShortage::SystemFds => "system_fds",
            LocalShortage::Buffers => "buffers",
            LocalShortage::Memory => "memory",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for LocalShortage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LocalShortage::Ports => "out of local ports (EADDRNOTAVAIL)",
            LocalShortage::ProcessFds => "out of file descriptors (EMFILE)",
            LocalShortage::SystemFds => "out of system-wide file descriptors (ENFILE)",
            LocalShortage::Buffers => "out of socket buffer space (ENOBUFS)",
            LocalShortage::Memory => "out of kernel memory (ENOMEM)",
        })
    }
}

/// What ran into a shortage: the `source` label in `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShortageSource {
    /// A health probe could not open its socket or connect.
    Probe,
    /// A worker could not open a connection to a backend for a client.
    Connect,
}

impl ShortageSource {
    /// Every source, in the order `/metrics` lists them.
    pub const ALL: [ShortageSource; 2] = [ShortageSource::Probe, ShortageSource::Connect];

    /// The `source` label in `/metrics`.
    pub fn name(self) -> &'static str {
        match self {
            ShortageSource::Probe => "probe",
            ShortageSource::Connect => "connect",
        }
    }
}

/// Counts of local shortages by source and reason. Every count only grows.
#[derive(Debug)]
pub struct ShortageCounts([[Counter; LocalShortage::ALL.len()]; ShortageSource::ALL.len()]);

impl ShortageCounts {
    /// All zero.
    pub const fn new() -> ShortageCounts {
        ShortageCounts([const { [const { Counter::new() }; 5] }; 2])
    }

    /// Counts one shortage of `what` seen by `source`.
    pub fn add(&self, source: ShortageSource, what: LocalShortage) {
        self.0[source as usize][what.index()].inc();
    }

    /// How many shortages of `what` `source` saw.
    pub fn get(&self, source: ShortageSource, what: LocalShortage) -> u64 {
        self.0[source as usize][what.index()].get()
    }
}

impl Default for ShortageCounts {
    fn default() -> ShortageCounts {
        ShortageCounts::new()
    }
}

/// The process's counts: a shortage is the process's, not a service's or a backend's, and the
/// workers count into it from any thread without a handle.
static COUNTS: ShortageCounts = ShortageCounts::new();

/// Counts one shortage of `what` seen by `source`, process-wide.
pub fn count(source: ShortageSource, what: LocalShortage) {
    COUNTS.add(source, what);
}

/// The process-wide counts, every (source, reason) pair included.
pub fn counts() -> Vec<(ShortageSource, LocalShortage, u64)> {
    ShortageSource::ALL
        .into_iter()
        .flat_map(|s| LocalShortage::ALL.map(|r| (s, r, COUNTS.get(s, r))))
        .collect()
}

/// Whether a worker's failed backend connect was a local shortage, counting it
/// ([`ShortageSource::Connect`]) when it was. The data plane's one question.
pub fn connect_failed_locally(e: &io::Error) -> bool {
    LocalShortage::of(e)
        .inspect(|&what| count(ShortageSource::Connect, what))
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_errors_about_ringlbs_own_resources_are_local() {
        let of = |errno| LocalShortage::of(&io::Error::from_raw_os_error(errno));
        assert_eq!(of(libc::EADDRNOTAVAIL), Some(LocalShortage::Ports));
        assert_eq!(of(libc::EMFILE), Some(LocalShortage::ProcessFds));
        assert_eq!(of(libc::ENFILE), Some(LocalShortage::SystemFds));
        assert_eq!(of(libc::ENOBUFS), Some(LocalShortage::Buffers));
        assert_eq!(of(libc::ENOMEM), Some(LocalShortage::Memory));
        for backend_side in [
            libc::ECONNREFUSED,
            libc::ETIMEDOUT,
            libc::EHOSTUNREACH,
            libc::ENETUNREACH,
            libc::ECONNRESET,
            libc::EADDRINUSE,
        ] {
            assert_eq!(of(backend_side), None, "errno {backend_side}");
        }
        // An error without an errno (a library's own) is never taken for a local one.
        assert_eq!(LocalShortage::of(&io::Error::other("EADDRNOTAVAIL")), None);
    }

    #[test]
    fn names_and_reasons_are_distinct_and_name_the_errno() {
        let names: std::collections::HashSet<_> =
            LocalShortage::ALL.iter().map(|s| s.name()).collect();
        assert_eq!(names.len(), LocalShortage::ALL.len());
        assert!(LocalShortage::Ports.to_string().contains("EADDRNOTAVAIL"));
        assert!(LocalShortage::ProcessFds.to_string().contains("EMFILE"));
    }

    #[test]
    fn counts_are_kept_by_source_and_reason() {
        let c = ShortageCounts::new();
        c.add(ShortageSource::Probe, LocalShortage::Ports);
        c.add(ShortageSource::Probe, LocalShortage::Ports);
        c.add(ShortageSource::Connect, LocalShortage::ProcessFds);
        assert_eq!(c.get(ShortageSource::Probe, LocalShortage::Ports), 2);
        assert_eq!(c.get(ShortageSource::Connect, LocalShortage::Ports), 0);
        assert_eq!(c.get(ShortageSource::Connect, LocalShortage::ProcessFds), 1);
        assert_eq!(c.get(ShortageSource::Probe, LocalShortage::ProcessFds), 0);
    }

    #[test]
    fn a_connect_failure_is_counted_only_when_local() {
        let before = COUNTS.get(ShortageSource::Connect, LocalShortage::Buffers);
        assert!(connect_failed_locally(&io::Error::from_raw_os_error(
            libc::ENOBUFS
        )));
        assert!(!connect_failed_locally(&io::Error::from_raw_os_error(
            libc::ECONNREFUSED
        )));
        assert_eq!(
            COUNTS.get(ShortageSource::Connect, LocalShortage::Buffers),
            before + 1
        );
        assert_eq!(counts().len(), 10);
    }
}
