//! The `ringlb_discovery_*` families of `/metrics`: per discovering service, the registry
//! answers that changed its set, the failed queries, its backends by origin and the age of the
//! discovered set.
//!
//! Owns: those families' names, help texts and where their values come from (the discovery
//! board and the snapshot). Does not own the encoding (`exposition`).

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::admin::exposition::{Family, Labels, family};
use crate::admin::instance::Instance;
use crate::config::Origin;

/// The `discovery_*` families, one series per discovering service (backends: per origin).
pub(super) fn families(
    encoder: &mut DescriptorEncoder,
    instance: &Instance,
    services: &[Arc<crate::control::ServiceState>],
) -> Result<(), fmt::Error> {
    let watched = instance.discovery().all();
    let svc = |name: &str| -> Labels { vec![("service", name.to_owned())] };
    let updates: Vec<(Labels, u64)> = watched.iter().map(|(n, w)| (svc(n), w.updates)).collect();
    let failures: Vec<(Labels, u64)> = watched.iter().map(|(n, w)| (svc(n), w.failures)).collect();
    let mut backends: Vec<(Labels, u64)> = Vec::new();
    for s in services.iter().filter(|s| s.config.discovery.is_some()) {
        for origin in [Origin::Static, Origin::Consul, Origin::Dns] {
            let n = s
                .config
                .backends
                .iter()
                .filter(|b| b.origin == origin)
                .count();
            if n > 0 || origin != Origin::Static {
                let labels = vec![
                    ("service", s.config.name.clone()),
                    ("origin", origin.name().to_owned()),
                ];
                backends.push((labels, n as u64));
            }
        }
    }
    family(
        encoder,
        "discovery_updates",
        "Registry answers that changed a service's backend set.",
        MetricType::Counter,
        &updates,
    )?;
    family(
        encoder,
        "discovery_failures",
        "Failed registry queries (unreachable, timeout, error status, malformed answer, \
         refused token, answers over max_backends); the last good set stayed.",
        MetricType::Counter,
        &failures,
    )?;
    family(
        encoder,
        "discovery_backends",
        "Backends of a discovering service by origin (static: the config file).",
        MetricType::Gauge,
        &backends,
    )?;
    let mut age = Family::new(
        encoder,
        "discovery_set_age_seconds",
        "Seconds since the registry last answered (the age of the discovered set).",
        MetricType::Gauge,
    )?;
    for (name, w) in &watched {
        if let Some(at) = w.last_update_at {
            age.gauge_f64(&svc(name), at.elapsed().as_secs_f64())?;
        }
    }
    Ok(())
}
