//! ringlb in front of a real Patroni cluster (etcd, two PostgreSQL nodes on 127.0.0.11 and
//! 127.0.0.12, see `common::patroni`), checked through Patroni's REST API as HAProxy's recipe
//! does: a read-write service on `OPTIONS /primary` and a read-only one on `GET /replica`.
//!
//! - writes through the read-write service land on the primary, reads through the read-only
//!   service on the replica;
//! - after `patronictl switchover`, new connections reach the new primary, sessions to the
//!   demoted node are closed, and every write ringlb's clients saw acknowledged is on the new
//!   primary (none was taken by the demoted node and lost);
//! - after the leader's node is lost (`kill -9` of its Patroni and postmaster), the survivor
//!   takes over once the leader key expires, and ringlb follows;
//! - when only the leader's postmaster dies (Patroni restarts it in place), passive detection
//!   keeps new connections away from it at once, long before the probes would.
//!
//! The tests run one at a time (each brings up its own cluster): two clusters at once on a
//! small machine would only make each one's timing noisier.
//!
//! Needs Debian's `etcd-server`, `patroni`, `python3-etcd` and `postgresql` (`.ci/run`).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::admin::Metrics;
use common::health::{LogEvent, events};
use common::patroni::{Cluster, TTL, pg_session};
use common::{Ringlb, runtime, wait_for};

/// One cluster at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn node_ips() -> [IpAddr; 2] {
    ["127.0.0.11".parse().unwrap(), "127.0.0.12".parse().unwrap()]
}

/// A service over the cluster's PostgreSQL nodes, checked on Patroni's REST API (`path`, with
/// `method`), with each node's REST port given per backend.
fn service(cluster: &Cluster, name: &str, method: &str, path: &str, health_extra: &str) -> String {
    let mut s = format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\non_backend_down = \"shutdown\"\n\
         retries = 1\n\n[service.health]\nkind = \"http\"\nmethod = \"{method}\"\n\
         path = \"{path}\"\nexpect_status = [200]\ntimeout = \"400ms\"\n{health_extra}\n"
    );
    for i in 0..cluster.nodes.len() {
        s.push_str(&format!(
            "\n[[service.backend]]\naddress = \"{}\"\nhealth_port = {}\n",
            cluster.pg_addr(i),
            cluster.api_port
        ));
    }
    s
}

/// Fast probes: HAProxy's `inter 500ms fastinter 100ms fall 2 rise 2`.
const FAST: &str = "interval = \"500ms\"\nfast_interval = \"100ms\"\nrise = 2\nfall = 2";

fn start_ringlb(services: &[String]) -> Ringlb {
    Ringlb::start(&format!(
        "[runtime]\nworkers = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{}",
        services.join("\n")
    ))
}

/// Transition lines (`backend down`, `backend up`) of `service` for `backend`.
fn service_events(lb: &Ringlb, message: &str, service: &str, backend: SocketAddr) -> Vec<LogEvent> {
    events(lb, message, Some(backend))
        .into_iter()
        .filter(|e| e.field("service=").as_deref() == Some(service))
        .collect()
}

/// Waits until `service` has marked `backend` down at least `count` times.
fn wait_down(lb: &Ringlb, service: &str, backend: SocketAddr, count: usize, timeout: Duration) {
    let ok = wait_for(timeout, || {
        service_events(lb, "backend down", service, backend).len() >= count
    });
    assert!(
        ok,
        "{service}: {backend} not down #{count} within {timeout:?}; log:\n{}",
        lb.log_text()
    );
}

/// A PostgreSQL session to `addr` (`pg_session`), within 3 s.
async fn connect(addr: SocketAddr) -> Result<tokio_postgres::Client, String> {
    pg_session(addr, Duration::from_secs(3)).await
}

/// The first column of the first row of `sql`'s answer, as text.
async fn one(client: &tokio_postgres::Client, sql: &str) -> Result<String, String> {
    let messages = tokio::time::timeout(Duration::from_secs(3), client.simple_query(sql))
        .await
        .map_err(|_| "no answer within 3 s".to_owned())?
        .map_err(|e| e.to_string())?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .ok_or_else(|| format!("{sql}: no row"))
}

/// Which node a session reached, and whether that node is in recovery (a replica).
async fn whoami(client: &tokio_postgres::Client) -> Result<(IpAddr, bool), String> {
    let answer = one(
        client,
        "SELECT host(inet_server_addr()) || ' ' || pg_is_in_recovery()::text",
    )
    .await?;
    let (ip, recovery) = answer.split_once(' ').ok_or("bad answer")?;
    Ok((ip.parse().map_err(|_| "bad address")?, recovery == "true"))
}

/// Which node a new session through `addr` reaches.
async fn reach(addr: SocketAddr) -> Result<(IpAddr, bool), String> {
    whoami(&connect(addr).await?).await
}

/// Waits until new sessions through `addr` reach `ip` as a primary; returns when.
fn wait_reach_primary(
    rt: &tokio::runtime::Runtime,
    addr: SocketAddr,
    ip: IpAddr,
    timeout: Duration,
) -> Option<Instant> {
    let ok = wait_for(timeout, || rt.block_on(reach(addr)) == Ok((ip, false)));
    ok.then(Instant::now)
}

/// ringlb has settled on the cluster's roles: the rw service marked the replica down (its
/// first probe does it at once) and the ro service the primary.
fn wait_roles(lb: &Ringlb, cluster: &Cluster, leader: usize, with_ro: bool) {
    let replica = 1 - leader;
    wait_down(
        lb,
        "rw",
        cluster.pg_addr(replica),
        1,
        Duration::from_secs(10),
    );
    if with_ro {
        wait_down(
            lb,
            "ro",
            cluster.pg_addr(leader),
            1,
            Duration::from_secs(10),
        );
    }
}

#[test]
fn writes_go_to_the_primary_and_reads_to_the_replica() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(&node_ips());
    let leader = cluster.wait_leader(Duration::from_secs(10));
    let replica = 1 - leader;
    let lb = start_ringlb(&[
        service(&cluster, "rw", "OPTIONS", "/primary", FAST),
        service(&cluster, "ro", "GET", "/replica?lag=16MB", FAST),
    ]);
    wait_roles(&lb, &cluster, leader, true);
    let rt = runtime();
    let (rw, ro) = (lb.addr("rw"), lb.addr("ro"));
    rt.block_on(async {
        let c = connect(rw).await.unwrap();
        c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, node text)")
            .await
            .unwrap();
        for id in 0..20 {
            // A new session for every write: each is routed on its own.
            let c = connect(rw).await.unwrap();
            assert_eq!(
                whoami(&c).await.unwrap(),
                (cluster.nodes[leader].ip, false),
                "write {id} went to the primary"
            );
            c.batch_execute(&format!(
                "INSERT INTO t VALUES ({id}, host(inet_server_addr()))"
            ))
            .await
            .unwrap();
        }
        let direct = connect(cluster.pg_addr(leader)).await.unwrap();
        assert_eq!(
            one(
                &direct,
                "SELECT count(*) FROM t WHERE node = host(inet_server_addr())"
            )
            .await
            .unwrap(),
            "20"
        );
        for _ in 0..10 {
            assert_eq!(
                reach(ro).await.unwrap(),
                (cluster.nodes[replica].ip, true),
                "reads go to the replica"
            );
        }
        // The replica has the writes (asynchronous replication: bounded wait).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let c = connect(ro).await.unwrap();
            let count = one(&c, "SELECT count(*) FROM t").await;
            if count.as_deref() == Ok("20") {
                break;
            }
            assert!(Instant::now() < deadline, "replica has {count:?} rows");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // A write through the read-only service is refused by the replica.
        let c = connect(ro).await.unwrap();
        let refused = c.batch_execute("INSERT INTO t VALUES (100, 'x')").await;
        assert!(
            refused
                .is_err_and(|e| e.code()
                    == Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)),
            "the replica refuses writes"
        );
    });
}

/// A writer through ringlb: inserts one row every 10 ms on its session, reconnecting on error,
/// until `stop` or `limit`; returns the ids acknowledged, with the node that acknowledged each.
/// Inserts a row every 10 ms through `addr` (reconnecting on error) until `stop` or `limit`;
/// returns each acknowledged id with the node that took it, counting them in `count` as it goes.
async fn writer(
    addr: SocketAddr,
    stop: &AtomicBool,
    count: &AtomicUsize,
    limit: Duration,
) -> Vec<(i64, IpAddr)> {
    let start = Instant::now();
    let mut acked = Vec::new();
    let mut session: Option<tokio_postgres::Client> = None;
    let mut id: i64 = 0;
    while !stop.load(Ordering::Acquire) && start.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if session.as_ref().is_none_or(|c| c.is_closed()) {
            session = connect(addr).await.ok();
        }
        let Some(c) = &session else { continue };
        id += 1;
        let sql = format!("INSERT INTO w VALUES ({id}, host(inet_server_addr())) RETURNING node");
        match one(c, &sql).await {
            Ok(node) => {
                acked.push((id, node.parse().unwrap()));
                count.fetch_add(1, Ordering::Release);
            }
            Err(_) => session = None,
        }
    }
    acked
}

#[test]
fn a_switchover_moves_writes_to_the_new_primary_and_closes_sessions_to_the_old_one() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(&node_ips());
    let old = cluster.wait_leader(Duration::from_secs(10));
    let new = 1 - old;
    let lb = start_ringlb(&[service(&cluster, "rw", "OPTIONS", "/primary", FAST)]);
    wait_roles(&lb, &cluster, old, false);
    let rt = runtime();
    let rw = lb.addr("rw");
    let session = rt.block_on(async {
        let c = connect(rw).await.unwrap();
        c.batch_execute("CREATE TABLE w (id bigint PRIMARY KEY, node text)")
            .await
            .unwrap();
        assert_eq!(whoami(&c).await.unwrap(), (cluster.nodes[old].ip, false));
        c
    });
    let stop = AtomicBool::new(false);
    let count = AtomicUsize::new(0);
    let acked_at_least = |n: usize| {
        wait_for(Duration::from_secs(10), || {
            count.load(Ordering::Acquire) >= n
        })
    };
    let (acked, reached) = std::thread::scope(|s| {
        let writing = s.spawn(|| rt.block_on(writer(rw, &stop, &count, Duration::from_secs(60))));
        // Some writes on the old primary first.
        assert!(
            acked_at_least(5),
            "no write acknowledged before the switchover"
        );
        cluster.switchover(old, new);
        let reached = wait_reach_primary(&rt, rw, cluster.nodes[new].ip, Duration::from_secs(20));
        // Some writes on the new primary too.
        let before = count.load(Ordering::Acquire);
        assert!(
            acked_at_least(before + 5),
            "no write acknowledged after the switchover"
        );
        stop.store(true, Ordering::Release);
        (writing.join().unwrap(), reached)
    });
    assert!(
        reached.is_some(),
        "new sessions never reached the new primary; log:\n{}\n{}",
        lb.log_text(),
        cluster.logs()
    );
    wait_down(&lb, "rw", cluster.pg_addr(old), 1, Duration::from_secs(5));
    rt.block_on(async {
        // The session to the demoted node was closed.
        let closed = wait_closed(&session, Duration::from_secs(5)).await;
        assert!(closed, "the session to the demoted node is still open");
        let on = |ip: IpAddr| acked.iter().filter(|(_, n)| *n == ip).count();
        assert!(
            on(cluster.nodes[old].ip) > 0,
            "no write before the switchover"
        );
        assert!(
            on(cluster.nodes[new].ip) > 0,
            "no write after the switchover"
        );
        // Every acknowledged write is on the new primary: none was taken by the demoted node
        // (it would be lost with its old timeline).
        let direct = connect(cluster.pg_addr(new)).await.unwrap();
        let rows = direct.query("SELECT id FROM w", &[]).await.unwrap();
        let stored: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
        let lost: Vec<i64> = acked
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !stored.contains(id))
            .collect();
        assert!(lost.is_empty(), "acknowledged writes missing: {lost:?}");
    });
}

/// Whether `client`'s session ends (a query fails) within `timeout`.
async fn wait_closed(client: &tokio_postgres::Client, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if client.is_closed() || one(client, "SELECT 1").await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn after_the_leaders_node_is_lost_ringlb_follows_the_survivor() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::start(&node_ips());
    let lost = cluster.wait_leader(Duration::from_secs(10));
    let survivor = 1 - lost;
    let lb = start_ringlb(&[service(&cluster, "rw", "OPTIONS", "/primary", FAST)]);
    wait_roles(&lb, &cluster, lost, false);
    let rt = runtime();
    let rw = lb.addr("rw");
    assert_eq!(rt.block_on(reach(rw)), Ok((cluster.nodes[lost].ip, false)));
    let killed = Instant::now();
    cluster.kill_node(lost);
    wait_down(&lb, "rw", cluster.pg_addr(lost), 1, Duration::from_secs(5));
    let promoted = cluster.wait_primary_api(survivor, TTL + Duration::from_secs(20));
    let reached = wait_reach_primary(&rt, rw, cluster.nodes[survivor].ip, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("ringlb did not follow; log:\n{}", lb.log_text()));
    // ringlb follows within its probe settings: rise (2) probes at the fast pace after the
    // first pass, plus the interval before it, plus scheduling slack.
    let lag = reached.saturating_duration_since(promoted);
    assert!(
        lag < Duration::from_secs(3),
        "ringlb followed {lag:?} after /primary answered 200 (killed {:?} before)",
        promoted - killed
    );
}

#[test]
fn passive_detection_keeps_new_connections_off_a_crashed_postmaster() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::start(&node_ips());
    let leader = cluster.wait_leader(Duration::from_secs(10));
    // Probes alone would take fall × interval = 3 × 3 s to notice; one refused connect does.
    let slow = "interval = \"3s\"\nfast_interval = \"200ms\"\nrise = 2\nfall = 3\n\
                passive_failures = 1";
    let lb = start_ringlb(&[service(&cluster, "rw", "OPTIONS", "/primary", slow)]);
    wait_roles(&lb, &cluster, leader, false);
    let rt = runtime();
    let rw = lb.addr("rw");
    let admin = lb.admin.unwrap();
    let backend = cluster.pg_addr(leader).to_string();
    let failures = || {
        Metrics::scrape(admin).sum(
            "ringlb_backend_connect_failures_total",
            &[("service", "rw"), ("backend", &backend)],
        )
    };
    assert_eq!(
        rt.block_on(reach(rw)),
        Ok((cluster.nodes[leader].ip, false))
    );
    let before = failures();
    let killed = Instant::now();
    cluster.kill_postmaster(leader);
    // The next new connection finds it refused; the backend is marked down at once.
    let first = rt.block_on(reach(rw));
    assert!(first.is_err(), "a session to a dead postmaster: {first:?}");
    wait_down(
        &lb,
        "rw",
        cluster.pg_addr(leader),
        1,
        Duration::from_secs(1),
    );
    let down = &service_events(&lb, "backend down", "rw", cluster.pg_addr(leader))[0];
    assert!(
        down.line.contains("connect failure"),
        "marked down by passive detection: {}",
        down.line
    );
    // While it is down, new connections are not sent to it: they are closed at once (no
    // backend is up) and ringlb makes no further connect attempt to it.
    if cluster.postmaster(leader).is_none() {
        for _ in 0..10 {
            let started = Instant::now();
            let r = rt.block_on(reach(rw));
            assert!(r.is_err(), "no backend is up: {r:?}");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "refused at once"
            );
        }
    }
    assert_eq!(
        failures() - before,
        1.0,
        "one failed connect, then none: the backend was left alone"
    );
    // Patroni restarts PostgreSQL in place, and the probes bring it back.
    let back = wait_for(Duration::from_secs(40), || {
        rt.block_on(reach(rw)).is_ok_and(|(_, recovery)| !recovery)
    });
    assert!(
        back,
        "never back after {:?}; log:\n{}\n{}",
        killed.elapsed(),
        lb.log_text(),
        cluster.logs()
    );
}
