//! `GET /metrics`: the Prometheus text exposition of ringlb's counters.
//!
//! Owns: metric names, help texts and labels. The values are read at scrape time from the
//! shared atomics that workers and the health checker already keep (services and backends of
//! the current snapshot, workers' counters), so scraping adds nothing to the data path; the
//! histograms merge their per-worker hdrhistogram shards. Encoding is prometheus-client's
//! (text format 0.0.4), through a [`Collector`] built per scrape (see `exposition`).
//!
//! Names (all prefixed `ringlb_`), labels in braces:
//! - services {service}: `service_connections_total`, `service_connections_active`,
//!   `service_no_backend_total`, `service_retries_total`, `service_local_connect_failures_total`,
//!   `service_spliced_bytes_total`, `service_up`; services with `accept_proxy` also
//!   `service_proxy_rejected_total{reason}` (untrusted, malformed, oversized, timeout, closed); UDP services also `udp_flows_active`, `udp_flows_opened_total`,
//!   `udp_flows_evicted_total`, `udp_flows_expired_total`, `udp_datagrams_total{direction}`
//!   (up: client to backend, down: backend to client), `udp_datagrams_dropped_total`,
//!   `udp_kernel_drops_total` (dropped by the kernel at the service's sockets, sampled
//!   about once a second); `service_refused_total{reason}` (acl, client_connections,
//!   client_rate); with `[service.limits]`, `client_table_entries` and
//!   `client_table_evictions_total`;
//! - backends {service, backend}: `backend_connections_total`, `backend_connections_active`,
//!   `backend_bytes_sent_total` (to the backend), `backend_bytes_received_total` (from it),
//!   `backend_connect_failures_total{reason}` (refused, timeout, other),
//!   `backend_sessions_closed_total`, `backend_up`, `backend_healthy`,
//!   `backend_admin_state{state}` (1 for the current one of enabled, drain, disabled),
//!   `backend_weight`, `backend_health_transitions_total`, `backend_probes_total`,
//!   `backend_probe_failures_total`, `backend_agent_errors_total`, and the histograms `backend_connect_seconds` and
//!   `backend_session_seconds`;
//! - workers {worker}: `worker_accepts_total`, `worker_connections_active`;
//! - alerts {webhook}: `alert_deliveries_total`, `alert_delivery_failures_total`,
//!   `alert_retries_total`, `alert_webhook_dropped_total`; and `alerts_dropped_total`;
//! - local shortages {source, reason}: `local_shortages_total` (source `probe`: a health probe
//!   not run, `connect`: a backend connect; reason `ports`, `fds`, `system_fds`, `buffers`,
//!   `memory`), none of which counts against a backend;
//! - admin API: `admin_connections_open`, `admin_connections_total`,
//!   `admin_connections_closed_at_cap_total`, `admin_timeouts_total{phase}` (header, body),
//!   `admin_requests_too_large_total`;
//! - process: `connection_budget`, `connection_budget_used`, `config_version`,
//!   `config_reloads_total`, `config_reload_failures_total`, `uptime_seconds`.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::balancer::health::Admin;
use crate::config::Protocol;
use crate::control::histogram::LatencyHistogram;

mod access;
mod discovery;

use super::exposition::{Family, Labels, Value, family, load};
use super::instance::Instance;
use super::serve::AdminStats;

/// Upper bounds of the connect-latency buckets, in seconds.
const CONNECT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0, 5.0,
];

/// Upper bounds of the session-duration buckets, in seconds.
const SESSION_BUCKETS: [f64; 10] = [
    0.001, 0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0,
];

/// Renders every metric in the Prometheus text format.
pub fn render(instance: &Arc<Instance>, admin: &Arc<AdminStats>) -> String {
    let mut registry = Registry::with_prefix("ringlb");
    registry.register_collector(Box::new(Metrics(instance.clone(), admin.clone())));
    let mut out = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail; an encoder error would be a bug in the collector.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        let _ = writeln!(out, "# error encoding metrics: {e}");
    }
    out
}

/// The collector: reads the instance's state at scrape time.
#[derive(Debug)]
struct Metrics(Arc<Instance>, Arc<AdminStats>);

impl Collector for Metrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let instance = &self.0;
        let snapshot = instance.snapshot().load();
        let services = &snapshot.services;
        let svc = |s: &crate::control::ServiceState| -> Labels {
            vec![("service", s.config.name.clone())]
        };
        let per_service =
            |get: &dyn Fn(&crate::control::ServiceState) -> u64| -> Vec<(Labels, u64)> {
                services.iter().map(|s| (svc(s), get(s))).collect()
            };
        let udp: Vec<_> = services
            .iter()
            .filter(|s| s.config.protocol == Protocol::Udp)
            .collect();
        let per_udp = |get: &dyn Fn(&crate::control::ServiceState) -> u64| -> Vec<(Labels, u64)> {
            udp.iter().map(|s| (svc(s), get(s))).collect()
        };
        use MetricType::{Counter, Gauge};

        family(
            &mut encoder,
            "service_connections",
            "Client connections accepted (UDP: none; see udp_flows_opened).",
            Counter,
            &per_service(&|s| load(&s.counters.accepted)),
        )?;
        family(
            &mut encoder,
            "service_connections_active",
            "Client connections open now.",
            Gauge,
            &per_service(&|s| load(&s.counters.active)),
        )?;
        family(
            &mut encoder,
            "service_no_backend",
            "Client connections closed because no backend was ready or reachable.",
            Counter,
            &per_service(&|s| load(&s.counters.no_backend)),
        )?;
        family(
            &mut encoder,
            "service_retries",
            "Connects to a further backend after one failed.",
            Counter,
            &per_service(&|s| load(&s.counters.retries)),
        )?;
        family(
            &mut encoder,
            "service_spliced_bytes",
            "Bytes moved socket to socket through a kernel pipe (splice), both directions.",
            Counter,
            &per_service(&|s| load(&s.counters.spliced_bytes)),
        )?;
        family(
            &mut encoder,
            "service_local_connect_failures",
            "Backend connects that failed for a local reason (out of fds, ports or memory).",
            Counter,
            &per_service(&|s| load(&s.counters.local_connect_failures)),
        )?;
        let proxy_rejected: Vec<(Labels, u64)> = services
            .iter()
            .filter(|s| s.config.accept_proxy.is_some())
            .flat_map(|s| {
                crate::proxyproto::Reject::ALL.map(|reason| {
                    (
                        vec![
                            ("service", s.config.name.clone()),
                            ("reason", reason.as_str().to_owned()),
                        ],
                        load(s.counters.proxy_rejected.get(reason)),
                    )
                })
            })
            .collect();
        family(
            &mut encoder,
            "service_proxy_rejected",
            "Client connections closed at their PROXY header (accept_proxy), by reason.",
            Counter,
            &proxy_rejected,
        )?;
        family(
            &mut encoder,
            "service_up",
            "1 while some backend (primary or backup) is up.",
            Gauge,
            &per_service(&|s| u64::from(s.available())),
        )?;

        family(
            &mut encoder,
            "udp_flows_active",
            "UDP flows tracked now.",
            Gauge,
            &per_udp(&|s| load(&s.counters.udp_flows_active)),
        )?;
        family(
            &mut encoder,
            "udp_flows_opened",
            "UDP flows opened.",
            Counter,
            &per_udp(&|s| load(&s.counters.udp_flows_opened)),
        )?;
        family(
            &mut encoder,
            "udp_flows_evicted",
            "UDP flows evicted because the flow table was full.",
            Counter,
            &per_udp(&|s| load(&s.counters.udp_flows_evicted)),
        )?;
        family(
            &mut encoder,
            "udp_flows_expired",
            "UDP flows ended by udp_idle_timeout.",
            Counter,
            &per_udp(&|s| load(&s.counters.udp_flows_expired)),
        )?;
        let datagrams: Vec<(Labels, u64)> = udp
            .iter()
            .flat_map(|s| {
                [
                    (
                        vec![
                            ("service", s.config.name.clone()),
                            ("direction", "up".to_owned()),
                        ],
                        load(&s.counters.udp_datagrams_up),
                    ),
                    (
                        vec![
                            ("service", s.config.name.clone()),
                            ("direction", "down".to_owned()),
                        ],
                        load(&s.counters.udp_datagrams_down),
                    ),
                ]
            })
            .collect();
        family(
            &mut encoder,
            "udp_datagrams",
            "UDP datagrams forwarded (up: client to backend, down: backend to client).",
            Counter,
            &datagrams,
        )?;
        family(
            &mut encoder,
            "udp_datagrams_dropped",
            "UDP datagrams dropped.",
            Counter,
            &per_udp(&|s| load(&s.counters.udp_datagrams_dropped)),
        )?;
        family(
            &mut encoder,
            "udp_kernel_drops",
            "UDP datagrams the kernel dropped at the service's sockets (receive buffer full).",
            Counter,
            &per_udp(&|s| load(&s.counters.udp_kernel_drops)),
        )?;

        // Backends.
        let backends: Vec<(
            Labels,
            &crate::control::BackendState,
            &crate::control::ServiceState,
        )> = services
            .iter()
            .flat_map(|s| {
                s.backends.iter().map(move |b| {
                    (
                        vec![
                            ("service", s.config.name.clone()),
                            ("backend", b.address().to_string()),
                        ],
                        b,
                        s.as_ref(),
                    )
                })
            })
            .collect();
        let per_backend =
            |get: &dyn Fn(&crate::control::BackendState) -> u64| -> Vec<(Labels, u64)> {
                backends
                    .iter()
                    .map(|(l, b, _)| (l.clone(), get(b)))
                    .collect()
            };
        family(
            &mut encoder,
            "backend_connections",
            "Connections established to the backend (UDP: flows bound to it).",
            Counter,
            &per_backend(&|b| load(&b.counters.connections)),
        )?;
        family(
            &mut encoder,
            "backend_connections_active",
            "Connections open or opening to the backend.",
            Gauge,
            &per_backend(&|b| load(&b.counters.active)),
        )?;
        family(
            &mut encoder,
            "backend_bytes_sent",
            "Bytes sent to the backend (from clients), counted when a connection closes.",
            Counter,
            &per_backend(&|b| load(&b.counters.bytes_to_backend)),
        )?;
        family(
            &mut encoder,
            "backend_bytes_received",
            "Bytes received from the backend (for clients), counted when a connection closes.",
            Counter,
            &per_backend(&|b| load(&b.counters.bytes_to_client)),
        )?;
        let failures: Vec<(Labels, u64)> = backends
            .iter()
            .flat_map(|(l, b, _)| {
                let c = &b.counters;
                let total = load(&c.connect_failures);
                let refused = load(&c.connect_refused);
                let timeout = load(&c.connect_timeouts);
                let other = total.saturating_sub(refused + timeout);
                [("refused", refused), ("timeout", timeout), ("other", other)].map(|(reason, v)| {
                    let mut l = l.clone();
                    l.push(("reason", reason.to_owned()));
                    (l, v)
                })
            })
            .collect();
        family(
            &mut encoder,
            "backend_connect_failures",
            "Failed connects to the backend, by reason.",
            Counter,
            &failures,
        )?;
        family(
            &mut encoder,
            "backend_sessions_closed",
            "Live sessions closed because the backend was marked down or disabled.",
            Counter,
            &per_backend(&|b| load(&b.counters.sessions_closed)),
        )?;
        family(
            &mut encoder,
            "backend_up",
            "1 while the backend is healthy and enabled.",
            Gauge,
            &per_backend(&|b| u64::from(b.live.up())),
        )?;
        family(
            &mut encoder,
            "backend_healthy",
            "1 while the backend passes its health checks (always 1 without checks).",
            Gauge,
            &per_backend(&|b| u64::from(b.live.healthy())),
        )?;
        let admin: Vec<(Labels, u64)> = backends
            .iter()
            .flat_map(|(l, b, _)| {
                let now = b.live.admin();
                [Admin::Enabled, Admin::Drain, Admin::Disabled].map(|state| {
                    let mut l = l.clone();
                    l.push(("state", state.name().to_owned()));
                    (l, u64::from(state == now))
                })
            })
            .collect();
        family(
            &mut encoder,
            "backend_admin_state",
            "The operator's state of the backend: 1 for the current one.",
            Gauge,
            &admin,
        )?;
        family(
            &mut encoder,
            "backend_weight",
            "The backend's weight.",
            Gauge,
            &per_backend(&|b| u64::from(b.config.weight)),
        )?;
        family(
            &mut encoder,
            "backend_health_transitions",
            "Health transitions (down or up).",
            Counter,
            &per_backend(&|b| load(&b.counters.health_transitions)),
        )?;
        family(
            &mut encoder,
            "backend_probes",
            "Health probes run.",
            Counter,
            &per_backend(&|b| load(&b.counters.probes)),
        )?;
        family(
            &mut encoder,
            "backend_probe_failures",
            "Health probes that failed.",
            Counter,
            &per_backend(&|b| load(&b.counters.probe_failures)),
        )?;
        family(
            &mut encoder,
            "backend_agent_errors",
            "Agent queries without a usable answer (no connection, no line in time, too long, \
             unknown words).",
            Counter,
            &per_backend(&|b| load(&b.counters.agent_errors)),
        )?;
        histograms(
            &mut encoder,
            "backend_connect_seconds",
            "Time to connect to the backend.",
            &backends,
            |b| &b.counters.connect_latency,
            1e-6,
            &CONNECT_BUCKETS,
        )?;
        histograms(
            &mut encoder,
            "backend_session_seconds",
            "Length of proxied TCP sessions, accept to close.",
            &backends,
            |b| &b.counters.session_duration,
            1e-3,
            &SESSION_BUCKETS,
        )?;

        // Workers.
        let workers = instance.dataplane().stats();
        let per_worker =
            |get: &dyn Fn(&crate::dataplane::WorkerStats) -> u64| -> Vec<(Labels, u64)> {
                workers
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (vec![("worker", i.to_string())], get(w)))
                    .collect()
            };
        family(
            &mut encoder,
            "worker_accepts",
            "Client connections accepted by the worker.",
            Counter,
            &per_worker(&|w| load(&w.accepts)),
        )?;
        family(
            &mut encoder,
            "worker_connections_active",
            "Connections the worker tracks now.",
            Gauge,
            &per_worker(&|w| load(&w.live)),
        )?;

        // Process.
        let none = || -> Labels { Vec::new() };
        let budget = instance.budget();
        family(
            &mut encoder,
            "connection_budget",
            "Most client connections at once, from the open-files limit.",
            Gauge,
            &[(none(), budget.max())],
        )?;
        family(
            &mut encoder,
            "connection_budget_used",
            "Client connections holding a share of the budget now.",
            Gauge,
            &[(none(), budget.active())],
        )?;
        family(
            &mut encoder,
            "config_version",
            "Version of the running snapshot: 1 at start, +1 per change.",
            Gauge,
            &[(none(), snapshot.version)],
        )?;
        family(
            &mut encoder,
            "config_reloads",
            "Reloads applied.",
            Counter,
            &[(none(), load(&instance.reloads))],
        )?;
        family(
            &mut encoder,
            "config_reload_failures",
            "Reloads refused (invalid config, or a listener that could not be bound).",
            Counter,
            &[(none(), load(&instance.reload_failures))],
        )?;
        // The admin API.
        let a = &self.1;
        let one = |v: &dyn Value| [(none(), load(v))];
        family(
            &mut encoder,
            "admin_connections_open",
            "Admin API connections open now.",
            Gauge,
            &one(&a.open),
        )?;
        family(
            &mut encoder,
            "admin_connections",
            "Admin API connections accepted.",
            Counter,
            &one(&a.accepted),
        )?;
        family(
            &mut encoder,
            "admin_connections_closed_at_cap",
            "Idle admin connections closed to make room at [admin] max_connections.",
            Counter,
            &one(&a.closed_at_cap),
        )?;
        let phase = |p: &str, v: &dyn Value| (vec![("phase", p.to_owned())], load(v));
        family(
            &mut encoder,
            "admin_timeouts",
            "Admin connections closed because a request's headers or body came too late.",
            Counter,
            &[
                phase("header", &a.header_timeouts),
                phase("body", &a.body_timeouts),
            ],
        )?;
        family(
            &mut encoder,
            "admin_requests_too_large",
            "Admin requests refused for headers or a body over the size limits (431, 413).",
            Counter,
            &one(&a.too_large),
        )?;
        // Alerts.
        let alerts = instance.alert_stats();
        let per_hook =
            |get: &dyn Fn(&crate::control::alerts::WebhookStats) -> u64| -> Vec<(Labels, u64)> {
                alerts
                    .webhooks
                    .iter()
                    .map(|w| (vec![("webhook", w.name.clone())], get(w)))
                    .collect()
            };
        family(
            &mut encoder,
            "alert_deliveries",
            "Alerts delivered to the webhook (a 2xx answer).",
            Counter,
            &per_hook(&|w| w.delivered),
        )?;
        family(
            &mut encoder,
            "alert_delivery_failures",
            "Alerts that could not be delivered to the webhook after every retry.",
            Counter,
            &per_hook(&|w| w.failed),
        )?;
        family(
            &mut encoder,
            "alert_retries",
            "Delivery attempts repeated after a failure.",
            Counter,
            &per_hook(&|w| w.retries),
        )?;
        family(
            &mut encoder,
            "alert_webhook_dropped",
            "Alerts dropped because the webhook's queue was full.",
            Counter,
            &per_hook(&|w| w.dropped),
        )?;
        family(
            &mut encoder,
            "alerts_dropped",
            "Alerts dropped because the alert queue was full.",
            Counter,
            &[(none(), alerts.dropped)],
        )?;
        let shortages: Vec<(Labels, u64)> = crate::control::local::counts()
            .into_iter()
            .map(|(source, reason, n)| {
                let labels = vec![
                    ("source", source.name().into()),
                    ("reason", reason.name().into()),
                ];
                (labels, n)
            })
            .collect();
        family(
            &mut encoder,
            "local_shortages",
            "Probes not run and backend connects failed because ringlb ran out of its own \
             ports, fds or memory (never counted against a backend).",
            Counter,
            &shortages,
        )?;
        let mut uptime = Family::new(
            &mut encoder,
            "uptime_seconds",
            "Seconds since ringlb started.",
            Gauge,
        )?;
        uptime.gauge_f64(&none(), instance.uptime().as_secs_f64())?;
        access::families(&mut encoder, services)?;
        discovery::families(&mut encoder, instance, services)
    }
}

/// One histogram family over the backends.
fn histograms(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    backends: &[(
        Labels,
        &crate::control::BackendState,
        &crate::control::ServiceState,
    )],
    get: impl Fn(&crate::control::BackendState) -> &LatencyHistogram,
    unit: f64,
    bounds: &[f64],
) -> fmt::Result {
    if backends.is_empty() {
        return Ok(());
    }
    let mut f = Family::new(encoder, name, help, MetricType::Histogram)?;
    for (labels, b, _) in backends {
        let merged = get(b).merged();
        f.histogram(labels, merged.as_ref(), unit, bounds)?;
    }
    Ok(())
}
