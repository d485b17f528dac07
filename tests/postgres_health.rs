//! The postgres check against a real PostgreSQL cluster that the test creates in a temporary
//! directory (initdb and pg_ctl, run as the `postgres` user when the test runs as root), on a
//! port of its own, and removes afterwards: login with a password (SCRAM-SHA-256), a wrong
//! password, `role = "primary"` and `"standby"`, the server going down, coming back as a standby,
//! and being promoted.
//!
//! Needs Debian's `postgresql` (`.ci/run` installs it); fails, naming the package, without it.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::health::{LogEvent, events, free_port, health, pg_bin};
use common::{Ringlb, TempDir, config, runtime, service_config, temp_dir, wait_for};

const INTERVAL: Duration = Duration::from_millis(300);
const TIMEOUT: Duration = Duration::from_millis(300);
/// Scheduling allowance on top of the bound the config implies.
const SLACK: Duration = Duration::from_millis(500);
const PASSWORD: &str = "probe-secret";

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
        .unwrap_or(false)
}

/// A cluster in a temporary directory; stopped and removed on drop.
struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
}

impl Postgres {
    /// Runs a PostgreSQL program as the cluster's owner.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let path = self.bin.join(program);
        let mut cmd = if running_as_root() {
            // PostgreSQL refuses to run as root.
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        cmd.args(args)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", path.display()))
    }

    fn run_ok(&self, program: &str, args: &[&str]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?}: {}\n{}\n{}\nserver log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn init() -> Postgres {
        let pg = Postgres {
            bin: pg_bin(),
            dir: temp_dir(),
            port: free_port(),
        };
        let pwfile = pg.dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if running_as_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(pg.dir.path())
                .status()
                .expect("chown");
            assert!(status.success(), "chown of {}", pg.dir.path().display());
        }
        pg.run_ok(
            "initdb",
            &[
                "-D",
                &pg.data(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                &format!("--pwfile={}", pwfile.display()),
                "--no-sync",
                "--locale=C",
                "-E",
                "UTF8",
            ],
        );
        pg
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run_ok(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run_ok("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    /// Makes the next start come up in recovery (a standby with no upstream).
    fn make_standby(&self) {
        let signal = Path::new(&self.data()).join("standby.signal");
        std::fs::write(&signal, "").unwrap();
        if running_as_root() {
            let status = Command::new("chown")
                .arg("postgres:postgres")
                .arg(&signal)
                .status()
                .unwrap();
            assert!(status.success());
        }
    }

    fn promote(&self) {
        self.run_ok("pg_ctl", &["-D", &self.data(), "-w", "promote"]);
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }
}

/// Transition lines of one service.
fn service_events(lb: &Ringlb, message: &str, service: &str) -> Vec<LogEvent> {
    events(lb, message, None)
        .into_iter()
        .filter(|e| e.field("service=").as_deref() == Some(service))
        .collect()
}

fn wait_service_event(
    lb: &Ringlb,
    message: &str,
    service: &str,
    count: usize,
    timeout: Duration,
) -> Option<LogEvent> {
    let mut found = None;
    wait_for(timeout, || {
        found = service_events(lb, message, service).get(count - 1).cloned();
        found.is_some()
    });
    found
}

/// Runs `SELECT 1` through `addr` as the postgres user.
fn select_one(addr: SocketAddr) -> Result<i32, String> {
    runtime().block_on(async move {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let mut config = tokio_postgres::Config::new();
        config
            .user("postgres")
            .password(PASSWORD)
            .dbname("postgres");
        let (client, connection) = config
            .connect_raw(stream, tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let row = client
            .query_one("SELECT 1", &[])
            .await
            .map_err(|e| e.to_string())?;
        drop(client);
        let _ = driver.await;
        Ok(row.get(0))
    })
}

#[test]
fn postgres_checks_log_in_and_follow_the_servers_role() {
    let pg = Postgres::init();
    pg.start();
    let check = |name: &str, keys: &str| {
        service_config(
            name,
            "round_robin",
            &[pg.addr()],
            &health(&format!(
                "kind = \"postgres\"\nuser = \"postgres\"\ndatabase = \"postgres\"\n\
                 interval = \"300ms\"\ntimeout = \"300ms\"\nrise = 1\nfall = 1\n{keys}"
            )),
        )
    };
    // Probe results are debug lines: they show the primary check failing on a standby.
    let lb = Ringlb::start_with_log(
        &config(
            "",
            &[
                check(
                    "primary",
                    &format!("role = \"primary\"\npassword = \"{PASSWORD}\""),
                ),
                check(
                    "standby",
                    &format!("role = \"standby\"\npassword = \"{PASSWORD}\""),
                ),
                check("wrong-password", "password = \"not-it\""),
            ],
        ),
        "info,ringlb::control::health=debug",
    );

    // First probes: the wrong password and the wrong role are out, with their reasons.
    let bad = wait_service_event(&lb, "backend down", "wrong-password", 1, TIMEOUT + SLACK)
        .unwrap_or_else(|| panic!("{}", lb.log_text()));
    assert!(
        bad.line.contains("password authentication failed for user"),
        "{}",
        bad.line
    );
    let standby = wait_service_event(&lb, "backend down", "standby", 1, TIMEOUT + SLACK)
        .unwrap_or_else(|| panic!("{}", lb.log_text()));
    assert!(
        standby
            .line
            .contains("role mismatch: not in recovery (a primary), expected a standby"),
        "{}",
        standby.line
    );
    // The primary passes: a query through ringlb works.
    assert_eq!(select_one(lb.addr("primary")), Ok(1));
    assert!(service_events(&lb, "backend down", "primary").is_empty());

    // Down: the server stops.
    let stopped = Instant::now();
    pg.stop();
    let bound = INTERVAL + TIMEOUT;
    let down = wait_service_event(&lb, "backend down", "primary", 1, bound + SLACK)
        .unwrap_or_else(|| panic!("not marked down within {bound:?}:\n{}", lb.log_text()));
    // Refused, or the shutdown caught a probe in the middle (terminated, connection closed).
    println!("marked down: {}", down.field("reason=").unwrap_or_default());
    println!("primary marked down {:?} after the stop", stopped.elapsed());
    assert!(
        select_one(lb.addr("primary")).is_err(),
        "no backend: closed at once"
    );

    // Back, but in recovery: the standby check passes, the primary check does not.
    pg.make_standby();
    pg.start();
    assert!(
        wait_service_event(&lb, "backend up", "standby", 1, INTERVAL + TIMEOUT + SLACK).is_some(),
        "{}",
        lb.log_text()
    );
    // Meanwhile the primary check fails on it, probe after probe, for the role.
    assert!(
        wait_service_event(&lb, "probe failed", "primary", 1, INTERVAL * 3 + SLACK).is_some(),
        "{}",
        lb.log_text()
    );
    let mismatches = || {
        service_events(&lb, "probe failed", "primary")
            .iter()
            .filter(|e| {
                e.line
                    .contains("role mismatch: in recovery (a standby), expected a primary")
            })
            .count()
    };
    assert!(
        wait_for(INTERVAL * 3 + SLACK, || mismatches() >= 3),
        "{}",
        lb.log_text()
    );
    assert!(
        service_events(&lb, "backend up", "primary").is_empty(),
        "a standby passed role = \"primary\":\n{}",
        lb.log_text()
    );

    // Promoted: the primary check passes again, the standby check fails.
    let promoted = Instant::now();
    pg.promote();
    assert!(
        wait_service_event(&lb, "backend up", "primary", 1, INTERVAL + TIMEOUT + SLACK).is_some(),
        "{}",
        lb.log_text()
    );
    println!(
        "primary up {:?} after pg_ctl promote returned",
        promoted.elapsed()
    );
    let demoted = wait_service_event(
        &lb,
        "backend down",
        "standby",
        2,
        INTERVAL + TIMEOUT + SLACK,
    )
    .unwrap_or_else(|| panic!("{}", lb.log_text()));
    assert!(demoted.line.contains("role mismatch"), "{}", demoted.line);
    assert_eq!(select_one(lb.addr("primary")), Ok(1));
    let took: Vec<u64> = service_events(&lb, "probe passed", "primary")
        .iter()
        .filter_map(|e| e.field("took_ms=")?.parse().ok())
        .collect();
    println!("passing primary probes took {took:?} ms (login with SCRAM-SHA-256 and one query)");
}
