//! Alerts: backend and service transitions POSTed to the configured webhooks (http or https),
//! each in its own body format (JSON, Slack, DingTalk or a template), named with this ringlb
//! instance.
//!
//! Owns: the `ringlb-alerts` thread (a tokio current-thread runtime, like the health
//! checker's), the [`AlertPublisher`] handles producers publish through, one delivery task per
//! webhook with its own bounded queue, the HTTP clients (one shared, one more per webhook with
//! its own CA file), the bodies (`body`), retries with backoff, jitter and `Retry-After`, the
//! instance's name, and the alert counters ([`Alerts::stats`]). Does not own: deciding that something happened or logging the
//! transition itself (`availability` does both, and publishes through the publisher its
//! service state was built with), or the webhook settings ([`crate::config::Webhook`]).
//!
//! There is no process-wide sink: whoever starts [`Alerts`] (the server, at start-up) hands
//! [`Alerts::publisher`] to what publishes, and a service state built without one
//! ([`AlertPublisher::disabled`]) publishes nothing.
//!
//! The path of an alert, and why nothing upstream ever waits for a webhook:
//!
//! 1. A producer (the health thread, a worker that saw `passive_failures` connect failures, the
//!    admin API) calls [`AlertPublisher::publish`]. It loads the sink (one atomic load), returns
//!    at once when no webhook wants that kind of event, and otherwise makes the event (the time
//!    is taken here) and does one non-blocking `try_send` into the sink queue of [`SINK_QUEUE`]
//!    events. When the queue is full the event is dropped and counted
//!    ([`AlertStats::dropped`]); a producer never blocks, does no I/O and logs nothing here.
//! 2. The dispatcher task on the alerts thread offers each event, again without waiting, to the
//!    queue ([`WEBHOOK_QUEUE`] events) of every webhook subscribed to its kind; a full queue
//!    drops it for that webhook only (counted in its [`WebhookStats::dropped`], logged).
//! 3. Each webhook's task delivers its queue in order, one event at a time: a POST bounded by
//!    the webhook's `timeout`, and on failure up to `retries` more after waits of `backoff`,
//!    doubling, at most [`MAX_WEBHOOK_BACKOFF`], with jitter, or what a 429 or 503 answer's
//!    `Retry-After` asks for (see `deliver`). One event therefore holds its
//!    webhook for a bounded time, and a slow or dead webhook fills only its own queue: the other
//!    webhooks, the dispatcher and the producers go on. Events to one webhook stay in order so a
//!    receiver never sees a backend's `backend_up` before the `backend_down` it ends.
//!
//! [`MAX_WEBHOOK_BACKOFF`]: crate::config::defaults::MAX_WEBHOOK_BACKOFF
//!
//! The transitions are logged where they happen ("backend down", "service up", ...); this
//! module logs a delivery that failed after all its retries (warn), dropped events (warn), and
//! each delivery and retry (debug).
//!
//! Lifecycle: [`Alerts::start`] spawns the thread and connects its publishers to it; with no
//! webhook the thread idles and a publish returns after its first check.
//! [`Alerts::reconfigure`] swaps the webhook list (a reload): unchanged webhooks keep their
//! task, queue and counters; a webhook whose settings changed restarts with its counters kept
//! (by name); a removed one is cancelled with what it had queued. [`Alerts::stop`] disconnects
//! every publisher (a publish after it is a no-op, and holds nothing of the thread alive), lets
//! each webhook finish what it has queued for at most [`STOP_GRACE`], and joins the thread.

mod body;
mod deliver;
#[cfg(test)]
mod tests;

use std::fmt::Display;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::config::{AlertKind, AlertKinds, Webhook};
use crate::control::Counter;

pub use body::summary;
pub use deliver::{MAX_RETRY_AFTER, retry_delay};

/// Events the sink queue holds. The dispatcher empties it within microseconds of each push, so
/// it only fills when the alerts thread is starved; 1024 covers every backend of a large
/// service going down at once (one event each, plus the service's).
pub const SINK_QUEUE: usize = 1024;

/// Events each webhook's queue holds while the webhook is slow or down. With the default
/// retries against a dead receiver, one event takes about 3.5 s, so 256 queued events are a
/// quarter of an hour of backlog: older news than that is better dropped (and counted).
pub const WEBHOOK_QUEUE: usize = 256;

/// How long [`Alerts::stop`] lets the webhooks deliver what they have queued: a last
/// `service_down` during shutdown still goes out, and a dead webhook delays the exit by at
/// most this long.
pub const STOP_GRACE: Duration = Duration::from_secs(2);

/// One alert. A `json` webhook gets its fields and the instance's name
/// (`Content-Type: application/json`):
///
/// ```json
/// {"event":"backend_down","service":"redis","backend":"10.0.0.7:6379",
///  "reason":"refused","time":"2026-11-24T17:43:09.353366Z","instance":"lb-1"}
/// ```
///
/// `backend` is left out of service events. The other formats: see
/// [`crate::config::BodyFormat`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AlertEvent {
    /// What happened.
    pub event: AlertKind,
    /// The service's name.
    pub service: String,
    /// The backend's address (`ip:port`), for backend events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<SocketAddr>,
    /// Why, in words: the probe's failure ("refused", "timeout after 1s"), the passing probes,
    /// the connect failures, or how many backends are up.
    pub reason: String,
    /// When it happened, RFC 3339 in UTC with microseconds.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
}

impl AlertEvent {
    /// An event that happens now.
    pub fn new(
        event: AlertKind,
        service: &str,
        backend: Option<SocketAddr>,
        reason: &dyn Display,
    ) -> AlertEvent {
        AlertEvent {
            event,
            service: service.to_owned(),
            backend,
            reason: reason.to_string(),
            time: SystemTime::now(),
        }
    }
}

fn rfc3339<S: serde::Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

/// Counters of the alerts, as read by [`Alerts::stats`] and [`AlertPublisher::stats`] (for
/// the metrics endpoint). Every counter
/// only grows while the process runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertStats {
    /// Events dropped because the sink queue was full (before any webhook saw them).
    pub dropped: u64,
    /// Each configured webhook, in config order.
    pub webhooks: Vec<WebhookStats>,
}

/// Counters of one webhook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// The webhook's name (never its URL, which may hold a secret).
    pub name: String,
    /// Events it accepted (a 2xx answer).
    pub delivered: u64,
    /// Events given up: every attempt failed, or the answer was a client error (4xx but 408
    /// and 429) or a redirect, which retrying would not change.
    pub failed: u64,
    /// Attempts after a failed one.
    pub retries: u64,
    /// Events dropped because its queue was full.
    pub dropped: u64,
}

impl AlertStats {
    /// Events delivered, over all webhooks.
    pub fn delivered(&self) -> u64 {
        self.webhooks.iter().map(|w| w.delivered).sum()
    }

    /// Events given up, over all webhooks.
    pub fn failed(&self) -> u64 {
        self.webhooks.iter().map(|w| w.failed).sum()
    }
}

/// The counters a webhook's task updates.
#[derive(Debug, Default)]
struct HookCounters {
    delivered: Counter,
    failed: Counter,
    retries: Counter,
    dropped: Counter,
}

/// A running webhook: its settings, queue, task and counters.
struct Hook {
    webhook: Arc<Webhook>,
    queue: mpsc::Sender<Arc<AlertEvent>>,
    task: tokio::task::JoinHandle<()>,
    counters: Arc<HookCounters>,
}

/// What the producers, the dispatcher and [`Alerts`] share.
struct Shared {
    /// The sink queue's sending side.
    events: mpsc::Sender<AlertEvent>,
    /// [`AlertKinds`] bits some webhook subscribes to: a publish checks it first.
    wanted: AtomicU8,
    /// Events dropped at the sink.
    dropped: Counter,
    /// The running webhooks, in config order.
    hooks: Mutex<Vec<Hook>>,
    /// Spawns webhook tasks on the alerts runtime from any thread.
    runtime: tokio::runtime::Handle,
    /// One client (one connection pool) for every webhook without a CA file of its own.
    client: reqwest::Client,
    /// The name alerts carry: `[runtime] instance_name`, else the host name.
    instance: Arc<str>,
}

impl Shared {
    /// Whether some webhook wants events of `kind`.
    fn wants(&self, kind: AlertKind) -> bool {
        AlertKinds::from_bits(self.wanted.load(Ordering::Relaxed)).contains(kind)
    }

    /// Queues `event` without waiting; counts it as dropped when the queue is full.
    fn offer(&self, event: AlertEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.inc();
            }
            // The alerts thread is gone (stopping): nothing can be sent any more.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Hands `event` to each subscribed webhook's queue, without waiting.
    fn route(&self, event: AlertEvent) {
        let event = Arc::new(event);
        for hook in self.hooks.lock().iter() {
            if !hook.webhook.events.contains(event.event) {
                continue;
            }
            if let Err(mpsc::error::TrySendError::Full(_)) = hook.queue.try_send(event.clone()) {
                let dropped = hook.counters.dropped.inc();
                tracing::warn!(webhook = %hook.webhook.name, event = %event.event,
                    service = %event.service, dropped,
                    "alert dropped: the webhook's queue is full (it is slow or down)");
            }
        }
    }

    fn stats(&self) -> AlertStats {
        let hooks = self.hooks.lock();
        AlertStats {
            dropped: self.dropped.get(),
            webhooks: hooks
                .iter()
                .map(|h| WebhookStats {
                    name: h.webhook.name.clone(),
                    delivered: h.counters.delivered.get(),
                    failed: h.counters.failed.get(),
                    retries: h.counters.retries.get(),
                    dropped: h.counters.dropped.get(),
                })
                .collect(),
        }
    }

    /// Makes the running webhooks match `webhooks` (see the module docs).
    fn set_webhooks(&self, webhooks: &[Webhook]) {
        let mut hooks = self.hooks.lock();
        let mut old = std::mem::take(&mut *hooks);
        for w in webhooks {
            if let Some(i) = old.iter().position(|h| *h.webhook == *w) {
                hooks.push(old.swap_remove(i));
                continue;
            }
            let counters = old
                .iter()
                .find(|h| h.webhook.name == w.name)
                .map(|h| h.counters.clone())
                .unwrap_or_default();
            let webhook = Arc::new(w.clone());
            let client = match &w.ca {
                None => self.client.clone(),
                Some(ca) => {
                    let _inside = self.runtime.enter();
                    // The file parsed when the config was loaded; should it fail now, the
                    // platform's roots alone are better than no alerts.
                    deliver::client(Some(ca)).unwrap_or_else(|e| {
                        tracing::error!(webhook = %w.name, ca_file = %ca.path, error = %e,
                            "cannot use the webhook's CA file: trusting the platform's roots only");
                        self.client.clone()
                    })
                }
            };
            let (queue, rx) = mpsc::channel(WEBHOOK_QUEUE);
            let task = self.runtime.spawn(deliver::run(
                client,
                webhook.clone(),
                self.instance.clone(),
                rx,
                counters.clone(),
            ));
            hooks.push(Hook {
                webhook,
                queue,
                task,
                counters,
            });
        }
        for gone in old {
            gone.task.abort();
        }
        let wanted = hooks
            .iter()
            .fold(AlertKinds::NONE, |set, h| set.union(h.webhook.events));
        self.wanted.store(wanted.bits(), Ordering::Relaxed);
    }
}

/// Where producers publish: a cheap clonable handle (one `Arc`) on the sink of one running
/// [`Alerts`]. Publishing never blocks and never fails (see the module docs). After
/// [`Alerts::stop`], or for a [`AlertPublisher::disabled`] one, a publish is a no-op.
#[derive(Clone, Default)]
pub struct AlertPublisher {
    /// The sink; emptied by [`Alerts::stop`], so a handle kept by an old snapshot holds nothing
    /// of the stopped thread.
    sink: Arc<ArcSwapOption<Shared>>,
}

impl AlertPublisher {
    /// A publisher connected to nothing: every publish is a no-op (tools and tests that run no
    /// alerts thread).
    pub fn disabled() -> AlertPublisher {
        AlertPublisher::default()
    }

    /// Publishes an alert to every webhook subscribed to `kind`. Never blocks and never fails:
    /// a no-op when the alerts are stopped or no webhook wants `kind`; the event is dropped (and
    /// counted) when the queue is full. Callable from any thread, workers included.
    pub fn publish(
        &self,
        kind: AlertKind,
        service: &str,
        backend: Option<SocketAddr>,
        reason: &dyn Display,
    ) {
        let sink = self.sink.load();
        if let Some(shared) = sink.as_ref()
            && shared.wants(kind)
        {
            shared.offer(AlertEvent::new(kind, service, backend, reason));
        }
    }

    /// The counters of the alerts this publisher feeds; all zero and no webhook once they are
    /// stopped (or for a disabled publisher).
    pub fn stats(&self) -> AlertStats {
        self.sink
            .load()
            .as_ref()
            .map(|s| s.stats())
            .unwrap_or_default()
    }
}

impl std::fmt::Debug for AlertPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertPublisher")
            .field("connected", &self.sink.load().is_some())
            .finish()
    }
}

/// The running alerts thread.
pub struct Alerts {
    shared: Arc<Shared>,
    /// The slot every [`AlertPublisher`] of these alerts shares.
    publisher: AlertPublisher,
    thread: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Alerts {
    /// Starts the `ringlb-alerts` thread with `webhooks`; [`Alerts::publisher`] feeds it. The
    /// alerts name this ringlb `instance_name`, else the host name ([`instance_name`]); it
    /// stays for the life of the thread.
    pub fn start(webhooks: &[Webhook], instance_name: Option<&str>) -> io::Result<Alerts> {
        let instance = instance_name::resolve(instance_name);
        let alerts = Alerts::spawn_named(webhooks, &instance)?;
        tracing::info!(webhooks = webhooks.len(), instance = %instance, "alerts started");
        Ok(alerts)
    }

    /// Starts the thread for the tests, as instance "test".
    #[cfg(test)]
    fn spawn(webhooks: &[Webhook]) -> io::Result<Alerts> {
        Alerts::spawn_named(webhooks, "test")
    }

    /// Starts the thread (without the start-up log line).
    fn spawn_named(webhooks: &[Webhook], instance: &str) -> io::Result<Alerts> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .thread_name("ringlb-alerts")
            .build()?;
        let client = {
            // Inside the runtime: the client's connector may start timers and tasks on it.
            let _inside = runtime.enter();
            deliver::client(None).map_err(io::Error::other)?
        };
        let (events, rx) = mpsc::channel(SINK_QUEUE);
        let shared = Arc::new(Shared {
            events,
            wanted: AtomicU8::new(0),
            dropped: Counter::new(),
            hooks: Mutex::new(Vec::new()),
            runtime: runtime.handle().clone(),
            client,
            instance: instance.into(),
        });
        shared.set_webhooks(webhooks);
        let (stop, stopped) = oneshot::channel();
        let shared2 = shared.clone();
        let thread = std::thread::Builder::new()
            .name("ringlb-alerts".to_owned())
            .spawn(move || {
                runtime.block_on(dispatch(shared2, rx, stopped));
                // Cancels what is left (deliveries past the grace time) without waiting for a
                // host name lookup that may still run on a blocking thread.
                runtime.shutdown_background();
            })?;
        let publisher = AlertPublisher {
            sink: Arc::new(ArcSwapOption::from(Some(shared.clone()))),
        };
        Ok(Alerts {
            shared,
            publisher,
            thread: Some(thread),
            stop: Some(stop),
        })
    }

    /// Replaces the webhook list (a reload): see the module docs for what carries over. Takes
    /// effect for the next event routed; returns at once.
    pub fn reconfigure(&self, webhooks: &[Webhook]) {
        self.shared.set_webhooks(webhooks);
        tracing::info!(webhooks = webhooks.len(), "alert webhooks reconfigured");
    }

    /// A handle to publish to these alerts, for whatever makes transitions.
    pub fn publisher(&self) -> AlertPublisher {
        self.publisher.clone()
    }

    /// The counters of these alerts.
    pub fn stats(&self) -> AlertStats {
        self.shared.stats()
    }

    /// Queues `event` as [`AlertPublisher::publish`] would.
    #[cfg(test)]
    fn offer(&self, event: AlertEvent) {
        if self.shared.wants(event.event) {
            self.shared.offer(event);
        }
    }

    /// Stops: no new events are taken, queued ones get up to [`STOP_GRACE`]; then the thread
    /// is joined.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(stop) = self.stop.take() else {
            return;
        };
        // Publishers still held (by snapshots, the health thread) take nothing more.
        self.publisher.sink.store(None);
        let _ = stop.send(());
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the alerts thread panicked");
        }
    }
}

impl Drop for Alerts {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerts")
            .field("stats", &self.stats())
            .finish()
    }
}

/// The name alerts carry.
pub mod instance_name {
    /// `configured` (`[runtime] instance_name`), else this host's name (`uname -n`), else
    /// "ringlb" when the host has none.
    pub fn resolve(configured: Option<&str>) -> String {
        if let Some(name) = configured {
            return name.to_owned();
        }
        let uname = rustix::system::uname();
        let host = uname.nodename().to_string_lossy();
        if host.is_empty() {
            "ringlb".to_owned()
        } else {
            host.into_owned()
        }
    }
}

/// The dispatcher: routes events until stopped, then gives the webhooks [`STOP_GRACE`] to
/// deliver what they hold.
async fn dispatch(
    shared: Arc<Shared>,
    mut events: mpsc::Receiver<AlertEvent>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut dropped_seen = 0;
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(event) = events.recv() => {
                shared.route(event);
                // Producers do not log; drops at the sink are reported here.
                let dropped = shared.dropped.get();
                if dropped != dropped_seen {
                    tracing::warn!(dropped = dropped - dropped_seen, total = dropped,
                        "alerts dropped: the alert queue was full");
                    dropped_seen = dropped;
                }
            }
        }
    }
    // What was published before the stop still goes to the webhooks.
    while let Ok(event) = events.try_recv() {
        shared.route(event);
    }
    // Closing the queues ends each task once it has delivered what it holds.
    let tasks: Vec<_> = shared.hooks.lock().drain(..).map(|h| h.task).collect();
    let deadline = Instant::now() + STOP_GRACE;
    for task in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, task).await.is_err() {
            tracing::warn!("alerts stopped with deliveries still pending");
            break;
        }
    }
}
