//! `ringlb check`'s summary of a loaded configuration: one line for the runtime, one per
//! service with its policy, one per backend, and one per alert webhook. Reads only the typed
//! [`Config`]; owns no parsing or validation.

use std::fmt::Write as _;
use std::net::IpAddr;

use super::*;
use crate::units::{format_bytes, format_duration};

impl Config {
    /// A short human summary: workers, then each service with protocol, listen address,
    /// algorithm, timeouts and backends with weights, then each alert webhook (its URL's origin
    /// only: the rest may hold a secret). Printed by `ringlb check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let rt = &self.runtime;
        let services = self.services.len();
        let _ = writeln!(
            out,
            "{}: {} worker{}{}, drain timeout {}, {} service{}",
            self.source,
            rt.workers,
            plural(rt.workers),
            if rt.pin_workers { " (pinned)" } else { "" },
            format_duration(rt.drain_timeout),
            services,
            plural(services),
        );
        for s in &self.services {
            let _ = write!(
                out,
                "service {:?}: {} {}, {}",
                s.name,
                s.protocol,
                s.listen,
                s.algorithm.name()
            );
            if s.algorithm == Algorithm::SourceHash {
                let _ = write!(out, " (table {})", s.hash_table_size);
            }
            match s.protocol {
                Protocol::Tcp => {
                    let _ = write!(
                        out,
                        ", connect timeout {}, idle timeout {}, max {} connections, {} retr{}, \
                         buffer {}, backlog {}",
                        format_duration(s.connect_timeout),
                        format_duration(s.idle_timeout),
                        s.max_connections,
                        s.retries,
                        if s.retries == 1 { "y" } else { "ies" },
                        format_bytes(s.buffer_size as u64),
                        s.backlog,
                    );
                    if !s.splice {
                        out.push_str(", no splice");
                    }
                }
                Protocol::Udp => {
                    let _ = write!(
                        out,
                        ", {} mode, idle timeout {}, max {} flows",
                        s.udp.mode.name(),
                        format_duration(s.udp.idle_timeout),
                        s.udp.max_flows,
                    );
                    if let Some(replies) = s.udp.replies {
                        let _ = write!(
                            out,
                            ", {replies} repl{}",
                            if replies == 1 { "y" } else { "ies" }
                        );
                    }
                }
            }
            if s.access_log {
                out.push_str(", access log");
            }
            summarize_source(&mut out, &s.source);
            if let Some(v) = s.send_proxy {
                let _ = write!(out, ", send PROXY {}", v.name());
            }
            if let Some(a) = &s.accept_proxy {
                let _ = write!(
                    out,
                    ", accept PROXY from {} trusted prefix{} within {}",
                    a.trusted.len(),
                    if a.trusted.len() == 1 { "" } else { "es" },
                    format_duration(a.timeout)
                );
            }
            out.push('\n');
            summarize_policy(&mut out, s);
            if let Some(d) = &s.discovery {
                let _ = writeln!(
                    out,
                    "  discovery {}: {}, max {} backends",
                    d.source.kind(),
                    d.source.target(),
                    d.max_backends
                );
            }
            for b in &s.backends {
                let _ = write!(out, "  backend {}", b.address);
                if b.spec != b.address.to_string() {
                    let _ = write!(out, " ({})", b.spec);
                }
                let _ = write!(out, " weight {}", b.weight);
                if let Some(max) = b.max_connections {
                    let _ = write!(out, ", max {max} connections");
                }
                if b.backup {
                    out.push_str(", backup");
                }
                if let Some(port) = b.health_port {
                    let _ = write!(out, ", checked on port {port}");
                }
                summarize_source(&mut out, &b.source);
                if let Some(v) = b.send_proxy {
                    let _ = write!(out, ", send PROXY {}", v.name());
                }
                out.push('\n');
            }
        }
        if let Some(admin) = &self.admin {
            let _ = writeln!(
                out,
                "admin API: http://{}{}",
                admin.listen,
                if admin.token.is_some() {
                    " (token required for changes)"
                } else {
                    ""
                }
            );
        }
        summarize_alerts(&mut out, &self.alerts);
        out
    }
}

/// One line per alert webhook: name, origin, events, timeout and retries; its body format,
/// header names and CA file when not the defaults.
fn summarize_alerts(out: &mut String, alerts: &AlertSettings) {
    for w in &alerts.webhooks {
        let events = if w.events == AlertKinds::ALL {
            "all events".to_owned()
        } else {
            w.events
                .iter()
                .map(AlertKind::name)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(out, "alert webhook {:?}", w.name);
        let origin = w.url.origin().ascii_serialization();
        if origin != w.name {
            let _ = write!(out, " to {origin}");
        }
        let _ = write!(
            out,
            ": {events}, timeout {}, {} retr{}",
            format_duration(w.timeout),
            w.retries,
            if w.retries == 1 { "y" } else { "ies" },
        );
        if w.retries > 0 {
            let _ = write!(out, " (backoff from {})", format_duration(w.backoff));
        }
        if w.format != BodyFormat::Json {
            let _ = write!(out, ", {} body", w.format.name());
        }
        if !w.headers.is_empty() {
            // Names only: the values may be tokens.
            let names: Vec<&str> = w.headers.iter().map(|(n, _)| n.as_str()).collect();
            let _ = write!(out, ", headers {}", names.join(", "));
        }
        if let Some(ca) = &w.ca {
            let _ = write!(out, ", extra CA {}", ca.path);
        }
        out.push('\n');
    }
}

/// The health, persistence and failover lines of a service's summary (none when all default).
fn summarize_policy(out: &mut String, s: &Service) {
    if let Some(h) = &s.health {
        let _ = write!(out, "  health {}", h.probe.kind());
        match &h.probe {
            Probe::Tcp => {}
            Probe::Redis { role, user, .. } => {
                if *role != RedisRole::Any {
                    let _ = write!(out, " (role {})", role.name());
                }
                if let Some(user) = user {
                    let _ = write!(out, " as {user:?}");
                }
            }
            Probe::Postgres {
                role,
                user,
                database,
                ..
            } => {
                if *role != PostgresRole::Any {
                    let _ = write!(out, " (role {})", role.name());
                }
                let _ = write!(out, " as {user:?} on {database:?}");
            }
            Probe::Http(http) => {
                let _ = write!(out, " {} {}", http.method.name(), http.path);
                if !http.expect_status.is_empty() {
                    let _ = write!(out, " expecting {:?}", http.expect_status);
                }
                if let Some(body) = &http.expect_body {
                    let _ = write!(out, " with {body:?} in the body");
                }
            }
        }
        if let Some(port) = h.port {
            let _ = write!(out, " on port {port}");
        }
        let _ = write!(
            out,
            ", every {}, timeout {}, rise {}, fall {}",
            format_duration(h.interval),
            format_duration(h.timeout),
            h.rise,
            h.fall
        );
        if h.fast_interval != h.interval {
            let _ = write!(
                out,
                ", every {} while between states",
                format_duration(h.fast_interval)
            );
        }
        if h.passive_failures > 0 {
            let _ = write!(
                out,
                ", down after {} connect failure{} in a row",
                h.passive_failures,
                plural(h.passive_failures as usize)
            );
        }
        out.push('\n');
    }
    if let Some(a) = &s.agent {
        let _ = writeln!(
            out,
            "  agent on port {}, every {}, timeout {}",
            a.port,
            format_duration(a.interval),
            format_duration(a.timeout)
        );
    }
    if s.on_backend_down != OnBackendDown::Keep || !s.slow_start.is_zero() {
        let _ = write!(out, "  on backend down: {}", s.on_backend_down.name());
        if !s.slow_start.is_zero() {
            let _ = write!(out, ", slow start {}", format_duration(s.slow_start));
        }
        out.push('\n');
    }
    if let Some(a) = &s.access {
        let _ = write!(out, "  access: ");
        match &a.allow {
            Some(allow) => {
                let _ = write!(
                    out,
                    "{} prefix{} allowed",
                    allow.len(),
                    plural_es(allow.len())
                );
            }
            None => out.push_str("everyone allowed"),
        }
        let _ = writeln!(out, ", {} denied", a.deny.len());
    }
    if let Some(l) = &s.limits {
        let mut limits = Vec::new();
        if let Some(max) = l.max_connections {
            limits.push(format!("max {max} connections"));
        }
        if let Some(rate) = l.rate {
            limits.push(format!("{rate} (burst {})", l.burst));
        }
        if limits.is_empty() {
            limits.push("no limit".to_owned());
        }
        let _ = writeln!(
            out,
            "  per client: {}; IPv6 per /{}, {} clients tracked",
            limits.join(", "),
            l.ipv6_prefix,
            l.max_clients
        );
    }
    if let Some(p) = &s.persistence {
        let _ = writeln!(
            out,
            "  persistence {}, ttl {}, max {} entries",
            p.kind.name(),
            format_duration(p.ttl),
            p.max_entries
        );
    }
}

/// `, from 192.0.2.10, 192.0.2.11` when `source` is set.
fn summarize_source(out: &mut String, source: &[IpAddr]) {
    for (i, addr) in source.iter().enumerate() {
        let _ = write!(out, "{}{addr}", if i == 0 { ", from " } else { ", " });
    }
}

fn plural_es(n: usize) -> &'static str {
    if n == 1 { "" } else { "es" }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
