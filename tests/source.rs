//! Source addresses of backend connections (`source`), through a real ringlb process.
//!
//! On plain loopback: connections come from each configured address in turn (a backend's own
//! list replacing the service's), and bytes still arrive exactly. In a network namespace whose
//! ephemeral range is one port (the test creates it and removes it, even when it fails): ringlb
//! binds its backend sockets with `IP_BIND_ADDRESS_NO_PORT`, so that one port serves two
//! backends at once from the same address; a second address doubles the connections one backend
//! can take; a connect whose first address is out of ports comes from the next; and only when
//! every address is out is a local shortage counted, once per connect.

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::admin::Metrics;
use common::netns::Netns;
use common::{Ringlb, config, pattern, runtime, service_config, sha, wait_for};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// The peers a backend accepted, in order.
type Peers = Arc<Mutex<Vec<SocketAddr>>>;

/// An echo backend on `addr` that records each connection's peer. With `bye`, a connection
/// whose next bytes are the line `bye` is closed by the backend at once (so the backend, not
/// ringlb, closes first and holds the TIME_WAIT).
async fn backend(addr: &str, bye: bool) -> (SocketAddr, Peers) {
    let listener = TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers: Peers = Arc::default();
    let seen = peers.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, peer)) = listener.accept().await else {
                continue;
            };
            seen.lock().unwrap().push(peer);
            tokio::spawn(async move {
                let mut s = BufReader::new(s);
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    // Lines until `bye`; anything else is echoed as it comes.
                    let filled = match s.fill_buf().await {
                        Ok([]) | Err(_) => break,
                        Ok(b) => b,
                    };
                    if bye && filled.starts_with(b"bye\n") {
                        return;
                    }
                    let n = filled.len().min(buf.len());
                    buf[..n].copy_from_slice(&filled[..n]);
                    s.consume(n);
                    if s.get_mut().write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
                let _ = s.get_mut().shutdown().await;
            });
        }
    });
    (addr, peers)
}

fn ips(peers: &Peers) -> BTreeSet<IpAddr> {
    peers.lock().unwrap().iter().map(|p| p.ip()).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Sends `pattern(seed, len)` through `addr` while reading the echo; asserts the echo is the
/// same bytes in the same order.
async fn echo_exactly(addr: SocketAddr, seed: u64, len: usize) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let up = pattern(seed, len);
    let digest = sha(&up);
    let writer = tokio::spawn(async move {
        w.write_all(&up).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut down = Vec::with_capacity(len);
    tokio::time::timeout(Duration::from_secs(20), r.read_to_end(&mut down))
        .await
        .expect("the echo ends within 20s")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(down.len(), len, "connection {seed}: length");
    assert_eq!(sha(&down), digest, "connection {seed}: digest");
}

#[test]
fn connections_rotate_over_the_source_addresses_and_bytes_arrive_exactly() {
    let rt = runtime();
    let (shared, shared_peers) = rt.block_on(backend("127.0.0.1:0", false));
    let (own, own_peers) = rt.block_on(backend("127.0.0.1:0", false));
    // One worker, round robin: the backends alternate, and each backend's connections
    // alternate over its addresses.
    let mut service = service_config(
        "svc",
        "round_robin",
        &[shared],
        "source = [\"127.0.0.2\", \"127.0.0.3\"]",
    );
    service.push_str(&format!(
        "\n[[service.backend]]\naddress = \"{own}\"\nsource = [\"127.0.0.4\"]\n"
    ));
    let ringlb = Ringlb::start(&config("", &[service]).replace("workers = 2", "workers = 1"));
    let addr = ringlb.addr("svc");
    rt.block_on(async {
        for seed in 0..8u64 {
            // 256 KiB each way: more than a buffer, so the bulk path (splice) runs too.
            echo_exactly(addr, seed, 256 * 1024).await;
        }
    });
    assert_eq!(shared_peers.lock().unwrap().len(), 4);
    assert_eq!(own_peers.lock().unwrap().len(), 4);
    assert_eq!(
        ips(&shared_peers),
        BTreeSet::from([ip("127.0.0.2"), ip("127.0.0.3")]),
        "the service's addresses, both"
    );
    assert_eq!(
        ips(&own_peers),
        BTreeSet::from([ip("127.0.0.4")]),
        "the backend's own list replaces the service's"
    );
    // In turn: no address twice in a row toward the same backend.
    let order: Vec<IpAddr> = shared_peers
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.ip())
        .collect();
    assert!(order.windows(2).all(|w| w[0] != w[1]), "{order:?}");
}

/// The namespace's one ephemeral port.
const PORT: u16 = 40000;
const A: &str = "127.0.0.1:7101";
const B: &str = "127.0.0.1:7102";
const ADMIN: &str = "127.0.0.1:7200";

/// A client of `service` from its own `port` (outside the ephemeral range, which it leaves to
/// ringlb): sends a line and waits for it back. The stream when served, `None` when ringlb
/// closed it (no backend connection could be made).
async fn client(service: SocketAddr, port: u16) -> Option<BufReader<TcpStream>> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    let s = socket.connect(service).await.unwrap();
    let mut s = BufReader::new(s);
    s.get_mut().write_all(b"ping\n").await.ok()?;
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(10), s.read_line(&mut line)).await {
        Ok(Ok(_)) if line == "ping\n" => Some(s),
        Ok(_) => None,
        Err(_) => panic!("client {port}: neither served nor closed within 10s"),
    }
}

/// Whether the namespace has a TCP socket (any state) from `local` to `remote`, as `ss` run
/// from this thread sees it.
fn socket_exists(local: &str, remote: &str) -> bool {
    let out = Command::new("ss")
        .args(["-Htan"])
        .output()
        .expect("ss runs");
    String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let cols: Vec<&str> = l.split_whitespace().collect();
        cols.len() >= 5 && cols[3] == local && cols[4] == remote
    })
}

#[test]
fn one_local_port_serves_two_backends_and_a_second_address_doubles_the_connections() {
    let ns = Netns::new(
        "src",
        &[&format!("net.ipv4.ip_local_port_range={PORT} {PORT}")],
    );
    ns.run(|| {
        let rt = runtime();
        let ((a, a_peers), (b, b_peers)) =
            rt.block_on(async { (backend(A, true).await, backend(B, true).await) });
        // Two services, one backend each, so the test says which backend a client reaches.
        // One worker: one rotation.
        let source = "source = [\"127.0.0.2\", \"127.0.0.3\"]\nretries = 0";
        let text = config(
            &format!("\n[admin]\nlisten = \"{ADMIN}\""),
            &[
                // Fixed listen ports: port 0 would draw from the one ephemeral port.
                service_config("to-a", "round_robin", &[a], source)
                    .replace("127.0.0.1:0", "127.0.0.1:7001"),
                service_config("to-b", "round_robin", &[b], source)
                    .replace("127.0.0.1:0", "127.0.0.1:7002"),
            ],
        )
        .replace("workers = 2", "workers = 1");
        let ringlb = Ringlb::start(&text);
        let (to_a, to_b) = (ringlb.addr("to-a"), ringlb.addr("to-b"));
        let from = |ip: &str| SocketAddr::new(ip.parse().unwrap(), PORT);

        // The first connection to A and the first to B come from the same address and the
        // same (only) port, both open at once: the port was chosen at connect time for each
        // destination (IP_BIND_ADDRESS_NO_PORT). Bound the usual way, the second socket's bind
        // would have found no port left.
        let a1 = rt
            .block_on(client(to_a, 50001))
            .expect("first client to A served");
        let b1 = rt
            .block_on(client(to_b, 50002))
            .expect("first client to B served");
        assert_eq!(a_peers.lock().unwrap()[..], [from("127.0.0.2")]);
        assert_eq!(b_peers.lock().unwrap()[..], [from("127.0.0.2")]);

        // The next connection to A comes from the second address: two connections to one
        // backend where one address has a single port.
        let a2 = rt
            .block_on(client(to_a, 50003))
            .expect("second client to A served");
        assert_eq!(a_peers.lock().unwrap()[1], from("127.0.0.3"));

        // A third: both addresses are out of ports toward A; ringlb closes the client.
        assert!(
            rt.block_on(client(to_a, 50004)).is_none(),
            "no port left toward A: the client is closed"
        );
        assert_eq!(a_peers.lock().unwrap().len(), 2);

        // A closes its first connection (from 127.0.0.2) first, so ringlb holds no TIME_WAIT
        // for it and the port frees at once. The rotation now starts at 127.0.0.3, still out of
        // ports toward A: the connect moves on to 127.0.0.2.
        rt.block_on(async move {
            let mut a1 = a1;
            a1.get_mut().write_all(b"bye\n").await.unwrap();
            let mut rest = Vec::new();
            let _ = a1.read_to_end(&mut rest).await;
        });
        let port = from("127.0.0.2").to_string();
        assert!(
            wait_for(Duration::from_secs(10), || !socket_exists(&port, A)),
            "ringlb's socket from {port} to {A} is gone"
        );
        let a3 = rt
            .block_on(client(to_a, 50005))
            .expect("the next client to A is served");
        assert_eq!(a_peers.lock().unwrap()[2], from("127.0.0.2"));

        // One local shortage: the connect that found every address out; the one that moved
        // on to the next address is not one.
        let m = Metrics::scrape(ADMIN.parse().unwrap());
        let shortages = m.sum(
            "ringlb_local_shortages_total",
            &[("source", "connect"), ("reason", "ports")],
        );
        assert_eq!(shortages, 1.0);
        assert_eq!(m.sum("ringlb_backend_health_transitions_total", &[]), 0.0);
        drop((b1, a2, a3));
        assert_eq!(ips(&b_peers), BTreeSet::from([ip("127.0.0.2")]));
    });
}
