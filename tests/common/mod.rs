//! Shared helpers of the integration tests: a ringlb process started on a config with port-0
//! listeners, and loopback backends that behave in the ways the tests need (echo, refuse,
//! never complete the handshake, reset).
//!
//! Test backends and clients run on tokio (epoll); ringlb itself is the real binary, so every
//! test goes through real sockets and a real process.
#![allow(dead_code)]

pub mod admin;
pub mod consul;
pub mod haproxy;
pub mod health;
pub mod netns;
pub mod nginx;
pub mod patroni;
pub mod reload;
pub mod systemd;
pub mod udp;
pub mod webhook;
pub mod webhook_tls;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// Polls `cond` every 10 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_for(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_for_every(Duration::from_millis(10), timeout, cond)
}

/// Polls `cond` every `interval` until it holds or `timeout` passes; returns whether it held.
pub fn wait_for_every(
    interval: Duration,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}

/// Makes the process `command` starts receive SIGKILL when the test process dies, so a test
/// killed mid-way leaves nothing running behind it.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it allocates nothing and touches no shared state.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A running ringlb process.
pub struct Ringlb {
    pub child: Child,
    /// Service name -> the address it listens on.
    pub services: HashMap<String, SocketAddr>,
    /// The admin API's address, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    /// The config file ringlb runs (rewrite it, then reload).
    pub config_path: std::path::PathBuf,
    /// Every line ringlb wrote to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    _dir: TempDir,
}

impl Ringlb {
    /// Writes `config` to a file and runs `ringlb run --config FILE` on it; returns once every
    /// service is listening. Listen addresses should use port 0.
    pub fn start(config: &str) -> Ringlb {
        Ringlb::start_with(config, None, "info")
    }

    /// Like [`Ringlb::start`], with the open-files limit (soft and hard) set to `nofile`
    /// through util-linux's `prlimit`.
    pub fn start_with_nofile(config: &str, nofile: Option<u64>) -> Ringlb {
        Ringlb::start_with(config, nofile, "info")
    }

    /// [`Ringlb::start`] with a `--log-level` filter other than `info`.
    pub fn start_with_log(config: &str, log_level: &str) -> Ringlb {
        Ringlb::start_with(config, None, log_level)
    }

    fn start_with(config: &str, nofile: Option<u64>, log_level: &str) -> Ringlb {
        let dir = temp_dir();
        let path = dir.path().join("ringlb.toml");
        std::fs::write(&path, config).unwrap();
        let mut command = match nofile {
            Some(n) => {
                let mut c = Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}"))
                    .arg(env!("CARGO_BIN_EXE_ringlb"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_ringlb")),
        };
        die_with_parent(&mut command);
        let mut child = command
            .args(["run", "--config"])
            .arg(&path)
            .args(["--log-level", log_level])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("ringlb starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let logging = collect_lines(child.stderr.take().unwrap(), log.clone());
        // The ready line (README "Running it"): printed once every listener is bound and the
        // workers run. The rest of stdout is read and dropped so ringlb never blocks on it.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // Its stderr is closed now: the log is complete.
                let _ = logging.join();
                panic!(
                    "ringlb did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        let ready: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("ready line {line:?} is not JSON: {e}"));
        let ready = &ready["ready"];
        assert_eq!(ready["pid"], child.id(), "ready line {line}");
        let services: HashMap<String, SocketAddr> = ready["services"]
            .as_object()
            .unwrap_or_else(|| panic!("ready line without services: {line}"))
            .iter()
            .map(|(name, addr)| (name.clone(), addr.as_str().unwrap().parse().unwrap()))
            .collect();
        let admin = ready["admin"].as_str().map(|a| a.parse().unwrap());
        Ringlb {
            child,
            services,
            admin,
            config_path: path,
            log,
            _dir: dir,
        }
    }

    /// The address of the only (or named) service.
    pub fn addr(&self, service: &str) -> SocketAddr {
        self.services[service]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Number of open file descriptors of the ringlb process.
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .unwrap()
            .count()
    }

    /// Asserts that the process's open fds come back to at most `baseline` within `timeout`.
    pub fn assert_fds_back_to(&self, baseline: usize, timeout: Duration) {
        assert!(
            wait_for(timeout, || self.fd_count() <= baseline),
            "ringlb fds: baseline {baseline}, now {}",
            self.fd_count()
        );
    }

    /// Resident memory of the ringlb process (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own (our child, still unreaped) and a valid signal number
        // has no memory-safety preconditions.
        let rc = unsafe { libc::kill(self.pid() as i32, sig) };
        assert_eq!(rc, 0, "kill({sig}) failed");
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// CPU time (user + system) the process has used so far.
    pub fn cpu_time(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the command name (which is in parentheses and may contain spaces).
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions; _SC_CLK_TCK is a valid name.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
        Duration::from_millis(ticks * 1000 / hz)
    }

    /// The first log line containing `needle`, waiting for it up to `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> Option<String> {
        self.wait_log_all(&[needle], timeout)
    }

    /// The first log line containing every one of `needles`, waiting for it up to `timeout`.
    pub fn wait_log_all(&self, needles: &[&str], timeout: Duration) -> Option<String> {
        let mut found = None;
        wait_for(timeout, || {
            found = self
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            found.is_some()
        });
        found
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Ringlb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `ringlb bench serve` process on a loopback port (one thread; echo unless `extra` says
/// otherwise), killed when dropped: a backend that SIGKILL really kills.
pub struct BenchServe {
    pub child: Child,
    pub addr: SocketAddr,
}

impl BenchServe {
    /// Starts `ringlb bench serve` with `extra` options; returns once it listens.
    pub fn start(extra: &[&str]) -> BenchServe {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ringlb"));
        command
            .args([
                "bench",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        die_with_parent(&mut command);
        let mut child = command.spawn().expect("ringlb bench serve starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("bench serve prints its address");
        // "listening tcp 127.0.0.1:PORT (echo, 1 threads)"
        let addr = line
            .split_whitespace()
            .nth(2)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from bench serve: {line:?}"));
        BenchServe { child, addr }
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for BenchServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Extracts `key=value` from a tracing line: the key must start a field (follow a space), the
/// value runs to the next space, quotes removed.
pub fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(&format!(" {key}"))? + key.len() + 1;
    let rest = &line[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"').to_string())
}

/// A directory removed on drop (tempfile's), so a test's files go with it.
pub use tempfile::TempDir;

/// Reads `from` line by line on a thread of its own, appending each line to `log`, until it
/// ends or a line is not UTF-8; the returned handle joins that thread.
pub fn collect_lines(
    from: impl Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            log.lock().unwrap().push(line);
        }
    })
}

/// Spawns `command` with stdin closed, stdout piped for the caller to read, and stderr read line
/// by line into the returned log (`collect_lines`).
pub fn spawn_logged(command: &mut Command) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    collect_lines(child.stderr.take().unwrap(), log.clone());
    (child, log)
}

/// A new directory `ringlb-test-*` under the system's temporary directory, removed on drop.
pub fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("ringlb-test-")
        .tempdir()
        .expect("a temporary directory")
}

/// A multi-threaded tokio runtime for test clients and backends.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A backend for one connection: binds a loopback port, and once ringlb connects, runs `serve`
/// on that connection (on `rt`). Returns the backend's address.
pub fn one_connection_backend<F, Fut>(rt: &tokio::runtime::Runtime, serve: F) -> SocketAddr
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        serve(s).await;
    });
    addr
}

/// An echo backend: every byte read is written back; EOF is answered with EOF. Counts the
/// connections it accepted. When `greeting` is set, each connection first receives it (so a
/// client can tell which backend it reached).
pub struct Backend {
    pub addr: SocketAddr,
    pub accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn echo(greeting: Option<&str>) -> Backend {
        Backend::echo_at("127.0.0.1:0", greeting).await
    }

    /// [`Backend::echo`] listening on `address` (`IP:port`, port 0 for any).
    pub async fn echo_at(address: &str, greeting: Option<&str>) -> Backend {
        let listener = TcpListener::bind(address).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let greeting = greeting.map(|g| g.as_bytes().to_vec());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let greeting = greeting.clone();
                tokio::spawn(async move {
                    if let Some(g) = greeting
                        && s.write_all(&g).await.is_err()
                    {
                        return;
                    }
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        Backend {
            addr,
            accepted,
            task,
        }
    }

    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on which nothing listens: connects are refused at once.
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// A backend whose handshakes never complete: a listener with a full accept queue (backlog 0
/// and one connection parked in it), so the kernel drops further SYNs.
pub struct Blackhole {
    pub addr: SocketAddr,
    _listener: socket2::Socket,
    _parked: std::net::TcpStream,
}

impl Blackhole {
    pub fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        s.listen(0).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let parked = std::net::TcpStream::connect(addr).unwrap();
        Blackhole {
            addr,
            _listener: s,
            _parked: parked,
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift): each seed gives its own content, so a byte
/// delivered to the wrong stream or out of place is caught.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Reads from `s` until EOF and returns everything.
pub async fn read_all(s: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::new();
    s.read_to_end(&mut v).await?;
    Ok(v)
}

/// SHA-256 of `data`.
pub fn sha(data: &[u8]) -> Vec<u8> {
    Sha256::digest(data).to_vec()
}

/// A backend for one connection that sends its own `len` bytes (`pattern(2, len)`) and,
/// independently, hashes everything it receives until EOF. Reports the digest of what it
/// received.
pub async fn source_sink_backend(len: usize) -> (SocketAddr, oneshot::Receiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let (mut r, mut w) = s.into_split();
        let send = tokio::spawn(async move {
            w.write_all(&pattern(2, len)).await.unwrap();
            w.shutdown().await.unwrap();
        });
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        send.await.unwrap();
        let _ = tx.send(hasher.finalize().to_vec());
    });
    (addr, rx)
}

/// Sends `pattern(1, len)` to `addr` and reads to EOF meanwhile; asserts that the `len` bytes
/// read are `pattern(2, len)` and that `received_digest` (the backend's, see
/// [`source_sink_backend`]) is the digest of what was sent.
pub async fn exchange_bulk(
    addr: SocketAddr,
    len: usize,
    received_digest: oneshot::Receiver<Vec<u8>>,
) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let up = pattern(1, len);
    let up_digest = sha(&up);
    let writer = tokio::spawn(async move {
        w.write_all(&up).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut down = Vec::with_capacity(len);
    r.read_to_end(&mut down).await.unwrap();
    writer.await.unwrap();
    assert_eq!(down.len(), len, "backend-to-client length");
    assert_eq!(
        sha(&down),
        sha(&pattern(2, len)),
        "backend-to-client digest"
    );
    assert_eq!(
        received_digest.await.unwrap(),
        up_digest,
        "client-to-backend digest"
    );
}

/// The config of one TCP service on port 0 in front of `backends`, with extra service keys.
pub fn service_config(name: &str, algorithm: &str, backends: &[SocketAddr], extra: &str) -> String {
    let mut c = format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nalgorithm = \"{algorithm}\"\n{extra}\n"
    );
    for b in backends {
        c.push_str(&format!("\n[[service.backend]]\naddress = \"{b}\"\n"));
    }
    c
}

/// A whole config: runtime section with 2 workers and the given services.
pub fn config(runtime_extra: &str, services: &[String]) -> String {
    format!(
        "[runtime]\nworkers = 2\n{runtime_extra}\n\n{}",
        services.join("\n")
    )
}

/// Sends signal `sig` to process `pid` (a process the test started or found in its own
/// fixture's files); whether it was delivered.
pub fn send_signal(pid: u32, sig: i32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) takes two integers and touches no memory of this process.
    unsafe { libc::kill(pid, sig) == 0 }
}
