//! The `ringlb_service_refused_total` and `ringlb_client_table_*` families of `/metrics`: per
//! service, clients refused by `[service.access]` and `[service.limits]`, and the per-client
//! table's size and evictions.
//!
//! Owns: those families' names, help texts and where their values come from (the service's
//! counters and client table). Does not own the encoding (`exposition`) nor the counting
//! (`control::access`).

use std::fmt;
use std::sync::Arc;

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use crate::admin::exposition::{Labels, family, load};
use crate::control::ServiceState;
use crate::control::access::Refusal;

/// The refusal and client-table families: refusals for every service (zero without ACL or
/// limits), the table's families for services with `[service.limits]`.
pub(super) fn families(
    encoder: &mut DescriptorEncoder,
    services: &[Arc<ServiceState>],
) -> Result<(), fmt::Error> {
    let refused: Vec<(Labels, u64)> = services
        .iter()
        .flat_map(|s| {
            Refusal::ALL.into_iter().map(move |why| {
                let counter = match why {
                    Refusal::Acl => &s.counters.refused_acl,
                    Refusal::ClientConnections => &s.counters.refused_client_connections,
                    Refusal::ClientRate => &s.counters.refused_client_rate,
                };
                let labels = vec![
                    ("service", s.config.name.clone()),
                    ("reason", why.name().to_owned()),
                ];
                (labels, load(counter))
            })
        })
        .collect();
    family(
        encoder,
        "service_refused",
        "Clients refused before a backend was chosen: reason acl ([service.access]; TCP \
         connections and UDP flows), client_connections (max_connections_per_client), \
         client_rate (connection_rate_per_client).",
        MetricType::Counter,
        &refused,
    )?;
    let limited: Vec<&Arc<ServiceState>> = services
        .iter()
        .filter(|s| s.client_table().is_some())
        .collect();
    let svc = |s: &ServiceState| -> Labels { vec![("service", s.config.name.clone())] };
    let tracked: Vec<(Labels, u64)> = limited
        .iter()
        .map(|s| (svc(s), s.client_table().map_or(0, |t| t.len() as u64)))
        .collect();
    family(
        encoder,
        "client_table_entries",
        "Clients tracked by [service.limits] now (at most max_clients).",
        MetricType::Gauge,
        &tracked,
    )?;
    let evictions: Vec<(Labels, u64)> = limited
        .iter()
        .map(|s| (svc(s), load(&s.counters.client_evictions)))
        .collect();
    family(
        encoder,
        "client_table_evictions",
        "Clients evicted from the full [service.limits] table, least recently seen first.",
        MetricType::Counter,
        &evictions,
    )
}
