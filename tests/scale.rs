//! Reliability at scale against the real binary: a backend process killed mid-stream (reset and
//! close both reach the client at once, nothing lingers in CLOSE_WAIT), 100 reloads under load
//! (no failed connect, every stream byte-exact both ways, fds back to baseline), 5,000 silent
//! clients closed by the idle timeout while a normal client is served, and 200,000 UDP source
//! addresses against a bounded flow table.
//!
//! Every figure a test measures is printed with `eprintln!` (`cargo test --test scale --
//! --nocapture` shows them). The tests take turns (one process-wide lock): each measures
//! latencies and deadlines, which a neighbour's load on a two-core machine would blur.
//!
//! Backends that must die for real (SIGKILL) are `ringlb bench serve` processes; the others run
//! in this process, on tokio or on plain threads. Socket states are read from `/proc/net/tcp*`,
//! matched to ringlb's own sockets through the inodes of `/proc/PID/fd`.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::admin::Metrics;
use common::udp::{Reply, UdpBackend, stop_and_read_totals};
use common::{
    Backend, BenchServe, Ringlb, config, pattern, reload, runtime, service_config, sha, wait_for,
};

/// The tests of this file run one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

// ---- helpers: backend processes, socket states ----

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
#[derive(Debug)]
struct TcpRow {
    local_port: u16,
    /// The kernel's state number: 1 established, 8 CLOSE_WAIT, 10 listen, ...
    state: u8,
    /// Bytes received and not yet read by the socket's owner.
    rx_queue: u64,
    inode: u64,
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE_WAIT: u8 = 8;

fn tcp_rows() -> Vec<TcpRow> {
    let mut rows = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap(), 16);
            let rx = f[4].split(':').nth(1).unwrap_or("0");
            rows.push(TcpRow {
                local_port: port(f[1]).unwrap(),
                state: u8::from_str_radix(f[3], 16).unwrap(),
                rx_queue: u64::from_str_radix(rx, 16).unwrap(),
                inode: f[9].parse().unwrap(),
            });
        }
    }
    rows
}

/// Inodes of the sockets process `pid` holds open.
fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy().into_owned();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// TCP sockets of process `pid` in CLOSE_WAIT (the peer closed, `pid` did not).
fn close_wait_of(pid: u32) -> usize {
    let mine = socket_inodes(pid);
    tcp_rows()
        .iter()
        .filter(|r| r.state == TCP_CLOSE_WAIT && mine.contains(&r.inode))
        .count()
}

/// Unread bytes in the receive queues of the established sockets on local port `port`.
fn unread_on_port(port: u16) -> Option<u64> {
    let rows: Vec<_> = tcp_rows()
        .into_iter()
        .filter(|r| r.local_port == port && r.state == TCP_ESTABLISHED)
        .collect();
    (!rows.is_empty()).then(|| rows.iter().map(|r| r.rx_queue).sum())
}

/// Percentile `p` (0 to 100) of `samples`, which it sorts.
fn percentile(samples: &mut [Duration], p: usize) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort();
    samples[(samples.len() - 1) * p / 100]
}

/// A long-lived stream through ringlb to an echo backend until `stop`: sends `chunk`-byte
/// pieces of its own pattern and reads each echo; returns the bytes exchanged, or what failed.
/// The echo is compared piece by piece and by SHA-256 of the whole of each direction.
async fn echo_stream(
    addr: SocketAddr,
    id: u64,
    chunk: usize,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> Result<u64, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("stream {id} connect: {e}"))?;
    let (mut sent, mut received) = (Sha256::new(), Sha256::new());
    let mut back = vec![0u8; chunk];
    let mut total = 0u64;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let piece = pattern((id << 32) | round, chunk);
        reload::echo_piece(&mut s, id, round, &piece, &mut back).await?;
        sent.update(&piece);
        received.update(&back);
        total += chunk as u64;
        round += 1;
        tokio::time::sleep(pause).await;
    }
    reload::finish_stream(s, id).await?;
    if sent.finalize() != received.finalize() {
        return Err(format!("stream {id}: digests differ at the end"));
    }
    Ok(total)
}

// ---- 1. a backend killed mid-stream ----

/// Kills `backend` while `client` (served by it through ringlb) waits in a read; returns how
/// that read ended and how long after the kill. The client is closed afterwards.
fn kill_under(
    rt: &tokio::runtime::Runtime,
    mut client: TcpStream,
    backend: &mut BenchServe,
) -> (Result<usize, std::io::ErrorKind>, Duration) {
    let reader = rt.spawn(async move {
        let mut buf = [0u8; 4096];
        let r = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
            .await
            .expect("the client's read ends within 5 s of the kill");
        (r.map_err(|e| e.kind()), Instant::now())
    });
    let killed = Instant::now();
    backend.kill();
    let (end, at) = rt.block_on(reader).unwrap();
    (end, at - killed)
}

/// How long until ringlb (`pid`) holds no CLOSE_WAIT socket, at most `bound`; `after` names
/// what came before, for the message.
fn close_wait_cleared(pid: u32, bound: Duration, after: &str) -> Duration {
    let t = Instant::now();
    assert!(
        wait_for(bound, || close_wait_of(pid) == 0),
        "ringlb holds {} CLOSE_WAIT sockets {bound:?} after the {after}",
        close_wait_of(pid)
    );
    t.elapsed()
}

#[test]
fn a_backend_killed_mid_stream_resets_or_closes_its_client_at_once() {
    /// Bound on kill-to-client delay asserted here (the target is 100 ms; the VM is shared).
    const BOUND: Duration = Duration::from_secs(1);
    let _serial = serial();
    let started = Instant::now();
    let rt = runtime();
    let steady = rt.block_on(Backend::echo(None));
    // Echoes each read after 60 s: what arrives meanwhile stays unread in its receive queue.
    let mut stalled = BenchServe::start(&["--delay", "60s"]);
    let mut echo = BenchServe::start(&[]);
    let lb = Ringlb::start(&config(
        "",
        &[
            service_config("rst", "round_robin", &[stalled.addr], ""),
            service_config("fin", "round_robin", &[echo.addr], ""),
            service_config("steady", "round_robin", &[steady.addr], ""),
        ],
    ));
    let baseline = lb.fd_count();
    let pid = lb.pid();

    // Streams to the other backend run through both kills.
    let stop = Arc::new(AtomicBool::new(false));
    let streams: Vec<_> = (0..8)
        .map(|id| {
            rt.spawn(echo_stream(
                lb.addr("steady"),
                id,
                16 * 1024,
                Duration::from_millis(5),
                stop.clone(),
            ))
        })
        .collect();

    // Reset: the backend dies with bytes it never read.
    let client = rt.block_on(async {
        let mut s = TcpStream::connect(lb.addr("rst")).await.unwrap();
        s.write_all(&pattern(7, 128 * 1024)).await.unwrap();
        s
    });
    assert!(
        wait_for(Duration::from_secs(5), || unread_on_port(
            stalled.addr.port()
        )
        .is_some_and(|n| n > 0)),
        "the stalled backend has no unread bytes: {:?}",
        unread_on_port(stalled.addr.port())
    );
    let unread = unread_on_port(stalled.addr.port()).unwrap();
    let (rst_end, rst_delay) = kill_under(&rt, client, &mut stalled);
    assert_eq!(
        rst_end,
        Err(std::io::ErrorKind::ConnectionReset),
        "the backend's reset reaches the client as a reset"
    );
    let rst_clean = close_wait_cleared(pid, BOUND, "reset");

    // Close: the backend dies with nothing unread; the kernel sends a FIN.
    let client = rt.block_on(async {
        let mut s = TcpStream::connect(lb.addr("fin")).await.unwrap();
        let data = pattern(8, 64 * 1024);
        s.write_all(&data).await.unwrap();
        let mut back = vec![0u8; data.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(sha(&back), sha(&data));
        s
    });
    assert_eq!(
        unread_on_port(echo.addr.port()),
        Some(0),
        "the echo backend read everything"
    );
    let (fin_end, fin_delay) = kill_under(&rt, client, &mut echo);
    assert_eq!(
        fin_end,
        Ok(0),
        "the backend's FIN reaches the client as EOF"
    );
    let fin_clean = close_wait_cleared(pid, BOUND, "close");

    assert!(
        rst_delay < BOUND,
        "reset reached the client after {rst_delay:?}"
    );
    assert!(
        fin_delay < BOUND,
        "EOF reached the client after {fin_delay:?}"
    );

    // The other backend's streams never noticed.
    stop.store(true, Ordering::Relaxed);
    let mut bytes = 0;
    for s in streams {
        bytes += rt.block_on(s).unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(bytes > 0, "the steady streams moved nothing");
    lb.assert_fds_back_to(baseline, Duration::from_secs(5));
    eprintln!(
        "backend killed: reset ({unread} bytes unread) reached the client in {rst_delay:?}, \
         EOF in {fin_delay:?}; CLOSE_WAIT gone {rst_clean:?} / {fin_clean:?} after the client \
         closed; 8 steady streams moved {bytes} bytes byte-exact; test took {:?}",
        started.elapsed()
    );
}

// ---- 2. 100 reloads under load ----

/// Echo backends that also hash what each connection sent them: a connection starts with its
/// 8-byte id, and at EOF the backend records SHA-256 and length of everything it received
/// under that id (before echoing the EOF, so the client finds it once it reads EOF).
struct DigestEcho {
    addrs: Vec<SocketAddr>,
    received: Arc<Mutex<HashMap<u64, Vec<u8>>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl DigestEcho {
    async fn start(count: usize) -> DigestEcho {
        let received = Arc::new(Mutex::new(HashMap::new()));
        let mut addrs = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..count {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            addrs.push(listener.local_addr().unwrap());
            let map = received.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let Ok((s, _)) = listener.accept().await else {
                        continue;
                    };
                    tokio::spawn(digest_echo(s, map.clone()));
                }
            }));
        }
        DigestEcho {
            addrs,
            received,
            tasks,
        }
    }

    fn digest(&self, id: u64) -> Option<Vec<u8>> {
        self.received.lock().unwrap().get(&id).cloned()
    }
}

impl Drop for DigestEcho {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn digest_echo(mut s: TcpStream, map: Arc<Mutex<HashMap<u64, Vec<u8>>>>) {
    let mut hasher = Sha256::new();
    let mut head = Vec::with_capacity(8);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => return,
        };
        hasher.update(&buf[..n]);
        let need = 8 - head.len().min(8);
        head.extend_from_slice(&buf[..n.min(need)]);
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
    if head.len() == 8 {
        let id = u64::from_le_bytes(head.try_into().unwrap());
        map.lock().unwrap().insert(id, hasher.finalize().to_vec());
    }
    let _ = s.shutdown().await;
}

/// Round `round` of the reload test: service "main" over one of three backend sets (all four,
/// the first two, the last two) with changing weights, and service "extra" on even rounds.
fn reload_config(round: usize, backends: &[SocketAddr], extra: SocketAddr) -> String {
    let set: &[usize] = match round % 3 {
        0 => &[0, 1, 2, 3],
        1 => &[0, 1],
        _ => &[2, 3],
    };
    let main: Vec<(SocketAddr, usize)> = set
        .iter()
        .map(|&i| (backends[i], 1 + (round + i) % 4))
        .collect();
    reload::round_config(round, "backlog = 4096", &main, extra)
}

/// A stream of the reload test: its id first, then 2 KiB pieces, each echo checked, until
/// `stop`; then half-close and read to EOF. Returns (id, bytes sent, SHA-256 of all sent,
/// SHA-256 of all received).
async fn digest_stream(
    addr: SocketAddr,
    id: u64,
    stop: Arc<AtomicBool>,
) -> Result<(u64, u64, Vec<u8>, Vec<u8>), String> {
    const CHUNK: usize = 2048;
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("stream {id} connect: {e}"))?;
    let (mut sent, mut received) = (Sha256::new(), Sha256::new());
    let head = id.to_le_bytes();
    let mut back = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut round = 0u64;
    let mut piece = head.to_vec();
    loop {
        let echo = &mut back[..piece.len()];
        reload::echo_piece(&mut s, id, round, &piece, echo).await?;
        sent.update(&piece);
        received.update(&*echo);
        total += piece.len() as u64;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        round += 1;
        piece = pattern((id << 32) | round, CHUNK);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    reload::finish_stream(s, id).await?;
    Ok((
        id,
        total,
        sent.finalize().to_vec(),
        received.finalize().to_vec(),
    ))
}

/// New connections one after another until `stop`: each sends its id and 256 bytes, half-closes
/// and checks the echo. Failures are counted (with the first message kept), not fatal.
async fn churn(
    addr: SocketAddr,
    first_id: u64,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
) {
    let mut id = first_id;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let mut data = id.to_le_bytes().to_vec();
        data.extend_from_slice(&pattern(id, 256));
        match reload::echo_once(addr, &data).await {
            Ok(()) => {
                made.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => failed.lock().unwrap().push(e),
        }
    }
}

#[test]
fn a_hundred_reloads_under_load_fail_no_connect_and_keep_every_stream_exact() {
    const STREAMS: u64 = 100;
    const RELOADS: usize = 100;
    let _serial = serial();
    let started = Instant::now();
    let rt = runtime();
    let (backends, extra) =
        rt.block_on(async { (DigestEcho::start(4).await, Backend::echo(None).await) });
    let lb = Ringlb::start(&reload_config(0, &backends.addrs, extra.addr));
    let admin = lb.admin.unwrap();
    let main = lb.addr("main");
    let baseline = lb.fd_count();

    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let streams: Vec<_> = (0..STREAMS)
        .map(|id| rt.spawn(digest_stream(main, id, stop.clone())))
        .collect();
    let churners: Vec<_> = (0..4u64)
        .map(|i| {
            rt.spawn(churn(
                main,
                (1 << 63) | (i << 40),
                stop.clone(),
                made.clone(),
                failed.clone(),
            ))
        })
        .collect();
    assert!(
        wait_for(Duration::from_secs(20), || {
            Metrics::scrape(admin).sum("ringlb_service_connections_active", &[("service", "main")])
                >= STREAMS as f64
        }),
        "the streams did not all connect"
    );

    let mut reload_times = Vec::with_capacity(RELOADS);
    for round in 1..=RELOADS {
        std::fs::write(
            &lb.config_path,
            reload_config(round, &backends.addrs, extra.addr),
        )
        .unwrap();
        let before = made.load(Ordering::Relaxed);
        let t = Instant::now();
        reload::reload_round(&lb, &rt, round, round.is_multiple_of(10));
        reload_times.push(t.elapsed());
        assert!(
            wait_for(Duration::from_secs(10), || made.load(Ordering::Relaxed)
                >= before + 3),
            "round {round}: new connections stalled"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let mut bytes = 0;
    for s in streams {
        let (id, total, sent, received) = rt.block_on(s).unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(received, sent, "stream {id}: backend-to-client digest");
        assert_eq!(
            backends.digest(id),
            Some(sent),
            "stream {id}: client-to-backend digest"
        );
        bytes += total;
    }
    for c in churners {
        rt.block_on(c).unwrap();
    }
    let failed = failed.lock().unwrap().clone();
    let made = made.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {} new connections failed, first: {:?}",
        failed.len(),
        made as usize + failed.len(),
        &failed[..failed.len().min(5)]
    );
    let m = Metrics::scrape(admin);
    assert_eq!(m.sum("ringlb_config_reloads_total", &[]), RELOADS as f64);
    assert_eq!(m.sum("ringlb_service_no_backend_total", &[]), 0.0);
    assert_eq!(m.sum("ringlb_backend_connect_failures_total", &[]), 0.0);
    lb.assert_fds_back_to(baseline, Duration::from_secs(10));
    let p50 = percentile(&mut reload_times, 50);
    let max = percentile(&mut reload_times, 100);
    eprintln!(
        "{RELOADS} reloads: {made} new connections, 0 failed; {STREAMS} streams sent {bytes} \
         bytes, all digests equal both ways; reload p50 {p50:?} max {max:?}; fds back to \
         {baseline}; test took {:?}",
        started.elapsed()
    );
}

// ---- 3. 5,000 silent clients ----

/// An echo backend that times each connection it accepts: from accept (about when ringlb
/// established the session, which starts its idle clock) to EOF or error (ringlb closed it).
/// Only connections that sent nothing are recorded: the silent ones.
struct TimedEcho {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    silent_lifetimes: Arc<Mutex<Vec<Duration>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TimedEcho {
    async fn start() -> TimedEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicU64::new(0));
        let silent_lifetimes = Arc::new(Mutex::new(Vec::new()));
        let (count, lifetimes) = (accepted.clone(), silent_lifetimes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let at = Instant::now();
                count.fetch_add(1, Ordering::SeqCst);
                let lifetimes = lifetimes.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut moved = 0;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                moved += n;
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    if moved == 0 {
                        lifetimes.lock().unwrap().push(at.elapsed());
                    }
                });
            }
        });
        TimedEcho {
            addr,
            accepted,
            silent_lifetimes,
            task,
        }
    }
}

impl Drop for TimedEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A normal client's request/response, timed: (connect, connect + 64 bytes echoed).
async fn exchange(addr: SocketAddr, n: u64) -> Result<(Duration, Duration), String> {
    let t = Instant::now();
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let connect = t.elapsed();
    let msg = pattern(n, 64);
    s.write_all(&msg).await.map_err(|e| e.to_string())?;
    let mut back = [0u8; 64];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .map_err(|_| "no echo within 5 s".to_owned())?
        .map_err(|e| e.to_string())?;
    if back[..] != msg[..] {
        return Err("corrupted echo".into());
    }
    Ok((connect, t.elapsed()))
}

#[test]
fn five_thousand_silent_clients_are_closed_by_the_idle_timeout() {
    const SILENT: usize = 5_000;
    /// Silent clients opened at once; the next batch waits until ringlb took them all.
    const BATCH: usize = 250;
    const IDLE: Duration = Duration::from_secs(2);
    /// Allowed on top of idle timeout + 1 s for a shared two-core machine: with 5,000 client
    /// tasks on the test's own runtime and the rest of the suite's builds beside it, a client
    /// task may see its close late by more than a second (the backend-side bound below is
    /// measured inside the backend, and is the tighter one in practice).
    const MARGIN: Duration = Duration::from_secs(3);
    let _serial = serial();
    let started = Instant::now();
    let rt = runtime();
    let backend = rt.block_on(TimedEcho::start());
    let lb = Ringlb::start(&config(
        "",
        &[service_config(
            "idle",
            "round_robin",
            &[backend.addr],
            "idle_timeout = \"2s\"\nbacklog = 4096",
        )],
    ));
    let addr = lb.addr("idle");
    let baseline = lb.fd_count();

    let mut quiet = Vec::new();
    for n in 0..20 {
        quiet.push(rt.block_on(exchange(addr, n)).unwrap().1);
    }

    let done = Arc::new(AtomicBool::new(false));
    let normal = {
        let done = done.clone();
        rt.spawn(async move {
            let mut times = Vec::new();
            let mut n = 100;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                times.push(exchange(addr, n).await?);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, String>(times)
        })
    };

    // Each silent client connects, then waits for ringlb to close it. They are opened in
    // batches, each once ringlb has taken the previous ones (its backend saw them), so what is
    // measured is the idle timeout, not how far behind a debug build's accepts fall.
    let opening = Instant::now();
    let mut silent = Vec::with_capacity(SILENT);
    let mut peak_fds = baseline;
    while silent.len() < SILENT {
        for _ in 0..BATCH {
            silent.push(rt.spawn(async move {
                // Taken before dialling, so it is never later than ringlb's accept: the lower
                // bound below is measured from it (`connected` may be taken late on a busy
                // runtime).
                let dialled = Instant::now();
                let mut s = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let connected = Instant::now();
                let mut buf = [0u8; 16];
                let r = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
                    .await
                    .map_err(|_| "still open after 30 s".to_owned())?;
                match r {
                    Ok(0) | Err(_) => Ok::<_, String>((connected.elapsed(), dialled.elapsed())),
                    Ok(n) => Err(format!("{n} unexpected bytes")),
                }
            }));
        }
        let want = silent.len() as u64;
        assert!(
            wait_for(Duration::from_secs(10), || backend
                .accepted
                .load(Ordering::SeqCst)
                >= want),
            "ringlb did not take {want} silent clients within 10 s"
        );
        peak_fds = peak_fds.max(lb.fd_count());
    }
    let opened_in = opening.elapsed();
    let all_done = wait_for(Duration::from_secs(30), || {
        peak_fds = peak_fds.max(lb.fd_count());
        silent.iter().all(|t| t.is_finished())
    });
    assert!(all_done, "silent clients still open 30 s after the last");
    let mut lifetimes = Vec::with_capacity(SILENT);
    let mut since_dials = Vec::with_capacity(SILENT);
    for t in silent {
        let (lifetime, since_dial) = rt.block_on(t).unwrap().unwrap_or_else(|e| panic!("{e}"));
        lifetimes.push(lifetime);
        since_dials.push(since_dial);
    }
    done.store(true, Ordering::Relaxed);
    let busy = rt
        .block_on(normal)
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut inside = backend.silent_lifetimes.lock().unwrap().clone();
    let min = percentile(&mut since_dials, 0);
    let p50 = percentile(&mut lifetimes, 50);
    let p99 = percentile(&mut lifetimes, 99);
    let max = percentile(&mut lifetimes, 100);
    let inside_min = percentile(&mut inside, 0);
    let inside_max = percentile(&mut inside, 100);
    let mut busy_connect: Vec<_> = busy.iter().map(|t| t.0).collect();
    let mut busy_total: Vec<_> = busy.iter().map(|t| t.1).collect();
    let busy_p99 = percentile(&mut busy_total, 99);
    eprintln!(
        "{SILENT} silent clients opened in {opened_in:?} (batches of {BATCH}), ringlb peak {} \
         connections; closed after min {min:?} (from dialling) p50 {p50:?} p99 {p99:?} max {max:?} from the \
         client's connect, {inside_min:?} to {inside_max:?} from ringlb's backend connect \
         ({} seen) (idle timeout {IDLE:?}); {} normal exchanges meanwhile: connect p99 {:?}, \
         round trip p50 {:?} p99 {busy_p99:?} (quiet p99 {:?}); test took {:?}",
        (peak_fds - baseline) / 2,
        inside.len(),
        busy_total.len(),
        percentile(&mut busy_connect, 99),
        percentile(&mut busy_total, 50),
        percentile(&mut quiet, 99),
        started.elapsed()
    );
    assert!(
        min >= IDLE,
        "a silent client was closed {min:?} after it dialled, before the idle timeout"
    );
    assert!(
        max <= IDLE + Duration::from_secs(1) + MARGIN,
        "a silent client was closed only after {max:?} (idle timeout {IDLE:?})"
    );
    assert_eq!(
        inside.len(),
        SILENT,
        "backend sides of silent sessions closed"
    );
    assert!(
        inside_max <= IDLE + Duration::from_secs(1) + MARGIN,
        "ringlb closed a silent session's backend side only after {inside_max:?}"
    );
    assert!(
        !busy.is_empty(),
        "no normal exchange during the silent crowd"
    );
    assert!(
        busy_p99 < Duration::from_secs(1),
        "normal exchanges p99 {busy_p99:?} during the silent crowd"
    );
    lb.assert_fds_back_to(baseline, Duration::from_secs(5));
}

// ---- 4. 200,000 UDP source addresses ----

/// Process `pid`'s open fds by kind ("socket", "anon_inode:[eventfd]", "pipe", ...).
fn fd_kinds(pid: u32) -> std::collections::BTreeMap<String, usize> {
    let mut kinds = std::collections::BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return kinds;
    };
    for target in dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()) {
        let t = target.to_string_lossy().into_owned();
        let kind = match t.split_once(":[") {
            Some((k, _)) if k != "anon_inode" => k.to_owned(),
            _ => t,
        };
        *kinds.entry(kind).or_insert(0) += 1;
    }
    kinds
}

/// Inodes of the UDP sockets in `/proc/net/udp` and `/proc/net/udp6`.
fn udp_inodes() -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for file in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        for line in text.lines().skip(1) {
            if let Some(inode) = line.split_whitespace().nth(9).and_then(|i| i.parse().ok()) {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

#[test]
fn two_hundred_thousand_udp_sources_stay_within_the_flow_bound() {
    const SOURCES: u64 = 200_000;
    const ADDRESSES: u64 = 50_000;
    /// Client ports, below Linux's ephemeral range so none is handed out meanwhile.
    const PORTS: [u16; 4] = [21_001, 21_002, 21_003, 21_004];
    const MAX_FLOWS: usize = 1_024;
    /// Datagrams sent and not yet at the backend, at most, so no socket buffer overflows.
    const WINDOW: u64 = 64;
    /// The established flow sends one datagram per this many new sources: far fewer new flows
    /// between two of its datagrams than a worker's share of the table (512), so LRU eviction
    /// must never pick it. At the flood's rate that is one datagram every few ms.
    const HOT_EVERY: u64 = 64;
    /// Other fds ringlb may open meanwhile (admin connections for the scrapes).
    const SLACK: usize = 16;
    const WORKERS: usize = 2;
    /// Upstream fds of ended flows still closing that ringlb may hold per worker beyond the
    /// flow bound (`CLOSING_SLACK` in src/dataplane/udp/upstream.rs).
    const CLOSING_SLACK: usize = 8;
    let fd_bound = MAX_FLOWS + WORKERS * CLOSING_SLACK;
    let _serial = serial();
    let started = Instant::now();
    let backend = UdpBackend::start(Reply::WhoamiIfPrefixed("flood", b"hot"));
    let mut lb = Ringlb::start(&format!(
        "[runtime]\nworkers = {WORKERS}\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"flood\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
         udp_max_flows = {MAX_FLOWS}\nudp_idle_timeout = \"10m\"\n\
         [[service.backend]]\naddress = \"{}\"\n",
        backend.addr
    ));
    let addr = lb.addr("flood");
    let admin = lb.admin.unwrap();
    let baseline = lb.fd_count();
    let rss_start = lb.rss_kib();

    // The established flow: sent from the flood loop, its replies read here. Each reply names
    // the upstream socket the backend saw: one flow, one upstream socket, never replaced.
    let hot = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let replies = {
        let (hot, stop, answered) = (hot.try_clone().unwrap(), stop.clone(), answered.clone());
        hot.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        std::thread::spawn(move || {
            let mut upstreams = HashSet::new();
            let mut buf = [0u8; 128];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, _)) = hot.recv_from(&mut buf) {
                    answered.fetch_add(1, Ordering::Relaxed);
                    upstreams.insert(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
            upstreams
        })
    };
    // The table's size as /metrics reports it, sampled throughout.
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut peak, mut samples) = (0f64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let active =
                    Metrics::scrape(admin).sum("ringlb_udp_flows_active", &[("service", "flood")]);
                peak = peak.max(active);
                samples += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
            (peak, samples)
        })
    };

    let (mut sent, mut skipped, mut stalls, mut hot_sent) = (0u64, 0u64, 0u64, 0u64);
    let mut peak_fds = 0;
    let mut rss_full = 0;
    // What is sampled during the flood is asserted once the threads above are stopped.
    let mut over_bound = None;
    let flood_started = Instant::now();
    for i in 0..SOURCES {
        if flood_started.elapsed() > Duration::from_secs(120) {
            break;
        }
        let a = i % ADDRESSES;
        let ip = Ipv4Addr::new(127, 1 + (a >> 16) as u8, (a >> 8) as u8, a as u8);
        let port = PORTS[(i / ADDRESSES) as usize];
        let Ok(s) = UdpSocket::bind((ip, port)) else {
            skipped += 1;
            continue;
        };
        s.send_to(b"flood", addr).unwrap();
        sent += 1;
        if i % HOT_EVERY == 0 {
            hot.send_to(b"hot", addr).unwrap();
            hot_sent += 1;
        }
        // Keep at most WINDOW datagrams on their way; one lost anyway is waited for 2 s at most.
        if sent - backend.received().min(sent) > WINDOW {
            let mut last = backend.received();
            let mut since = Instant::now();
            while sent - backend.received().min(sent) > WINDOW / 2 {
                std::thread::sleep(Duration::from_millis(1));
                let now = backend.received();
                if now != last {
                    (last, since) = (now, Instant::now());
                } else if since.elapsed() > Duration::from_secs(2) {
                    stalls += 1;
                    break;
                }
            }
        }
        if i % 1_000 == 0 {
            let fds = lb.fd_count();
            peak_fds = peak_fds.max(fds);
            if fds > baseline + fd_bound + SLACK && over_bound.is_none() {
                let kinds = fd_kinds(lb.pid());
                let udp = udp_inodes();
                let udp_fds = socket_inodes(lb.pid()).intersection(&udp).count();
                let active =
                    Metrics::scrape(admin).sum("ringlb_udp_flows_active", &[("service", "flood")]);
                over_bound = Some(format!(
                    "after {i} sources ringlb holds {fds} fds (baseline {baseline}, bound \
                     {fd_bound} upstream fds, slack {SLACK}); read again a moment later: \
                     {kinds:?}, {udp_fds} UDP sockets (2 are the service's), {active} flows tracked"
                ));
            }
        }
        if i == 10_000 {
            rss_full = lb.rss_kib();
        }
    }
    let flood_time = flood_started.elapsed();
    // Every datagram reached the backend (or stopped coming), every reply came back.
    wait_for(Duration::from_secs(5), || {
        backend.received() >= sent + hot_sent
    });
    wait_for(Duration::from_secs(5), || {
        answered.load(Ordering::Relaxed) >= hot_sent
    });
    stop.store(true, Ordering::Relaxed);
    let upstreams = replies.join().unwrap();
    let answered = answered.load(Ordering::Relaxed);
    let (peak_active, samples) = sampler.join().unwrap();
    let rss_end = lb.rss_kib();
    let m = Metrics::scrape(admin);
    let active = m.sum("ringlb_udp_flows_active", &[("service", "flood")]);
    let opened = m.sum("ringlb_udp_flows_opened_total", &[("service", "flood")]);
    let evicted = m.sum("ringlb_udp_flows_evicted_total", &[("service", "flood")]);
    let expired = m.sum("ringlb_udp_flows_expired_total", &[("service", "flood")]);
    let totals = stop_and_read_totals(&mut lb, "flood");
    eprintln!(
        "{sent} UDP sources ({skipped} ports busy, {stalls} stalls) in {flood_time:?}: flows \
         opened {opened}, evicted {evicted}, active at the end {active}, peak {peak_active} by \
         /metrics ({samples} scrapes) and {} by ringlb; fds peak {peak_fds} (baseline \
         {baseline}); RSS {rss_start} KiB at start, {rss_full} KiB full, {rss_end} KiB at end; \
         established flow {answered} of {hot_sent} answered, over {} upstream socket(s); test \
         took {:?}",
        totals["flows_peak"],
        upstreams.len(),
        started.elapsed()
    );
    assert_eq!(sent + skipped, SOURCES, "the flood ran out of time");
    assert!(
        peak_active <= MAX_FLOWS as f64 && active <= MAX_FLOWS as f64,
        "flows active: peak {peak_active}, now {active}, bound {MAX_FLOWS}"
    );
    assert!(
        totals["flows_peak"] <= MAX_FLOWS as u64,
        "ringlb's own peak: {} flows",
        totals["flows_peak"]
    );
    assert!(
        opened >= 0.99 * sent as f64,
        "only {opened} flows opened for {sent} sources"
    );
    assert_eq!(expired, 0.0);
    assert_eq!(
        evicted,
        opened - active,
        "every flow beyond the bound evicted one, and each eviction was counted"
    );
    assert!(
        rss_end < rss_full + 8 * 1024,
        "ringlb's RSS grew from {rss_full} KiB to {rss_end} KiB with full flow tables"
    );
    assert!(
        answered * 100 >= hot_sent * 99,
        "the established flow: {answered} of {hot_sent} datagrams answered"
    );
    assert_eq!(
        upstreams.len(),
        1,
        "the established flow was evicted and reopened: {upstreams:?}"
    );
    // Each flow holds one upstream socket, and each worker a few more still closing: ringlb's
    // fds stay within the bound too.
    assert_eq!(over_bound, None);
}
