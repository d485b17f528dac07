//! The admin HTTP API, served by axum on the control plane's `ringlb-admin` thread (a tokio
//! current-thread runtime); the workers never run HTTP code.
//!
//! Routes:
//! - `GET /metrics`: Prometheus text (see `metrics`).
//! - `GET /health`: 200 `{"healthy":true}` while ringlb serves, else 503 with a short
//!   `reason` (see `health` for what serving means); for keepalived and other checkers.
//! - `GET /status`: JSON of services and backends, the config file, snapshot version, uptime.
//! - `GET /connections?service=NAME&limit=N`: live tracked connections, oldest first (each
//!   worker answers from its own table through its mailbox; default limit 100, at most 10,000).
//! - `POST /services/{name}/backends/{address}/enable|disable|drain`: the operator's state.
//! - `PUT /services/{name}/backends/{address}/weight` with `{"weight": N}` (or the bare number).
//! - `POST /reload`: reload the config file (as SIGHUP does) and return what changed, or the
//!   error with file, line, column and key (422).
//!
//! With `[admin] token` set, every `POST` and `PUT` and `GET /connections` (it shows client
//! addresses) need `Authorization: Bearer <token>` (401 otherwise; the token is compared in
//! constant time); with `protect_reads = true`, `GET /metrics` and `GET /status` too.
//! `GET /health` is always open (keepalived asks it). Errors are JSON `{"error": "..."}`: 400
//! for a bad request, 404 for an unknown route, service or backend, 422 for a config that does
//! not validate, 500 for a listener that cannot be bound. The connection cap, timeouts and size
//! limits (408, 413, 431) are `serve`'s.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};

use crate::balancer::health::Admin;
use crate::config::Discovery;
use crate::config::{AdminSettings, Secret};
use crate::control::discovery::{Version, WatchStatus};

use super::instance::{ChangeError, Instance};
use super::serve::AdminStats;

/// How long `/connections` waits for each worker's answer.
const WORKER_ANSWER: Duration = Duration::from_secs(2);

/// Default and largest `limit` of `/connections`.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

#[derive(Clone)]
struct App {
    instance: Arc<Instance>,
    token: Option<Secret>,
    /// `[admin] protect_reads`: `/metrics` and `/status` need the token too.
    protect_reads: bool,
    stats: Arc<AdminStats>,
}

/// The running admin server.
#[derive(Debug)]
pub struct AdminServer {
    address: SocketAddr,
}

impl AdminServer {
    /// Binds `[admin] listen` now (so a taken address stops the start with a clear error) and
    /// serves the API on its own thread, within the `[admin]` limits, until the process exits.
    pub fn start(settings: AdminSettings, instance: Arc<Instance>) -> std::io::Result<AdminServer> {
        let listen = settings.listen;
        let listener = bind(listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {listen} for the admin API: {e}"),
            )
        })?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (app, stats) = router(App {
            instance,
            token: settings.token.clone(),
            protect_reads: settings.protect_reads,
            stats: Arc::new(AdminStats::default()),
        });
        std::thread::Builder::new()
            .name("ringlb-admin".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::error!(error = %e, "admin API cannot take its listener");
                            return;
                        }
                    };
                    super::serve::serve(listener, app, &settings, stats).await;
                });
            })?;
        tracing::info!(address = %address, "admin API listening");
        Ok(AdminServer { address })
    }

    /// The bound address.
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// The routes, and the counters the server keeps for `/metrics`.
/// Connections the kernel queues for the admin listener before it drops handshakes. Queued
/// connections hold no descriptor of ringlb's; a deep queue lets a scraper wait its turn during
/// a flood of connections instead of retrying its handshake a second or more later.
const ADMIN_BACKLOG: i32 = 1024;

/// A non-blocking listener on `listen` with [`ADMIN_BACKLOG`].
fn bind(listen: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&listen.into())?;
    socket.listen(ADMIN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

fn router(app: App) -> (Router, Arc<AdminStats>) {
    let stats = app.stats.clone();
    let changes = Router::new()
        .route("/reload", post(reload))
        .route(
            "/services/{name}/backends/{address}/{action}",
            post(set_admin),
        )
        .route(
            "/services/{name}/backends/{address}/weight",
            put(set_weight),
        )
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    // `/connections` shows client addresses: it needs the token like a change does.
    let private = Router::new()
        .route("/connections", get(connections))
        .route_layer(middleware::from_fn_with_state(app.clone(), require_token));
    let reads = Router::new()
        .route("/metrics", get(metrics))
        .route("/status", get(status));
    let reads = if app.protect_reads {
        reads.route_layer(middleware::from_fn_with_state(app.clone(), require_token))
    } else {
        reads
    };
    let routes = Router::new()
        .route("/health", get(health))
        .merge(reads)
        .merge(private)
        .merge(changes)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint".to_owned()) })
        .with_state(app);
    (routes, stats)
}

/// `{"error": "..."}` with `code`.
pub(super) fn error(code: StatusCode, message: String) -> Response {
    #[derive(Serialize)]
    struct Body {
        error: String,
    }
    (code, axum::Json(Body { error: message })).into_response()
}

async fn require_token(
    State(app): State<App>,
    headers: HeaderMap,
    request: Request,
    next: Next,
) -> Response {
    if let Some(token) = &app.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| same_token(g, token.expose())) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "this call needs \"Authorization: Bearer <token>\" with the [admin] token"
                    .to_owned(),
            );
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    next.run(request).await
}

/// Whether `given` is the token, compared in constant time: how long the comparison takes
/// says nothing about how much of a wrong token matched (its length aside).
fn same_token(given: &str, token: &str) -> bool {
    use subtle::ConstantTimeEq;
    bool::from(given.as_bytes().ct_eq(token.as_bytes()))
}

async fn metrics(State(app): State<App>) -> Response {
    let body = super::metrics::render(&app.instance, &app.stats);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// `/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    /// ringlb's version.
    pub version: String,
    /// The config file.
    pub config_file: String,
    /// The running snapshot's version (1 at start, +1 per change).
    pub config_version: u64,
    /// When the running config was loaded (seconds since the Unix epoch).
    pub config_loaded_at: u64,
    /// Seconds since start.
    pub uptime_seconds: u64,
    /// Workers.
    pub workers: usize,
    /// Services in config order.
    pub services: Vec<ServiceStatus>,
}

/// One service in `/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// Name.
    pub name: String,
    /// "tcp" or "udp".
    pub protocol: String,
    /// The configured listen address.
    pub listen: String,
    /// The algorithm.
    pub algorithm: String,
    /// Whether some backend is up.
    pub up: bool,
    /// Client connections open now (UDP: flows).
    pub active: u64,
    /// Client connections accepted since start (UDP: flows opened).
    pub total: u64,
    /// Backends: the file's, in file order, then the discovered ones.
    pub backends: Vec<BackendStatus>,
    /// Where further backends come from, when the service has `[service.discovery]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
}

/// A service's discovery in `/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DiscoveryStatus {
    /// "consul" or "dns".
    pub kind: String,
    /// What is watched: the Consul service at its agent, or the DNS name.
    pub target: String,
    /// When the registry last answered (seconds since the Unix epoch); `None` until it has.
    pub last_update: Option<u64>,
    /// The last answer's `X-Consul-Index` (Consul).
    pub consul_index: Option<u64>,
    /// The last answer's TTL in seconds (DNS).
    pub dns_ttl_seconds: Option<f64>,
    /// Instances in the last answer.
    pub instances: usize,
    /// Why discovery is failing now (the last good set stays); `None` while it answers.
    pub last_error: Option<String>,
    /// Answers that changed the backend set.
    pub updates: u64,
    /// Failed attempts.
    pub failures: u64,
}

/// One backend in `/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BackendStatus {
    /// Address (IP:port).
    pub address: String,
    /// "up", "down" (failing health checks), "drain" or "disabled".
    pub state: String,
    /// Whether it passes its health checks.
    pub healthy: bool,
    /// "enabled", "drain" or "disabled".
    pub admin: String,
    /// Weight.
    pub weight: u32,
    /// Whether it is a backup.
    pub backup: bool,
    /// Connections open now.
    pub active: u64,
    /// Connections since start.
    pub connections: u64,
    /// Failed connects since start.
    pub connect_failures: u64,
    /// The last health probe, when checked.
    pub last_check: Option<CheckStatus>,
    /// "static" (the config file), "consul" or "dns".
    #[serde(default)]
    pub origin: String,
}

/// A backend's last probe in `/status`.
#[derive(Debug, Serialize, Deserialize)]
pub struct CheckStatus {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub reason: String,
    /// How long it took, in milliseconds.
    pub took_ms: u64,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Builds `/status`.
pub fn status_of(instance: &Instance) -> Status {
    use std::sync::atomic::Ordering::Relaxed;
    let snapshot = instance.snapshot().load();
    let services = snapshot
        .services
        .iter()
        .map(|s| {
            let udp = s.config.protocol == crate::config::Protocol::Udp;
            let c = &s.counters;
            ServiceStatus {
                name: s.config.name.clone(),
                protocol: s.config.protocol.name().to_owned(),
                listen: s.config.listen.to_string(),
                algorithm: s.config.algorithm.name().to_owned(),
                up: s.available(),
                active: if udp {
                    c.udp_flows_active.load(Relaxed)
                } else {
                    c.active.load(Relaxed)
                },
                total: if udp {
                    c.udp_flows_opened.get()
                } else {
                    c.accepted.get()
                },
                backends: s
                    .backends
                    .iter()
                    .map(|b| {
                        let admin = b.live.admin();
                        let healthy = b.live.healthy();
                        let state = match (admin, healthy) {
                            (Admin::Enabled, true) => "up",
                            (Admin::Enabled, false) => "down",
                            (other, _) => other.name(),
                        };
                        let last_check =
                            b.counters.last_check.lock().as_ref().map(|c| CheckStatus {
                                at: unix(c.at),
                                passed: c.passed,
                                reason: c.reason.clone(),
                                took_ms: c.took.as_millis() as u64,
                            });
                        BackendStatus {
                            address: b.address().to_string(),
                            state: state.to_owned(),
                            healthy,
                            admin: admin.name().to_owned(),
                            weight: b.config.weight,
                            backup: b.config.backup,
                            active: b.counters.active.load(Relaxed),
                            connections: b.counters.connections.get(),
                            connect_failures: b.counters.connect_failures.get(),
                            last_check,
                            origin: b.config.origin.name().to_owned(),
                        }
                    })
                    .collect(),
                discovery: s.config.discovery.as_ref().map(|d| {
                    let w = instance.discovery().get(&s.config.name);
                    discovery_status(&d.source, w)
                }),
            }
        })
        .collect();
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        config_file: instance.path().display().to_string(),
        config_version: snapshot.version,
        config_loaded_at: unix(instance.loaded_at()),
        uptime_seconds: instance.uptime().as_secs(),
        workers: instance.dataplane().workers(),
        services,
    }
}

async fn health(State(app): State<App>) -> Response {
    let health = super::health::judge(&super::health::facts_of(&app.instance));
    let code = if health.healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(health)).into_response()
}

fn discovery_status(source: &Discovery, w: Option<WatchStatus>) -> DiscoveryStatus {
    let (consul_index, dns_ttl_seconds) = match w.as_ref().and_then(|w| w.version) {
        Some(Version::ConsulIndex(i)) => (Some(i), None),
        Some(Version::DnsTtl(t)) => (None, Some(t.as_secs_f64())),
        None => (None, None),
    };
    DiscoveryStatus {
        kind: source.kind().to_owned(),
        target: source.target(),
        last_update: w.as_ref().and_then(|w| w.last_update).map(unix),
        consul_index,
        dns_ttl_seconds,
        instances: w.as_ref().map_or(0, |w| w.instances),
        last_error: w.as_ref().and_then(|w| w.last_error.clone()),
        updates: w.as_ref().map_or(0, |w| w.updates),
        failures: w.as_ref().map_or(0, |w| w.failures),
    }
}

async fn status(State(app): State<App>) -> Response {
    axum::Json(status_of(&app.instance)).into_response()
}

/// Query of `/connections`.
#[derive(Debug, Deserialize)]
struct ConnectionsQuery {
    service: Option<String>,
    limit: Option<usize>,
}

/// One connection in `/connections`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ConnectionStatus {
    /// The service's name.
    pub service: String,
    /// The client's address.
    pub client: String,
    /// The backend's address, once connected.
    pub backend: Option<String>,
    /// "connecting", "established", "client_closed" or "backend_closed".
    pub state: String,
    /// Milliseconds since accept.
    pub age_ms: u64,
    /// Milliseconds since bytes last moved.
    pub idle_ms: u64,
    /// Bytes from the client so far.
    pub bytes_up: u64,
    /// Bytes from the backend so far.
    pub bytes_down: u64,
    /// The worker serving it.
    pub worker: usize,
}

async fn connections(
    State(app): State<App>,
    query: Result<Query<ConnectionsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return error(
            StatusCode::BAD_REQUEST,
            "query: expected service=NAME and limit=N (a number)".to_owned(),
        );
    };
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit {limit} is out of range: must be between 1 and {MAX_LIMIT}"),
        );
    }
    let snapshot = app.instance.snapshot().load_full();
    let service = match &query.service {
        Some(name) => match snapshot.service(name) {
            Some(s) => Some(s.id),
            None => return error(StatusCode::NOT_FOUND, format!("no service named {name:?}")),
        },
        None => None,
    };
    let list = app
        .instance
        .dataplane()
        .connections(service, limit, WORKER_ANSWER)
        .await;
    let names: BTreeMap<u64, String> = snapshot
        .services
        .iter()
        .map(|s| (s.id.0, s.config.name.clone()))
        .collect();
    let out: Vec<ConnectionStatus> = list
        .into_iter()
        .map(|c| ConnectionStatus {
            service: names
                .get(&c.service_id)
                .cloned()
                .unwrap_or_else(|| "(removed by a reload)".to_owned()),
            client: c.client.to_string(),
            backend: c.backend.map(|b| b.to_string()),
            state: c.state.to_owned(),
            age_ms: c.age_ms,
            idle_ms: c.idle_ms,
            bytes_up: c.bytes_up,
            bytes_down: c.bytes_down,
            worker: c.worker,
        })
        .collect();
    axum::Json(out).into_response()
}

/// The status code of a change that was not applied.
fn change_error(e: ChangeError) -> Response {
    let code = match &e {
        ChangeError::NoService(_) | ChangeError::NoBackend { .. } => StatusCode::NOT_FOUND,
        ChangeError::Invalid(_) => StatusCode::BAD_REQUEST,
        ChangeError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ChangeError::Listen(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if let ChangeError::Config(config) = &e
        && let Some(at) = config.location()
    {
        #[derive(Serialize)]
        struct Body {
            error: String,
            file: String,
            line: usize,
            column: usize,
            key: String,
        }
        return (
            code,
            axum::Json(Body {
                error: e.to_string(),
                file: at.source.clone(),
                line: at.line,
                column: at.column,
                key: at.key.clone(),
            }),
        )
            .into_response();
    }
    error(code, e.to_string())
}

/// Runs a blocking change off the runtime's thread, so the API keeps answering meanwhile.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ChangeError> + Send + 'static,
) -> Result<T, Response> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(change_error),
        Err(e) => Err(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the change failed: {e}"),
        )),
    }
}

async fn reload(State(app): State<App>) -> Response {
    let instance = app.instance.clone();
    match blocking(move || instance.reload()).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(response) => response,
    }
}

async fn set_admin(
    State(app): State<App>,
    Path((name, address, action)): Path<(String, String, String)>,
) -> Response {
    let admin = match action.as_str() {
        "enable" => Admin::Enabled,
        "disable" => Admin::Disabled,
        "drain" => Admin::Drain,
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no action {other:?}: use enable, disable or drain"),
            );
        }
    };
    match app.instance.set_admin(&name, &address, admin) {
        Ok(before) => {
            #[derive(Serialize)]
            struct Body<'a> {
                service: &'a str,
                backend: &'a str,
                from: &'a str,
                to: &'a str,
            }
            axum::Json(Body {
                service: &name,
                backend: &address,
                from: before.name(),
                to: admin.name(),
            })
            .into_response()
        }
        Err(e) => change_error(e),
    }
}

async fn set_weight(
    State(app): State<App>,
    Path((name, address)): Path<(String, String)>,
    body: String,
) -> Response {
    #[derive(Deserialize)]
    struct Weight {
        weight: u32,
    }
    let weight = match serde_json::from_str::<Weight>(&body) {
        Ok(w) => w.weight,
        Err(_) => match body.trim().parse::<u32>() {
            Ok(w) => w,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "body {:?}: expected {{\"weight\": N}} or a number",
                        body.trim()
                    ),
                );
            }
        },
    };
    let instance = app.instance.clone();
    match blocking(move || instance.set_weight(&name, &address, weight)).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(response) => response,
    }
}
