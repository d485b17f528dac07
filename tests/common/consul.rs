//! A stand-in for a Consul agent's health API, built from Consul's HTTP API documentation, for
//! the discovery tests (no Consul agent can be installed where ringlb is built).
//!
//! It serves `GET /v1/health/service/NAME` on 127.0.0.1 with `passing`, `tag` (every one must
//! match), `dc`, `X-Consul-Index` and real blocking queries: with `index=I`, the answer waits
//! until the registry's index moves past `I` or `wait` ends. It checks `X-Consul-Token` when a
//! token is set (403 otherwise). The test drives it with plain calls: register, deregister, set
//! health, and fault modes (refuse connections, hang, 500, garbage body, index reset).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// One registered instance.
#[derive(Clone, Debug)]
pub struct Instance {
    pub service: String,
    pub address: SocketAddr,
    pub tags: Vec<String>,
    pub weight: u32,
    pub passing: bool,
    pub dc: String,
}

/// How the stand-in misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    None,
    /// Accept, read the request, never answer.
    Hang,
    /// Answer 500.
    ServerError,
    /// Answer 200 with a body that is not JSON.
    Garbage,
}

struct State {
    index: u64,
    instances: BTreeMap<String, Instance>,
    fault: Fault,
    token: Option<String>,
}

/// The running stand-in.
pub struct Consul {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changed: watch::Sender<u64>,
    server: Mutex<Option<tokio::task::JoinHandle<()>>>,
    rt: tokio::runtime::Handle,
    /// Connections accepted (any path).
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    /// Connections open now (a blocking query holds one while it waits).
    pub open: Arc<std::sync::atomic::AtomicU64>,
}

impl Consul {
    /// Starts on 127.0.0.1:0, on the current runtime; `token`: the ACL token it requires.
    pub async fn start(token: Option<&str>) -> Consul {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (changed, _) = watch::channel(1);
        let consul = Consul {
            addr,
            state: Arc::new(Mutex::new(State {
                index: 1,
                instances: BTreeMap::new(),
                fault: Fault::None,
                token: token.map(str::to_owned),
            })),
            changed,
            server: Mutex::new(None),
            rt: tokio::runtime::Handle::current(),
            requests: Arc::default(),
            open: Arc::default(),
        };
        consul.serve(listener);
        consul
    }

    fn serve(&self, listener: TcpListener) {
        let state = self.state.clone();
        let changed = self.changed.subscribe();
        let requests = self.requests.clone();
        let open = self.open.clone();
        let task = self.rt.spawn(async move {
            // Dropping the set (when this task is aborted) closes every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((s, _)) = accepted else { continue };
                        requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let open = open.clone();
                        open.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let served = handle(s, state.clone(), changed.clone());
                        conns.spawn(async move {
                            let _open = Open(open);
                            served.await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        *self.server.lock().unwrap() = Some(task);
    }

    /// The agent's URL, for `address`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn bump(&self, f: impl FnOnce(&mut State)) {
        let index = {
            let mut s = self.state.lock().unwrap();
            f(&mut s);
            s.index += 1;
            s.index
        };
        self.changed.send_replace(index);
    }

    /// Registers (or replaces) instance `id`.
    pub fn register(
        &self,
        id: &str,
        service: &str,
        address: SocketAddr,
        tags: &[&str],
        weight: u32,
    ) {
        let inst = Instance {
            service: service.to_owned(),
            address,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
            weight,
            passing: true,
            dc: "dc1".to_owned(),
        };
        self.bump(|s| {
            s.instances.insert(id.to_owned(), inst);
        });
    }

    /// Deregisters instance `id`.
    pub fn deregister(&self, id: &str) {
        self.bump(|s| {
            s.instances.remove(id);
        });
    }

    /// Marks instance `id` passing or critical.
    pub fn set_passing(&self, id: &str, passing: bool) {
        self.bump(|s| {
            if let Some(i) = s.instances.get_mut(id) {
                i.passing = passing;
            }
        });
    }

    /// Sets the weight of instance `id`.
    pub fn set_weight(&self, id: &str, weight: u32) {
        self.bump(|s| {
            if let Some(i) = s.instances.get_mut(id) {
                i.weight = weight;
            }
        });
    }

    /// Sets the fault mode (answers already waiting see it when they wake).
    pub fn set_fault(&self, fault: Fault) {
        self.state.lock().unwrap().fault = fault;
    }

    /// Sets the registry's index to `to` (lower than now: a reset, as after a snapshot restore)
    /// and wakes blocked queries.
    pub fn reset_index(&self, to: u64, f: impl FnOnce(&mut BTreeMap<String, Instance>)) {
        {
            let mut s = self.state.lock().unwrap();
            f(&mut s.instances);
            s.index = to;
        }
        self.changed.send_replace(to);
    }

    /// The current index.
    pub fn index(&self) -> u64 {
        self.state.lock().unwrap().index
    }

    /// Stops listening and closes every connection: connects are refused.
    pub fn refuse(&self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
        // The abort lands on the runtime; wait until the port no longer accepts.
        let addr = self.addr;
        assert!(super::wait_for(Duration::from_secs(5), || {
            std::net::TcpStream::connect(addr).is_err()
        }));
    }

    /// Listens again on the same address.
    pub fn resume(&self) {
        let std = std::net::TcpListener::bind(self.addr).expect("rebind the stand-in's port");
        std.set_nonblocking(true).unwrap();
        let _guard = self.rt.enter();
        self.serve(TcpListener::from_std(std).unwrap());
    }
}

impl Drop for Consul {
    fn drop(&mut self) {
        if let Some(task) = self.server.lock().unwrap().take() {
            task.abort();
        }
    }
}

/// Counts a connection as open until dropped (also when its task is aborted).
struct Open(Arc<std::sync::atomic::AtomicU64>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reads one request's head (up to 16 KiB).
async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(buf).ok()
}

fn parse_wait(text: &str) -> Duration {
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = num.parse().unwrap_or(0);
    match unit {
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        _ => Duration::from_secs(n),
    }
    .min(Duration::from_secs(600))
}

async fn handle(mut s: TcpStream, state: Arc<Mutex<State>>, mut changed: watch::Receiver<u64>) {
    let Some(head) = read_head(&mut s).await else {
        return;
    };
    let mut lines = head.split("\r\n");
    let target = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .unwrap_or("/")
        .to_owned();
    let token = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("x-consul-token"))
        .map(|(_, v)| v.trim().to_owned());
    let url = url::Url::parse(&format!("http://x{target}")).unwrap();
    let Some(name) = url
        .path()
        .strip_prefix("/v1/health/service/")
        .map(str::to_owned)
    else {
        let _ = respond(&mut s, 404, "", b"not found").await;
        return;
    };
    let query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (k.into(), v.into()))
        .collect();
    let get = |k: &str| query.iter().find(|(q, _)| q == k).map(|(_, v)| v.clone());
    let tags: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    let passing = get("passing").is_some_and(|v| v != "false");
    let dc = get("dc").unwrap_or_else(|| "dc1".to_owned());
    let index: u64 = get("index").and_then(|i| i.parse().ok()).unwrap_or(0);
    let wait = get("wait").map_or(Duration::from_secs(300), |w| parse_wait(&w));

    let refused = {
        let st = state.lock().unwrap();
        st.token
            .as_ref()
            .is_some_and(|want| token.as_deref() != Some(want.as_str()))
    };
    if refused {
        let _ = respond(&mut s, 403, "", b"ACL not found").await;
        return;
    }
    // A blocking query: wait while the index is still the one the client has.
    if index > 0 {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let now = *changed.borrow_and_update();
            if now != index {
                break;
            }
            if tokio::time::timeout_at(deadline, changed.changed())
                .await
                .is_err()
            {
                break;
            }
        }
    }
    let (fault, body, index) = {
        let st = state.lock().unwrap();
        let entries: Vec<serde_json::Value> = st
            .instances
            .iter()
            .filter(|(_, i)| i.service == name && i.dc == dc)
            .filter(|(_, i)| !passing || i.passing)
            .filter(|(_, i)| tags.iter().all(|t| i.tags.contains(t)))
            .map(|(id, i)| entry(id, i))
            .collect();
        (st.fault, serde_json::to_vec(&entries).unwrap(), st.index)
    };
    match fault {
        Fault::None => {
            let _ = respond(&mut s, 200, &format!("X-Consul-Index: {index}\r\n"), &body).await;
        }
        Fault::Hang => {
            std::future::pending::<()>().await;
        }
        Fault::ServerError => {
            let _ = respond(&mut s, 500, "", b"rpc error").await;
        }
        Fault::Garbage => {
            let _ = respond(
                &mut s,
                200,
                &format!("X-Consul-Index: {index}\r\n"),
                b"<html>nope",
            )
            .await;
        }
    }
}

fn entry(id: &str, i: &Instance) -> serde_json::Value {
    let ip: IpAddr = i.address.ip();
    let status = if i.passing { "passing" } else { "critical" };
    serde_json::json!({
        "Node": {"ID": "node-1", "Node": "node-1", "Address": ip.to_string(), "Datacenter": i.dc},
        "Service": {
            "ID": id, "Service": i.service, "Tags": i.tags, "Address": "",
            "Port": i.address.port(), "Meta": {},
            "Weights": {"Passing": i.weight, "Warning": 1}
        },
        "Checks": [{"Node": "node-1", "CheckID": "service:".to_owned() + id, "Status": status}]
    })
}

async fn respond(s: &mut TcpStream, code: u16, headers: &str, body: &[u8]) -> std::io::Result<()> {
    let reason = match code {
        200 => "OK",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    s.shutdown().await
}
