//! Stage two for a service's `[service.health]` and `[service.persistence]` tables: per-value
//! checks, the rules between keys (which keys a check kind takes, which roles it can report,
//! timeout within interval) and defaults.

use toml::Spanned;

use super::defaults::*;
use super::error::{ConfigError, Problem};
use std::time::Duration;

use super::file::{AgentFile, HealthFile, PersistenceFile};
use super::validate::{ServiceCheck, duration, duration_within, given, in_range};
use super::{
    AgentCheck, HealthCheck, HealthKind, HttpMethod, HttpProbe, Persistence, PostgresRole, Probe,
    RedisRole, RoleName, Secret,
};
use crate::units::format_duration;

/// Byte offset of a key's value, when the key is present.
fn offset<T>(value: &Option<Spanned<T>>) -> Option<usize> {
    value.as_ref().map(|v| v.span().start)
}

impl ServiceCheck<'_, '_> {
    fn health_key(&self, key: &str) -> String {
        self.key(&format!("health.{key}"))
    }

    /// Refuses the first (in file order) of `present` keys: they do not apply to `kind`.
    fn refuse_first(
        &self,
        kind: HealthKind,
        present: &[(Option<usize>, &str)],
        applies_to: &'static str,
    ) -> Result<(), ConfigError> {
        let first = present
            .iter()
            .filter_map(|(offset, key)| offset.map(|o| (o, *key)))
            .min_by_key(|(o, _)| *o);
        match first {
            Some((offset, key)) => Err(ConfigError::new(
                self.doc.at(offset, self.health_key(key)),
                Problem::NotForHealthKind { kind, applies_to },
            )),
            None => Ok(()),
        }
    }

    /// A string that must not be empty.
    fn non_empty(&self, value: Spanned<String>, key: &str) -> Result<String, ConfigError> {
        if value.get_ref().is_empty() {
            return Err(ConfigError::new(
                self.doc.at(value.span().start, self.health_key(key)),
                Problem::Empty,
            ));
        }
        Ok(value.into_inner())
    }

    /// `[service.health]`: `None` for `kind = "none"`.
    pub(super) fn health(&self, h: HealthFile) -> Result<Option<HealthCheck>, ConfigError> {
        let doc = self.doc;
        let kind = given(&h.kind, DEFAULT_HEALTH_KIND);
        self.http_keys_only_for_http(kind, &h)?;
        let probe = match kind {
            HealthKind::None => {
                self.refuse_first(
                    kind,
                    &[
                        (offset(&h.interval), "interval"),
                        (offset(&h.timeout), "timeout"),
                        (offset(&h.rise), "rise"),
                        (offset(&h.fall), "fall"),
                        (offset(&h.port), "port"),
                        (offset(&h.passive_failures), "passive_failures"),
                        (offset(&h.role), "role"),
                        (offset(&h.user), "user"),
                        (offset(&h.password), "password"),
                        (offset(&h.database), "database"),
                        (offset(&h.fast_interval), "fast_interval"),
                    ],
                    "kind = \"tcp\", \"redis\", \"postgres\" or \"http\"",
                )?;
                return Ok(None);
            }
            HealthKind::Tcp => {
                self.refuse_first(
                    kind,
                    &[
                        (offset(&h.role), "role"),
                        (offset(&h.user), "user"),
                        (offset(&h.password), "password"),
                        (offset(&h.database), "database"),
                    ],
                    "kind = \"redis\" or \"postgres\"",
                )?;
                Probe::Tcp
            }
            HealthKind::Redis => {
                self.refuse_first(
                    kind,
                    &[(offset(&h.database), "database")],
                    "kind = \"postgres\"",
                )?;
                let role = match &h.role {
                    None => RedisRole::Any,
                    Some(r) => match r.get_ref() {
                        RoleName::Any => RedisRole::Any,
                        RoleName::Master => RedisRole::Master,
                        RoleName::Replica => RedisRole::Replica,
                        other => {
                            return Err(ConfigError::new(
                                doc.at(r.span().start, self.health_key("role")),
                                Problem::RoleNotForKind {
                                    role: *other,
                                    kind,
                                    allowed: "\"master\", \"replica\" or \"any\"",
                                },
                            ));
                        }
                    },
                };
                Probe::Redis {
                    role,
                    user: h.user.map(|u| self.non_empty(u, "user")).transpose()?,
                    password: h.password.map(|p| Secret::new(p.into_inner())),
                }
            }
            HealthKind::Postgres => {
                let role = match &h.role {
                    None => PostgresRole::Any,
                    Some(r) => match r.get_ref() {
                        RoleName::Any => PostgresRole::Any,
                        RoleName::Primary => PostgresRole::Primary,
                        RoleName::Standby => PostgresRole::Standby,
                        other => {
                            return Err(ConfigError::new(
                                doc.at(r.span().start, self.health_key("role")),
                                Problem::RoleNotForKind {
                                    role: *other,
                                    kind,
                                    allowed: "\"primary\", \"standby\" or \"any\"",
                                },
                            ));
                        }
                    },
                };
                let user = match h.user {
                    Some(u) => self.non_empty(u, "user")?,
                    None => DEFAULT_POSTGRES_USER.to_owned(),
                };
                // As libpq does: the database defaults to the user's name.
                let database = match h.database {
                    Some(d) => self.non_empty(d, "database")?,
                    None => user.clone(),
                };
                Probe::Postgres {
                    role,
                    user,
                    password: h.password.map(|p| Secret::new(p.into_inner())),
                    database,
                }
            }
            HealthKind::Http => {
                self.refuse_first(
                    kind,
                    &[
                        (offset(&h.role), "role"),
                        (offset(&h.user), "user"),
                        (offset(&h.password), "password"),
                        (offset(&h.database), "database"),
                    ],
                    "kind = \"redis\" or \"postgres\"",
                )?;
                Probe::Http(self.http_probe(&h)?)
            }
        };
        let interval = match &h.interval {
            Some(d) => duration(doc, d, self.health_key("interval"), false)?,
            None => DEFAULT_HEALTH_INTERVAL,
        };
        let timeout = match &h.timeout {
            Some(d) => {
                let timeout = duration(doc, d, self.health_key("timeout"), false)?;
                if timeout > interval {
                    return Err(ConfigError::new(
                        doc.at(d.span().start, self.health_key("timeout")),
                        Problem::TimeoutOverInterval {
                            timeout: format!("{:?}", d.get_ref().0),
                            interval: format_duration(interval),
                        },
                    ));
                }
                timeout
            }
            None => DEFAULT_HEALTH_TIMEOUT.min(interval),
        };
        let fast_interval = duration_within(
            doc,
            &h.fast_interval,
            self.health_key("fast_interval"),
            interval,
            Duration::from_millis(1)..=interval,
            || format!("between 1ms and interval ({})", format_duration(interval)),
        )?;
        let count = |value: &Option<Spanned<u32>>, key: &str, min: u32, default: u32| match value {
            Some(v) => in_range(doc, v, self.health_key(key), min, Some(MAX_RISE_FALL)),
            None => Ok(default),
        };
        let rise = count(&h.rise, "rise", 1, DEFAULT_RISE)?;
        let fall = count(&h.fall, "fall", 1, DEFAULT_FALL)?;
        // 0 turns passive detection off.
        let passive_failures = count(
            &h.passive_failures,
            "passive_failures",
            0,
            DEFAULT_PASSIVE_FAILURES,
        )?;
        let port = match &h.port {
            Some(p) => {
                let port = in_range(doc, p, self.health_key("port"), 1, Some(65_535))?;
                // In range, so it fits.
                Some(port as u16)
            }
            None => None,
        };

        Ok(Some(HealthCheck {
            probe,
            interval,
            fast_interval,
            timeout,
            rise,
            fall,
            port,
            passive_failures,
        }))
    }

    /// Refuses the HTTP check's keys on any other kind.
    fn http_keys_only_for_http(&self, kind: HealthKind, h: &HealthFile) -> Result<(), ConfigError> {
        if kind == HealthKind::Http {
            return Ok(());
        }
        self.refuse_first(
            kind,
            &[
                (offset(&h.method), "method"),
                (offset(&h.path), "path"),
                (offset(&h.expect_status), "expect_status"),
                (offset(&h.expect_body), "expect_body"),
                (offset(&h.host), "host"),
            ],
            "kind = \"http\"",
        )
    }

    /// The request and the accepted answers of `kind = "http"`.
    fn http_probe(&self, h: &HealthFile) -> Result<HttpProbe, ConfigError> {
        let doc = self.doc;
        let path = match &h.path {
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(ConfigError::new(
                    doc.at(p.span().start, self.health_key("path")),
                    Problem::HttpPath {
                        value: p.get_ref().clone(),
                    },
                ));
            }
            Some(p) => p.get_ref().clone(),
            None => DEFAULT_HTTP_PATH.to_owned(),
        };
        let mut expect_status = Vec::new();
        if let Some(list) = &h.expect_status {
            if list.get_ref().is_empty() {
                return Err(ConfigError::new(
                    doc.at(list.span().start, self.health_key("expect_status")),
                    Problem::Empty,
                ));
            }
            for v in list.get_ref() {
                let status = in_range(doc, v, self.health_key("expect_status"), 100, Some(599))?;
                // In range, so it fits.
                expect_status.push(status as u16);
            }
        }
        let method = given(&h.method, DEFAULT_HTTP_METHOD);
        if method == HttpMethod::Head
            && let Some(b) = &h.expect_body
        {
            return Err(ConfigError::new(
                doc.at(b.span().start, self.health_key("expect_body")),
                Problem::NotForHealthKind {
                    kind: HealthKind::Http,
                    applies_to: "method = \"GET\" or \"OPTIONS\" (a HEAD answer has no body)",
                },
            ));
        }
        Ok(HttpProbe {
            method,
            path,
            expect_status,
            expect_body: h
                .expect_body
                .clone()
                .map(|b| self.non_empty(b, "expect_body"))
                .transpose()?,
            host: h
                .host
                .clone()
                .map(|b| self.non_empty(b, "host"))
                .transpose()?,
        })
    }

    /// `[service.agent]`.
    pub(super) fn agent(&self, a: AgentFile) -> Result<AgentCheck, ConfigError> {
        let doc = self.doc;
        let port = in_range(doc, &a.port, self.key("agent.port"), 1, Some(65_535))?;
        let interval = match &a.interval {
            Some(d) => duration(doc, d, self.key("agent.interval"), false)?,
            None => DEFAULT_AGENT_INTERVAL,
        };
        let timeout = duration_within(
            doc,
            &a.timeout,
            self.key("agent.timeout"),
            DEFAULT_HEALTH_TIMEOUT.min(interval),
            Duration::from_millis(1)..=interval,
            || format!("between 1ms and interval ({})", format_duration(interval)),
        )?;
        Ok(AgentCheck {
            // In range, so it fits.
            port: port as u16,
            interval,
            timeout,
        })
    }

    /// `[service.persistence]`.
    pub(super) fn persistence(&self, p: PersistenceFile) -> Result<Persistence, ConfigError> {
        let doc = self.doc;
        let ttl = match &p.ttl {
            Some(d) => duration(doc, d, self.key("persistence.ttl"), false)?,
            None => DEFAULT_PERSISTENCE_TTL,
        };
        let max_entries = match &p.max_entries {
            Some(m) => in_range(
                doc,
                m,
                self.key("persistence.max_entries"),
                1,
                Some(MAX_PERSISTENCE_ENTRIES),
            )?,
            None => DEFAULT_PERSISTENCE_MAX_ENTRIES,
        };
        Ok(Persistence {
            kind: given(&p.kind, DEFAULT_PERSISTENCE_KIND),
            ttl,
            max_entries,
        })
    }
}
