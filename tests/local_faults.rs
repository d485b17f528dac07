//! ringlb's own shortages through a real process: out of ephemeral ports in a network namespace
//! with a tiny `ip_local_port_range`, no backend may be marked down for it, the shortage is
//! counted and alerted as local, and new connections are served again once ports free.
//!
//! Everything runs inside a network namespace the test creates (a unique name per run, removed
//! by a guard even when the test fails): ringlb is spawned from a thread that entered the
//! namespace (a child process starts in its parent thread's namespaces), and so are the
//! backends, clients, webhook and admin requests, which run on that thread or on threads it
//! starts. Listeners use fixed ports outside the ephemeral range (the namespace is private), so
//! only connects draw from the 20 ephemeral ports.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::admin::{Metrics, get};
use common::netns::Netns;
use common::webhook::webhook;
use common::{Ringlb, runtime, wait_for_every};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The ephemeral ports of the namespace: 20, so 20 connections to one backend use them all.
const PORT_RANGE: &str = "40000 40019";
const PORTS: u64 = 20;
const LISTEN: &str = "127.0.0.1:7000";
const BACKENDS: [&str; 2] = ["127.0.0.1:7101", "127.0.0.1:7102"];
const ADMIN: &str = "127.0.0.1:7200";
const WEBHOOK: &str = "127.0.0.1:7300";
/// Clients held open at once: more than the ports toward both backends together.
const CLIENTS: u16 = 100;
/// Clients bind their own ports, outside the ephemeral range, so they leave it to ringlb.
const CLIENT_PORTS: u16 = 50000;

/// An echo backend on `addr`, line by line.
async fn echo(addr: &str) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

/// A client from its own `port`: sends a line and waits for it back. Returns the stream when
/// it was served (echoed), `None` when ringlb closed it (no backend could be reached).
async fn client(port: u16) -> Option<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    let s = socket.connect(LISTEN.parse().unwrap()).await.unwrap();
    let mut s = BufReader::new(s);
    s.get_mut().write_all(b"ping\n").await.ok()?;
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(10), s.read_line(&mut line)).await {
        Ok(Ok(_)) if line == "ping\n" => Some(s.into_inner()),
        Ok(_) => None,
        Err(_) => panic!("client {port}: neither served nor closed within 10s"),
    }
}

/// Polls `cond` every 200 ms (each poll may be an admin request, which takes a port) until it
/// holds or `timeout` passes.
fn poll(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_for_every(Duration::from_millis(200), timeout, cond)
}

fn shortages(m: &Metrics, source: &str) -> f64 {
    m.sum(
        "ringlb_local_shortages_total",
        &[("source", source), ("reason", "ports")],
    )
}

#[test]
fn running_out_of_local_ports_marks_no_backend_down_and_service_resumes_when_they_free() {
    // tcp_tw_reuse = 2 is Linux's default (TIME_WAIT ports reused for loopback connects a second
    // after their last packet); set here so the bound on recovery does not hang on it.
    let ns = Netns::new(
        "lf",
        &[
            &format!("net.ipv4.ip_local_port_range={PORT_RANGE}"),
            "net.ipv4.tcp_tw_reuse=2",
        ],
    );
    ns.run(|| {
        let rt = runtime();
        let events = rt.block_on(async {
            for b in BACKENDS {
                echo(b).await;
            }
            webhook(WEBHOOK).await.1
        });
        let config = format!(
            "[runtime]\nworkers = 2\n\n[admin]\nlisten = \"{ADMIN}\"\n\n\
             [[alert.webhook]]\nurl = \"http://{WEBHOOK}/hook\"\n\n\
             [[service]]\nname = \"svc\"\nlisten = \"{LISTEN}\"\nconnect_timeout = \"2s\"\n\
             retries = 1\n\n\
             [service.health]\ninterval = \"150ms\"\ntimeout = \"150ms\"\nrise = 1\nfall = 2\n\
             passive_failures = 1\n\n\
             [[service.backend]]\naddress = \"{}\"\n\n[[service.backend]]\naddress = \"{}\"\n",
            BACKENDS[0], BACKENDS[1]
        );
        let ringlb = Ringlb::start(&config);
        let admin = ringlb.admin.unwrap();
        let up = |m: &Metrics| m.sum("ringlb_backend_healthy", &[]) == 2.0;
        assert!(
            poll(Duration::from_secs(10), || {
                let m = Metrics::scrape(admin);
                up(&m) && m.sum("ringlb_backend_probes_total", &[]) >= 2.0
            }),
            "both backends probed and up"
        );

        // 100 clients at once: 20 per backend get through and hold every ephemeral port
        // toward it; ringlb closes the others.
        let held: Vec<TcpStream> = rt.block_on(async {
            let clients: Vec<_> = (0..CLIENTS)
                .map(|i| tokio::spawn(client(CLIENT_PORTS + i)))
                .collect();
            let mut held = Vec::new();
            for c in clients {
                held.extend(c.await.unwrap());
            }
            held
        });
        println!("clients served while ports ran out: {}", held.len());
        assert!(
            held.len() as u64 <= PORTS * 2 && held.len() as u64 >= PORTS,
            "served {}: the ports toward the backends bound it",
            held.len()
        );

        // The probes meet the shortage too: counted, and the backends' last check says so.
        assert!(
            poll(Duration::from_secs(5), || shortages(
                &Metrics::scrape(admin),
                "probe"
            ) > 0.0),
            "probes not run for want of ports are counted"
        );
        let held_metrics = Metrics::scrape(admin);
        let status = get(admin, "/status").json();
        let backends = status["services"][0]["backends"].as_array().unwrap();
        let reasons: Vec<&str> = backends
            .iter()
            .map(|b| b["last_check"]["reason"].as_str().unwrap())
            .collect();
        println!("last checks while held: {reasons:?}");
        assert!(
            reasons.iter().any(|r| r.contains("local ports")),
            "{reasons:?}"
        );
        for b in backends {
            assert_eq!(b["state"], "up", "{b}");
        }
        assert!(shortages(&held_metrics, "connect") > 0.0);

        // Every client closes normally: ringlb's closed backend connections now hold the ports
        // in TIME_WAIT. New connections must be served again as soon as they free.
        let closed = Instant::now();
        rt.block_on(async {
            for mut s in held {
                let _ = s.shutdown().await;
                let mut rest = Vec::new();
                let _ = s.read_to_end(&mut rest).await;
            }
        });
        let mut next_port = CLIENT_PORTS + CLIENTS;
        let served_again = poll(Duration::from_secs(10), || {
            next_port += 1;
            rt.block_on(client(next_port)).is_some()
        });
        let resumed = closed.elapsed();
        println!("served again {resumed:?} after the clients closed");
        assert!(
            served_again,
            "no client served within 10s of the ports freeing"
        );

        // Recovery is alerted, and nothing ever marked a backend or the service down.
        assert!(
            poll(Duration::from_secs(5), || events
                .lock()
                .unwrap()
                .contains(&"local_recovery".to_owned())),
            "local_recovery alerted: {:?}",
            events.lock().unwrap()
        );
        let m = Metrics::scrape(admin);
        println!(
            "local shortages: probe {} connect {}; alerts {:?}",
            shortages(&m, "probe"),
            shortages(&m, "connect"),
            events.lock().unwrap()
        );
        assert_eq!(m.sum("ringlb_backend_health_transitions_total", &[]), 0.0);
        assert_eq!(m.sum("ringlb_backend_probe_failures_total", &[]), 0.0);
        assert!(up(&m));
        assert_eq!(m.sum("ringlb_service_up", &[]), 1.0);
        assert!(shortages(&m, "probe") >= shortages(&held_metrics, "probe"));
        let events = events.lock().unwrap().clone();
        // One alert per transition into and out of the shortage, alternating; never one per
        // probe or per backend.
        assert!(events.iter().all(|e| e.starts_with("local_")), "{events:?}");
        let exhaustions = events.iter().filter(|e| *e == "local_exhaustion").count();
        assert!((1..=2).contains(&exhaustions), "{events:?}");
        for pair in events.chunks(2) {
            assert_eq!(pair, ["local_exhaustion", "local_recovery"], "{events:?}");
        }
    });
}
