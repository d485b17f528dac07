//! The one path for changes to the running config.
//!
//! Owns: [`Change`], every kind of change ringlb makes to its running config (a reload, an
//! admin API call, a service-discovery answer), and [`Change::next`], the one function through
//! which each of them becomes the next config and the next [`Snapshot`]. Its doc states what a
//! change keeps and what it drops. Does not own: binding listeners, publishing the snapshot, or
//! the workers, health checker and alerts following it (the instance does that, in order: see
//! `instance`); building a service's selectors and stick table (`control::snapshot`).
//!
//! Not a change of config, and so not here: a backend's health and its admin state (enable,
//! drain, disable). They are live state, flipped in place by the health checker, the workers and
//! the operator, and carried across changes like the rest of a backend's state.

use std::net::SocketAddr;

use crate::config::{Backend, Config, Origin, Protocol, defaults};
use crate::control::Snapshot;

use super::ChangeError;

/// A change to the running config. Apply it with [`crate::Server::apply`] (or
/// [`super::Instance::apply`]).
#[derive(Clone, Debug)]
pub enum Change {
    /// The whole config replaced by a validated one: a reload of the file (SIGHUP, `POST
    /// /reload`). `[runtime]` and `[admin]` keep their running values (a restart applies them).
    Replace(Config),
    /// One backend's weight, until the next reload (which takes the file's weight).
    SetWeight {
        /// The service's name.
        service: String,
        /// The backend: its address as written in the config, or its resolved address.
        backend: String,
        /// Between 1 and [`defaults::MAX_WEIGHT`].
        weight: u32,
    },
    /// One service's backend list replaced (service discovery): the backends written in the
    /// file followed by those the registry lists. Backends at an address the service already
    /// has keep their state. A reload keeps the discovered ones while the service's
    /// `[service.discovery]` stays the same (see [`Change::next`]).
    SetBackends {
        /// The service's name.
        service: String,
        /// The new list: one backend per address. Without `[service.discovery]` not empty and
        /// some not `backup`; with it, it may be empty (the service is then down), and only
        /// its discovered entries count: the static ones are the running config's (the file's),
        /// whatever the list says, so an answer computed before a reload cannot bring back the
        /// old file's backends.
        backends: Vec<Backend>,
    },
}

/// What a change leads to, before anything is bound or published.
#[derive(Debug)]
pub struct Next {
    /// The config that will be running.
    pub config: Config,
    /// The snapshot to publish, built from `config` and the running snapshot.
    pub snapshot: Snapshot,
    /// Sections that changed but need a restart; their running values were kept in `config`.
    pub needs_restart: Vec<String>,
}

impl Change {
    /// The next config and snapshot after this change to `config`, whose snapshot is
    /// `snapshot`. Every snapshot but the first is built here, whatever asked for the change.
    /// Pure: nothing is bound, published or logged; on an error nothing changes.
    ///
    /// What the next snapshot keeps from `snapshot` (identity is a service's name, and a
    /// backend's resolved address within its service):
    ///
    /// - a service that stays: its [`ServiceId`](crate::control::ServiceId), its counters
    ///   (`/metrics` and `/status` do not reset), its session-closing signal, and its stick table
    ///   with every entry, while `[service.persistence]` is unchanged; its per-client table
    ///   (live counts and buckets) while `[service.limits]` is unchanged, and its built ACL
    ///   while `[service.access]` is;
    /// - a backend that stays in such a service, whatever else of it changes (weight, limits,
    ///   `backup`): its counters and latency histograms, its last check, its health (up or down,
    ///   the run of connect failures), its admin state (enabled, drain, disabled), its
    ///   slow-start ramp, and its close epoch, so live sessions it must close are still told;
    /// - outside the snapshot, on the same terms: the health checker's probe task for the
    ///   backend with its rise/fall count, while the check settings stay
    ///   ([`HealthChecker::sync`](crate::control::health::HealthChecker::sync)); live
    ///   connections, which hold the state they started with and are never closed by a change.
    ///
    /// What it drops:
    ///
    /// - a removed backend's state: if its address comes back later, it starts as a new backend
    ///   (healthy, enabled, no ramp, counters at zero);
    /// - a removed service's identity, counters and stick table: added again, it is a new one;
    /// - the stick table (every entry) when the persistence settings change or go; the
    ///   per-client table when the limits change or go (a new one starts empty);
    /// - everything built from settings, rebuilt from the next config every time: selectors and
    ///   their tables, the primary and backup groups, weights and limits (so a weight set
    ///   through the API lasts until the next reload);
    /// - changes to `[runtime]` and `[admin]`: not applied, listed in
    ///   [`Next::needs_restart`].
    ///
    /// Discovered backends (those whose [`Origin`] is not `static`) and a reload: a service
    /// whose `[service.discovery]` is the same in the new file keeps its discovered backends
    /// (after the file's own, minus any at an address the file now lists), and the discovery
    /// runner keeps its watch; a service whose `[service.discovery]` changed or went loses them,
    /// and the runner starts a new watch (or none), whose first answer brings them back.
    /// `SetWeight` on a discovered backend lasts until the registry's next different answer.
    pub fn next(self, config: &Config, snapshot: &Snapshot) -> Result<Next, ChangeError> {
        let mut needs_restart = Vec::new();
        let next = match self {
            Change::Replace(mut next) => {
                keep_discovered(config, &mut next);
                if next.runtime != config.runtime {
                    needs_restart.push("[runtime]".to_owned());
                    next.runtime = config.runtime.clone();
                }
                if next.admin != config.admin {
                    needs_restart.push("[admin]".to_owned());
                    next.admin = config.admin.clone();
                }
                next
            }
            Change::SetWeight {
                service,
                backend,
                weight,
            } => {
                if !(1..=defaults::MAX_WEIGHT).contains(&weight) {
                    return Err(ChangeError::Invalid(format!(
                        "weight {weight} is out of range: must be between 1 and {}",
                        defaults::MAX_WEIGHT
                    )));
                }
                let mut next = config.clone();
                let s = service_mut(&mut next, &service)?;
                let b = s
                    .backends
                    .iter_mut()
                    .find(|b| names_backend(b, &backend))
                    .ok_or(ChangeError::NoBackend { service, backend })?;
                b.weight = weight;
                next
            }
            Change::SetBackends { service, backends } => {
                let mut next = config.clone();
                let s = service_mut(&mut next, &service)?;
                let backends = match s.discovery {
                    Some(_) => behind_the_file(&s.backends, backends),
                    None => backends,
                };
                check_backends(&service, s.protocol, s.discovery.is_some(), &backends)?;
                s.backends = backends;
                next
            }
        };
        let snapshot = snapshot.next(&next);
        Ok(Next {
            config: next,
            snapshot,
            needs_restart,
        })
    }
}

/// Whether `text` (from an API path) names `backend`: its resolved address, or its address as
/// written in the config (`host:port`).
pub(super) fn names_backend(backend: &Backend, text: &str) -> bool {
    backend.spec == text || backend.address.to_string() == text
}

fn service_mut<'a>(
    config: &'a mut Config,
    name: &str,
) -> Result<&'a mut crate::config::Service, ChangeError> {
    config
        .services
        .iter_mut()
        .find(|s| s.name == name)
        .ok_or_else(|| ChangeError::NoService(name.to_owned()))
}

/// Carries the discovered backends of each service of `config` into `next` when its
/// `[service.discovery]` is unchanged there.
fn keep_discovered(config: &Config, next: &mut Config) {
    for s in &mut next.services {
        let Some(before) = config.services.iter().find(|b| b.name == s.name) else {
            continue;
        };
        if s.discovery.is_none() || s.discovery != before.discovery {
            continue;
        }
        let kept: Vec<Backend> = before
            .backends
            .iter()
            .filter(|b| b.origin != Origin::Static)
            .filter(|b| s.backends.iter().all(|o| o.address != b.address))
            .cloned()
            .collect();
        s.backends.extend(kept);
    }
}

/// A discovering service's next list: its static backends from `running` (the file's), then
/// the discovered entries of `listed` at any other address.
fn behind_the_file(running: &[Backend], listed: Vec<Backend>) -> Vec<Backend> {
    let mut backends: Vec<Backend> = running
        .iter()
        .filter(|b| b.origin == Origin::Static)
        .cloned()
        .collect();
    let statics: std::collections::HashSet<SocketAddr> =
        backends.iter().map(|b| b.address).collect();
    backends.extend(
        listed
            .into_iter()
            .filter(|b| b.origin != Origin::Static && !statics.contains(&b.address)),
    );
    backends
}

/// The rules the config file's validation applies to a service's backend list (relaxed for a
/// `discovering` service: empty, or only backups, is allowed).
fn check_backends(
    service: &str,
    protocol: Protocol,
    discovering: bool,
    backends: &[Backend],
) -> Result<(), ChangeError> {
    let invalid = |what: String| Err(ChangeError::Invalid(format!("service {service:?}: {what}")));
    if backends.is_empty() && !discovering {
        return invalid("a backend list cannot be empty".to_owned());
    }
    if !discovering && backends.iter().all(|b| b.backup) {
        return invalid("every backend is a backup: at least one must not be".to_owned());
    }
    // A set, not a scan of the earlier entries: discovered lists run to tens of thousands.
    let mut seen = std::collections::HashSet::with_capacity(backends.len());
    for b in backends {
        if b.address.port() == 0 {
            return invalid(format!("backend {} has port 0", b.address));
        }
        if !seen.insert(b.address) {
            return invalid(format!("backend {} is listed twice", b.address));
        }
        if !(1..=defaults::MAX_WEIGHT).contains(&b.weight) {
            return invalid(format!(
                "backend {}: weight {} is out of range: must be between 1 and {}",
                b.address,
                b.weight,
                defaults::MAX_WEIGHT
            ));
        }
        match b.max_connections {
            Some(0) => return invalid(format!("backend {}: max_connections is 0", b.address)),
            Some(_) if protocol != Protocol::Tcp => {
                return invalid(format!(
                    "backend {}: max_connections applies to TCP services only",
                    b.address
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
