//! Serving the admin API's connections within fixed bounds, so that no number or kind of admin
//! clients can spend the descriptors, memory or time the data plane needs.
//!
//! Owns: the accept loop of the `ringlb-admin` thread, the cap on open admin connections
//! (`[admin] max_connections`), the header timeout (`[admin] header_timeout`, also the bound on
//! an idle keep-alive connection), the body timeout (`[admin] body_timeout`), the header and
//! body size limits, and the admin counters that `/metrics` shows. It does not own the routes
//! or their answers (`api`), nor the process-wide connection budget, which keeps this module's
//! descriptors aside (`control::budget`).
//!
//! Each connection is served by hyper's HTTP/1 connection builder (the one `axum::serve` uses,
//! which does not expose these limits) on the thread's current-thread tokio runtime.
//!
//! The cap: a connection takes a slot when it is accepted and gives it back when it closes.
//! When every slot is taken, the newcomer is held and the connection that has waited longest
//! for a request (a fresh one that has not finished its headers, or an idle keep-alive one) is
//! closed to make room; only when every open connection is in the middle of a request does the
//! newcomer wait for a slot, and further connections wait in the kernel's accept queue. Closing
//! at once instead of queueing keeps the admin API answering during a flood of idle
//! connections: a scraper sends its request as soon as it connects, so it is never the one that
//! has waited longest, while a flood's connections are closed as fast as they come. At most
//! `max_connections + 1` admin connections (the held newcomer) and the listener are open at any
//! time, which is what the connection budget keeps aside.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::config::AdminSettings;
use crate::control::Counter;

/// Largest request line and headers. Far above what `curl`, Prometheus or `ringlb status` send
/// (a few hundred bytes with a bearer token); larger requests are answered 431 and closed.
/// Also hyper's read buffer limit, so a request that never ends its headers is cut off here.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Largest request body. The API's bodies are a few bytes of JSON (`{"weight": 3}`), far
/// below axum's default limit of 2 MB, which this replaces; larger bodies are answered 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// Pause after a failed accept (out of descriptors, memory): the error would repeat at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The admin counters shown by `/metrics`.
#[derive(Debug, Default)]
pub struct AdminStats {
    /// Admin connections open now.
    pub open: AtomicU64,
    /// Admin connections accepted since start.
    pub accepted: Counter,
    /// Connections closed to make room for a newcomer at `max_connections`.
    pub closed_at_cap: Counter,
    /// Connections closed because a request's headers did not arrive within `header_timeout`,
    /// or an idle keep-alive connection sent no request within it.
    pub header_timeouts: Counter,
    /// Requests answered 408 and closed because the body did not arrive within `body_timeout`.
    pub body_timeouts: Counter,
    /// Requests refused for headers over [`MAX_HEADER_BYTES`] (431) or a body over
    /// [`MAX_BODY_BYTES`] (413).
    pub too_large: Counter,
}

/// One open admin connection's slot.
struct Slot {
    /// Whether a request is being answered, and since when the connection waits for one.
    state: Mutex<SlotState>,
    /// Told to close the connection to make room.
    evict: Notify,
    _permit: OwnedSemaphorePermit,
}

struct SlotState {
    busy: bool,
    idle_since: Instant,
    evicted: bool,
}

/// The slots of the open admin connections.
struct Slots {
    permits: Arc<Semaphore>,
    open: Mutex<Vec<Arc<Slot>>>,
    /// A connection finished a request and could now be closed to make room.
    went_idle: Notify,
}

impl Slots {
    fn new(max: usize) -> Slots {
        Slots {
            permits: Arc::new(Semaphore::new(max)),
            open: Mutex::new(Vec::with_capacity(max)),
            went_idle: Notify::new(),
        }
    }

    /// A slot for a connection just accepted: a free one, else one freed by closing the
    /// connection that has waited longest for a request, else the first one given back.
    async fn take(&self, stats: &AdminStats) -> Arc<Slot> {
        let permit = loop {
            if let Ok(p) = self.permits.clone().try_acquire_owned() {
                break p;
            }
            if self.evict_longest_idle() {
                stats.closed_at_cap.inc();
                // The closed connection's task gives its permit back when it next runs.
                match self.permits.clone().acquire_owned().await {
                    Ok(p) => break p,
                    Err(_) => unreachable!("the admin semaphore is never closed"),
                }
            }
            // Every connection is answering a request: wait for one to close or go idle.
            tokio::select! {
                p = self.permits.clone().acquire_owned() => match p {
                    Ok(p) => break p,
                    Err(_) => unreachable!("the admin semaphore is never closed"),
                },
                () = self.went_idle.notified() => {}
            }
        };
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                busy: false,
                idle_since: Instant::now(),
                evicted: false,
            }),
            evict: Notify::new(),
            _permit: permit,
        });
        self.open.lock().push(slot.clone());
        slot
    }

    /// Tells the idle connection that has waited longest to close; false when none is idle.
    fn evict_longest_idle(&self) -> bool {
        let open = self.open.lock();
        let oldest = open
            .iter()
            .filter_map(|s| {
                let st = s.state.lock();
                (!st.busy && !st.evicted).then_some((st.idle_since, s))
            })
            .min_by_key(|(since, _)| *since);
        let Some((_, slot)) = oldest else {
            return false;
        };
        slot.state.lock().evicted = true;
        // notify_one keeps the wake-up if the connection's task is not waiting yet.
        slot.evict.notify_one();
        true
    }

    fn remove(&self, slot: &Arc<Slot>) {
        self.open.lock().retain(|s| !Arc::ptr_eq(s, slot));
    }
}

/// Marks a connection busy while a request is answered; idle again when dropped.
struct Busy<'a> {
    slot: &'a Slot,
    slots: &'a Slots,
}

impl<'a> Busy<'a> {
    fn new(slot: &'a Slot, slots: &'a Slots) -> Busy<'a> {
        slot.state.lock().busy = true;
        Busy { slot, slots }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        let mut st = self.slot.state.lock();
        st.busy = false;
        st.idle_since = Instant::now();
        drop(st);
        self.slots.went_idle.notify_one();
    }
}

/// Serves `router` on `listener` within the limits of `settings` until the process exits.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &AdminSettings,
    stats: Arc<AdminStats>,
) {
    let router = router.layer(middleware::from_fn_with_state(
        (stats.clone(), settings.body_timeout),
        read_body,
    ));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(settings.header_timeout)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_HEADER_BYTES)
        .keep_alive(true);
    let header_timeout = settings.header_timeout;
    let slots = Arc::new(Slots::new(settings.max_connections as usize));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin API cannot accept a connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let slot = slots.take(&stats).await;
        stats.accepted.inc();
        stats.open.fetch_add(1, Relaxed);
        let (slots, stats, http) = (slots.clone(), stats.clone(), http.clone());
        let tower = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(|request| {
                let busy = Busy::new(&slot, &slots);
                let answer = hyper::service::Service::call(&tower, request);
                async move {
                    let answer = answer.await;
                    drop(busy);
                    answer
                }
            });
            let connection = http.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => match result {
                    Err(e) if e.is_timeout() => {
                        stats.header_timeouts.inc();
                    }
                    Err(e) if e.is_parse_too_large() => {
                        stats.too_large.inc();
                    }
                    // hyper ends an idle keep-alive connection at the header timeout without
                    // an error, as if the client had closed it.
                    Ok(()) if slot.state.lock().idle_since.elapsed() >= header_timeout => {
                        stats.header_timeouts.inc();
                    }
                    _ => {}
                },
                () = slot.evict.notified() => {}
            }
            slots.remove(&slot);
            stats.open.fetch_sub(1, Relaxed);
        });
    }
}

/// Reads the whole request body, at most [`MAX_BODY_BYTES`] within the body timeout, before
/// the route sees it; a late body is answered 408, a large one 413, and the connection closed.
async fn read_body(
    State((stats, timeout)): State<(Arc<AdminStats>, Duration)>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        stats.too_large.inc();
        return closing(StatusCode::PAYLOAD_TOO_LARGE, too_large_body());
    }
    match tokio::time::timeout(timeout, collect(body)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(BodyError::TooLarge)) => {
            stats.too_large.inc();
            closing(StatusCode::PAYLOAD_TOO_LARGE, too_large_body())
        }
        Ok(Err(BodyError::Read(e))) => closing(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}"),
        ),
        Err(_) => {
            stats.body_timeouts.inc();
            closing(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the request body did not arrive within [admin] body_timeout ({})",
                    humantime::format_duration(timeout)
                ),
            )
        }
    }
}

enum BodyError {
    TooLarge,
    Read(axum::Error),
}

/// The whole body, refused as soon as it passes [`MAX_BODY_BYTES`].
async fn collect(body: Body) -> Result<Vec<u8>, BodyError> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if all.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(BodyError::TooLarge);
        }
        all.extend_from_slice(&chunk);
    }
    Ok(all)
}

fn too_large_body() -> String {
    format!("the request body is larger than {MAX_BODY_BYTES} bytes")
}

/// An error answer after which the connection is closed (its request was not read whole).
fn closing(code: StatusCode, message: String) -> Response {
    let mut response = super::api::error(code, message);
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn at_the_cap_the_longest_idle_connection_makes_room() {
        let slots = Arc::new(Slots::new(2));
        let stats = Arc::new(AdminStats::default());
        let a = slots.take(&stats).await;
        let b = slots.take(&stats).await;
        // `a` is answering a request; `b` waits for one.
        let a_busy = Busy::new(&a, &slots);
        let b_task = {
            let (slots, b) = (slots.clone(), b.clone());
            tokio::spawn(async move {
                b.evict.notified().await;
                slots.remove(&b);
            })
        };
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(1), slots.take(&stats))
            .await
            .expect("closing the idle connection makes room");
        b_task.await.unwrap();
        assert_eq!(stats.closed_at_cap.get(), 1);
        assert!(!a.state.lock().evicted, "a busy connection is never closed");

        // Every connection is answering a request: the newcomer waits...
        let c_busy = Busy::new(&c, &slots);
        let newcomer = {
            let (slots, stats) = (slots.clone(), stats.clone());
            tokio::spawn(async move { slots.take(&stats).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !newcomer.is_finished(),
            "no room while every connection is busy"
        );
        // ...until one goes idle, which is then closed to make room.
        drop(a_busy);
        tokio::time::timeout(Duration::from_secs(1), a.evict.notified())
            .await
            .expect("the connection that went idle is closed");
        assert!(!c.state.lock().evicted);
        slots.remove(&a);
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), newcomer)
            .await
            .expect("the newcomer gets the freed slot")
            .unwrap();
        assert_eq!(stats.closed_at_cap.get(), 2);
        drop(c_busy);
    }
}
