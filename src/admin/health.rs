//! `GET /health`: whether this ringlb serves, in one yes or no and a short reason, for a
//! keepalived `track_script` (through `ringlb status --check`) or a load balancer in front.
//!
//! Owns: the decision ([`judge`], pure code over [`Facts`]) and gathering those facts from a
//! running [`Instance`]. Serving means: ringlb is not stopping (a drain closes the listeners
//! at once, so the address should move before the drain ends), every service of the running
//! config has its listener bound, every worker's loop turned within [`STALE_AFTER`] (each
//! worker records a heartbeat every `dataplane::HEARTBEAT_EVERY`), and, with
//! `[admin] require_backends = true`, every service has a ready backend. Does not own the HTTP route (`api`) nor the heartbeat itself
//! (the workers').

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::instance::Instance;

/// A worker whose loop has not turned for this long is stuck (a blocking call, a busy loop):
/// twenty heartbeats missed, far beyond any scheduling delay of a loaded host.
pub const STALE_AFTER: Duration = Duration::from_secs(2);

/// The answer of `GET /health`: `{"healthy":true}` or
/// `{"healthy":false,"reason":"service redis has no ready backend"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Whether this ringlb serves.
    pub healthy: bool,
    /// Why not (the first fault found), absent when healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Health {
    fn ok() -> Health {
        Health {
            healthy: true,
            reason: None,
        }
    }

    fn fault(reason: String) -> Health {
        Health {
            healthy: false,
            reason: Some(reason),
        }
    }
}

/// One service as the decision sees it.
#[derive(Clone, Debug)]
pub struct ServiceFacts {
    /// Its name.
    pub name: String,
    /// Whether its listener is bound on every worker.
    pub listening: bool,
    /// Whether some backend can take a connection.
    pub ready_backend: bool,
}

/// What [`judge`] decides from.
#[derive(Clone, Debug)]
pub struct Facts {
    /// Whether ringlb is stopping (its listeners closed, its live connections draining).
    pub draining: bool,
    /// Services in config order.
    pub services: Vec<ServiceFacts>,
    /// Per worker, how long since its loop last turned (`None`: never).
    pub workers: Vec<Option<Duration>>,
    /// `[admin] require_backends`.
    pub require_backends: bool,
}

/// Healthy when ringlb is not stopping, every listener is bound, every worker turned within [`STALE_AFTER`], and (when
/// required) every service has a ready backend; otherwise the first fault, in that order.
pub fn judge(facts: &Facts) -> Health {
    if facts.draining {
        return Health::fault("draining: ringlb is stopping and accepts no connection".to_owned());
    }
    if let Some(s) = facts.services.iter().find(|s| !s.listening) {
        return Health::fault(format!("service {} has no bound listener", s.name));
    }
    if facts.workers.is_empty() {
        return Health::fault("no worker is running".to_owned());
    }
    for (index, age) in facts.workers.iter().enumerate() {
        match age {
            None => return Health::fault(format!("worker {index} has not started its loop")),
            Some(age) if *age > STALE_AFTER => {
                return Health::fault(format!(
                    "worker {index} has not turned its loop for {} ms",
                    age.as_millis()
                ));
            }
            Some(_) => {}
        }
    }
    if facts.require_backends
        && let Some(s) = facts.services.iter().find(|s| !s.ready_backend)
    {
        return Health::fault(format!("service {} has no ready backend", s.name));
    }
    Health::ok()
}

/// The facts of the running `instance`.
pub fn facts_of(instance: &Instance) -> Facts {
    let config = instance.config();
    let dataplane = instance.dataplane();
    let listening = dataplane.listening();
    let snapshot = instance.snapshot().load();
    let services = snapshot
        .services
        .iter()
        .map(|s| ServiceFacts {
            name: s.config.name.clone(),
            listening: listening.iter().any(|l| l.service == s.config.name),
            ready_backend: s.available(),
        })
        .collect();
    Facts {
        draining: dataplane.draining(),
        services,
        workers: dataplane.stats().iter().map(|w| w.since_beat()).collect(),
        require_backends: config.admin.as_ref().is_some_and(|a| a.require_backends),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            draining: false,
            services: vec![
                ServiceFacts {
                    name: "redis".into(),
                    listening: true,
                    ready_backend: true,
                },
                ServiceFacts {
                    name: "pg".into(),
                    listening: true,
                    ready_backend: true,
                },
            ],
            workers: vec![Some(Duration::from_millis(50)), Some(Duration::ZERO)],
            require_backends: true,
        }
    }

    #[test]
    fn everything_serving_is_healthy_without_a_reason() {
        assert_eq!(judge(&facts()), Health::ok());
        let json = serde_json::to_string(&judge(&facts())).unwrap();
        assert_eq!(json, r#"{"healthy":true}"#);
    }

    #[test]
    fn a_service_without_a_ready_backend_counts_only_when_required() {
        let mut f = facts();
        f.services[1].ready_backend = false;
        let h = judge(&f);
        assert!(!h.healthy);
        assert_eq!(h.reason.as_deref(), Some("service pg has no ready backend"));
        assert_eq!(
            serde_json::to_string(&h).unwrap(),
            r#"{"healthy":false,"reason":"service pg has no ready backend"}"#
        );
        f.require_backends = false;
        assert_eq!(judge(&f), Health::ok());
    }

    #[test]
    fn a_stale_or_unstarted_worker_is_unhealthy() {
        let mut f = facts();
        f.workers[1] = Some(STALE_AFTER + Duration::from_millis(1));
        let h = judge(&f);
        assert!(!h.healthy);
        assert!(h.reason.unwrap().starts_with("worker 1 has not turned"));
        // Exactly at the limit is still fresh.
        f.workers[1] = Some(STALE_AFTER);
        assert!(judge(&f).healthy);
        f.workers[0] = None;
        assert_eq!(
            judge(&f).reason.as_deref(),
            Some("worker 0 has not started its loop")
        );
        f.workers.clear();
        assert!(!judge(&f).healthy);
    }

    #[test]
    fn a_stopping_ringlb_is_unhealthy_whatever_else_holds() {
        let mut f = facts();
        f.draining = true;
        let h = judge(&f);
        assert!(!h.healthy);
        assert!(h.reason.unwrap().starts_with("draining"));
    }

    #[test]
    fn an_unbound_listener_is_reported_before_anything_else() {
        let mut f = facts();
        f.services[0].ready_backend = false;
        f.workers[0] = None;
        f.services[1].listening = false;
        assert_eq!(
            judge(&f).reason.as_deref(),
            Some("service pg has no bound listener")
        );
    }
}
