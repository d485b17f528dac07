//! Stage two for the process-wide tables: `[runtime]` (workers, limits, logging, the
//! instance's name) and `[admin]` (the API's address, token, caps and timeouts). The services
//! are checked in `validate`.

use std::net::SocketAddr;

use toml::Spanned;

use super::defaults::*;
use super::error::{ConfigError, Doc, Problem};
use super::file::{AdminFile, DurationText, RuntimeFile};
use super::validate::{duration, in_range, listen_clash};
use super::{AdminSettings, Protocol, Runtime, Secret, Service};

/// `[admin]`: a socket address no TCP service listens on, a token that is not empty, a
/// connection cap of at least one, timeouts longer than zero, and a token unless it listens on
/// loopback or `allow_open` says otherwise.
pub(super) fn admin(
    file: AdminFile,
    services: &[Service],
    doc: &Doc<'_>,
) -> Result<AdminSettings, ConfigError> {
    let at = || doc.at(file.listen.span().start, "admin.listen");
    let listen: SocketAddr = file.listen.get_ref().parse().map_err(|_| {
        ConfigError::new(
            at(),
            Problem::NotSocketAddr {
                value: file.listen.get_ref().clone(),
            },
        )
    })?;
    let taken = services
        .iter()
        .find(|s| s.protocol == Protocol::Tcp && listen_clash(listen, s.listen).is_some());
    if let Some(s) = taken {
        return Err(ConfigError::new(
            at(),
            Problem::AdminListenTaken {
                addr: listen,
                service: s.name.clone(),
            },
        ));
    }
    let token = match file.token {
        Some(t) if t.get_ref().trim().is_empty() => {
            return Err(ConfigError::new(
                doc.at(t.span().start, "admin.token"),
                Problem::Empty,
            ));
        }
        Some(t) => Some(Secret::new(t.into_inner())),
        None => None,
    };
    let allow_open = file.allow_open.unwrap_or(false);
    if token.is_none() && !listen.ip().to_canonical().is_loopback() && !allow_open {
        return Err(ConfigError::new(at(), Problem::AdminOpen { addr: listen }));
    }
    let max_connections = match &file.max_connections {
        Some(m) => in_range(
            doc,
            m,
            "admin.max_connections",
            1,
            Some(MAX_ADMIN_MAX_CONNECTIONS),
        )?,
        None => DEFAULT_ADMIN_MAX_CONNECTIONS,
    };
    let timeout = |value: &Option<Spanned<DurationText>>, key: &str, default| match value {
        Some(d) => duration(doc, d, key.to_owned(), false),
        None => Ok(default),
    };
    Ok(AdminSettings {
        listen,
        token,
        max_connections,
        header_timeout: timeout(
            &file.header_timeout,
            "admin.header_timeout",
            DEFAULT_ADMIN_HEADER_TIMEOUT,
        )?,
        body_timeout: timeout(
            &file.body_timeout,
            "admin.body_timeout",
            DEFAULT_ADMIN_BODY_TIMEOUT,
        )?,
        require_backends: file.require_backends.unwrap_or(DEFAULT_REQUIRE_BACKENDS),
        protect_reads: file.protect_reads.unwrap_or(false),
        allow_open,
    })
}

/// The number of workers when `workers` is not set: one per CPU this process may run on.
fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, std::num::NonZero::get)
        .min(MAX_WORKERS)
}

pub(super) fn runtime(file: Option<RuntimeFile>, doc: &Doc<'_>) -> Result<Runtime, ConfigError> {
    let Some(file) = file else {
        return Ok(Runtime {
            workers: default_workers(),
            pin_workers: DEFAULT_PIN_WORKERS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            freebind: DEFAULT_FREEBIND,
            log_format: None,
            instance_name: None,
        });
    };
    let workers = match &file.workers {
        Some(w) => in_range(doc, w, "runtime.workers", 1, Some(MAX_WORKERS))?,
        None => default_workers(),
    };
    let drain_timeout = match &file.drain_timeout {
        // Zero is meaningful here: close every connection at once.
        Some(d) => duration(doc, d, "runtime.drain_timeout".to_owned(), true)?,
        None => DEFAULT_DRAIN_TIMEOUT,
    };
    let instance_name = match &file.instance_name {
        Some(name) => Some(super::validate_alert::instance_name(name, doc)?),
        None => None,
    };
    Ok(Runtime {
        workers,
        pin_workers: file.pin_workers.unwrap_or(DEFAULT_PIN_WORKERS),
        drain_timeout,
        freebind: file.freebind.unwrap_or(DEFAULT_FREEBIND),
        log_format: file.log_format,
        instance_name,
    })
}
