//! Two ringlb hosts behind one virtual address moved by real keepalived (VRRP), in network
//! namespaces this test builds and removes: a client, hosts A and B, and a backend host, each
//! with a veth to a bridge in its own namespace, addresses from 198.18.0.0/15 only.
//!
//! The hosts run the recipe of `dist/ha/` (keepalived-a.conf, keepalived-b.conf, ringlb.toml,
//! ha-notify.sh) with only addresses, names and paths replaced. Also here: `freebind` and the
//! `source_hash` agreement of two ringlb processes on loopback.
//!
//! The namespace tests need root, `ip` and keepalived; they run one at a time (a lock), so the
//! failover windows they print are not skewed by each other.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::netns::{ip, run_in};
use common::{TempDir, temp_dir, wait_for};

/// The namespace tests run one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 100);
const PORT: u16 = 6379;
const HOST_A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const HOST_B: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const BACKEND_HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
/// The 50 client source addresses: 198.18.0.150 to 198.18.0.199.
const SOURCES: std::ops::Range<u8> = 150..200;
/// What this shared VM may add to a failover window beyond the VRRP bound.
const MARGIN: Duration = Duration::from_secs(1);

fn dist(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist/ha")
        .join(file)
}

/// Debian's keepalived (in /usr/sbin, which a non-login PATH may lack).
fn keepalived_binary() -> &'static str {
    ["/usr/sbin/keepalived", "/sbin/keepalived", "/usr/bin/keepalived"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("keepalived is not installed: this test needs it (Debian: apt-get install keepalived; .ci/run installs it)")
}

/// `ringlb status --check` against the admin API of the ringlb in namespace `ns`.
fn status_check(ns: &str) -> std::io::Result<std::process::Output> {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ringlb")])
        .args(["status", "--check", "--admin", "127.0.0.1:9090"])
        .output()
}

/// A process started with `ip netns exec`, killed when dropped.
struct Proc {
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(ns: &str, program: &str, args: &[&str], log: PathBuf) -> Proc {
        let out = fs::File::create(&log).unwrap();
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // SAFETY: runs in the forked child before exec and only calls prctl(2), which is
        // async-signal-safe. `ip netns exec` execs the program, which keeps the setting.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command.spawn().expect("ip netns exec starts");
        Proc { child, log }
    }

    fn output(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A backend that writes its name to each connection, then closes it: the client learns
/// which backend ringlb chose.
struct Named {
    addr: SocketAddr,
    stop: std::sync::Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Named {
    fn start(ns: Option<&str>, addr: SocketAddr, name: &str) -> Named {
        let bind = move || std::net::TcpListener::bind(addr).expect("backend binds");
        let listener = match ns {
            Some(ns) => run_in(ns, bind),
            None => bind(),
        };
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (stop2, name) = (stop.clone(), format!("{name}\n"));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(name.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Named {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Named {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from `source` to `to` and reads the backend's name.
fn who(source: IpAddr, to: SocketAddr, timeout: Duration) -> std::io::Result<String> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&to.into(), timeout)?;
    let mut stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    let mut name = String::new();
    stream.read_to_string(&mut name)?;
    let name = name.trim().to_owned();
    if name.is_empty() {
        return Err(std::io::Error::other("closed without a name"));
    }
    Ok(name)
}

/// The network: namespaces and veths, removed when dropped (also when a test fails).
struct Net {
    id: String,
    dir: TempDir,
}

impl Net {
    fn ns(&self, role: &str) -> String {
        format!("rlb{}{role}", self.id)
    }

    /// The interface of `role`'s host on the bridge.
    fn dev(&self, role: &str) -> String {
        format!("e{}{role}", self.id)
    }

    fn build() -> Net {
        static RUN: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "{:x}{}",
            std::process::id() & 0xffff,
            RUN.fetch_add(1, Ordering::Relaxed)
        );
        let net = Net {
            id,
            dir: temp_dir(),
        };
        let br = net.ns("br");
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for (role, addr) in [
            ("c", CLIENT),
            ("a", HOST_A),
            ("b", HOST_B),
            ("k", BACKEND_HOST),
        ] {
            let ns = net.ns(role);
            let dev = net.dev(role);
            let peer = format!("p{}{role}", net.id);
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &dev, "netns", &ns, "type", "veth", "peer", "name", &peer, "netns",
                &br,
            ]);
            ip(&["-n", &br, "link", "set", &peer, "master", "br0", "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            ip(&["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", &dev]);
            ip(&["-n", &ns, "link", "set", &dev, "up"]);
        }
        let batch: String = SOURCES
            .map(|i| format!("addr add 198.18.0.{i}/24 dev {}\n", net.dev("c")))
            .collect();
        let mut child = Command::new("ip")
            .args(["-n", &net.ns("c"), "-batch", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(batch.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
        net
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Whether `role`'s host holds the virtual address now.
    fn holds_vip(&self, role: &str) -> bool {
        let out = Command::new("ip")
            .args([
                "-n",
                &self.ns(role),
                "-4",
                "addr",
                "show",
                "dev",
                &self.dev(role),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {VIP}/"))
    }

    /// The names of the backends of the 50 client addresses, connecting to the virtual address.
    fn mapping(&self) -> BTreeMap<u8, String> {
        run_in(&self.ns("c"), || {
            SOURCES
                .map(|i| {
                    let source = IpAddr::V4(Ipv4Addr::new(198, 18, 0, i));
                    let name = who(
                        source,
                        SocketAddr::new(VIP.into(), PORT),
                        Duration::from_secs(2),
                    )
                    .unwrap_or_else(|e| panic!("client {source}: {e}"));
                    (i, name)
                })
                .collect()
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for role in ["c", "a", "b", "k", "br"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
    }
}

/// Replaces `from` by `to` in `text`, which must contain it (so the recipe and this test
/// cannot drift apart silently).
fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "the recipe no longer has {from:?}");
    text.replace(from, to)
}

/// How one pair is set up.
struct Setup {
    /// VRRP advert interval, seconds as keepalived reads it ("1", "0.2").
    advert: &'static str,
    nopreempt: bool,
}

/// A running pair: backends, ringlb and keepalived on A and B.
struct Pair {
    // Dropped first: the processes, then the network.
    keepalived: BTreeMap<&'static str, Proc>,
    ringlb: BTreeMap<&'static str, Proc>,
    /// Per host, the backend of its own `require_backends` service.
    aux: BTreeMap<&'static str, Proc>,
    _named: Vec<Named>,
    net: Net,
    advert: Duration,
}

impl Pair {
    fn start(setup: &Setup) -> Pair {
        let net = Net::build();
        let backend_ns = net.ns("k");
        let named: Vec<Named> = (0..3)
            .map(|i| {
                Named::start(
                    Some(&backend_ns),
                    SocketAddr::new(BACKEND_HOST.into(), 7100 + i),
                    &format!("backend-{i}"),
                )
            })
            .collect();
        let mut aux = BTreeMap::new();
        let mut ringlb = BTreeMap::new();
        let mut keepalived = BTreeMap::new();
        let recipe = fs::read_to_string(dist("ringlb.toml")).unwrap();
        for (role, port, order) in [("a", 7001, [0, 1, 2]), ("b", 7002, [2, 0, 1])] {
            let ns = net.ns(role);
            let aux_addr = format!("{BACKEND_HOST}:{port}");
            aux.insert(role, start_serve(&net, role, &aux_addr));
            // The same recipe on both hosts; the backends listed in another order on B.
            let mut config = replace(&recipe, "freebind = true", "freebind = true\nworkers = 1");
            config = replace(&config, "192.0.2.100:6379", &format!("{VIP}:{PORT}"));
            config = replace(&config, "interval = \"1s\"", "interval = \"200ms\"");
            for (slot, i) in order.iter().enumerate() {
                config = replace(
                    &config,
                    &format!("\"192.0.2.2{}:6379\"", slot + 1),
                    &format!("\"@{}\"", named[*i].addr),
                );
            }
            config = config.replace('@', "");
            // A service of this host alone, whose one backend the tests may stop.
            config.push_str(&format!(
                "\n[[service]]\nname = \"aux\"\nlisten = \"{VIP}:7000\"\n\
                 [service.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"200ms\"\n\
                 rise = 1\nfall = 1\n[[service.backend]]\naddress = \"{aux_addr}\"\n"
            ));
            let config_path = net.path(&format!("ringlb-{role}.toml"));
            fs::write(&config_path, &config).unwrap();
            ringlb.insert(role, start_ringlb(&net, role, &config_path));

            let file = if role == "a" {
                "keepalived-a.conf"
            } else {
                "keepalived-b.conf"
            };
            let mut k = fs::read_to_string(dist(file)).unwrap();
            let dev = net.dev(role);
            k = replace(&k, "eth0", &dev);
            k = replace(&k, "192.0.2.100/24", &format!("{VIP}/24"));
            k = replace(&k, "advert_int 1", &format!("advert_int {}", setup.advert));
            k = replace(&k, "/usr/local/bin/ringlb", env!("CARGO_BIN_EXE_ringlb"));
            k = replace(
                &k,
                "/usr/local/lib/ringlb/ha-notify.sh",
                dist("ha-notify.sh").to_str().unwrap(),
            );
            k = replace(
                &k,
                "/var/log/ringlb-vrrp.log",
                net.path(&format!("vrrp-{role}.log")).to_str().unwrap(),
            );
            if setup.nopreempt {
                k = replace(&k, "# nopreempt", "nopreempt");
            }
            let conf = net.path(&format!("keepalived-{role}.conf"));
            fs::write(&conf, k).unwrap();
            let pid = |what: &str| net.path(&format!("{what}-{role}.pid"));
            let args = [
                "--dont-fork".to_owned(),
                "--log-console".to_owned(),
                "--log-detail".to_owned(),
                "--no-syslog".to_owned(),
                "--vrrp".to_owned(),
                format!("--use-file={}", conf.display()),
                format!("--pid={}", pid("keepalived").display()),
                format!("--vrrp_pid={}", pid("vrrp").display()),
                format!("--checkers_pid={}", pid("checkers").display()),
            ];
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            keepalived.insert(
                role,
                Proc::start(
                    &ns,
                    keepalived_binary(),
                    &args,
                    net.path(&format!("keepalived-{role}.log")),
                ),
            );
        }
        let advert = Duration::from_secs_f64(setup.advert.parse().unwrap());
        let pair = Pair {
            keepalived,
            ringlb,
            aux,
            _named: named,
            net,
            advert,
        };
        pair.wait_master("a", Duration::from_secs(10));
        assert!(!pair.net.holds_vip("b"));
        pair
    }

    /// Waits until `role` holds the virtual address and the other host does not.
    fn wait_master(&self, role: &str, timeout: Duration) {
        let other = if role == "a" { "b" } else { "a" };
        let held = wait_for(timeout, || {
            self.net.holds_vip(role) && !self.net.holds_vip(other)
        });
        assert!(
            held,
            "{role} did not take the address alone\n{}",
            self.logs()
        );
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (role, p) in self.keepalived.iter().chain(&self.ringlb) {
            out.push_str(&format!(
                "--- {role} {}:\n{}\n",
                p.log.display(),
                p.output()
            ));
        }
        for role in ["a", "b"] {
            let path = self.net.path(&format!("vrrp-{role}.log"));
            out.push_str(&format!(
                "--- transitions of {role}:\n{}\n",
                fs::read_to_string(path).unwrap_or_default()
            ));
        }
        out
    }

    /// From `start`, connects from the client every 20 ms until one connection reaches a
    /// backend through the virtual address: the window and the failed attempts.
    fn window(&self, start: Instant, limit: Duration) -> (Duration, u32) {
        run_in(&self.net.ns("c"), || {
            let mut failures = 0;
            let deadline = start + limit;
            while Instant::now() < deadline {
                let to = SocketAddr::new(VIP.into(), PORT);
                if who(CLIENT.into(), to, Duration::from_millis(300)).is_ok() {
                    return (start.elapsed(), failures);
                }
                failures += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("no connection through the virtual address within {limit:?}");
        })
    }

    /// Connects from the client every 20 ms from `start` until `role` alone holds the virtual
    /// address and a connection through it reached a backend: the window and the failed
    /// attempts meanwhile.
    fn window_to(&self, role: &str, start: Instant, limit: Duration) -> (Duration, u32) {
        let other = if role == "a" { "b" } else { "a" };
        run_in(&self.net.ns("c"), || {
            let mut failures = 0;
            let deadline = start + limit;
            while Instant::now() < deadline {
                let moved = self.net.holds_vip(role) && !self.net.holds_vip(other);
                let to = SocketAddr::new(VIP.into(), PORT);
                match who(CLIENT.into(), to, Duration::from_millis(300)) {
                    Ok(_) if moved => return (start.elapsed(), failures),
                    Ok(_) => {}
                    Err(_) => failures += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            panic!("the address did not move to {role} within {limit:?}");
        })
    }

    /// The bound a failover window is asserted against: 3 advert intervals, 1 s (keepalived's
    /// shortest script interval) and [`MARGIN`].
    fn bound(&self) -> Duration {
        self.advert * 3 + Duration::from_secs(1) + MARGIN
    }
}

fn start_serve(net: &Net, role: &str, addr: &str) -> Proc {
    let p = Proc::start(
        &net.ns("k"),
        env!("CARGO_BIN_EXE_ringlb"),
        &["bench", "serve", "-l", addr, "-t", "1"],
        net.path(&format!("serve-{role}-{}.log", addr.replace(':', "_"))),
    );
    let up = wait_for(Duration::from_secs(10), || {
        run_in(&net.ns("k"), || {
            let addr: SocketAddr = addr.parse().unwrap();
            // Bound: a bind on the same address fails.
            std::net::TcpListener::bind(addr).is_err()
        })
    });
    assert!(up, "bench serve on {addr}: {}", p.output());
    p
}

fn start_ringlb(net: &Net, role: &str, config: &Path) -> Proc {
    let mut p = Proc::start(
        &net.ns(role),
        env!("CARGO_BIN_EXE_ringlb"),
        &["run", "--config", config.to_str().unwrap()],
        net.path(&format!("ringlb-{role}.log")),
    );
    let ready = wait_for(Duration::from_secs(20), || {
        p.output().contains("{\"ready\"") || p.exited().is_some()
    });
    assert!(
        ready && p.output().contains("{\"ready\""),
        "ringlb on {role}: {}",
        p.output()
    );
    p
}

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Kills ringlb on A: B takes the address; the window and failures are printed; the 50
/// clients keep their backends.
fn ringlb_killed(advert: &'static str) {
    let _serial = lock();
    let mut pair = Pair::start(&Setup {
        advert,
        nopreempt: false,
    });
    let before = pair.net.mapping();
    let spread: std::collections::BTreeSet<&String> = before.values().collect();
    assert!(spread.len() > 1, "50 clients on one backend: {before:?}");

    let start = Instant::now();
    pair.ringlb.get_mut("a").unwrap().kill();
    let (window, failures) = pair.window(start, Duration::from_secs(15));
    println!(
        "failover, ringlb killed, advert_int {advert}s: first connection after {} ms, \
         {failures} connect failures (bound {} ms)",
        window.as_millis(),
        pair.bound().as_millis()
    );
    pair.wait_master("b", Duration::from_secs(5));
    assert!(
        window <= pair.bound(),
        "window {window:?} over {:?}\n{}",
        pair.bound(),
        pair.logs()
    );
    let after = pair.net.mapping();
    assert_eq!(
        before, after,
        "clients changed backends across the failover"
    );
    let transitions = fs::read_to_string(pair.net.path("vrrp-b.log")).unwrap_or_default();
    assert!(transitions.contains("MASTER"), "B's notify: {transitions}");
}

#[test]
fn ringlb_killed_on_the_master_moves_the_address_advert_1s() {
    ringlb_killed("1");
}

#[test]
fn ringlb_killed_on_the_master_moves_the_address_advert_200ms() {
    ringlb_killed("0.2");
}

/// Stops A's `require_backends` backend: A's /health fails and B takes the address; with the
/// backend back, A takes it back only with preemption.
fn unhealthy_master(nopreempt: bool) {
    let _serial = lock();
    let mut pair = Pair::start(&Setup {
        advert: "0.2",
        nopreempt,
    });
    let start = Instant::now();
    pair.aux.get_mut("a").unwrap().kill();
    let (window, failures) = pair.window_to("b", start, Duration::from_secs(15));
    println!(
        "failover, A unhealthy (no ready backend), advert_int 0.2s: B holds the address and \
         serves {} ms after the backend stopped, {failures} connect failures",
        window.as_millis()
    );
    // ringlb notices (health interval 200 ms, fall 1), then the track_script (1 s).
    assert!(
        window <= pair.bound() + Duration::from_millis(200),
        "window {window:?}\n{}",
        pair.logs()
    );
    // A's ringlb says why.
    let check = status_check(&pair.net.ns("a")).unwrap();
    let said = String::from_utf8_lossy(&check.stdout);
    assert_eq!(check.status.code(), Some(1), "{said}");
    assert!(said.contains("service aux has no ready backend"), "{said}");

    // The backend is back: A is healthy again (track_script rise 2: about 2 s).
    pair.aux
        .insert("a", start_serve(&pair.net, "a", "198.18.0.20:7001"));
    let healthy = wait_for(Duration::from_secs(10), || {
        status_check(&pair.net.ns("a")).is_ok_and(|o| o.status.success())
    });
    assert!(healthy, "A did not become healthy again");
    let back = Instant::now();
    if nopreempt {
        // A is healthy and has the higher priority, yet B keeps the address: watch for the
        // script's two rises and 15 advert intervals more.
        let moved = wait_for(Duration::from_secs(5), || pair.net.holds_vip("a"));
        assert!(
            !moved,
            "A took the address back despite nopreempt\n{}",
            pair.logs()
        );
        assert!(pair.net.holds_vip("b"));
        let (_, failures) = pair.window(Instant::now(), Duration::from_secs(5));
        println!(
            "A healthy again with nopreempt: B keeps the address, {failures} connect failures"
        );
    } else {
        let (window, failures) = pair.window_to("a", back, Duration::from_secs(10));
        println!(
            "A healthy again with preemption: A holds the address and serves {} ms after \
             its health returned, {failures} connect failures",
            window.as_millis()
        );
    }
}

/// Failover rounds for `tools/ha-failover.sh`: `RINGLB_HA_ROUNDS` (default 20) failovers each
/// way (ringlb killed on A, then on B; nopreempt, so each host keeps the address until its
/// ringlb dies) at advert_int `RINGLB_HA_ADVERT` (default 1). Prints one line per failover.
#[test]
#[ignore = "long: run by tools/ha-failover.sh"]
fn failover_rounds() {
    let _serial = lock();
    let rounds: usize = std::env::var("RINGLB_HA_ROUNDS").map_or(20, |v| v.parse().unwrap());
    let advert: &'static str = Box::leak(
        std::env::var("RINGLB_HA_ADVERT")
            .unwrap_or_else(|_| "1".into())
            .into(),
    );
    let mut pair = Pair::start(&Setup {
        advert,
        nopreempt: true,
    });
    let mut master = "a";
    for round in 0..rounds * 2 {
        let other = if master == "a" { "b" } else { "a" };
        let start = Instant::now();
        pair.ringlb.get_mut(master).unwrap().kill();
        let (window, failures) = pair.window_to(other, start, Duration::from_secs(15));
        println!(
            "round {round} advert_int {advert} {master}->{other} window_ms {} failures {failures}",
            window.as_millis()
        );
        // Restart the killed ringlb and wait until keepalived saw its host healthy again (two
        // passing checks: FAULT to BACKUP); nopreempt keeps it backup.
        let transitions = pair.net.path(&format!("vrrp-{master}.log"));
        let seen = |t: &Path| {
            fs::read_to_string(t)
                .unwrap_or_default()
                .matches("BACKUP")
                .count()
        };
        let before = seen(&transitions);
        let config = pair.net.path(&format!("ringlb-{master}.toml"));
        let restarted = start_ringlb(&pair.net, master, &config);
        pair.ringlb.insert(master, restarted);
        let ns = pair.net.ns(master);
        let healthy = wait_for(Duration::from_secs(10), || {
            status_check(&ns).is_ok_and(|o| o.status.success())
        });
        assert!(healthy, "{master} did not come back");
        assert!(wait_for(Duration::from_secs(10), || seen(&transitions) > before));
        master = other;
    }
}

#[test]
fn unhealthy_master_gives_the_address_up_and_takes_it_back_with_preemption() {
    unhealthy_master(false);
}

#[test]
fn unhealthy_master_does_not_take_the_address_back_with_nopreempt() {
    unhealthy_master(true);
}

#[test]
fn master_link_down_moves_the_address() {
    let _serial = lock();
    let pair = Pair::start(&Setup {
        advert: "0.2",
        nopreempt: false,
    });
    let before = pair.net.mapping();
    let start = Instant::now();
    // The bridge's side of A's cable: A sees nothing, B stops hearing A's adverts.
    ip(&[
        "-n",
        &pair.net.ns("br"),
        "link",
        "set",
        &format!("p{}a", pair.net.id),
        "down",
    ]);
    let (window, failures) = pair.window(start, Duration::from_secs(15));
    println!(
        "failover, A's link down, advert_int 0.2s: first connection after {} ms, {failures} \
         connect failures (bound {} ms)",
        window.as_millis(),
        pair.bound().as_millis()
    );
    assert!(pair.net.holds_vip("b"));
    assert!(
        window <= pair.bound(),
        "window {window:?} over {:?}\n{}",
        pair.bound(),
        pair.logs()
    );
    assert_eq!(before, pair.net.mapping(), "clients changed backends");
}

#[test]
fn freebind_lets_ringlb_listen_on_an_address_this_host_lacks() {
    let _serial = lock();
    let net = Net::build();
    let config = |freebind: bool| {
        format!(
            "[runtime]\nworkers = 1\nfreebind = {freebind}\n\n[[service]]\nname = \"vip\"\n\
             listen = \"{VIP}:{PORT}\"\n[[service.backend]]\naddress = \"{BACKEND_HOST}:7100\"\n"
        )
    };
    // Without: a clear error naming the address and the way out.
    let path = net.path("plain.toml");
    fs::write(&path, config(false)).unwrap();
    let mut plain = Proc::start(
        &net.ns("a"),
        env!("CARGO_BIN_EXE_ringlb"),
        &["run", "--config", path.to_str().unwrap()],
        net.path("plain.log"),
    );
    assert!(wait_for(Duration::from_secs(20), || plain
        .exited()
        .is_some()));
    assert!(!plain.exited().unwrap().success());
    let log = plain.output();
    assert!(
        log.contains(&format!("cannot listen on {VIP}:{PORT}"))
            && log.contains("not assigned to this host")
            && log.contains("freebind"),
        "{log}"
    );
    // With: it runs, and serves once the address arrives.
    let path = net.path("freebind.toml");
    fs::write(&path, config(true)).unwrap();
    let _free = start_ringlb(&net, "a", &path);
    let _backend = Named::start(
        Some(&net.ns("k")),
        SocketAddr::new(BACKEND_HOST.into(), 7100),
        "backend-0",
    );
    ip(&[
        "-n",
        &net.ns("a"),
        "addr",
        "add",
        &format!("{VIP}/24"),
        "dev",
        &net.dev("a"),
    ]);
    let name = run_in(&net.ns("c"), || {
        let mut last = None;
        let ok = wait_for(Duration::from_secs(5), || {
            last = Some(who(
                CLIENT.into(),
                SocketAddr::new(VIP.into(), PORT),
                Duration::from_millis(500),
            ));
            matches!(last, Some(Ok(_)))
        });
        assert!(ok, "{last:?}");
        last.unwrap().unwrap()
    });
    assert_eq!(name, "backend-0");
}

/// Two ringlb processes on loopback with the same backends listed in different orders send 50
/// clients of distinct source addresses to the same backends.
#[test]
fn two_balancers_with_backends_in_different_orders_agree_on_every_client() {
    let named: Vec<Named> = (0..4)
        .map(|i| {
            Named::start(
                None,
                "127.0.0.1:0".parse().unwrap(),
                &format!("backend-{i}"),
            )
        })
        .collect();
    let addrs: Vec<SocketAddr> = named.iter().map(|n| n.addr).collect();
    let reversed: Vec<SocketAddr> = addrs.iter().rev().copied().collect();
    let rotated: Vec<SocketAddr> = [&addrs[2..], &addrs[..2]].concat();
    let runs: Vec<common::Ringlb> = [addrs.clone(), reversed, rotated]
        .iter()
        .map(|list| {
            common::Ringlb::start(&common::config(
                "",
                &[common::service_config("web", "source_hash", list, "")],
            ))
        })
        .collect();
    let mapping = |r: &common::Ringlb| -> Vec<String> {
        (0..50u8)
            .map(|i| {
                let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1 + i / 25, 10 + i % 25 * 3));
                who(source, r.addr("web"), Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("client {source}: {e}"))
            })
            .collect()
    };
    let first = mapping(&runs[0]);
    let used: std::collections::BTreeSet<&String> = first.iter().collect();
    assert!(used.len() > 1, "every client on one backend: {first:?}");
    for r in &runs[1..] {
        assert_eq!(mapping(r), first);
    }
}

/// `GET /health` and `ringlb status --check` on loopback: healthy with ready backends, 503 and
/// exit 1 with the reason once a `require_backends` service has none, healthy again after.
#[test]
fn health_follows_the_backends_of_a_require_backends_service() {
    let mut backend = Some(Named::start(None, "127.0.0.1:0".parse().unwrap(), "b"));
    let addr = backend.as_ref().unwrap().addr;
    let service = common::service_config(
        "redis",
        "source_hash",
        &[addr],
        "[service.health]\nkind = \"tcp\"\ninterval = \"100ms\"\ntimeout = \"100ms\"\nrise = 1\nfall = 1",
    );
    let r = common::Ringlb::start(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\nrequire_backends = true\n",
        common::config("", &[service])
    ));
    let admin = r.admin.unwrap();
    let check = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(["status", "--check", "--admin", &admin.to_string()])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        )
    };
    let health = || common::admin::http(admin, "GET", "/health", None, None);
    assert!(wait_for(Duration::from_secs(5), || health().code == 200));
    assert_eq!(health().json(), serde_json::json!({"healthy": true}));
    assert_eq!(check(), (Some(0), "healthy".to_owned()));

    drop(backend.take());
    assert!(wait_for(Duration::from_secs(5), || health().code == 503));
    assert_eq!(
        health().json(),
        serde_json::json!({"healthy": false, "reason": "service redis has no ready backend"})
    );
    assert_eq!(
        check(),
        (
            Some(1),
            "unhealthy: service redis has no ready backend".to_owned()
        )
    );

    let _back = Named::start(None, addr, "b");
    assert!(wait_for(Duration::from_secs(5), || health().code == 200));

    // A ringlb that is gone is unhealthy too.
    drop(r);
    let (code, said) = check();
    assert_eq!(code, Some(1));
    assert!(
        said.starts_with("unhealthy: cannot reach the admin API"),
        "{said}"
    );
}
