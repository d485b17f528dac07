//! Stage two for the `[alert]` table: each `[[alert.webhook]]`'s URL, name, events, timeout,
//! retries and backoff, distinct names, and defaults.

use std::time::Duration;

use toml::Spanned;

use super::defaults::*;
use super::error::{ConfigError, Doc, Problem};
use super::file::{AlertFile, DurationText, WebhookFile};
use super::validate::{duration_within, in_range, is_service_name};
use super::values::parse_webhook_url;
use super::{AlertKinds, AlertSettings, Webhook};
use crate::units::format_duration;

/// The typed `[alert]` settings; no webhook when the table is absent.
pub(super) fn settings(
    file: Option<AlertFile>,
    doc: &Doc<'_>,
) -> Result<AlertSettings, ConfigError> {
    let list = file.and_then(|f| f.webhook).unwrap_or_default();
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
        webhooks.push(Webhook {
            name,
            url,
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
mod tests {
    use std::time::Duration;

    use crate::config::defaults::*;
    use crate::config::{AlertKind, AlertKinds, Config};

    const SERVICE: &str = r#"[[service]]
name = "redis"
listen = "127.0.0.1:7000"

[[service.backend]]
address = "127.0.0.1:6379"
"#;

    /// The config of `SERVICE` plus `alerts`, which starts on line 8.
    fn with(alerts: &str) -> String {
        format!("{SERVICE}\n{alerts}\n")
    }

    fn error(alerts: &str) -> String {
        match Config::parse(&with(alerts), "x.toml") {
            Ok(c) => panic!("expected an error, got {:?}", c.alerts),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn no_alert_table_means_no_webhook() {
        let config = Config::parse(SERVICE, "x.toml").unwrap();
        assert!(config.alerts.webhooks.is_empty());
        let empty = Config::parse(&with("[alert]"), "x.toml").unwrap();
        assert!(empty.alerts.webhooks.is_empty());
    }

    #[test]
    fn a_webhook_with_only_a_url_gets_every_default() {
        let config = Config::parse(
            &with("[[alert.webhook]]\nurl = \"http://127.0.0.1:9999/hook\""),
            "x.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let [hook] = config.alerts.webhooks.as_slice() else {
            panic!("{:?}", config.alerts)
        };
        assert_eq!(hook.name, "http://127.0.0.1:9999");
        assert_eq!(hook.url.as_str(), "http://127.0.0.1:9999/hook");
        assert_eq!(hook.events, AlertKinds::ALL);
        assert_eq!(hook.timeout, DEFAULT_WEBHOOK_TIMEOUT);
        assert_eq!(hook.retries, DEFAULT_WEBHOOK_RETRIES);
        assert_eq!(hook.backoff, DEFAULT_WEBHOOK_BACKOFF);
    }

    #[test]
    fn every_webhook_key_reaches_the_typed_config() {
        let config = Config::parse(
            &with(
                "[[alert.webhook]]\nurl = \"http://localhost:9000/a?k=v\"\nname = \"pager\"\n\
                 events = [\"service_down\", \"backend_down\"]\ntimeout = \"2s\"\nretries = 0\n\
                 backoff = \"100ms\"\n\n\
                 [[alert.webhook]]\nurl = \"http://127.0.0.1:9000/b\"\nretries = 10\n\
                 backoff = \"30s\"\ntimeout = \"1m\"",
            ),
            "x.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let hooks = &config.alerts.webhooks;
        assert_eq!(hooks.len(), 2);
        assert_eq!(hooks[0].name, "pager");
        assert_eq!(hooks[0].url.as_str(), "http://localhost:9000/a?k=v");
        assert_eq!(
            hooks[0].events.iter().collect::<Vec<_>>(),
            [AlertKind::BackendDown, AlertKind::ServiceDown]
        );
        assert_eq!(
            (hooks[0].timeout, hooks[0].retries, hooks[0].backoff),
            (Duration::from_secs(2), 0, Duration::from_millis(100))
        );
        assert_eq!(hooks[1].name, "http://127.0.0.1:9000");
        assert_eq!(
            (hooks[1].timeout, hooks[1].retries, hooks[1].backoff),
            (
                MAX_WEBHOOK_TIMEOUT,
                MAX_WEBHOOK_RETRIES,
                MAX_WEBHOOK_BACKOFF
            )
        );
    }

    #[test]
    fn webhook_errors_name_the_key_and_the_value() {
        let hook = |keys: &str| format!("[[alert.webhook]]\n{keys}");
        for (keys, expected) in [
            (
                "url = \"127.0.0.1:9999/hook\"",
                "x.toml:9:7: alert.webhook[0].url: \"127.0.0.1:9999/hook\" is not a usable \
                 webhook URL: ",
            ),
            (
                "url = \"ftp://127.0.0.1/hook\"",
                "x.toml:9:7: alert.webhook[0].url: \"ftp://127.0.0.1/hook\" is not a usable \
                 webhook URL: the scheme must be http",
            ),
            (
                "url = \"http://127.0.0.1:99999/\"",
                "x.toml:9:7: alert.webhook[0].url: \"http://127.0.0.1:99999/\" is not a usable \
                 webhook URL: invalid port number",
            ),
            (
                "url = \"http://127.0.0.1/\"\nevents = [\"backend_down\", \"backend_flap\"]",
                "x.toml:10:27: alert.webhook[0].events[1]: unknown variant `backend_flap`, \
                 expected one of `backend_down`, `backend_up`, `service_down`, `service_up`, \
                 `local_exhaustion`, `local_recovery`",
            ),
            (
                "url = \"http://127.0.0.1/\"\nevents = [\"service_up\", \"service_up\"]",
                "x.toml:10:25: alert.webhook[0].events[1]: \"service_up\" is listed twice",
            ),
            (
                "url = \"http://127.0.0.1/\"\nevents = []",
                "x.toml:10:10: alert.webhook[0].events: an empty list sends nothing",
            ),
            (
                "url = \"http://127.0.0.1/\"\nretries = 11",
                "x.toml:10:11: alert.webhook[0].retries: 11 is out of range: must be between 0 \
                 and 10",
            ),
            (
                "url = \"http://127.0.0.1/\"\ntimeout = \"0s\"",
                "x.toml:10:11: alert.webhook[0].timeout: \"0s\" is out of range: must be longer \
                 than zero",
            ),
            (
                "url = \"http://127.0.0.1/\"\ntimeout = \"2m\"",
                "x.toml:10:11: alert.webhook[0].timeout: \"2m\" is out of range: must be longer \
                 than zero and at most 1m",
            ),
            (
                "url = \"http://127.0.0.1/\"\nbackoff = \"1m\"",
                "x.toml:10:11: alert.webhook[0].backoff: \"1m\" is out of range: must be longer \
                 than zero and at most 30s",
            ),
            (
                "url = \"http://127.0.0.1/\"\nbackoff = \"5\"",
                "x.toml:10:11: alert.webhook[0].backoff: \"5\" is not a duration: a unit is \
                 missing",
            ),
            (
                "url = \"http://127.0.0.1/\"\nname = \"my pager\"",
                "x.toml:10:8: alert.webhook[0].name: \"my pager\" is not a valid webhook name",
            ),
            (
                "url = \"http://127.0.0.1/\"\nheaders = {}",
                "x.toml:10:1: alert.webhook[0].headers: unknown field `headers`",
            ),
            (
                "events = [\"backend_down\"]",
                "x.toml:8:1: alert.webhook[0]: missing field `url`",
            ),
        ] {
            let got = error(&hook(keys));
            assert!(
                got.starts_with(expected),
                "{keys}:\n  got      {got}\n  expected {expected}"
            );
        }
    }

    #[test]
    fn the_summary_shows_each_webhook_by_name_and_origin_only() {
        let config = Config::parse(
            &with(
                "[[alert.webhook]]\nurl = \"http://127.0.0.1:9999/hooks/SECRET?token=x\"\n\n\
                 [[alert.webhook]]\nname = \"pager\"\nurl = \"http://user:pw@127.0.0.1:9999/p\"\n\
                 events = [\"service_up\", \"service_down\"]\nretries = 1\ntimeout = \"2s\"",
            ),
            "x.toml",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let summary = config.summary();
        let alerts = summary
            .find("alert webhook")
            .map(|at| &summary[at..])
            .unwrap_or_else(|| panic!("no webhook in\n{summary}"));
        assert_eq!(
            alerts,
            "alert webhook \"http://127.0.0.1:9999\": all events, timeout 5s, 3 retries \
             (backoff from 500ms)\n\
             alert webhook \"pager\" to http://127.0.0.1:9999: service_down, service_up, \
             timeout 2s, 1 retry (backoff from 500ms)\n"
        );
        for secret in ["SECRET", "token", "pw", "/p"] {
            assert!(!summary.contains(secret), "{secret} in\n{summary}");
        }
    }

    #[test]
    fn two_webhooks_to_one_origin_need_names() {
        let two = "[[alert.webhook]]\nurl = \"http://127.0.0.1:9000/a\"\n\n\
                   [[alert.webhook]]\nurl = \"http://127.0.0.1:9000/b\"";
        assert_eq!(
            error(two),
            "x.toml:12:7: alert.webhook[1].url: \"http://127.0.0.1:9000\" is already the name of \
             alert.webhook[0] (line 9); webhooks to the same host and port need a `name` each"
        );
        let named = two.replace("/b\"", "/b\"\nname = \"second\"");
        let config = Config::parse(&with(&named), "x.toml").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.alerts.webhooks[1].name, "second");
        let clash = named.replace("/a\"", "/a\"\nname = \"second\"");
        assert_eq!(
            error(&clash),
            "x.toml:14:8: alert.webhook[1].name: \"second\" is already the name of \
             alert.webhook[0] (line 10)"
        );
    }
}
