//! The admin API against the real binary: `/metrics` parsed with a Prometheus text parser after
//! traffic of known size, `/status`, `/connections`, backend changes (drain, disable, weight),
//! the bearer token, errors, and the `ringlb status` / `ringlb connections` commands.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use common::admin::{Metrics, get, http, post};
use common::health::{Switchable, greeting};
use common::{Backend, Ringlb, refused_addr, runtime, wait_for};

const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Sends `size` bytes on a new connection through `addr` and checks the echo.
async fn echo_once(addr: SocketAddr, size: usize) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    s.write_all(&data).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, data);
}

/// A UDP echo server on loopback.
async fn udp_echo() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    addr
}

#[test]
fn metrics_count_exactly_the_traffic_sent_through_each_service() {
    let rt = runtime();
    let (a1, a2, b1, u1) = rt.block_on(async {
        (
            Backend::echo(None).await,
            Backend::echo(None).await,
            Backend::echo(None).await,
            udp_echo().await,
        )
    });
    let refused = refused_addr();
    let config = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\n\
         [[service.backend]]\naddress = \"{}\"\n[[service.backend]]\naddress = \"{}\"\n\
         [[service]]\nname = \"b\"\nlisten = \"127.0.0.1:0\"\n\
         [[service.backend]]\naddress = \"{}\"\n\
         [[service]]\nname = \"c\"\nlisten = \"127.0.0.1:0\"\nalgorithm = \"round_robin\"\nretries = 1\n\
         [[service.backend]]\naddress = \"{refused}\"\n[[service.backend]]\naddress = \"{}\"\n\
         [[service]]\nname = \"u\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
         [[service.backend]]\naddress = \"{u1}\"\n",
        a1.addr, a2.addr, b1.addr, b1.addr
    );
    let ringlb = Ringlb::start(&config);
    let admin = ringlb.admin.unwrap();
    rt.block_on(async {
        for _ in 0..20 {
            echo_once(ringlb.addr("a"), 1000).await;
        }
        for _ in 0..7 {
            echo_once(ringlb.addr("b"), 500).await;
        }
        for _ in 0..4 {
            echo_once(ringlb.addr("c"), 10).await;
        }
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client.connect(ringlb.addr("u")).await.unwrap();
        let mut buf = [0u8; 64];
        for i in 0..10u8 {
            client.send(&[i; 33]).await.unwrap();
            let n = tokio::time::timeout(Duration::from_secs(2), client.recv(&mut buf))
                .await
                .expect("udp echo through ringlb")
                .unwrap();
            assert_eq!(&buf[..n], &[i; 33]);
        }
    });

    // Bytes and sessions are counted when a connection closes, right after the client saw EOF.
    let settled = wait_for(Duration::from_secs(5), || {
        let m = Metrics::scrape(admin);
        m.sum("ringlb_backend_session_seconds_count", &[]) == 31.0
            && m.sum("ringlb_service_connections_active", &[]) == 0.0
    });
    assert!(settled, "connections did not all close");
    let m = Metrics::scrape(admin);
    let a = [("service", "a")];
    let b = [("service", "b")];
    assert_eq!(m.sum("ringlb_service_connections_total", &a), 20.0);
    assert_eq!(m.sum("ringlb_service_connections_total", &b), 7.0);
    assert_eq!(m.sum("ringlb_backend_connections_total", &a), 20.0);
    assert_eq!(m.sum("ringlb_backend_bytes_sent_total", &a), 20_000.0);
    assert_eq!(m.sum("ringlb_backend_bytes_received_total", &a), 20_000.0);
    assert_eq!(m.sum("ringlb_backend_bytes_sent_total", &b), 3_500.0);
    assert_eq!(m.sum("ringlb_backend_bytes_received_total", &b), 3_500.0);
    // Round robin over two backends: each got half.
    for backend in [a1.addr, a2.addr] {
        let labels = [("service", "a"), ("backend", &backend.to_string()[..])];
        assert_eq!(m.sum("ringlb_backend_connections_total", &labels), 10.0);
    }
    assert_eq!(m.sum("ringlb_backend_connect_seconds_count", &a), 20.0);
    assert_eq!(m.sum("ringlb_backend_session_seconds_count", &b), 7.0);
    assert_eq!(m.sum("ringlb_worker_accepts_total", &[]), 31.0);

    // Service c: every other connection tried the refused backend first, then retried.
    let c = [("service", "c")];
    let refused_labels = [("service", "c"), ("reason", "refused")];
    assert_eq!(
        m.sum("ringlb_backend_connect_failures_total", &refused_labels),
        2.0
    );
    assert_eq!(
        m.sum(
            "ringlb_backend_connect_failures_total",
            &[("service", "c"), ("reason", "timeout")]
        ),
        0.0
    );
    assert_eq!(m.sum("ringlb_service_retries_total", &c), 2.0);
    assert_eq!(m.sum("ringlb_service_no_backend_total", &c), 0.0);
    assert_eq!(m.sum("ringlb_backend_connections_total", &c), 4.0);

    // UDP: one flow, ten datagrams each way.
    let u = [("service", "u")];
    assert_eq!(m.sum("ringlb_udp_flows_opened_total", &u), 1.0);
    assert_eq!(m.sum("ringlb_udp_flows_active", &u), 1.0);
    assert_eq!(
        m.sum(
            "ringlb_udp_datagrams_total",
            &[("service", "u"), ("direction", "up")]
        ),
        10.0
    );
    assert_eq!(
        m.sum(
            "ringlb_udp_datagrams_total",
            &[("service", "u"), ("direction", "down")]
        ),
        10.0
    );
    assert_eq!(m.sum("ringlb_udp_flows_evicted_total", &u), 0.0);

    assert_eq!(m.sum("ringlb_service_up", &a), 1.0);
    assert_eq!(
        m.sum(
            "ringlb_backend_admin_state",
            &[("service", "a"), ("state", "enabled")]
        ),
        2.0
    );
    assert_eq!(m.sum("ringlb_config_version", &[]), 1.0);
}

/// Holds a connection open through `addr`, after one echo round trip of `size` bytes.
async fn held(addr: SocketAddr, size: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let data = vec![7u8; size];
    s.write_all(&data).await.unwrap();
    let mut back = vec![0u8; size];
    s.read_exact(&mut back).await.unwrap();
    s
}

#[test]
fn status_and_connections_show_live_state_and_the_cli_prints_them() {
    let rt = runtime();
    let (x, y) = rt.block_on(async { (Backend::echo(None).await, Backend::echo(None).await) });
    let config = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
         [[service.backend]]\naddress = \"{}\"\nweight = 2\n[[service.backend]]\naddress = \"{}\"\n\
         [[service]]\nname = \"other\"\nlisten = \"127.0.0.1:0\"\n\
         [[service.backend]]\naddress = \"{}\"\n",
        x.addr, y.addr, y.addr
    );
    let ringlb = Ringlb::start(&config);
    let admin = ringlb.admin.unwrap();
    let conns = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(held(ringlb.addr("web"), 100).await);
        }
        v.push(held(ringlb.addr("other"), 5).await);
        v
    });

    let status = get(admin, "/status").json();
    assert_eq!(status["config_version"], 1);
    assert_eq!(status["workers"], 2);
    let web = &status["services"][0];
    assert_eq!(web["name"], "web");
    assert_eq!(web["active"], 3);
    assert_eq!(web["up"], true);
    assert_eq!(web["backends"][0]["address"], x.addr.to_string());
    assert_eq!(web["backends"][0]["weight"], 2);
    assert_eq!(web["backends"][0]["state"], "up");
    let active: u64 = web["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["active"].as_u64().unwrap())
        .sum();
    assert_eq!(active, 3);

    // Bytes are recorded in the tracking table once written: poll for the echo of each.
    let ok = wait_for(Duration::from_secs(5), || {
        let list = get(admin, "/connections?service=web").json();
        let list = list.as_array().unwrap().clone();
        list.len() == 3
            && list.iter().all(|c| {
                c["service"] == "web"
                    && c["state"] == "established"
                    && c["bytes_up"] == 100
                    && c["bytes_down"] == 100
            })
    });
    assert!(ok, "{}", get(admin, "/connections?service=web").body);
    let all = get(admin, "/connections").json();
    assert_eq!(all.as_array().unwrap().len(), 4);
    let two = get(admin, "/connections?limit=2").json();
    assert_eq!(two.as_array().unwrap().len(), 2);
    let unknown = http(admin, "GET", "/connections?service=nope", None, None);
    assert_eq!(unknown.code, 404, "{}", unknown.body);
    assert!(unknown.json()["error"].as_str().unwrap().contains("nope"));
    assert_eq!(
        http(admin, "GET", "/connections?limit=x", None, None).code,
        400
    );
    assert_eq!(http(admin, "GET", "/no/such/path", None, None).code, 404);

    // The command-line views of the same.
    let exe = env!("CARGO_BIN_EXE_ringlb");
    let out = Command::new(exe)
        .args(["status", "--admin", &admin.to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("config version 1"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("web") && l.contains(&x.addr.to_string()))
        .unwrap_or_else(|| panic!("no row for {}: {text}", x.addr));
    assert!(row.contains(" up "), "{row}");
    let out = Command::new(exe)
        .args([
            "connections",
            "--admin",
            &admin.to_string(),
            "--service",
            "other",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("1 connection\n"), "{text}");
    assert!(text.contains(&y.addr.to_string()), "{text}");
    // A dead admin address is a clear error, not a panic.
    let out = Command::new(exe)
        .args(["status", "--admin", &refused_addr().to_string()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin API"));
    drop(conns);
}

#[test]
fn drain_disable_and_weight_through_the_api_with_a_token() {
    let rt = runtime();
    let (a, b) = rt.block_on(async {
        (
            Switchable::start("a", LOCAL).await,
            Switchable::start("b", LOCAL).await,
        )
    });
    let config = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret\"\n\
         [[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\n\
         algorithm = \"weighted_round_robin\"\nretries = 0\n\
         [[service.backend]]\naddress = \"{}\"\n[[service.backend]]\naddress = \"{}\"\n",
        a.addr, b.addr
    );
    let ringlb = Ringlb::start(&config);
    let admin = ringlb.admin.unwrap();
    let addr = ringlb.addr("svc");
    let path = |action: &str| format!("/services/svc/backends/{}/{action}", a.addr);

    // Changes need the token; reads do not.
    let denied = post(admin, &path("drain"));
    assert_eq!(denied.code, 401, "{}", denied.body);
    let wrong = http(admin, "POST", &path("drain"), None, Some("guess"));
    assert_eq!(wrong.code, 401);
    assert_eq!(get(admin, "/metrics").code, 200);

    // A live session to a, then drain a: the session goes on, new connections go to b only.
    let mut live = rt.block_on(async {
        loop {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut line = vec![0u8; 2];
            s.read_exact(&mut line).await.unwrap();
            if line == b"a\n" {
                break s;
            }
        }
    });
    let drained = http(admin, "POST", &path("drain"), None, Some("s3cret"));
    assert_eq!(drained.code, 200, "{}", drained.body);
    assert_eq!(drained.json()["from"], "enabled");
    assert_eq!(drained.json()["to"], "drain");
    rt.block_on(async {
        for _ in 0..10 {
            assert_eq!(greeting(addr, None).await.unwrap(), "b");
        }
        live.write_all(b"still here").await.unwrap();
        let mut back = [0u8; 10];
        live.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"still here");
    });
    let status = get(admin, "/status").json();
    assert_eq!(status["services"][0]["backends"][0]["state"], "drain");

    // Disable closes the live session.
    let disabled = http(admin, "POST", &path("disable"), None, Some("s3cret"));
    assert_eq!(disabled.code, 200);
    rt.block_on(async {
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), live.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "the disabled backend's session was not closed");
    });

    // Enable again and weigh a 3:1 against b: weighted round robin is exact over a cycle.
    let enabled = http(admin, "POST", &path("enable"), None, Some("s3cret"));
    assert_eq!(enabled.json()["from"], "disabled");
    let weight = format!("/services/svc/backends/{}/weight", a.addr);
    let set = http(
        admin,
        "PUT",
        &weight,
        Some("{\"weight\": 3}"),
        Some("s3cret"),
    );
    assert_eq!(set.code, 200, "{}", set.body);
    assert_eq!(set.json()["version"], 2);
    let names = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..40 {
            v.push(greeting(addr, None).await.unwrap());
        }
        v
    });
    assert_eq!(names.iter().filter(|n| *n == "a").count(), 30, "{names:?}");
    let m = Metrics::scrape(admin);
    let a_labels = [("service", "svc"), ("backend", &a.addr.to_string()[..])];
    assert_eq!(m.sum("ringlb_backend_weight", &a_labels), 3.0);

    // Bad requests.
    let bad = http(admin, "PUT", &weight, Some("heavy"), Some("s3cret"));
    assert_eq!(bad.code, 400, "{}", bad.body);
    let zero = http(admin, "PUT", &weight, Some("0"), Some("s3cret"));
    assert_eq!(zero.code, 400, "{}", zero.body);
    let no_backend = http(
        admin,
        "POST",
        "/services/svc/backends/127.0.0.1:1/drain",
        None,
        Some("s3cret"),
    );
    assert_eq!(no_backend.code, 404);
    let no_service = http(
        admin,
        "POST",
        &format!("/services/x/backends/{}/drain", a.addr),
        None,
        Some("s3cret"),
    );
    assert_eq!(no_service.code, 404);
    let no_action = http(admin, "POST", &path("explode"), None, Some("s3cret"));
    assert_eq!(no_action.code, 404);
}
