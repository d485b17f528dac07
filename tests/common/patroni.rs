//! A Patroni cluster for tests: a one-node etcd and Patroni nodes (PostgreSQL plus Patroni's
//! REST API), each on its own loopback address with the same ports, as on separate hosts, all
//! in one temporary directory. Patroni and PostgreSQL run as the `postgres` user.
//!
//! Every wait is bounded; dropping the cluster kills etcd, every Patroni and every PostgreSQL
//! process of the cluster (the postmaster runs in a session of its own and its children in
//! theirs, so they are found by parent and by the cluster's unique name, not by process group).
//!
//! Needs Debian's `etcd-server`, `patroni` (with `python3-etcd`) and `postgresql` packages
//! (`.ci/run` installs them).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::health::pg_bin;
use super::{TempDir, send_signal, temp_dir, wait_for_every};

/// Patroni's leader key lives this long without renewal: a dead leader is replaced after it.
pub const TTL: Duration = Duration::from_secs(10);

/// How long a fresh cluster may take to have a leader and a streaming replica.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// One Patroni node.
pub struct Node {
    pub name: String,
    pub ip: IpAddr,
    dir: PathBuf,
    patroni: Option<Child>,
}

/// etcd and the Patroni nodes.
pub struct Cluster {
    /// The Patroni scope, unique per cluster; PostgreSQL's `cluster_name` too, so the cluster's
    /// processes are recognised by their titles.
    pub scope: String,
    /// PostgreSQL's port on every node's address.
    pub pg_port: u16,
    /// Patroni's REST API port on every node's address.
    pub api_port: u16,
    pub etcd_port: u16,
    pub nodes: Vec<Node>,
    etcd: Option<Child>,
    dir: TempDir,
}

/// A PostgreSQL session (as `postgres`, trusted on loopback) to `addr`, or why there is none
/// within `within`; its connection task runs on the current tokio runtime.
pub async fn pg_session(
    addr: SocketAddr,
    within: Duration,
) -> Result<tokio_postgres::Client, String> {
    let session = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut config = tokio_postgres::Config::new();
        config.user("postgres").dbname("postgres");
        config
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())
    };
    let (client, connection) = tokio::time::timeout(within, session)
        .await
        .map_err(|_| format!("no session within {within:?}"))??;
    tokio::spawn(connection);
    Ok(client)
}

fn need(program: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "{program} not found: this test needs Debian's {package} package (.ci/run installs it)"
    );
}

/// A port free on every one of `ips` (bound and released; a small race with other processes).
pub fn free_port_on(ips: &[IpAddr]) -> u16 {
    for _ in 0..100 {
        let port = std::net::TcpListener::bind(SocketAddr::new(ips[0], 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if ips[1..]
            .iter()
            .all(|ip| std::net::TcpListener::bind(SocketAddr::new(*ip, port)).is_ok())
        {
            return port;
        }
    }
    panic!("no port free on all of {ips:?}");
}

/// Runs `command` in a process group of its own.
fn own_group(command: &mut Command) -> &mut Command {
    command.process_group(0)
}

fn sigkill(pid: u32) {
    send_signal(pid, libc::SIGKILL);
}

/// The pid and parent pid of every process, from /proc.
fn processes() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // The command name is in parentheses and may hold spaces: the fields after ')'.
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, ppid))
        })
        .collect()
}

fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn alive(pid: u32) -> bool {
    // A zombie is dead for our purpose.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rfind(')').is_some_and(|i| !s[i + 2..].starts_with('Z')))
        .unwrap_or(false)
}

/// Kills `pid` and its children (found before the kill, while they are still its children).
fn kill_with_children(pid: u32) {
    let children: Vec<u32> = processes()
        .into_iter()
        .filter(|&(_, ppid)| ppid == pid)
        .map(|(p, _)| p)
        .collect();
    sigkill(pid);
    for child in children {
        sigkill(child);
    }
}

/// Sends `method path` over HTTP/1.0 to `addr` and returns the status and body; `None` when
/// nothing (complete) answers within 2 s.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).ok()?;
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl Cluster {
    /// Starts etcd and one Patroni node per address of `ips`; returns once a node holds the
    /// leader key and every other one streams from it.
    pub fn start(ips: &[IpAddr]) -> Cluster {
        need("etcd", "etcd-server");
        need("patroni", "patroni");
        need("patronictl", "patroni");
        need("setpriv", "util-linux");
        let bin = pg_bin();
        let dir = temp_dir();
        let scope = format!(
            "ringlbt{}x{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let localhost: IpAddr = "127.0.0.1".parse().unwrap();
        let etcd_port = super::health::free_port();
        let peer_port = super::health::free_port();
        let pg_port = free_port_on(ips);
        let api_port = free_port_on(ips);
        let etcd_dir = dir.path().join("etcd");
        let etcd_log = std::fs::File::create(dir.path().join("etcd.log")).unwrap();
        let client_url = format!("http://{localhost}:{etcd_port}");
        let peer_url = format!("http://{localhost}:{peer_port}");
        let etcd = own_group(Command::new("etcd").args([
            "--name",
            "e1",
            "--data-dir",
            &etcd_dir.display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &format!("e1={peer_url}"),
        ]))
        .stdin(Stdio::null())
        .stdout(etcd_log.try_clone().unwrap())
        .stderr(etcd_log)
        .spawn()
        .expect("etcd starts");
        let mut cluster = Cluster {
            scope,
            pg_port,
            api_port,
            etcd_port,
            nodes: Vec::new(),
            etcd: Some(etcd),
            dir,
        };
        let etcd_up = wait_for_every(Duration::from_millis(50), Duration::from_secs(20), || {
            http(SocketAddr::new(localhost, etcd_port), "GET", "/health")
                .is_some_and(|(s, _)| s == 200)
        });
        assert!(etcd_up, "etcd did not start:\n{}", cluster.file("etcd.log"));
        for (i, ip) in ips.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let node_dir = cluster.dir.path().join(&name);
            std::fs::create_dir_all(&node_dir).unwrap();
            std::fs::write(
                node_dir.join("patroni.yml"),
                cluster.patroni_yml(&name, *ip, &node_dir, &bin),
            )
            .unwrap();
            cluster.nodes.push(Node {
                name,
                ip: *ip,
                dir: node_dir,
                patroni: None,
            });
        }
        std::fs::write(
            cluster.dir.path().join("patronictl.yml"),
            format!("etcd3:\n  hosts: 127.0.0.1:{etcd_port}\n"),
        )
        .unwrap();
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(cluster.dir.path())
            .status()
            .expect("chown");
        assert!(status.success(), "chown of the cluster's directory");
        for i in 0..cluster.nodes.len() {
            cluster.start_node(i);
            if i == 0 {
                // The first node bootstraps alone, so the leader is known.
                cluster.wait_leader(START_TIMEOUT);
            }
        }
        for i in 1..cluster.nodes.len() {
            cluster.wait_replica(i, START_TIMEOUT);
        }
        cluster
    }

    fn patroni_yml(&self, name: &str, ip: IpAddr, dir: &Path, bin: &Path) -> String {
        let hba = "    - local all all trust\n    - host replication all 127.0.0.0/8 trust\n    \
                   - host all all 127.0.0.0/8 trust\n";
        format!(
            "scope: {scope}\nname: {name}\nlog:\n  level: INFO\n\
             restapi:\n  listen: {ip}:{api}\n  connect_address: {ip}:{api}\n\
             etcd3:\n  hosts: 127.0.0.1:{etcd}\n\
             bootstrap:\n  dcs:\n    ttl: {ttl}\n    loop_wait: 1\n    retry_timeout: 4\n\
             \x20   maximum_lag_on_failover: 1048576\n    postgresql:\n      use_pg_rewind: true\n\
             \x20     parameters:\n        wal_log_hints: \"on\"\n        max_wal_senders: 5\n\
             \x20       max_replication_slots: 5\n\
             \x20 initdb:\n    - encoding: UTF8\n    - locale: C\n  pg_hba:\n{hba}\
             postgresql:\n  listen: {ip}:{pg}\n  connect_address: {ip}:{pg}\n\
             \x20 data_dir: {dir}/data\n  bin_dir: {bin}\n  pgpass: {dir}/pgpass\n\
             \x20 authentication:\n    replication:\n      username: replicator\n      \
             password: rep\n    superuser:\n      username: postgres\n      password: pg\n    \
             rewind:\n      username: postgres\n      password: pg\n\
             \x20 parameters:\n    unix_socket_directories: {dir}\n    fsync: \"off\"\n  pg_hba:\n{hba}",
            scope = self.scope,
            api = self.api_port,
            etcd = self.etcd_port,
            ttl = TTL.as_secs(),
            pg = self.pg_port,
            dir = dir.display(),
            bin = bin.display(),
        )
    }

    fn file(&self, relative: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(relative)).unwrap_or_default()
    }

    /// The last lines of every node's Patroni log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let log = std::fs::read_to_string(n.dir.join("patroni.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            out.push_str(&format!("--- {} ({})\n{}\n", n.name, n.ip, tail.join("\n")));
        }
        out
    }

    /// Starts (or restarts) node `i`'s Patroni, as `postgres`.
    pub fn start_node(&mut self, i: usize) {
        let node = &self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.join("patroni.log"))
            .unwrap();
        let child = own_group(
            Command::new("setpriv")
                .args([
                    "--reuid=postgres",
                    "--regid=postgres",
                    "--init-groups",
                    "patroni",
                ])
                .arg(node.dir.join("patroni.yml")),
        )
        .env("HOME", &node.dir)
        .current_dir(&node.dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("patroni starts");
        self.nodes[i].patroni = Some(child);
    }

    /// Node `i`'s PostgreSQL address.
    pub fn pg_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.nodes[i].ip, self.pg_port)
    }

    /// Node `i`'s REST API address.
    pub fn api_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.nodes[i].ip, self.api_port)
    }

    /// The status of `method path` on node `i`'s REST API (`None`: no answer).
    pub fn api_status(&self, i: usize, method: &str, path: &str) -> Option<u16> {
        http(self.api_addr(i), method, path).map(|(s, _)| s)
    }

    /// The node whose REST API says it holds the leader key (`GET /leader` 200), if one does.
    pub fn leader(&self) -> Option<usize> {
        (0..self.nodes.len()).find(|&i| self.api_status(i, "GET", "/leader") == Some(200))
    }

    /// Waits for a leader; panics with the Patroni logs when none comes within `timeout`.
    pub fn wait_leader(&self, timeout: Duration) -> usize {
        let mut found = None;
        wait_for_every(Duration::from_millis(100), timeout, || {
            found = self.leader();
            found.is_some()
        });
        found.unwrap_or_else(|| panic!("no leader within {timeout:?}:\n{}", self.logs()))
    }

    /// Waits until node `i` is a replica that streams (`GET /replica` 200).
    pub fn wait_replica(&self, i: usize, timeout: Duration) {
        let ok = wait_for_every(Duration::from_millis(100), timeout, || {
            self.api_status(i, "GET", "/replica") == Some(200)
        });
        assert!(
            ok,
            "{} is no replica within {timeout:?}:\n{}",
            self.nodes[i].name,
            self.logs()
        );
    }

    /// Waits until node `i` answers `OPTIONS /primary` with 200; returns when it did.
    pub fn wait_primary_api(&self, i: usize, timeout: Duration) -> Instant {
        let ok = wait_for_every(Duration::from_millis(20), timeout, || {
            self.api_status(i, "OPTIONS", "/primary") == Some(200)
        });
        assert!(
            ok,
            "{} is no primary within {timeout:?}:\n{}",
            self.nodes[i].name,
            self.logs()
        );
        Instant::now()
    }

    /// `patronictl switchover` from node `from` to node `to`; returns once the command ends.
    pub fn switchover(&self, from: usize, to: usize) {
        let out = Command::new("patronictl")
            .arg("-c")
            .arg(self.dir.path().join("patronictl.yml"))
            .args([
                "switchover",
                "--leader",
                &self.nodes[from].name,
                "--candidate",
                &self.nodes[to].name,
                "--force",
                &self.scope,
            ])
            .output()
            .expect("patronictl runs");
        assert!(
            out.status.success(),
            "patronictl switchover: {}\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
    }

    /// The pid of node `i`'s postmaster, from its pid file, when it runs.
    pub fn postmaster(&self, i: usize) -> Option<u32> {
        let file = std::fs::read_to_string(self.nodes[i].dir.join("data/postmaster.pid")).ok()?;
        let pid: u32 = file.lines().next()?.trim().parse().ok()?;
        alive(pid).then_some(pid)
    }

    /// `kill -9` of node `i`'s postmaster (and its children); Patroni lives on. Returns once
    /// the killed process has let go of its port (a connect is refused), so a caller's next
    /// connect cannot still reach the dying listener's backlog. Returns the killed pid.
    pub fn kill_postmaster(&self, i: usize) -> u32 {
        let pid = self
            .postmaster(i)
            .unwrap_or_else(|| panic!("{} has no postmaster", self.nodes[i].name));
        kill_with_children(pid);
        let addr = self.pg_addr(i);
        let closed = wait_for_every(Duration::from_millis(5), Duration::from_secs(5), || {
            matches!(
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
            )
        });
        assert!(closed, "{addr} still accepts 5 s after kill -9 of {pid}");
        pid
    }

    /// `kill -9` of node `i`'s Patroni and PostgreSQL: the node is lost.
    pub fn kill_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].patroni.take() {
            sigkill(child.id());
            let _ = child.wait();
        }
        if let Some(pid) = self.postmaster(i) {
            kill_with_children(pid);
        }
    }

    /// Every process left of this cluster: Patroni by its config path, PostgreSQL by its data
    /// directory or its process title (which carries the cluster's unique name).
    fn leftovers(&self) -> Vec<u32> {
        let dir = self.dir.path().display().to_string();
        let title = format!("postgres: {}:", self.scope);
        processes()
            .into_iter()
            .map(|(pid, _)| pid)
            .filter(|&pid| {
                let cmd = cmdline(pid);
                cmd.contains(&dir) || cmd.starts_with(&title)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
        // Until none is left (postgres children of a killed postmaster, a postmaster Patroni
        // was starting), bounded.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = self.leftovers();
            if left.is_empty() || Instant::now() >= deadline {
                break;
            }
            for pid in left {
                sigkill(pid);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut etcd) = self.etcd.take() {
            sigkill(etcd.id());
            let _ = etcd.wait();
        }
    }
}
