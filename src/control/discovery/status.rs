//! What discovery tells `/status` and `/metrics`, per discovering service: the source, the last
//! update, the registry's version marker, the last error, and counters.
//!
//! Owns: [`Board`], written by the discovery runner only and read by the admin API. Does not
//! own: the backends themselves (the snapshot has them, each with its origin).

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use super::{Answer, DiscoveryError, Version};
use crate::config::Discovery;

/// The discovery status of every discovering service, by name.
#[derive(Debug, Default)]
pub struct Board {
    services: Mutex<BTreeMap<String, WatchStatus>>,
}

/// One service's discovery status.
#[derive(Clone, Debug)]
pub struct WatchStatus {
    /// "consul" or "dns".
    pub kind: &'static str,
    /// What is watched (the Consul service and agent, or the DNS name); never a token.
    pub target: String,
    /// When the registry last answered (wall clock); `None` until it has.
    pub last_update: Option<SystemTime>,
    /// When the registry last answered (for the age of the set).
    pub last_update_at: Option<Instant>,
    /// The last answer's version marker.
    pub version: Option<Version>,
    /// Instances in the last answer.
    pub instances: usize,
    /// Why the last attempt failed, while it is failing (cleared by an answer).
    pub last_error: Option<String>,
    /// Answers that changed the backend set.
    pub updates: u64,
    /// Failed attempts (registry faults, refused answers).
    pub failures: u64,
}

impl Board {
    /// A watch of `source` starts for `service` (a new one, or after its settings changed):
    /// its counters stay, its answer state starts again.
    pub fn watching(&self, service: &str, source: &Discovery) {
        let mut map = self.services.lock();
        let (updates, failures) = map.get(service).map_or((0, 0), |s| (s.updates, s.failures));
        map.insert(
            service.to_owned(),
            WatchStatus {
                kind: source.kind(),
                target: source.target(),
                last_update: None,
                last_update_at: None,
                version: None,
                instances: 0,
                last_error: None,
                updates,
                failures,
            },
        );
    }

    /// Keeps only the services `keep` says are still watched.
    pub fn retain(&self, mut keep: impl FnMut(&str) -> bool) {
        self.services.lock().retain(|name, _| keep(name));
    }

    /// Records an answer (`changed`: it changed the backend set). True when the service was
    /// failing until now (a recovery).
    pub fn answered(&self, service: &str, answer: &Answer, changed: bool) -> bool {
        let mut map = self.services.lock();
        let Some(s) = map.get_mut(service) else {
            return false;
        };
        s.last_update = Some(SystemTime::now());
        s.last_update_at = Some(Instant::now());
        s.version = Some(answer.version);
        s.instances = answer.instances.len();
        if changed {
            s.updates += 1;
        }
        s.last_error.take().is_some()
    }

    /// Records a failure. True when the service was not failing until now.
    pub fn failed(&self, service: &str, e: &DiscoveryError) -> bool {
        let mut map = self.services.lock();
        let Some(s) = map.get_mut(service) else {
            return false;
        };
        s.failures += 1;
        s.last_error.replace(e.to_string()).is_none()
    }

    /// The status of `service`, when it discovers.
    pub fn get(&self, service: &str) -> Option<WatchStatus> {
        self.services.lock().get(service).cloned()
    }

    /// Every discovering service's status, by name.
    pub fn all(&self) -> Vec<(String, WatchStatus)> {
        self.services
            .lock()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
