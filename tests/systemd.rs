//! ringlb under systemd, with the test in the service manager's place: the notify protocol
//! (READY, RELOADING with MONOTONIC_USEC, STOPPING, STATUS), watchdog pings that stop while a
//! worker is stuck, and listening sockets passed the way systemd passes them (fds from 3,
//! `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::systemd::Manager;
use common::udp::{Reply, UdpBackend, udp_service};
use common::{Backend, config, runtime, service_config, spawn_logged, temp_dir, wait_for};

/// A ringlb process and its log.
struct Process {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    ready: Option<serde_json::Value>,
}

impl Process {
    fn services(&self, name: &str) -> SocketAddr {
        let ready = self.ready.as_ref().expect("ringlb is ready");
        ready["ready"]["services"][name]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own unreaped child with a valid signal number.
        assert_eq!(unsafe { libc::kill(self.child.id() as i32, signal) }, 0);
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let mut code = None;
        wait_for(timeout, || {
            code = self
                .child
                .try_wait()
                .unwrap()
                .map(|s| s.code().unwrap_or(-1));
            code.is_some()
        });
        code
    }

    fn log_has(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `command` (ringlb run, or a wrapper of it), waits for its ready line unless it exits
/// first.
fn spawn(mut command: Command) -> Process {
    let (mut child, log) = spawn_logged(&mut command);
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = rx
        .recv_timeout(Duration::from_secs(20))
        .ok()
        .map(|line| serde_json::from_str(&line).unwrap());
    Process { child, log, ready }
}

fn ringlb(config_text: &str, dir: &common::TempDir) -> Command {
    let path = dir.path().join("ringlb.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ringlb"));
    command.args(["run", "--config"]).arg(&path);
    command
}

/// `ringlb run` on one round-robin service "web" to `backend`, telling `manager` how it goes.
fn notified_web(backend: SocketAddr, manager: &Manager, dir: &common::TempDir) -> Command {
    let mut command = ringlb(
        &config("", &[service_config("web", "round_robin", &[backend], "")]),
        dir,
    );
    command.env("NOTIFY_SOCKET", &manager.path);
    command
}

fn echo_once(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(payload).unwrap();
    let mut back = vec![0u8; payload.len()];
    s.read_exact(&mut back).unwrap();
    back
}

#[test]
fn notify_says_ready_reloading_status_and_stopping() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let manager = Manager::start();
    let dir = temp_dir();
    let command = notified_web(backend.addr, &manager, &dir);
    let mut lb = spawn(command);
    let web = lb.services("web");

    let ready = manager.wait(0, &["READY=1"]);
    let status = manager.wait(0, &["STATUS=serving 1 services (web) on 2 workers"]);
    assert!(manager.all()[status].1.contains("0 live connections"));

    // A reload: RELOADING=1 with the monotonic clock, then READY=1 again.
    lb.signal(libc::SIGHUP);
    let reloading = manager.wait(ready + 1, &["RELOADING=1", "MONOTONIC_USEC="]);
    let usec: u64 = manager.all()[reloading]
        .1
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    let again = manager.wait(reloading + 1, &["READY=1"]);
    assert!(again > reloading);

    // A live connection shows in the status line.
    let mut held = TcpStream::connect(web).unwrap();
    held.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    held.write_all(b"ping").unwrap();
    let mut back = [0u8; 4];
    held.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"ping");
    let live = manager.wait(
        again,
        &["STATUS=serving 1 services (web) on 2 workers; 1 live"],
    );
    assert!(live > again);

    // SIGTERM: STOPPING=1 and a draining status while the connection lives.
    lb.signal(libc::SIGTERM);
    let stopping = manager.wait(live, &["STOPPING=1"]);
    manager.wait(stopping, &["STATUS=draining: 1 live connections left"]);
    drop(held);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn watchdog_pings_stop_while_a_worker_is_stuck() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let manager = Manager::start();
    let dir = temp_dir();
    let mut command = notified_web(backend.addr, &manager, &dir);
    // Pings every 200 ms; worker 0 blocks its thread for 5 s once 1.5 s have passed.
    command
        .env("WATCHDOG_USEC", "400000")
        .env("RINGLB_TEST_STALL_WORKER", "1500:5000");
    let lb = spawn(command);
    assert!(lb.ready.is_some(), "ringlb starts");
    assert!(
        wait_for(Duration::from_secs(3), || manager.pings().len() >= 3),
        "pings arrive while the workers turn: {:?}",
        manager.pings().len()
    );
    // The stall begins, pings stop once the worker is stale, and resume after it.
    assert!(
        wait_for(Duration::from_secs(15), || {
            let pings = manager.pings();
            let gap = pings
                .windows(2)
                .position(|w| w[1] - w[0] >= Duration::from_millis(2000));
            gap.is_some_and(|i| pings.len() > i + 3)
        }),
        "no gap of 2 s in the pings followed by new ones: {:?}",
        manager
            .pings()
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect::<Vec<_>>()
    );
    assert!(lb.log_has("test hook: stalling worker 0"));
    assert!(lb.log_has("a worker's loop is stuck: watchdog pings stop"));
    // Without the stall, no gap came near that: every gap before it is short.
    let pings = manager.pings();
    let first_gap = pings
        .windows(2)
        .position(|w| w[1] - w[0] >= Duration::from_millis(2000))
        .unwrap();
    assert!(first_gap >= 3, "pings stopped before the stall");
}

/// Copies `fd` to a number of at least 100, close-on-exec, so placing it at 3 or 4 in a child
/// never meets a number already taken by another of the sockets.
fn high_copy(fd: RawFd) -> RawFd {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an open descriptor of ours returns a new one or -1.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100) };
    assert!(copy >= 100);
    copy
}

/// `ringlb run` started as systemd starts a socket-activated service: `fds` at 3, 4, ... and
/// `LISTEN_FDS`, `LISTEN_FDNAMES` and `LISTEN_PID` (the shell sets it to its own pid, which
/// the exec keeps).
fn activated(config_text: &str, dir: &common::TempDir, fds: &[RawFd], names: &str) -> Process {
    let path = dir.path().join("ringlb.toml");
    std::fs::write(&path, config_text).unwrap();
    let high: Vec<RawFd> = fds.iter().map(|&fd| high_copy(fd)).collect();
    let mut command = Command::new("/bin/sh");
    command
        .args(["-c", "LISTEN_PID=$$ exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_ringlb"))
        .args(["run", "--config"])
        .arg(&path)
        .env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names);
    let placed = high.clone();
    // SAFETY: runs in the forked child before exec; dup2(2) is async-signal-safe and only
    // places descriptors that are open in the child (copies made above, numbers >= 100, so no
    // target number 3.. is one of the sources). dup2 clears close-on-exec on the target.
    unsafe {
        command.pre_exec(move || {
            for (i, &fd) in placed.iter().enumerate() {
                if libc::dup2(fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let process = spawn(command);
    for fd in high {
        // SAFETY: `fd` is our own copy from `high_copy`, closed once here.
        unsafe { libc::close(fd) };
    }
    process
}

#[test]
fn listeners_passed_by_systemd_are_served_instead_of_binding() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let udp_backend = UdpBackend::start(Reply::Echo);
    // Held by the test without SO_REUSEPORT: ringlb could not bind these addresses itself.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let (tcp_addr, udp_addr) = (tcp.local_addr().unwrap(), udp.local_addr().unwrap());
    let text = config(
        "",
        &[
            service_config("web", "round_robin", &[backend.addr], "")
                .replace("127.0.0.1:0", &tcp_addr.to_string()),
            udp_service("dns", "round_robin", &[udp_backend.addr], "")
                .replace("127.0.0.1:0", &udp_addr.to_string()),
        ],
    );
    let dir = temp_dir();
    let mut lb = activated(&text, &dir, &[tcp.as_raw_fd(), udp.as_raw_fd()], "web:dns");
    assert!(
        lb.ready.is_some(),
        "ringlb starts on the passed sockets; log: {:?}",
        lb.log.lock().unwrap()
    );
    assert_eq!(lb.services("web"), tcp_addr);
    assert_eq!(lb.services("dns"), udp_addr);
    for i in 0..20 {
        let payload = format!("hello {i}");
        assert_eq!(echo_once(tcp_addr, payload.as_bytes()), payload.as_bytes());
    }
    let client = common::udp::client();
    assert_eq!(
        common::udp::ask(&client, udp_addr, b"datagram"),
        b"datagram"
    );
    assert!(lb.log_has("listening socket passed by systemd"));
    lb.signal(libc::SIGTERM);
    assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn a_passed_socket_that_does_not_fit_its_service_stops_the_start() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = udp.local_addr().unwrap();
    // "web" is TCP in the config; the socket named "web" is UDP.
    let text = config(
        "",
        &[service_config("web", "round_robin", &[backend.addr], "")
            .replace("127.0.0.1:0", &addr.to_string())],
    );
    let dir = temp_dir();
    let mut lb = activated(&text, &dir, &[udp.as_raw_fd()], "web");
    assert!(lb.ready.is_none(), "no ready line");
    assert_eq!(lb.wait_exit(Duration::from_secs(10)), Some(1));
    assert!(
        wait_for(Duration::from_secs(2), || lb.log_has(
            "the socket passed for service web does not fit it: it is not a TCP (stream) socket"
        )),
        "{:?}",
        lb.log.lock().unwrap()
    );
}
