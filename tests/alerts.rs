//! Alert webhooks through a real ringlb process: backend and service transitions (from the
//! probes and from the workers' passive detection) arrive as JSON at a webhook receiver on
//! loopback, in time; a dead and a stuck webhook delay neither the health checks nor a live
//! webhook, and their failures are logged with a count; a stop with a stuck webhook ends within
//! the alerts' grace time.
//!
//! Timings: probes run every 200 ms. Each bound asserted is the one the config implies (e.g.
//! `fall × interval + timeout` for a mark-down) plus [`SLACK`] for scheduling on a loaded
//! 2-core machine and the alert's own trip to the receiver; the measured values are printed.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::Value;

use common::admin::Metrics;
use common::health::{
    Switchable, expect_event, greetings, health, passive_detection_service, timestamp,
};
use common::{Blackhole, Ringlb, config, refused_addr, runtime, service_config, wait_for};

/// Allowance for scheduling on top of each bound the config implies.
const SLACK: Duration = Duration::from_millis(500);

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
const RISE: u32 = 2;
const FALL: u32 = 3;

/// Probes every 200 ms; passive detection off, so the probes alone time the transitions.
fn probes() -> String {
    health(&format!(
        "interval = \"200ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\n\
         passive_failures = 0"
    ))
}

/// One alert as the receiver got it.
#[derive(Clone, Debug)]
struct Alert {
    /// When the receiver got it.
    at: SystemTime,
    body: Value,
}

impl Alert {
    fn get(&self, key: &str) -> &str {
        self.body[key]
            .as_str()
            .unwrap_or_else(|| panic!("no string {key:?} in {}", self.body))
    }

    /// The alert's own `time`, parsed independently of ringlb's formatter.
    fn time(&self) -> SystemTime {
        timestamp(self.get("time")).unwrap_or_else(|| panic!("bad time in {}", self.body))
    }
}

/// A webhook receiver on 127.0.0.1 that answers 200 to every POST to `/hook`.
struct Receiver {
    addr: SocketAddr,
    alerts: Arc<Mutex<Vec<Alert>>>,
}

impl Receiver {
    fn start(rt: &tokio::runtime::Runtime) -> Receiver {
        async fn hook(State(seen): State<Arc<Mutex<Vec<Alert>>>>, body: Bytes) -> StatusCode {
            let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
            seen.lock().unwrap().push(Alert {
                at: SystemTime::now(),
                body,
            });
            StatusCode::OK
        }
        let alerts = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(alerts.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, alerts }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Waits for the `count`-th alert of `event` (about `backend`, when given).
    fn expect(
        &self,
        event: &str,
        backend: Option<SocketAddr>,
        count: usize,
        timeout: Duration,
    ) -> Alert {
        let matching = || -> Vec<Alert> {
            self.alerts
                .lock()
                .unwrap()
                .iter()
                .filter(|a| a.body["event"] == event)
                .filter(|a| backend.is_none_or(|b| a.body["backend"] == b.to_string()))
                .cloned()
                .collect()
        };
        if !wait_for(timeout, || matching().len() >= count) {
            panic!(
                "no {event:?} #{count} for {backend:?} within {timeout:?}; got {:?}",
                self.events()
            );
        }
        matching()[count - 1].clone()
    }

    /// The `event` field of every alert so far, in order.
    fn events(&self) -> Vec<String> {
        self.alerts
            .lock()
            .unwrap()
            .iter()
            .map(|a| a.body["event"].as_str().unwrap_or("?").to_owned())
            .collect()
    }
}

/// `[[alert.webhook]]` tables.
fn webhook(keys: &str) -> String {
    format!("[[alert.webhook]]\n{keys}\n")
}

/// `later - earlier`, or zero when `later` is earlier.
fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

#[test]
fn backend_and_service_transitions_arrive_as_json_in_time() {
    let rt = runtime();
    let receiver = Receiver::start(&rt);
    let a = rt.block_on(Switchable::start("a", LOCAL));
    let b = rt.block_on(Switchable::start("b", LOCAL));
    let svc = service_config("svc", "round_robin", &[a.addr, b.addr], &probes());
    let hook = webhook(&format!("url = \"{}\"\ntimeout = \"1s\"", receiver.url()));
    let lb = Ringlb::start(&format!("{}\n{hook}", config("", &[svc])));
    let seen = rt.block_on(greetings(lb.addr("svc"), 4));
    assert!(seen.iter().all(Result::is_ok), "{seen:?}");

    // A killed backend: backend_down within fall × interval + timeout.
    let down_bound = INTERVAL * FALL + TIMEOUT;
    let killed = SystemTime::now();
    rt.block_on(a.stop());
    let down = receiver.expect("backend_down", Some(a.addr), 1, down_bound + SLACK);
    assert_eq!(down.get("service"), "svc");
    assert_eq!(down.get("backend"), a.addr.to_string());
    assert_eq!(down.get("reason"), "refused");
    let down_after = since(down.at, killed);
    let stamped = since(down.time(), killed);
    assert!(
        down.time() >= killed && stamped <= down_bound + SLACK,
        "time {:?} is {stamped:?} after the kill",
        down.get("time")
    );
    // The alert carries the time of the transition the log reports.
    let logged = expect_event(&lb, "backend down", Some(a.addr), 1, SLACK);
    let skew = since(down.time(), logged.at).max(since(logged.at, down.time()));
    assert!(skew < Duration::from_millis(50), "alert vs log: {skew:?}");

    // It returns: backend_up within rise × interval.
    let up_bound = INTERVAL * RISE;
    let restarted = SystemTime::now();
    rt.block_on(a.restart());
    let up = receiver.expect("backend_up", Some(a.addr), 1, up_bound + SLACK);
    assert_eq!(up.get("reason"), "2 probes passed in a row");
    assert_eq!(up.get("service"), "svc");
    assert!(up.time() >= restarted);
    let up_after = since(up.at, restarted);

    // Every backend gone: service_down, then service_up when one returns.
    rt.block_on(async {
        a.stop().await;
        b.stop().await;
    });
    let service_down = receiver.expect("service_down", None, 1, down_bound + SLACK);
    assert_eq!(service_down.get("service"), "svc");
    assert_eq!(service_down.get("reason"), "0 of 2 backends up");
    assert!(
        service_down.body.get("backend").is_none(),
        "{}",
        service_down.body
    );
    rt.block_on(b.restart());
    let service_up = receiver.expect("service_up", None, 1, up_bound + SLACK);
    assert_eq!(service_up.get("reason"), "1 of 2 backends up");

    // In order, each once: a's down and up, then both down (either first), then b's return.
    let events = receiver.events();
    assert_eq!(&events[..2], ["backend_down", "backend_up"], "{events:?}");
    assert_eq!(
        events.iter().filter(|e| *e == "service_down").count(),
        1,
        "{events:?}"
    );
    let service_down_at = events.iter().position(|e| e == "service_down").unwrap();
    let service_up_at = events.iter().position(|e| e == "service_up").unwrap();
    assert!(service_down_at < service_up_at, "{events:?}");
    println!(
        "backend_down received {down_after:?} after the kill (bound {down_bound:?}), \
         backend_up {up_after:?} after the restart (bound {up_bound:?})"
    );
}

#[test]
fn passive_detection_on_a_worker_is_announced_too() {
    let rt = runtime();
    let receiver = Receiver::start(&rt);
    let a = rt.block_on(Switchable::start("a", LOCAL));
    let b = rt.block_on(Switchable::start("b", LOCAL));
    let svc = passive_detection_service(a.addr, b.addr);
    let hook = webhook(&format!(
        "url = \"{}\"\nevents = [\"backend_down\"]",
        receiver.url()
    ));
    let lb = Ringlb::start_with_log(
        &format!("{}\n{hook}", config("", &[svc])),
        "info,ringlb::control::health=debug",
    );
    let addr = lb.addr("svc");
    assert!(rt.block_on(greetings(addr, 4)).iter().all(Result::is_ok));
    // The first probe decides at once: kill `a` only after it passed, so that only the
    // workers' failures can mark it down within the next second.
    expect_event(&lb, "probe passed", Some(a.addr), 1, Duration::from_secs(5));

    let killed = Instant::now();
    rt.block_on(a.stop());
    // Round robin alternates: within 8 connections, 3 or 4 go to the dead backend and fail.
    let _ = rt.block_on(greetings(addr, 8));
    let down = receiver.expect("backend_down", Some(a.addr), 1, Duration::from_secs(2));
    assert_eq!(
        down.get("reason").split(" (last").next(),
        Some("3 connect failures in a row"),
        "{}",
        down.body
    );
    println!(
        "passive backend_down received {:?} after the kill",
        killed.elapsed()
    );
}

#[test]
fn dead_and_stuck_webhooks_delay_neither_health_checks_nor_a_live_webhook() {
    let rt = runtime();
    let live = Receiver::start(&rt);
    let stuck = Blackhole::new();
    let a = rt.block_on(Switchable::start("a", LOCAL));
    let b = rt.block_on(Switchable::start("b", LOCAL));
    let svc = service_config("svc", "round_robin", &[a.addr, b.addr], &probes());
    // In file order: the dead and stuck webhooks come first.
    let hooks = [
        webhook(&format!(
            "name = \"dead\"\nurl = \"http://{}/hook\"\nretries = 2\nbackoff = \"100ms\"",
            refused_addr()
        )),
        webhook(&format!(
            "name = \"stuck\"\nurl = \"http://{}/hook\"\ntimeout = \"500ms\"\nretries = 0",
            stuck.addr
        )),
        webhook(&format!("name = \"live\"\nurl = \"{}\"", live.url())),
    ];
    let mut lb = Ringlb::start(&format!(
        "{}\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        config("drain_timeout = \"0s\"", &[svc]),
        hooks.concat()
    ));
    assert!(
        rt.block_on(greetings(lb.addr("svc"), 4))
            .iter()
            .all(Result::is_ok)
    );

    // Two rounds of down and up: events queue up behind the dead and stuck webhooks' attempts.
    let down_bound = INTERVAL * FALL + TIMEOUT;
    let up_bound = INTERVAL * RISE;
    let mut worst_log = Duration::ZERO;
    let mut worst_live = Duration::ZERO;
    for round in 1..=2 {
        let killed = SystemTime::now();
        rt.block_on(a.stop());
        let logged = expect_event(&lb, "backend down", Some(a.addr), round, down_bound + SLACK);
        let alert = live.expect("backend_down", Some(a.addr), round, down_bound + SLACK);
        worst_log = worst_log.max(since(logged.at, killed));
        worst_live = worst_live.max(since(alert.at, logged.at));

        let restarted = SystemTime::now();
        rt.block_on(a.restart());
        let logged = expect_event(&lb, "backend up", Some(a.addr), round, up_bound + SLACK);
        let alert = live.expect("backend_up", Some(a.addr), round, up_bound + SLACK);
        assert!(since(logged.at, restarted) <= up_bound + SLACK);
        worst_live = worst_live.max(since(alert.at, logged.at));
    }
    assert!(
        worst_log <= down_bound + SLACK,
        "health transitions were delayed: {worst_log:?}"
    );
    // From the log line to the live receiver: a loopback POST, not the dead webhooks' retries
    // (100 + 200 ms) or the stuck one's timeout (500 ms).
    assert!(
        worst_live < Duration::from_millis(250),
        "the live webhook lagged {worst_live:?} behind the transitions"
    );

    // The failures are logged, with their reason and a running count.
    let failed = |name: &str, n: usize| {
        let needle = format!("webhook={name} ");
        let count = format!(" failed={n}");
        lb.wait_log_all(
            &["alert delivery failed", &needle, &count],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no failure #{n} of {name}:\n{}", lb.log_text()))
    };
    let dead = failed("dead", 4);
    assert!(dead.contains("attempts=3"), "{dead}");
    assert!(dead.to_lowercase().contains("connect"), "{dead}");
    let stuck_line = failed("stuck", 4);
    assert!(
        stuck_line.contains("no answer within 500ms"),
        "{stuck_line}"
    );
    assert!(stuck_line.contains("attempts=1"), "{stuck_line}");
    assert!(
        !lb.log_text().contains("webhook=live"),
        "the live webhook never failed"
    );
    // And counted in /metrics.
    let m = Metrics::scrape(lb.admin.unwrap());
    let hook = |name: &'static str| [("webhook", name)];
    assert_eq!(
        m.sum("ringlb_alert_delivery_failures_total", &hook("dead")),
        4.0
    );
    assert_eq!(
        m.sum("ringlb_alert_delivery_failures_total", &hook("stuck")),
        4.0
    );
    assert_eq!(
        m.sum("ringlb_alert_delivery_failures_total", &hook("live")),
        0.0
    );
    assert_eq!(m.sum("ringlb_alert_deliveries_total", &hook("live")), 4.0);
    assert_eq!(m.sum("ringlb_alert_retries_total", &hook("dead")), 8.0);

    // A stop waits for a stuck webhook at most the alerts' grace time (2 s).
    rt.block_on(a.stop());
    expect_event(&lb, "backend down", Some(a.addr), 3, down_bound + SLACK);
    let stopping = Instant::now();
    lb.signal(libc::SIGTERM);
    let code = lb.wait_exit(Duration::from_secs(5));
    let took = stopping.elapsed();
    assert_eq!(code, Some(0), "{}", lb.log_text());
    assert!(took < Duration::from_secs(3), "stop took {took:?}");
    println!(
        "mark-down logged at most {worst_log:?} after a kill (bound {down_bound:?}); live \
         webhook at most {worst_live:?} behind the log; stop took {took:?}"
    );
}

#[test]
fn a_webhook_added_by_a_reload_gets_the_next_transition() {
    let rt = runtime();
    let receiver = Receiver::start(&rt);
    let a = rt.block_on(Switchable::start("a", LOCAL));
    let b = rt.block_on(Switchable::start("b", LOCAL));
    let svc = service_config("svc", "round_robin", &[a.addr, b.addr], &probes());
    let base = format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        config("", &[svc])
    );
    let lb = Ringlb::start(&base);
    let admin = lb.admin.unwrap();
    let hook = webhook(&format!(
        "name = \"added\"\nurl = \"{}\"\nevents = [\"backend_down\"]",
        receiver.url()
    ));
    std::fs::write(&lb.config_path, format!("{base}\n{hook}")).unwrap();
    let answer = common::admin::post(admin, "/reload");
    assert_eq!(answer.code, 200, "{}", answer.body);

    rt.block_on(a.stop());
    let down = receiver.expect(
        "backend_down",
        Some(a.addr),
        1,
        INTERVAL * FALL + TIMEOUT + SLACK,
    );
    assert_eq!(down.get("service"), "svc");
    assert!(wait_for(Duration::from_secs(2), || {
        Metrics::scrape(admin).sum("ringlb_alert_deliveries_total", &[("webhook", "added")]) == 1.0
    }));
}
