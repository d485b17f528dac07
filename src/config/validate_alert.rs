//! Stage two for the `[alert]` table: each `[[alert.webhook]]`'s URL, name, events, timeout,
//! retries and backoff, body format and template, headers and CA file, distinct names, and
//! defaults; and `[runtime] instance_name`, the name alerts carry.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};

use toml::Spanned;

use super::defaults::*;
use super::error::{ConfigError, Doc, Problem};
use super::file::{AlertFile, DurationText, WebhookFile};
use super::validate::{duration_within, in_range, is_service_name};
use super::values::parse_webhook_url;
use super::{AlertKinds, AlertSettings, BodyFormat, CaFile, FormatName, Template, Webhook};
use crate::units::format_duration;

/// The typed `[alert]` settings; no webhook when the table is absent.
pub(super) fn settings(
    file: Option<AlertFile>,
    doc: &Doc<'_>,
) -> Result<AlertSettings, ConfigError> {
    let (list, shared_ca) = match file {
        Some(f) => {
            let ca = match &f.ca_file {
                Some(path) => Some(ca_file(path, doc, "alert.ca_file".to_owned())?),
                None => None,
            };
            (f.webhook.unwrap_or_default(), ca)
        }
        None => (Vec::new(), None),
    };
    let mut webhooks: Vec<Webhook> = Vec::with_capacity(list.len());
    // Line of each webhook's name (or URL, when the name is the default).
    let mut name_lines: Vec<usize> = Vec::with_capacity(list.len());
    for (index, entry) in list.into_iter().enumerate() {
        let w = entry.into_inner();
        let key = |k: &str| format!("alert.webhook[{index}].{k}");
        let url = parse_webhook_url(w.url.get_ref()).map_err(|reason| {
            ConfigError::new(
                doc.at(w.url.span().start, key("url")),
                Problem::BadWebhookUrl {
                    value: w.url.get_ref().clone(),
                    reason,
                },
            )
        })?;
        let (name, name_at, from_url) = match &w.name {
            Some(n) => {
                if !is_service_name(n.get_ref()) {
                    return Err(ConfigError::new(
                        doc.at(n.span().start, key("name")),
                        Problem::BadWebhookName {
                            value: n.get_ref().clone(),
                        },
                    ));
                }
                (
                    n.get_ref().clone(),
                    doc.at(n.span().start, key("name")),
                    false,
                )
            }
            None => (
                url.origin().ascii_serialization(),
                doc.at(w.url.span().start, key("url")),
                true,
            ),
        };
        if let Some(first_index) = webhooks.iter().position(|o| o.name == name) {
            return Err(ConfigError::new(
                name_at,
                Problem::DuplicateWebhookName {
                    value: name,
                    first_index,
                    first_line: name_lines[first_index],
                    from_url,
                },
            ));
        }
        name_lines.push(name_at.line);
        let events = events(&w, doc, &key)?;
        let timeout = bounded(
            doc,
            &w.timeout,
            key("timeout"),
            DEFAULT_WEBHOOK_TIMEOUT,
            MAX_WEBHOOK_TIMEOUT,
        )?;
        let retries = match &w.retries {
            Some(r) => in_range(doc, r, key("retries"), 0, Some(MAX_WEBHOOK_RETRIES))?,
            None => DEFAULT_WEBHOOK_RETRIES,
        };
        let backoff = bounded(
            doc,
            &w.backoff,
            key("backoff"),
            DEFAULT_WEBHOOK_BACKOFF,
            MAX_WEBHOOK_BACKOFF,
        )?;
        let format = format(&w, doc, &key)?;
        let headers = match &w.headers {
            Some(h) => headers(h.get_ref(), doc, &key)?,
            None => Vec::new(),
        };
        let ca = match &w.ca_file {
            Some(path) => Some(ca_file(path, doc, key("ca_file"))?),
            None => shared_ca.clone(),
        };
        webhooks.push(Webhook {
            name,
            url,
            format,
            headers,
            ca,
            events,
            timeout,
            retries,
            backoff,
        });
    }
    Ok(AlertSettings { webhooks })
}

/// `events`: known names (serde refused the others), none twice, not empty.
fn events(
    w: &WebhookFile,
    doc: &Doc<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<AlertKinds, ConfigError> {
    let Some(list) = &w.events else {
        return Ok(DEFAULT_WEBHOOK_EVENTS);
    };
    if list.get_ref().is_empty() {
        return Err(ConfigError::new(
            doc.at(list.span().start, key("events")),
            Problem::NoEvents,
        ));
    }
    let mut set = AlertKinds::NONE;
    for (i, entry) in list.get_ref().iter().enumerate() {
        let kind = *entry.get_ref();
        if set.contains(kind) {
            return Err(ConfigError::new(
                doc.at(entry.span().start, key(&format!("events[{i}]"))),
                Problem::DuplicateEvent { event: kind },
            ));
        }
        set = set.with(kind);
    }
    Ok(set)
}

/// `format` and `template`: a template exactly when the format is `template`, parsed; and
/// unless a `Content-Type` header says otherwise, a template must render JSON.
fn format(
    w: &WebhookFile,
    doc: &Doc<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<BodyFormat, ConfigError> {
    let name = w.format.as_ref().map(|f| *f.get_ref());
    let bad = |at: usize, k: &str, reason: String| {
        ConfigError::new(doc.at(at, key(k)), Problem::BadTemplate { reason })
    };
    match (name, &w.template) {
        (Some(FormatName::Template), Some(text)) => {
            let template = Template::parse(text.get_ref())
                .map_err(|reason| bad(text.span().start, "template", reason))?;
            let own_type = w.headers.as_ref().is_some_and(|h| {
                h.get_ref()
                    .keys()
                    .any(|n| n.eq_ignore_ascii_case("content-type"))
            });
            if !own_type {
                let sample = template.render(|_| "x".to_owned());
                if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&sample) {
                    return Err(bad(
                        text.span().start,
                        "template",
                        format!(
                            "the body is sent as JSON but the template does not render JSON ({e}); fix it, \
                             or set a Content-Type header"
                        ),
                    ));
                }
            }
            Ok(BodyFormat::Template(template))
        }
        (Some(FormatName::Template), None) => Err(bad(
            w.format.as_ref().map_or(0, |f| f.span().start),
            "format",
            "format = \"template\" needs a `template`".to_owned(),
        )),
        (_, Some(text)) => Err(bad(
            text.span().start,
            "template",
            "a template is used only with format = \"template\"".to_owned(),
        )),
        (None | Some(FormatName::Json), None) => Ok(BodyFormat::Json),
        (Some(FormatName::Slack), None) => Ok(BodyFormat::Slack),
        (Some(FormatName::Dingtalk), None) => Ok(BodyFormat::Dingtalk),
    }
}

/// Headers ringlb sets itself (or that describe the connection), which a webhook may not.
const RESERVED_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "user-agent",
];

/// `headers`: valid names and values, none that ringlb sets itself; values marked sensitive.
fn headers(
    table: &BTreeMap<String, Spanned<String>>,
    doc: &Doc<'_>,
    key: &dyn Fn(&str) -> String,
) -> Result<Vec<(HeaderName, HeaderValue)>, ConfigError> {
    let mut headers = Vec::with_capacity(table.len());
    for (name, value) in table {
        let bad = |reason: &str| {
            ConfigError::new(
                doc.at(value.span().start, key(&format!("headers.{name}"))),
                Problem::BadHeader {
                    name: name.clone(),
                    reason: reason.to_owned(),
                },
            )
        };
        let header =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad("not a valid header name"))?;
        if RESERVED_HEADERS.contains(&header.as_str()) {
            return Err(bad("ringlb sets this header itself"));
        }
        if headers.iter().any(|(n, _)| *n == header) {
            return Err(bad("given twice (header names are case-insensitive)"));
        }
        let mut text = HeaderValue::from_str(value.get_ref()).map_err(|_| {
            bad("the value has characters a header cannot carry (control characters, newlines)")
        })?;
        text.set_sensitive(true);
        headers.push((header, text));
    }
    Ok(headers)
}

/// A CA file: readable, with at least one PEM certificate.
fn ca_file(path: &Spanned<String>, doc: &Doc<'_>, key: String) -> Result<CaFile, ConfigError> {
    let bad = |reason: String| {
        ConfigError::new(
            doc.at(path.span().start, key.clone()),
            Problem::BadCaFile {
                path: path.get_ref().clone(),
                reason,
            },
        )
    };
    let pem = std::fs::read(path.get_ref()).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("the file holds no PEM certificate".to_owned()));
    }
    Ok(CaFile {
        path: path.get_ref().clone(),
        pem,
    })
}

/// `[runtime] instance_name`: 1 to 253 characters, none of them control characters.
pub(super) fn instance_name(name: &Spanned<String>, doc: &Doc<'_>) -> Result<String, ConfigError> {
    let text = name.get_ref();
    if text.is_empty() || text.len() > 253 || text.chars().any(char::is_control) {
        return Err(ConfigError::new(
            doc.at(name.span().start, "runtime.instance_name"),
            Problem::BadInstanceName {
                value: text.clone(),
            },
        ));
    }
    Ok(text.clone())
}

/// A duration longer than zero and at most `max`, or `default` when not given.
fn bounded(
    doc: &Doc<'_>,
    value: &Option<Spanned<DurationText>>,
    key: String,
    default: Duration,
    max: Duration,
) -> Result<Duration, ConfigError> {
    duration_within(doc, value, key, default, Duration::ZERO..=max, || {
        format!("longer than zero and at most {}", format_duration(max))
    })
}

#[cfg(test)]
#[path = "validate_alert_tests.rs"]
mod tests;
