//! The measurement behind `tools/patroni-switchover.sh` (ignored: run by the script, not by
//! `cargo test`): one Patroni cluster (`common::patroni`), and in front of it ringlb and two
//! HAProxy 2.6 instances with the Patroni recipe (`option httpchk OPTIONS /primary`,
//! `http-check expect status 200`, `on-marked-down shutdown-sessions`): one with ringlb's probe
//! settings (`inter 1s fastinter 100ms fall 2 rise 2`), one with the recipe's own (`inter 3s
//! fall 3 rise 2`). A writer through each proxy inserts a row every 10 ms on its session and
//! reconnects on error, while the cluster goes through switchovers and node losses.
//!
//! For every event and proxy it prints one line: `event N KIND proxy P window_ms W failed F
//! demoted D after200_ms A`, where W is the time from the first failed write after the event to
//! the first write acknowledged by the new primary, F the failed writes, D the writes a node
//! acknowledged after another node's `/primary` had answered 200 (a demoted node taking writes:
//! must be 0), and A the time from the new primary's first 200 on `/primary` to that first
//! acknowledged write.
//!
//! Settings: RINGLB_PATRONI_SWITCHOVERS (default 10), RINGLB_PATRONI_LOSSES (default 5).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::haproxy::Haproxy;
use common::health::free_port;
use common::patroni::{Cluster, TTL, pg_session};
use common::{Ringlb, runtime, wait_for};

/// One write attempt: when it ended and which node acknowledged it (or why it failed).
type Attempt = (Instant, Result<IpAddr, String>);

struct Proxy {
    name: &'static str,
    addr: SocketAddr,
    log: Arc<Mutex<Vec<Attempt>>>,
}

fn haproxy(cluster: &Cluster, port: u16, server_settings: &str) -> Haproxy {
    let mut cfg = format!(
        "global\n  maxconn 1000\n\ndefaults\n  mode tcp\n  timeout connect 2s\n  \
         timeout client 30m\n  timeout server 30m\n  \
         default-server {server_settings} on-marked-down shutdown-sessions\n\n\
         listen rw\n  bind 127.0.0.1:{port}\n  option httpchk OPTIONS /primary\n  \
         http-check expect status 200\n"
    );
    for (i, node) in cluster.nodes.iter().enumerate() {
        cfg.push_str(&format!(
            "  server {} {} check port {}\n",
            node.name,
            cluster.pg_addr(i),
            cluster.api_port
        ));
    }
    Haproxy::with_config(SocketAddr::from(([127, 0, 0, 1], port)), &cfg)
}

/// A PostgreSQL session to `addr` (`pg_session`), within 1 s.
async fn connect(addr: SocketAddr) -> Result<tokio_postgres::Client, String> {
    pg_session(addr, Duration::from_secs(1)).await
}

/// Inserts a row every 10 ms through `addr` until `stop`; ids start at `first`.
async fn writer(
    addr: SocketAddr,
    first: i64,
    log: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
) {
    let mut session: Option<tokio_postgres::Client> = None;
    let mut id = first;
    let mut ticks = tokio::time::interval(Duration::from_millis(10));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Acquire) {
        ticks.tick().await;
        id += 1;
        let attempt = async {
            if session.as_ref().is_none_or(|c| c.is_closed()) {
                session = Some(connect(addr).await?);
            }
            let c = session.as_ref().unwrap();
            let sql =
                format!("INSERT INTO w VALUES ({id}, host(inet_server_addr())) RETURNING node");
            let rows = tokio::time::timeout(Duration::from_secs(1), c.simple_query(&sql))
                .await
                .map_err(|_| "no answer within 1 s".to_owned())?
                .map_err(|e| e.to_string())?;
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                    _ => None,
                })
                .and_then(|n| n.parse::<IpAddr>().ok())
                .ok_or_else(|| "no row".to_owned())
        };
        let result = attempt.await;
        if result.is_err() {
            session = None;
        }
        log.lock().unwrap().push((Instant::now(), result));
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "a benchmark: run by tools/patroni-switchover.sh"]
fn switchover_windows() {
    let switchovers = env("RINGLB_PATRONI_SWITCHOVERS", 10);
    let losses = env("RINGLB_PATRONI_LOSSES", 5);
    let ips: [IpAddr; 2] = ["127.0.0.11".parse().unwrap(), "127.0.0.12".parse().unwrap()];
    let mut cluster = Cluster::start(&ips);
    let leader = cluster.wait_leader(Duration::from_secs(10));

    let mut service = "[runtime]\nworkers = 2\n\n[[service]]\nname = \"rw\"\n\
        listen = \"127.0.0.1:0\"\non_backend_down = \"shutdown\"\nretries = 1\n\n\
        [service.health]\nkind = \"http\"\nmethod = \"OPTIONS\"\npath = \"/primary\"\n\
        expect_status = [200]\ninterval = \"1s\"\nfast_interval = \"100ms\"\n\
        timeout = \"500ms\"\nrise = 2\nfall = 2\npassive_failures = 1\n"
        .to_owned();
    for i in 0..cluster.nodes.len() {
        service.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}\"\nhealth_port = {}\n",
            cluster.pg_addr(i),
            cluster.api_port
        ));
    }
    let lb = Ringlb::start(&service);
    let (fast_port, recipe_port) = (free_port(), free_port());
    let _fast = haproxy(
        &cluster,
        fast_port,
        "inter 1s fastinter 100ms fall 2 rise 2",
    );
    let _recipe = haproxy(&cluster, recipe_port, "inter 3s fall 3 rise 2");
    let local = |port| SocketAddr::from(([127, 0, 0, 1], port));
    let proxies = [
        ("ringlb", lb.addr("rw")),
        ("haproxy-fastinter", local(fast_port)),
        ("haproxy-recipe", local(recipe_port)),
    ]
    .map(|(name, addr)| Proxy {
        name,
        addr,
        log: Arc::default(),
    });

    let rt = runtime();
    rt.block_on(async {
        let c = connect(cluster.pg_addr(leader)).await.unwrap();
        c.batch_execute("CREATE TABLE w (id bigint PRIMARY KEY, node text)")
            .await
            .unwrap();
    });
    // Every proxy reaches the leader before the first event.
    for p in &proxies {
        let ok = wait_for(Duration::from_secs(20), || {
            rt.block_on(async { connect(p.addr).await.is_ok() })
        });
        assert!(ok, "{} does not serve", p.name);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = proxies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            rt.spawn(writer(
                p.addr,
                (i as i64 + 1) * 1_000_000_000,
                p.log.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let events: Vec<&str> = std::iter::repeat_n("switchover", switchovers)
        .chain(std::iter::repeat_n("loss", losses))
        .collect();
    let mut demoted_total = 0;
    for (n, kind) in events.iter().enumerate() {
        let old = cluster.wait_leader(Duration::from_secs(30));
        let new = 1 - old;
        // Writes flow through every proxy before the event.
        let settled = wait_for(Duration::from_secs(30), || {
            proxies.iter().all(|p| {
                let log = p.log.lock().unwrap();
                log.iter().rev().take(5).all(|(_, r)| r.is_ok()) && log.len() >= 5
            })
        });
        assert!(settled, "writers do not succeed before event {n}");
        let start = Instant::now();
        match *kind {
            "switchover" => cluster.switchover(old, new),
            _ => cluster.kill_node(old),
        }
        let primary_200 = cluster.wait_primary_api(new, TTL + Duration::from_secs(30));
        let new_ip = cluster.nodes[new].ip;
        // Every writer reaches the new primary (the recipe's settings take longest).
        let reached = wait_for(Duration::from_secs(60), || {
            proxies.iter().all(|p| {
                p.log
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|(t, r)| *t > start && r.as_ref() == Ok(&new_ip))
            })
        });
        assert!(reached, "some writer never reached the new primary");
        for p in &proxies {
            let log = p.log.lock().unwrap();
            let after: Vec<&Attempt> = log.iter().filter(|(t, _)| *t > start).collect();
            let first_ok_new = after
                .iter()
                .find(|(_, r)| r.as_ref() == Ok(&new_ip))
                .map(|(t, _)| *t)
                .unwrap();
            let first_fail = after
                .iter()
                .find(|(_, r)| r.is_err())
                .map(|(t, _)| *t)
                .filter(|t| *t < first_ok_new);
            let window = first_fail.map_or(Duration::ZERO, |f| first_ok_new - f);
            let failed = after
                .iter()
                .filter(|(t, r)| *t <= first_ok_new && r.is_err())
                .count();
            let demoted = after
                .iter()
                .filter(|(t, r)| *t > primary_200 && matches!(r, Ok(ip) if *ip != new_ip))
                .count();
            demoted_total += demoted;
            let after200 = first_ok_new.saturating_duration_since(primary_200);
            println!(
                "event {n} {kind} proxy {} window_ms {} failed {failed} demoted {demoted} \
                 after200_ms {}",
                p.name,
                window.as_millis(),
                after200.as_millis()
            );
        }
        if *kind == "loss" {
            // The lost node comes back as a replica of the survivor before the next event.
            cluster.start_node(old);
            cluster.wait_replica(old, Duration::from_secs(90));
        } else {
            cluster.wait_replica(old, Duration::from_secs(60));
        }
    }
    stop.store(true, Ordering::Release);
    for w in writers {
        let _ = rt.block_on(w);
    }
    assert_eq!(demoted_total, 0, "writes acknowledged by a demoted node");
}
