//! Stage two for a service's `[[service.backend]]` tables: addresses (resolved once, here),
//! duplicates, weights and limits, a backend's own `source` list (`validate_source`), and the
//! rule that not every backend may be a backup (all of which a service with
//! `[service.discovery]` may break: its other backends come from the registry).

use toml::Spanned;

use super::defaults::*;
use super::error::{ConfigError, Problem};
use super::file::BackendFile;
use super::validate::{ServiceCheck, given, in_range};
use super::values::{AddrProblem, resolve_backend};
use super::{Backend, Origin, Protocol};

impl ServiceCheck<'_, '_> {
    /// The backends of the service, in file order. A service whose backends come from
    /// discovery (`discovering`) may have none written, or only backups.
    pub(super) fn backends(
        &self,
        list: Option<Spanned<Vec<Spanned<BackendFile>>>>,
        discovering: bool,
    ) -> Result<Vec<Backend>, ConfigError> {
        let doc = self.doc;
        let offset = list.as_ref().map_or(self.header, |l| l.span().start);
        let list = list.map(Spanned::into_inner).unwrap_or_default();
        if list.is_empty() && !discovering {
            return Err(ConfigError::new(
                doc.at(offset, self.key("backend")),
                Problem::NoBackends,
            ));
        }
        let mut backends: Vec<Backend> = Vec::with_capacity(list.len());
        let mut lines: Vec<usize> = Vec::with_capacity(list.len());
        let mut last_backup = None;
        for (j, entry) in list.into_iter().enumerate() {
            let b = entry.into_inner();
            let key = |k: &str| format!("service[{}].backend[{j}].{k}", self.index);
            let spec = b.address.get_ref();
            let at = || doc.at(b.address.span().start, key("address"));
            let address = resolve_backend(spec, doc.resolve).map_err(|problem| match problem {
                AddrProblem::NotAddress => ConfigError::new(
                    at(),
                    Problem::NotBackendAddr {
                        value: spec.clone(),
                    },
                ),
                AddrProblem::PortZero => ConfigError::new(
                    at(),
                    Problem::BackendPortZero {
                        value: spec.clone(),
                    },
                ),
                AddrProblem::Unresolvable(reason) => ConfigError::new(
                    at(),
                    Problem::Unresolvable {
                        value: spec.clone(),
                        reason,
                    },
                ),
            })?;
            if let Some(first_index) = backends.iter().position(|o| o.address == address) {
                return Err(ConfigError::new(
                    at(),
                    Problem::DuplicateBackend {
                        value: spec.clone(),
                        addr: address,
                        first_index,
                        first_line: lines[first_index],
                    },
                ));
            }
            let weight = match &b.weight {
                Some(w) => in_range(doc, w, key("weight"), 1, Some(MAX_WEIGHT))?,
                None => DEFAULT_WEIGHT,
            };
            self.only_for(Protocol::Tcp, &b.max_connections, || key("max_connections"))?;
            let max_connections = match &b.max_connections {
                Some(m) => Some(in_range(doc, m, key("max_connections"), 1, None)?),
                None => None,
            };
            let source_offset = b.source.as_ref().map(|s| s.span().start);
            let source = self.source(b.source, || key("source"))?;
            if let Some(offset) = source_offset {
                self.source_family(&source, address, offset, || key("source"))?;
            }
            self.only_for(Protocol::Tcp, &b.send_proxy, || key("send_proxy"))?;
            let send_proxy = b.send_proxy.as_ref().map(|v| *v.get_ref());
            let backup = given(&b.backup, DEFAULT_BACKUP);
            if let Some(v) = &b.backup {
                last_backup = Some((v.span().start, key("backup")));
            }
            let health_port = match &b.health_port {
                // In range, so it fits.
                Some(p) => Some(in_range(doc, p, key("health_port"), 1, Some(65_535))? as u16),
                None => None,
            };
            lines.push(doc.line(b.address.span().start));
            backends.push(Backend {
                address,
                spec: b.address.into_inner(),
                weight,
                max_connections,
                backup,
                health_port,
                source,
                origin: Origin::Static,
                send_proxy,
            });
        }
        if !discovering
            && backends.iter().all(|b| b.backup)
            && let Some((offset, key)) = last_backup
        {
            return Err(ConfigError::new(
                doc.at(offset, key),
                Problem::NoPrimaryBackend,
            ));
        }
        Ok(backends)
    }
}
