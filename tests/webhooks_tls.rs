//! Alert webhooks over https through a real ringlb process, against a TLS receiver on loopback
//! whose certificate a CA made by the test signed, trusted through `[alert] ca_file`: each body
//! format arrives as its service expects, the custom headers arrive (and their values are never
//! logged), the instance's name is in every payload, a `Retry-After` on 429 is waited for, and a
//! webhook that trusts another CA gets nothing through.

mod common;

use std::time::Duration;

use common::health::health;
use common::webhook_tls::{TestCa, TlsWebhook};
use common::{Ringlb, config, refused_addr, runtime, service_config, wait_for};

#[test]
fn https_webhooks_get_each_format_the_headers_and_retry_after() {
    let rt = runtime();
    let ca = TestCa::new("ringlb test CA");
    let other_ca = TestCa::new("a CA nobody uses");
    let server = rt.block_on(TlsWebhook::start(
        &ca,
        &[("/throttled", &[(429, "retry-after: 1")])],
    ));
    let dir = common::temp_dir();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other_ca.pem()).unwrap();

    // A backend nothing listens on: its first probe fails, so "service_down" goes out at once.
    let svc = service_config(
        "web",
        "round_robin",
        &[refused_addr()],
        &health("interval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1"),
    );
    let hook = |name: &str, path: &str, keys: &str| {
        format!(
            "[[alert.webhook]]\nname = \"{name}\"\nurl = \"{}\"\nevents = [\"service_down\"]\n\
             retries = 1\nbackoff = \"50ms\"\n{keys}\n\n",
            server.url(path)
        )
    };
    let hooks = [
        hook(
            "json",
            "/json",
            "headers = { Authorization = \"Bearer sekret-token\", X-Team = \"ops\" }",
        ),
        hook("slack", "/slack", "format = \"slack\""),
        hook("dingtalk", "/dingtalk", "format = \"dingtalk\""),
        hook(
            "template",
            "/template",
            "format = \"template\"\n\
             template = '{{\"alert\": \"{event}\", \"on\": \"{service}\", \"from\": \"{instance}\", \"why\": \"{reason}\"}}'",
        ),
        hook("throttled", "/throttled", ""),
        hook(
            "untrusted",
            "/untrusted",
            &format!("ca_file = {:?}", other_file.display().to_string()),
        ),
    ];
    let lb = Ringlb::start(&format!(
        "{}\n[alert]\nca_file = {:?}\n\n{}",
        config("instance_name = \"lb-test-7\"", std::slice::from_ref(&svc)),
        ca_file.display().to_string(),
        hooks.concat()
    ));

    let paths = ["/json", "/slack", "/dingtalk", "/template"];
    assert!(
        wait_for(Duration::from_secs(10), || paths
            .iter()
            .all(|p| !server.requests(p).is_empty())
            && server.requests("/throttled").len() >= 2),
        "not every webhook got its alert; log:\n{}",
        lb.log_text()
    );

    let json = &server.requests("/json")[0];
    let body = json.json();
    assert_eq!(body["event"], "service_down");
    assert_eq!(body["service"], "web");
    assert_eq!(body["instance"], "lb-test-7");
    assert_eq!(body["reason"], "0 of 1 backends up");
    assert!(humantime::parse_rfc3339(body["time"].as_str().unwrap()).is_ok());
    assert_eq!(json.headers["content-type"], "application/json");
    assert_eq!(json.headers["authorization"], "Bearer sekret-token");
    assert_eq!(json.headers["x-team"], "ops");

    let summary = "[lb-test-7] service_down: service web: 0 of 1 backends up (";
    let slack = server.requests("/slack")[0].json();
    assert_eq!(slack.as_object().unwrap().len(), 1, "{slack}");
    assert!(
        slack["text"].as_str().unwrap().starts_with(summary),
        "{slack}"
    );
    assert!(
        !server.requests("/slack")[0]
            .headers
            .contains_key("authorization")
    );

    let ding = server.requests("/dingtalk")[0].json();
    assert_eq!(ding["msgtype"], "text");
    assert!(
        ding["text"]["content"]
            .as_str()
            .unwrap()
            .starts_with(summary),
        "{ding}"
    );

    let template = server.requests("/template")[0].json();
    assert_eq!(
        template,
        serde_json::json!({"alert": "service_down", "on": "web", "from": "lb-test-7",
                           "why": "0 of 1 backends up"})
    );

    // 429 with Retry-After: 1, then 200: the retry waited the second asked for, not the 50 ms
    // backoff.
    let throttled = server.requests("/throttled");
    let gap = throttled[1].at - throttled[0].at;
    println!("retry after 429 + Retry-After: 1 came {gap:?} later");
    assert!(
        gap >= Duration::from_secs(1) && gap < Duration::from_secs(3),
        "gap {gap:?}"
    );
    assert_eq!(throttled[0].body, throttled[1].body);

    // The webhook that trusts another CA: the handshake fails, so nothing arrives, and the
    // failure is logged.
    assert!(
        lb.wait_log_all(
            &["alert delivery failed", "untrusted"],
            Duration::from_secs(10)
        )
        .is_some(),
        "{}",
        lb.log_text()
    );
    assert!(server.requests("/untrusted").is_empty());
    let log = lb.log_text();
    assert!(!log.contains("sekret"), "a header value was logged:\n{log}");
}
