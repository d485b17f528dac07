//! The alerts thread against webhook receivers on loopback (axum): JSON payloads, routing by
//! event, retries and their waits, giving up, isolation of a dead or stuck webhook, dropping
//! when a queue is full, reconfiguring and stopping.
//!
//! Most tests start [`Alerts::spawn`] and queue prepared events through [`Alerts::offer`]; one
//! publishes through an [`AlertPublisher`], as producers do.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::*;
use crate::config::defaults::{DEFAULT_WEBHOOK_BACKOFF, DEFAULT_WEBHOOK_RETRIES};

const MS: Duration = Duration::from_millis(1);

/// Polls `cond` every 5 ms until it holds or `timeout` passes; returns whether it held.
fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(5 * MS);
    }
}

/// What a receiver saw and how it answers.
#[derive(Default)]
struct Seen {
    /// Each request's arrival and JSON body.
    requests: Mutex<Vec<(Instant, Value)>>,
    /// Statuses to answer with, in order; 200 once they run out.
    answers: Mutex<VecDeque<u16>>,
    /// How long to wait before answering.
    delay: Duration,
}

/// A webhook receiver on 127.0.0.1, served by the test runtime `rt`.
struct Receiver {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

impl Receiver {
    fn start(rt: &tokio::runtime::Runtime, answers: &[u16], delay: Duration) -> Receiver {
        let seen = Arc::new(Seen {
            answers: Mutex::new(answers.iter().copied().collect()),
            delay,
            ..Seen::default()
        });
        async fn hook(State(seen): State<Arc<Seen>>, body: Bytes) -> StatusCode {
            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            seen.requests.lock().push((Instant::now(), value));
            tokio::time::sleep(seen.delay).await;
            let status = seen.answers.lock().pop_front().unwrap_or(200);
            StatusCode::from_u16(status).unwrap()
        }
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(seen.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        Receiver { addr, seen }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn bodies(&self) -> Vec<Value> {
        self.seen
            .requests
            .lock()
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    fn count(&self) -> usize {
        self.seen.requests.lock().len()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn webhook(name: &str, url: &str) -> Webhook {
    Webhook {
        name: name.to_owned(),
        url: url.parse().unwrap(),
        format: crate::config::BodyFormat::Json,
        headers: Vec::new(),
        ca: None,
        events: AlertKinds::ALL,
        timeout: Duration::from_secs(2),
        retries: DEFAULT_WEBHOOK_RETRIES,
        backoff: DEFAULT_WEBHOOK_BACKOFF,
    }
}

fn event(kind: AlertKind, backend: Option<&str>) -> AlertEvent {
    AlertEvent::new(
        kind,
        "redis",
        backend.map(|b| b.parse().unwrap()),
        &"refused",
    )
}

/// An address on which nothing listens.
fn refused_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("http://{}/hook", l.local_addr().unwrap())
}

fn stats_of<'s>(stats: &'s AlertStats, name: &str) -> &'s WebhookStats {
    stats
        .webhooks
        .iter()
        .find(|w| w.name == name)
        .unwrap_or_else(|| panic!("no webhook {name} in {stats:?}"))
}

#[test]
fn events_serialize_to_the_documented_json() {
    let mut e = event(AlertKind::BackendDown, Some("10.0.0.7:6379"));
    e.time = UNIX_EPOCH + Duration::from_micros(1_795_542_189_353_366);
    assert_eq!(
        serde_json::to_value(&e).unwrap(),
        json!({"event": "backend_down", "service": "redis", "backend": "10.0.0.7:6379",
               "reason": "refused", "time": "2026-11-24T17:43:09.353366Z"})
    );
    let mut s = AlertEvent::new(AlertKind::ServiceUp, "redis", None, &"1 of 2 backends up");
    s.time = UNIX_EPOCH;
    assert_eq!(
        serde_json::to_value(&s).unwrap(),
        json!({"event": "service_up", "service": "redis", "reason": "1 of 2 backends up",
               "time": "1970-01-01T00:00:00.000000Z"}),
        "no backend field in service events"
    );
    let v6 = event(AlertKind::BackendUp, Some("[::1]:5432"));
    assert_eq!(serde_json::to_value(&v6).unwrap()["backend"], "[::1]:5432");
}

#[test]
fn each_webhook_gets_the_events_it_subscribes_to() {
    let rt = runtime();
    let all = Receiver::start(&rt, &[], Duration::ZERO);
    let some = Receiver::start(&rt, &[], Duration::ZERO);
    let mut only_service_down = webhook("some", &some.url());
    only_service_down.events = AlertKinds::NONE.with(AlertKind::ServiceDown);
    let alerts = Alerts::spawn(&[webhook("all", &all.url()), only_service_down]).unwrap();
    let sent = SystemTime::now();
    alerts.offer(event(AlertKind::BackendDown, Some("127.0.0.1:6379")));
    alerts.offer(event(AlertKind::ServiceDown, None));
    assert!(wait_until(Duration::from_secs(5), || all.count() == 2
        && some.count() == 1));
    let got = all.bodies();
    assert_eq!(got[0]["event"], "backend_down");
    assert_eq!(got[0]["service"], "redis");
    assert_eq!(got[0]["backend"], "127.0.0.1:6379");
    assert_eq!(got[0]["reason"], "refused");
    let time = humantime::parse_rfc3339(got[0]["time"].as_str().unwrap()).unwrap();
    let skew = time.duration_since(sent).unwrap_or_else(|e| e.duration());
    assert!(skew < Duration::from_secs(1), "{time:?} vs {sent:?}");
    assert_eq!(got[1]["event"], "service_down");
    assert_eq!(some.bodies()[0]["event"], "service_down");
    assert!(wait_until(Duration::from_secs(2), || alerts
        .stats()
        .delivered()
        == 3));
    let stats = alerts.stats();
    assert_eq!(stats_of(&stats, "all").delivered, 2);
    assert_eq!(stats_of(&stats, "some").delivered, 1);
    assert_eq!((stats.failed(), stats.dropped), (0, 0));
    // Nobody wants backend_up here but "all"; an event nobody wants is not even queued.
    let mut quiet = webhook("quiet", &some.url());
    quiet.events = AlertKinds::NONE.with(AlertKind::ServiceUp);
    alerts.reconfigure(&[quiet]);
    assert!(!alerts.shared.wants(AlertKind::BackendUp));
    assert!(alerts.shared.wants(AlertKind::ServiceUp));
}

#[test]
fn server_errors_are_retried_with_doubling_waits_until_accepted() {
    let rt = runtime();
    let flaky = Receiver::start(&rt, &[500, 503, 429], Duration::ZERO);
    let mut hook = webhook("flaky", &flaky.url());
    hook.backoff = 50 * MS;
    let alerts = Alerts::spawn(&[hook]).unwrap();
    alerts.offer(event(AlertKind::BackendDown, Some("127.0.0.1:6379")));
    assert!(wait_until(Duration::from_secs(5), || alerts
        .stats()
        .delivered()
        == 1));
    let stats = alerts.stats();
    assert_eq!(
        (stats.webhooks[0].retries, stats.webhooks[0].failed),
        (3, 0)
    );
    let times: Vec<Instant> = flaky.seen.requests.lock().iter().map(|r| r.0).collect();
    assert_eq!(times.len(), 4);
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (gap, wait) in gaps.iter().zip([50 * MS, 100 * MS, 200 * MS]) {
        assert!(
            *gap >= wait && *gap < wait + 500 * MS,
            "gaps {gaps:?}: expected waits of 50, 100 and 200 ms"
        );
    }
    // The same event each time.
    let bodies = flaky.bodies();
    assert!(bodies.iter().all(|b| *b == bodies[0]), "{bodies:?}");
}

#[test]
fn a_client_error_fails_at_once_and_the_next_event_goes_on() {
    let rt = runtime();
    let strict = Receiver::start(&rt, &[400], Duration::ZERO);
    let alerts = Alerts::spawn(&[webhook("strict", &strict.url())]).unwrap();
    alerts.offer(event(AlertKind::BackendDown, Some("127.0.0.1:6379")));
    alerts.offer(event(AlertKind::BackendUp, Some("127.0.0.1:6379")));
    assert!(wait_until(Duration::from_secs(5), || {
        let s = alerts.stats();
        s.failed() == 1 && s.delivered() == 1
    }));
    assert_eq!(alerts.stats().webhooks[0].retries, 0);
    assert_eq!(strict.count(), 2, "one attempt each");
}

#[test]
fn a_dead_webhook_gives_up_after_its_retries_without_holding_up_a_live_one() {
    let rt = runtime();
    let live = Receiver::start(&rt, &[], Duration::ZERO);
    let mut dead = webhook("dead", &refused_url());
    dead.retries = 2;
    dead.backoff = 100 * MS;
    let alerts = Alerts::spawn(&[dead, webhook("live", &live.url())]).unwrap();
    let started = Instant::now();
    for _ in 0..3 {
        alerts.offer(event(AlertKind::BackendDown, Some("127.0.0.1:6379")));
    }
    assert!(wait_until(Duration::from_secs(2), || live.count() == 3));
    let live_after = started.elapsed();
    // The dead one's first event alone waits 100 + 200 ms between its attempts.
    assert!(
        live_after < 300 * MS,
        "the live webhook got its events after {live_after:?}"
    );
    // Three events × (100 + 200 ms of waits) plus refused connects.
    assert!(wait_until(Duration::from_secs(5), || {
        stats_of(&alerts.stats(), "dead").failed == 3
    }));
    let stats = alerts.stats();
    assert_eq!(stats_of(&stats, "dead").retries, 6);
    assert_eq!(stats_of(&stats, "dead").delivered, 0);
    assert_eq!(stats_of(&stats, "live").delivered, 3);
}

#[test]
fn a_stuck_webhook_times_out_and_drops_what_its_queue_cannot_hold() {
    let rt = runtime();
    let stuck = Receiver::start(&rt, &[], Duration::from_secs(3600));
    let mut hook = webhook("stuck", &stuck.url());
    hook.timeout = Duration::from_secs(60);
    let alerts = Alerts::spawn(&[hook]).unwrap();
    let offered = WEBHOOK_QUEUE + 50;
    for _ in 0..offered {
        alerts.offer(event(AlertKind::BackendDown, Some("127.0.0.1:6379")));
    }
    // One event is in flight (or about to be taken), the queue holds WEBHOOK_QUEUE, the rest
    // is dropped.
    assert!(wait_until(Duration::from_secs(5), || {
        stats_of(&alerts.stats(), "stuck").dropped >= 49
    }));
    let dropped = stats_of(&alerts.stats(), "stuck").dropped as usize;
    assert!((49..=50).contains(&dropped), "dropped {dropped}");
    assert_eq!(alerts.stats().dropped, 0, "the sink queue kept up");
    assert!(wait_until(Duration::from_secs(2), || stuck.count() == 1));

    // A short timeout gives up on the stuck receiver.
    let mut short = webhook("short", &stuck.url());
    short.timeout = 100 * MS;
    short.retries = 0;
    let started = Instant::now();
    alerts.reconfigure(&[short]);
    alerts.offer(event(AlertKind::BackendDown, Some("127.0.0.1:6379")));
    assert!(wait_until(Duration::from_secs(2), || alerts
        .stats()
        .failed()
        == 1));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn the_sink_counts_what_it_cannot_queue() {
    let rt = runtime();
    let (events, _receiver) = mpsc::channel(2);
    let shared = Shared {
        events,
        wanted: AtomicU8::new(AlertKinds::ALL.bits()),
        dropped: Counter::new(),
        hooks: Mutex::new(Vec::new()),
        runtime: rt.handle().clone(),
        client: deliver::client(None).unwrap(),
        instance: "test".into(),
    };
    for _ in 0..5 {
        shared.offer(event(AlertKind::ServiceDown, None));
    }
    assert_eq!(shared.stats().dropped, 3);
}

#[test]
fn reconfiguring_keeps_unchanged_webhooks_and_the_counters_of_changed_ones() {
    let rt = runtime();
    let a = Receiver::start(&rt, &[], Duration::ZERO);
    let b = Receiver::start(&rt, &[], Duration::ZERO);
    let alerts = Alerts::spawn(&[webhook("a", &a.url())]).unwrap();
    alerts.offer(event(AlertKind::ServiceDown, None));
    assert!(wait_until(Duration::from_secs(5), || alerts
        .stats()
        .delivered()
        == 1));

    alerts.reconfigure(&[webhook("a", &a.url()), webhook("b", &b.url())]);
    alerts.offer(event(AlertKind::ServiceUp, None));
    assert!(wait_until(Duration::from_secs(5), || alerts
        .stats()
        .delivered()
        == 3));
    let stats = alerts.stats();
    assert_eq!(stats_of(&stats, "a").delivered, 2);
    assert_eq!(stats_of(&stats, "b").delivered, 1);

    // "b" with another timeout restarts with its counters; "a" is gone.
    let mut b2 = webhook("b", &b.url());
    b2.timeout = Duration::from_secs(1);
    alerts.reconfigure(&[b2]);
    alerts.offer(event(AlertKind::ServiceDown, None));
    assert!(wait_until(Duration::from_secs(5), || b.count() == 2));
    assert!(wait_until(Duration::from_secs(2), || {
        alerts.stats().webhooks.first().map(|w| w.delivered) == Some(2)
    }));
    let stats = alerts.stats();
    assert_eq!(stats.webhooks.len(), 1);
    assert_eq!(stats.webhooks[0].name, "b");
    assert_eq!(a.count(), 2, "a removed webhook gets nothing more");

    alerts.reconfigure(&[]);
    assert!(alerts.stats().webhooks.is_empty());
    assert!(!AlertKind::ALL.iter().any(|k| alerts.shared.wants(*k)));
}

#[test]
fn stopping_delivers_what_was_queued_within_the_grace_time() {
    let rt = runtime();
    let slow = Receiver::start(&rt, &[], 200 * MS);
    let alerts = Alerts::spawn(&[webhook("slow", &slow.url())]).unwrap();
    for _ in 0..3 {
        alerts.offer(event(AlertKind::ServiceDown, None));
    }
    let started = Instant::now();
    alerts.stop();
    let took = started.elapsed();
    assert_eq!(slow.count(), 3);
    assert!(took >= 400 * MS && took < STOP_GRACE, "stop took {took:?}");

    // A webhook that never answers delays the stop by the grace time, not more.
    let stuck = Receiver::start(&rt, &[], Duration::from_secs(3600));
    let alerts = Alerts::spawn(&[webhook("stuck", &stuck.url())]).unwrap();
    alerts.offer(event(AlertKind::ServiceDown, None));
    assert!(wait_until(Duration::from_secs(2), || stuck.count() == 1));
    let started = Instant::now();
    drop(alerts);
    let took = started.elapsed();
    assert!(
        took >= STOP_GRACE && took < STOP_GRACE + Duration::from_secs(1),
        "{took:?}"
    );
}

#[test]
fn publish_reaches_the_alerts_until_they_stop() {
    let rt = runtime();
    let receiver = Receiver::start(&rt, &[], Duration::ZERO);
    let mut hook = webhook("installed", &receiver.url());
    hook.events = AlertKinds::NONE.with(AlertKind::BackendDown);
    // A publisher of no alerts: nothing to send to, nothing counted.
    let disabled = AlertPublisher::disabled();
    disabled.publish(AlertKind::BackendDown, "redis", None, &"before");
    assert_eq!(disabled.stats(), AlertStats::default());

    let alerts = Alerts::start(&[hook], Some("lb-7")).unwrap();
    let publisher = alerts.publisher();
    publisher.publish(AlertKind::BackendUp, "redis", None, &"not subscribed");
    publisher.clone().publish(
        AlertKind::BackendDown,
        "redis",
        Some("127.0.0.1:6379".parse().unwrap()),
        &"3 connect failures in a row",
    );
    assert!(wait_until(Duration::from_secs(5), || publisher
        .stats()
        .delivered()
        == 1));
    assert_eq!(receiver.count(), 1);
    assert_eq!(
        receiver.bodies()[0]["reason"],
        "3 connect failures in a row"
    );
    assert_eq!(receiver.bodies()[0]["instance"], "lb-7");
    assert_eq!(publisher.stats().webhooks[0].name, "installed");
    assert_eq!(disabled.stats(), AlertStats::default(), "not connected");
    alerts.stop();
    assert_eq!(publisher.stats(), AlertStats::default(), "disconnected");
    publisher.publish(AlertKind::BackendDown, "redis", None, &"after");
    assert_eq!(receiver.count(), 1);
}
