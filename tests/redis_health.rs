//! The redis check against two real redis-server processes, one a replica of the other, behind
//! `role = "master"`: a failover (promote the replica, demote the old master) moves new
//! connections to the new master within two probe intervals, and `on_backend_down = "shutdown"`
//! closes the sessions to the demoted one.
//!
//! Needs Debian's `redis-server` (`.ci/run` installs it); fails, naming the package, without it.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::health::{events, free_port, health, wait_event};
use common::{Ringlb, TempDir, config, service_config, temp_dir, wait_for};

const INTERVAL: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_millis(100);
/// Scheduling allowance on top of the bound the config implies.
const SLACK: Duration = Duration::from_millis(400);

fn redis_server_binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let candidate = PathBuf::from(dir).join("redis-server");
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "redis-server not found on PATH: this test needs Debian's redis-server package \
         (`apt-get install -y redis-server`; .ci/run installs it)"
    );
}

/// A redis-server on a port of its own, killed on drop.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
    _dir: TempDir,
}

impl RedisServer {
    fn start() -> RedisServer {
        let dir = temp_dir();
        let port = free_port();
        let child = Command::new(redis_server_binary())
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--daemonize", "no", "--loglevel", "warning"])
            // Replicas sync at once instead of after Redis 7's default 5 s diskless delay.
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let server = RedisServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _dir: dir,
        };
        assert!(
            wait_for(Duration::from_secs(10), || server
                .try_cmd(&["PING"])
                .is_ok()),
            "redis-server on {} did not answer PING",
            server.addr
        );
        server
    }

    fn try_cmd(&self, args: &[&str]) -> redis::RedisResult<redis::Value> {
        cmd(self.addr, args)
    }

    fn cmd(&self, args: &[&str]) -> redis::Value {
        self.try_cmd(args)
            .unwrap_or_else(|e| panic!("{} {args:?}: {e}", self.addr))
    }

    fn info_replication(&self) -> String {
        match self.cmd(&["INFO", "replication"]) {
            redis::Value::BulkString(b) => String::from_utf8(b).unwrap(),
            redis::Value::VerbatimString { text, .. } => text,
            other => panic!("INFO: {other:?}"),
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn connect(addr: SocketAddr) -> redis::RedisResult<redis::Connection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let conn = client.get_connection_with_timeout(Duration::from_secs(2))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(conn)
}

fn cmd(addr: SocketAddr, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut conn = connect(addr)?;
    let mut c = redis::cmd(args[0]);
    for a in &args[1..] {
        c.arg(*a);
    }
    c.query(&mut conn)
}

/// The port of the redis-server a new connection through `lb` reaches.
fn reached(lb: SocketAddr) -> u16 {
    let mut conn = connect(lb).expect("a connection through ringlb");
    let reply: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("port")
        .query(&mut conn)
        .expect("CONFIG GET port through ringlb");
    reply[1].parse().unwrap()
}

#[test]
fn new_connections_follow_the_master_and_sessions_to_a_demoted_one_are_closed() {
    let a = RedisServer::start();
    let b = RedisServer::start();
    b.cmd(&["REPLICAOF", "127.0.0.1", &a.addr.port().to_string()]);
    assert!(
        wait_for(Duration::from_secs(10), || b
            .info_replication()
            .contains("master_link_status:up")),
        "the replica did not sync: {}",
        b.info_replication()
    );

    let svc = service_config(
        "redis",
        "round_robin",
        &[a.addr, b.addr],
        &format!(
            "access_log = true\non_backend_down = \"shutdown\"\n{}",
            health(
                "kind = \"redis\"\nrole = \"master\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\n\
                 rise = 1\nfall = 1"
            )
        ),
    );
    let lb = Ringlb::start(&config("", &[svc]));
    let addr = lb.addr("redis");

    // The replica fails `role = "master"` at its first probe.
    let down = wait_event(&lb, "backend down", Some(b.addr), 1, INTERVAL + SLACK)
        .unwrap_or_else(|| panic!("the replica was not marked down:\n{}", lb.log_text()));
    assert!(
        down.line
            .contains("role mismatch: role:slave, expected role:master"),
        "{}",
        down.line
    );
    for _ in 0..10 {
        assert_eq!(reached(addr), a.addr.port(), "only the master serves");
    }
    // A live session to the master, through ringlb.
    let mut session = connect(addr).unwrap();
    let _: String = redis::cmd("PING").query(&mut session).unwrap();
    // And one straight to it, to show what redis itself does with its clients.
    let mut direct = connect(a.addr).unwrap();
    let _: String = redis::cmd("PING").query(&mut direct).unwrap();

    // Failover: promote b, demote a.
    b.cmd(&["REPLICAOF", "NO", "ONE"]);
    a.cmd(&["REPLICAOF", "127.0.0.1", &b.addr.port().to_string()]);
    let switched = Instant::now();
    let bound = INTERVAL * 2 + TIMEOUT;
    assert!(
        wait_event(&lb, "backend up", Some(b.addr), 1, bound + SLACK).is_some()
            && wait_event(&lb, "backend down", Some(a.addr), 1, bound + SLACK).is_some(),
        "no switch within {bound:?}:\n{}",
        lb.log_text()
    );
    let took = switched.elapsed();
    println!("new master up and old one down {took:?} after the failover (bound {bound:?})");
    assert!(
        events(&lb, "backend down", Some(a.addr))[0]
            .line
            .contains("role mismatch: role:slave"),
        "{}",
        lb.log_text()
    );
    for _ in 0..10 {
        assert_eq!(
            reached(addr),
            b.addr.port(),
            "new connections follow the master"
        );
    }

    // The session to the demoted master was closed by ringlb (redis itself keeps clients
    // connected through REPLICAOF).
    let after: redis::RedisResult<String> = redis::cmd("PING").query(&mut session);
    assert!(
        after.is_err(),
        "the session to the demoted master still works"
    );
    assert!(
        wait_for(Duration::from_secs(2), || lb
            .log_text()
            .lines()
            .any(|l| l.contains(&format!("backend={}", a.addr))
                && l.contains("end=\"backend_down\""))),
        "no access-log line with end=backend_down:\n{}",
        lb.log_text()
    );
    // Redis kept its own client connected through REPLICAOF: the closing was ringlb's.
    let _: String = redis::cmd("PING")
        .query(&mut direct)
        .expect("the direct session to the demoted server");
}
