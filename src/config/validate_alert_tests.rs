//! Tests of the `[alert]` table's validation and of `[runtime] instance_name`.
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
            "url = \"http://127.0.0.1/\"\nproxy = {}",
            "x.toml:10:1: alert.webhook[0].proxy: unknown field `proxy`",
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

#[test]
fn formats_headers_ca_files_and_the_instance_name_reach_the_typed_config() {
    use crate::config::BodyFormat;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    std::fs::write(&ca, cert.cert.pem()).unwrap();
    let text = format!(
        "[runtime]\ninstance_name = \"lb-1\"\nlog_format = \"json\"\n\n{}",
        with(&format!(
            "[alert]\nca_file = {ca:?}\n\n\
             [[alert.webhook]]\nname = \"slack\"\nurl = \"https://hooks.example/T/SECRET\"\n\
             format = \"slack\"\nheaders = {{ Authorization = \"Bearer HIDDEN\", X-Team = \"ops\" }}\n\n\
             [[alert.webhook]]\nname = \"ding\"\nurl = \"https://oapi.example/robot\"\nformat = \"dingtalk\"\n\
             ca_file = {ca:?}\n\n\
             [[alert.webhook]]\nname = \"plain\"\nurl = \"http://127.0.0.1:9/x\"\nformat = \"template\"\n\
             template = \"{{{{\\\"e\\\": \\\"{{event}}\\\"}}}}\"\n\n\
             [[alert.webhook]]\nname = \"text\"\nurl = \"http://127.0.0.1:9/y\"\nformat = \"template\"\n\
             template = \"{{summary}}\"\nheaders = {{ Content-Type = \"text/plain\" }}"
        ))
    );
    let config = Config::parse(&text, "x.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.runtime.instance_name.as_deref(), Some("lb-1"));
    assert_eq!(
        config.runtime.log_format,
        Some(crate::logging::LogFormat::Json)
    );
    let hooks = &config.alerts.webhooks;
    assert_eq!(hooks[0].format, BodyFormat::Slack);
    let names: Vec<&str> = hooks[0].headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["authorization", "x-team"]);
    assert!(hooks[0].headers.iter().all(|(_, v)| v.is_sensitive()));
    assert_eq!(
        hooks[0].ca.as_ref().unwrap().pem,
        cert.cert.pem().as_bytes()
    );
    assert_eq!(hooks[1].format, BodyFormat::Dingtalk);
    assert!(hooks[1].ca.is_some());
    assert!(matches!(hooks[2].format, BodyFormat::Template(_)));
    assert!(
        hooks[2].ca.is_some(),
        "[alert] ca_file applies to every webhook"
    );
    assert_eq!(hooks[3].format.name(), "template");
    let summary = config.summary();
    assert!(
        summary.contains("slack body, headers authorization, x-team, extra CA"),
        "{summary}"
    );
    for secret in ["HIDDEN", "Bearer", "SECRET"] {
        assert!(!summary.contains(secret), "{secret} in\n{summary}");
    }
}

#[test]
fn bad_formats_headers_ca_files_and_instance_names_are_refused() {
    let hook = |keys: &str| format!("[[alert.webhook]]\nurl = \"https://h.example/\"\n{keys}");
    for (keys, expected) in [
        (
            "format = \"template\"",
            "x.toml:10:10: alert.webhook[0].format: format = \"template\" needs a `template`",
        ),
        (
            "template = \"{event}\"",
            "x.toml:10:12: alert.webhook[0].template: a template is used only with",
        ),
        (
            "format = \"template\"\ntemplate = \"{event}\"",
            "x.toml:11:12: alert.webhook[0].template: the body is sent as JSON but the template does not render JSON",
        ),
        (
            "format = \"teams\"",
            "x.toml:10:10: alert.webhook[0].format: unknown variant `teams`",
        ),
        (
            "headers = { \"Bad Name\" = \"x\" }",
            "x.toml:10:26: alert.webhook[0].headers.Bad Name: header \"Bad Name\": not a valid header name",
        ),
        (
            "headers = { Host = \"x\" }",
            "x.toml:10:20: alert.webhook[0].headers.Host: header \"Host\": ringlb sets this header itself",
        ),
        (
            "headers = { X-A = \"a\\nb\" }",
            "x.toml:10:19: alert.webhook[0].headers.X-A: header \"X-A\": the value has characters",
        ),
        (
            "ca_file = \"/nonexistent/ca.pem\"",
            "x.toml:10:11: alert.webhook[0].ca_file: cannot use \"/nonexistent/ca.pem\" as CA certificates: No such file",
        ),
    ] {
        let got = error(&hook(keys));
        assert!(
            got.starts_with(expected),
            "{keys}:\n  got      {got}\n  expected {expected}"
        );
    }
    let empty = tempfile::NamedTempFile::new().unwrap();
    let got = error(&hook(&format!("ca_file = {:?}", empty.path())));
    assert!(got.contains("the file holds no PEM certificate"), "{got}");
    let name = Config::parse(
        &format!("[runtime]\ninstance_name = \"\"\n{SERVICE}"),
        "x.toml",
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        name,
        "x.toml:2:17: runtime.instance_name: \"\" is not a usable instance name (1 to 253 \
         characters, no control characters)"
    );
}
