//! Binary upgrades with `ringlb upgrade`: twenty in a row while long-lived echo streams run and
//! clients keep connecting (no failed connect, every stream byte-exact to its end, the final
//! process's descriptors at the first one's baseline, a running UDP flow's losses measured),
//! and failed upgrades (a broken config, a binary that exits at once) that leave the old
//! process serving.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdTcpStream, UdpSocket};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::systemd::Manager;
use common::udp::{Reply, UdpBackend, udp_service};
use common::{Backend, config, pattern, runtime, service_config, spawn_logged, temp_dir, wait_for};

/// A ready line: the process and its services' addresses.
struct Ready {
    pid: u32,
    services: HashMap<String, SocketAddr>,
}

/// The first ringlb the test starts and every process that replaced it by an upgrade: they
/// share its stdout (ready lines) and stderr (log). Every one still running is killed when
/// dropped.
struct Family {
    first: Child,
    readies: Receiver<Ready>,
    pids: Vec<u32>,
    log: Arc<Mutex<Vec<String>>>,
    config_path: std::path::PathBuf,
    _dir: common::TempDir,
}

impl Family {
    fn start(config_text: &str) -> (Family, Ready) {
        Family::start_with_env(config_text, &[])
    }

    fn start_with_env(config_text: &str, env: &[(&str, &str)]) -> (Family, Ready) {
        let dir = temp_dir();
        let config_path = dir.path().join("ringlb.toml");
        std::fs::write(&config_path, config_text).unwrap();
        let (mut first, log) = spawn_logged(
            Command::new(env!("CARGO_BIN_EXE_ringlb"))
                .args(["run", "--config"])
                .arg(&config_path)
                .envs(env.iter().copied()),
        );
        let (tx, readies) = channel();
        let stdout = first.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let services = value["ready"]["services"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().parse().unwrap()))
                    .collect();
                let pid = value["ready"]["pid"].as_u64().unwrap() as u32;
                let _ = tx.send(Ready { pid, services });
            }
        });
        let mut family = Family {
            first,
            readies,
            pids: Vec::new(),
            log,
            config_path,
            _dir: dir,
        };
        let ready = family.next_ready();
        assert_eq!(ready.pid, family.first.id());
        (family, ready)
    }

    fn next_ready(&mut self) -> Ready {
        let ready = self
            .readies
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no ready line; log:\n{}", self.log_text()));
        self.pids.push(ready.pid);
        ready
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// `ringlb upgrade --pid PID` with `extra` arguments: whether it succeeded, and its
    /// output.
    fn upgrade(&self, pid: u32, extra: &[&str]) -> (bool, String) {
        let output = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(["upgrade", "--timeout", "20s", "--pid", &pid.to_string()])
            .args(extra)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }
}

impl Drop for Family {
    fn drop(&mut self) {
        for &pid in &self.pids {
            // SAFETY: kill(2) on a process this test started (directly or by upgrade); one
            // that exited already makes it fail harmlessly.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        let _ = self.first.wait();
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// What each descriptor of `pid` is.
fn fds(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.display().to_string())
        .collect()
}

/// Whether `pid` ended (gone, or a zombie its parent has not reaped yet).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
    }
}

fn echo_once(addr: SocketAddr, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = StdTcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(payload)?;
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

const STREAMS: usize = 200;
const UPGRADES: usize = 20;
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One long-lived stream: writes a chunk of its own pattern and reads it back, checked byte
/// for byte, until `stop`; then closes its side and expects EOF with nothing more. Returns the
/// bytes echoed.
async fn stream(
    addr: SocketAddr,
    id: u64,
    stop: Arc<AtomicBool>,
    up: Arc<AtomicUsize>,
) -> Result<u64, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("stream {id}: connect: {e}"))?;
    let mut total = 0u64;
    let mut round = 0u64;
    let mut back = vec![0u8; 512];
    // Bounded: stop comes within the test's own time; the round cap bounds it regardless.
    while round < 100_000 {
        let chunk = pattern(id * 1_000_003 + round, 512);
        let step = async {
            s.write_all(&chunk).await?;
            s.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(IO_TIMEOUT, step).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("stream {id} round {round}: {e}")),
            Err(_) => return Err(format!("stream {id} round {round}: timed out")),
        }
        if back != chunk {
            return Err(format!("stream {id} round {round}: bytes differ"));
        }
        total += 512;
        if round == 0 {
            up.fetch_add(1, Ordering::SeqCst);
        }
        round += 1;
        if stop.load(Ordering::SeqCst) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    s.shutdown()
        .await
        .map_err(|e| format!("stream {id}: shutdown: {e}"))?;
    let mut rest = Vec::new();
    match tokio::time::timeout(IO_TIMEOUT, s.read_to_end(&mut rest)).await {
        Ok(Ok(_)) if rest.is_empty() => Ok(total),
        Ok(Ok(_)) => Err(format!("stream {id}: {} bytes after the end", rest.len())),
        Ok(Err(e)) => Err(format!("stream {id}: end: {e}")),
        Err(_) => Err(format!("stream {id}: no EOF")),
    }
}

/// New connections, one after another, until `stop`: each echoes 16 bytes. Counts successes
/// and failures (a refused or reset connect, a short or wrong echo).
async fn connector(
    addr: SocketAddr,
    id: u64,
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<Mutex<Vec<String>>>,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) && n < 1_000_000 {
        let payload = pattern(id << 32 | n, 16);
        let attempt = async {
            let mut s = TcpStream::connect(addr).await?;
            s.write_all(&payload).await?;
            let mut back = vec![0u8; 16];
            s.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back)
        };
        match tokio::time::timeout(IO_TIMEOUT, attempt).await {
            Ok(Ok(back)) if back == payload => {
                ok.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Ok(_)) => failed
                .lock()
                .unwrap()
                .push(format!("connection {id}/{n}: wrong echo")),
            Ok(Err(e)) => failed
                .lock()
                .unwrap()
                .push(format!("connection {id}/{n}: {e}")),
            Err(_) => failed
                .lock()
                .unwrap()
                .push(format!("connection {id}/{n}: timed out")),
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Datagrams of one client, one every 5 ms, each waiting up to 100 ms for its echo, until
/// `stop`: (sent, answered).
fn udp_flow(addr: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::SeqCst) && sent < 1_000_000 {
        let message = sent.to_be_bytes();
        client.send_to(&message, addr).unwrap();
        sent += 1;
        let deadline = Instant::now() + Duration::from_millis(100);
        // Late answers of earlier datagrams are skipped; only this one's counts.
        while Instant::now() < deadline {
            match client.recv(&mut buf) {
                Ok(8) if buf[..8] == message => {
                    answered += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (sent, answered)
}

fn load_config(tcp_backend: SocketAddr, udp_backend: SocketAddr) -> String {
    config(
        "drain_timeout = \"120s\"",
        &[
            service_config("echo", "round_robin", &[tcp_backend], ""),
            // Flows idle out quickly, so the final process's descriptors come back to the
            // baseline once the load stops.
            udp_service(
                "udp",
                "round_robin",
                &[udp_backend],
                "udp_idle_timeout = \"1s\"",
            ),
        ],
    )
}

#[test]
fn twenty_upgrades_under_load_drop_no_connection() {
    let started = Instant::now();
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let udp_backend = UdpBackend::start(Reply::Echo);
    let (mut family, first) = Family::start(&load_config(backend.addr, udp_backend.addr));
    let (tcp, udp) = (first.services["echo"], first.services["udp"]);
    let baseline = fd_count(first.pid);

    let stop = Arc::new(AtomicBool::new(false));
    let up = Arc::new(AtomicUsize::new(0));
    let streams: Vec<_> = (0..STREAMS as u64)
        .map(|id| rt.spawn(stream(tcp, id, stop.clone(), up.clone())))
        .collect();
    assert!(
        wait_for(Duration::from_secs(30), || up.load(Ordering::SeqCst)
            == STREAMS),
        "{} of {STREAMS} streams up",
        up.load(Ordering::SeqCst)
    );
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let connectors: Vec<_> = (0..4)
        .map(|id| rt.spawn(connector(tcp, id, stop.clone(), ok.clone(), failed.clone())))
        .collect();
    let udp_stop = stop.clone();
    let flow = std::thread::spawn(move || udp_flow(udp, udp_stop));

    let mut current = first.pid;
    for n in 0..UPGRADES {
        let before = ok.load(Ordering::SeqCst);
        let (success, output) = family.upgrade(current, &[]);
        assert!(
            success,
            "upgrade {n} failed: {output}\nlog:\n{}",
            family.log_text()
        );
        let ready = family.next_ready();
        assert!(
            output.contains(&format!("process {} serves", ready.pid)),
            "{output}"
        );
        assert_ne!(ready.pid, current);
        assert_eq!(
            ready.services["echo"], tcp,
            "the same address after upgrade {n}"
        );
        assert_eq!(ready.services["udp"], udp);
        current = ready.pid;
        // Connections keep arriving across each upgrade.
        assert!(
            wait_for(Duration::from_secs(10), || ok.load(Ordering::SeqCst)
                > before + 10),
            "no new connection served after upgrade {n}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    let mut bytes = 0;
    for s in streams {
        bytes += rt.block_on(s).unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    for c in connectors {
        rt.block_on(c).unwrap();
    }
    let (sent, answered) = flow.join().unwrap();
    let failures = failed.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failed connections: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    let served = ok.load(Ordering::SeqCst);
    assert!(served > 200, "only {served} new connections");
    assert!(bytes >= (STREAMS * 512 * 2) as u64);
    let lost = sent - answered;
    println!(
        "{UPGRADES} upgrades: {served} new connections, {STREAMS} streams ({bytes} bytes), \
         UDP flow: {sent} datagrams sent, {lost} unanswered"
    );
    // The datagrams a switch can lose are those in flight when the old process closes its
    // flows: a few per upgrade at most.
    assert!(
        answered > 0 && lost <= 3 * UPGRADES as u64,
        "UDP: {lost} of {sent} lost"
    );

    // The first process held the streams: it exits once they ended, the others already did.
    assert!(
        wait_for(Duration::from_secs(20), || family
            .first
            .try_wait()
            .unwrap()
            .is_some()),
        "the first process still runs after its streams ended"
    );
    assert_eq!(family.first.wait().unwrap().code(), Some(0));
    for &pid in &family.pids[..family.pids.len() - 1] {
        assert!(
            wait_for(Duration::from_secs(20), || ended(pid)),
            "process {pid} still runs"
        );
    }
    assert!(!ended(current), "the last process serves");
    assert!(
        wait_for(Duration::from_secs(10), || fd_count(current) <= baseline),
        "fds of the final process: {} (baseline {baseline}): {:?}",
        fd_count(current),
        fds(current)
    );
    assert_eq!(echo_once(tcp, b"still here").unwrap(), b"still here");
    assert!(
        started.elapsed() < Duration::from_secs(110),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let udp_backend = UdpBackend::start(Reply::Echo);
    let good = load_config(backend.addr, udp_backend.addr);
    let (mut family, first) = Family::start(&good);
    let tcp = first.services["echo"];

    // A binary that exits at once.
    let (success, output) = family.upgrade(first.pid, &["--binary", "/bin/false"]);
    assert!(!success, "{output}");
    assert!(output.contains("exited before it was ready"), "{output}");
    assert_eq!(echo_once(tcp, b"after false").unwrap(), b"after false");

    // A config the new process refuses.
    std::fs::write(&family.config_path, "[runtime]\nworkers = \"two\"\n").unwrap();
    let (success, output) = family.upgrade(first.pid, &[]);
    assert!(!success, "{output}");
    assert!(output.contains("the new process cannot start"), "{output}");
    assert!(
        output.contains("workers"),
        "the reason names the bad key: {output}"
    );
    assert_eq!(echo_once(tcp, b"after bad").unwrap(), b"after bad");
    assert!(!ended(first.pid));
    assert!(
        family
            .log_text()
            .contains("upgrade failed: this process keeps serving"),
        "{}",
        family.log_text()
    );

    // Fixed, the same process upgrades.
    std::fs::write(&family.config_path, &good).unwrap();
    let (success, output) = family.upgrade(first.pid, &[]);
    assert!(success, "{output}");
    let next = family.next_ready();
    assert_eq!(next.services["echo"], tcp);
    assert!(wait_for(Duration::from_secs(20), || family
        .first
        .try_wait()
        .unwrap()
        .is_some()));
    assert_eq!(echo_once(tcp, b"new one").unwrap(), b"new one");
}

#[test]
fn under_systemd_the_new_process_becomes_the_main_pid() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let manager = Manager::start();
    let text = config(
        "",
        &[service_config("echo", "round_robin", &[backend.addr], "")],
    );
    let (mut family, first) =
        Family::start_with_env(&text, &[("NOTIFY_SOCKET", manager.path.to_str().unwrap())]);
    let (success, output) = family.upgrade(first.pid, &[]);
    assert!(success, "{output}");
    let next = family.next_ready();
    // Both say MAINPID= of the new process (the old one while it is still the main one), and
    // the new one READY=1 with it.
    manager.wait(0, &[&format!("MAINPID={}", next.pid), "READY=1"]);
    assert_eq!(
        echo_once(next.services["echo"], b"served").unwrap(),
        b"served"
    );
}
