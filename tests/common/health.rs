//! Helpers of the health, failover and persistence tests: backends that can be stopped and
//! restarted on the same port, finding out which backend a connection reached, and reading
//! ringlb's transition log lines with ringlb's own timestamps.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use super::{Ringlb, field};

/// A backend that greets every connection with `name\n`, then echoes; it records when it
/// accepted each connection. [`Switchable::stop`] closes its listener and every live connection
/// (as a killed process would); [`Switchable::restart`] listens on the same address again.
pub struct Switchable {
    pub addr: SocketAddr,
    pub name: String,
    accepts: Arc<Mutex<Vec<SystemTime>>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Switchable {
    /// Starts on a free port of `ip`.
    pub async fn start(name: &str, ip: IpAddr) -> Switchable {
        Switchable::start_at(name, SocketAddr::new(ip, 0)).await
    }

    /// Starts on `addr` (port 0: a free port).
    pub async fn start_at(name: &str, addr: SocketAddr) -> Switchable {
        let (task, addr) = serve(name, addr, Arc::new(Mutex::new(Vec::new()))).await;
        let accepts = task.1;
        Switchable {
            addr,
            name: name.to_owned(),
            accepts,
            task: Mutex::new(Some(task.0)),
        }
    }

    /// Closes the listener and every connection; returns once the port is closed.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap().take();
        if let Some(task) = task {
            task.abort();
            // Cancelled: the listener and the connection set have been dropped.
            let _ = task.await;
        }
    }

    /// Listens on the same address again.
    pub async fn restart(&self) {
        self.stop().await;
        let ((task, _), addr) = serve(&self.name, self.addr, self.accepts.clone()).await;
        assert_eq!(addr, self.addr);
        *self.task.lock().unwrap() = Some(task);
    }

    /// When each connection was accepted, in order.
    pub fn accepts(&self) -> Vec<SystemTime> {
        self.accepts.lock().unwrap().clone()
    }

    pub fn accepted(&self) -> usize {
        self.accepts.lock().unwrap().len()
    }
}

type Served = (JoinHandle<()>, Arc<Mutex<Vec<SystemTime>>>);

async fn serve(
    name: &str,
    addr: SocketAddr,
    accepts: Arc<Mutex<Vec<SystemTime>>>,
) -> (Served, SocketAddr) {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .unwrap();
    // Rebinding the same port right after closing it must not fail on TIME_WAIT sockets.
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    let listener = socket.listen(1024).unwrap();
    let bound = listener.local_addr().unwrap();
    let greeting = format!("{name}\n").into_bytes();
    let record = accepts.clone();
    let task = tokio::spawn(async move {
        // Connections live in the set: aborting this task drops it and closes them all.
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((mut s, _)) = accepted else { continue };
                    record.lock().unwrap().push(SystemTime::now());
                    let greeting = greeting.clone();
                    conns.spawn(async move {
                        if s.write_all(&greeting).await.is_err() {
                            return;
                        }
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                        let _ = w.shutdown().await;
                    });
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    });
    ((task, accepts), bound)
}

/// Connects to `addr` (from `from`, when given) and returns the greeting's name, or the error
/// (closed, reset, no greeting within 2 s).
pub async fn greeting(addr: SocketAddr, from: Option<IpAddr>) -> Result<String, String> {
    let stream = match from {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(ip, 0)).unwrap();
            socket.connect(addr).await
        }
    }
    .map_err(|e| format!("connect: {e}"))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    match tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await {
        Err(_) => Err("no greeting within 2 s".to_owned()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(0)) => Err("closed without a greeting".to_owned()),
        Ok(Ok(_)) => Ok(line.trim_end().to_owned()),
    }
}

/// Greetings of `n` connections made one after the other.
pub async fn greetings(addr: SocketAddr, n: usize) -> Vec<Result<String, String>> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push(greeting(addr, None).await);
    }
    v
}

/// One log line of ringlb, with its message and fields.
#[derive(Clone, Debug)]
pub struct LogEvent {
    /// ringlb's own timestamp.
    pub at: SystemTime,
    pub line: String,
}

impl LogEvent {
    /// The value of `key=` in the line (up to the next space).
    pub fn field(&self, key: &str) -> Option<String> {
        field(&self.line, key)
    }
}

/// Lines whose message is `message` (e.g. "backend down") and, when given, whose `backend=` is
/// `backend`, in order.
pub fn events(lb: &Ringlb, message: &str, backend: Option<SocketAddr>) -> Vec<LogEvent> {
    let needle = format!(": {message} ");
    let lines = lb.log.lock().unwrap().clone();
    lines
        .into_iter()
        .filter(|l| l.contains(&needle) || l.ends_with(&format!(": {message}")))
        .filter(|l| backend.is_none_or(|b| field(l, "backend=").as_deref() == Some(&b.to_string())))
        .map(|line| LogEvent {
            at: timestamp(&line).unwrap_or_else(|| panic!("no timestamp in {line:?}")),
            line,
        })
        .collect()
}

/// Waits until at least `count` such lines exist; returns the `count`-th, or `None` on timeout.
/// Like [`wait_event`], panicking with ringlb's log when the event does not come in time.
pub fn expect_event(
    lb: &Ringlb,
    message: &str,
    backend: Option<SocketAddr>,
    count: usize,
    timeout: Duration,
) -> LogEvent {
    wait_event(lb, message, backend, count, timeout).unwrap_or_else(|| {
        panic!(
            "no {message:?} #{count} for {backend:?} within {timeout:?}; log:\n{}",
            lb.log_text()
        )
    })
}

pub fn wait_event(
    lb: &Ringlb,
    message: &str,
    backend: Option<SocketAddr>,
    count: usize,
    timeout: Duration,
) -> Option<LogEvent> {
    let deadline = Instant::now() + timeout;
    loop {
        let found = events(lb, message, backend);
        if found.len() >= count {
            return Some(found[count - 1].clone());
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Parses the RFC 3339 UTC timestamp (`2026-11-24T17:43:09.353366Z`) that starts a line.
pub fn timestamp(line: &str) -> Option<SystemTime> {
    let ts = line.split_whitespace().next()?;
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, s) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let nanos: u64 = format!("{frac:0<9}")[..9].parse().ok()?;
    let days = days_from_civil(y, m, day);
    let secs = days * 86_400 + h * 3600 + min * 60 + s;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?) + Duration::from_nanos(nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `bin` directory of the newest PostgreSQL server under /usr/lib/postgresql (one with
/// `initdb`); panics naming Debian's package when there is none.
pub fn pg_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: this test needs Debian's \
             postgresql package (`apt-get install -y postgresql`; .ci/run installs it)"
        )
    })
}

/// A free TCP port on 127.0.0.1 (bound and released; a small race with other processes).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `[service.health]` table with the given keys, for `service_config`'s `extra`.
pub fn health(keys: &str) -> String {
    format!("retries = 0\n\n[service.health]\n{keys}\n")
}

/// A round-robin service "svc" over `a` and `b` whose probes alone would need fall × interval
/// = 10 × 1 s to notice a dead backend, while passive detection marks one down after 3 failed
/// connects in a row.
pub fn passive_detection_service(a: SocketAddr, b: SocketAddr) -> String {
    super::service_config(
        "svc",
        "round_robin",
        &[a, b],
        &health(
            "interval = \"1s\"\ntimeout = \"200ms\"\nrise = 1\nfall = 10\npassive_failures = 3",
        ),
    )
}
