//! Health checks through a real ringlb process: probe-driven mark-down and recovery with their
//! timing, passive detection, closing live sessions on mark-down, the service-down event, probe
//! hygiene against a backend that drops SYNs, and a flapping backend.
//!
//! Timings: probes run every 100-200 ms here. Each bound asserted is the one the config implies
//! (e.g. `fall × interval + timeout`) plus [`SLACK`] for scheduling on a loaded 2-core machine
//! (the log line crossing a pipe, threads waking); the measured values are printed.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::health::{
    Switchable, days_from_civil, events, expect_event, greeting, greetings, health,
    passive_detection_service, timestamp, wait_event,
};
use common::{Blackhole, Ringlb, config, runtime, service_config, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Allowance for scheduling on top of each bound the config implies.
const SLACK: Duration = Duration::from_millis(400);

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn names(results: &[Result<String, String>]) -> Vec<String> {
    results
        .iter()
        .map(|r| r.clone().unwrap_or_else(|e| panic!("client error: {e}")))
        .collect()
}

#[test]
fn timestamps_of_log_lines_parse_to_the_right_instant() {
    let t = timestamp("2026-11-24T17:43:09.353366Z  WARN x: y").unwrap();
    let since = t.duration_since(UNIX_EPOCH).unwrap();
    // `date -u -d 2026-11-24T17:43:09Z +%s`
    assert_eq!(since.as_secs(), 1_795_542_189);
    assert_eq!(since.subsec_micros(), 353_366);
    assert_eq!(days_from_civil(1970, 1, 1), 0);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
}

#[test]
fn a_killed_backend_is_out_within_fall_intervals_and_back_within_rise_intervals() {
    const INTERVAL: Duration = Duration::from_millis(200);
    const TIMEOUT: Duration = Duration::from_millis(100);
    const RISE: u32 = 2;
    const FALL: u32 = 3;
    let rt = runtime();
    let a = rt.block_on(Switchable::start("a", LOCAL));
    let b = rt.block_on(Switchable::start("b", LOCAL));
    let svc = service_config(
        "svc",
        "round_robin",
        &[a.addr, b.addr],
        // Passive detection off: this test times the probes alone. retries = 0: a client sent
        // to a dead backend would see an error.
        &health(&format!(
            "interval = \"200ms\"\ntimeout = \"100ms\"\nrise = {RISE}\nfall = {FALL}\n\
             passive_failures = 0"
        )),
    );
    let lb = Ringlb::start(&config("", &[svc]));
    let addr = lb.addr("svc");
    let before = names(&rt.block_on(greetings(addr, 10)));
    assert!(before.contains(&"a".into()) && before.contains(&"b".into()));

    let killed = Instant::now();
    rt.block_on(a.stop());
    let bound = INTERVAL * FALL + TIMEOUT;
    assert!(
        wait_event(&lb, "backend down", Some(a.addr), 1, bound + SLACK).is_some(),
        "not marked down within {bound:?} + {SLACK:?}:\n{}",
        lb.log_text()
    );
    let out_after = killed.elapsed();
    let down = &events(&lb, "backend down", Some(a.addr))[0];
    assert_eq!(
        down.field("reason=").as_deref(),
        Some("refused"),
        "{}",
        down.line
    );
    // From now on no new connection goes to it: with retries = 0, one that did would fail.
    let after = names(&rt.block_on(greetings(addr, 40)));
    assert!(after.iter().all(|n| n == "b"), "{after:?}");

    let restarted = Instant::now();
    rt.block_on(a.restart());
    let bound_up = INTERVAL * RISE;
    assert!(
        wait_event(&lb, "backend up", Some(a.addr), 1, bound_up + SLACK).is_some(),
        "not back within {bound_up:?} + {SLACK:?}:\n{}",
        lb.log_text()
    );
    let back_after = restarted.elapsed();
    let again = names(&rt.block_on(greetings(addr, 10)));
    assert!(again.contains(&"a".into()), "{again:?}");
    assert_eq!(
        events(&lb, "backend down", Some(a.addr)).len(),
        1,
        "logged once"
    );
    assert_eq!(events(&lb, "backend up", Some(a.addr)).len(), 1);
    println!(
        "marked down after {out_after:?} (bound {bound:?}), up after {back_after:?} (bound {bound_up:?})"
    );
}

#[test]
fn consecutive_connect_failures_mark_a_backend_down_before_the_probes_would() {
    let rt = runtime();
    let a = rt.block_on(Switchable::start("a", LOCAL));
    let b = rt.block_on(Switchable::start("b", LOCAL));
    let svc = passive_detection_service(a.addr, b.addr);
    let lb = Ringlb::start_with_log(&config("", &[svc]), "info,ringlb::control::health=debug");
    let addr = lb.addr("svc");
    assert!(names(&rt.block_on(greetings(addr, 4))).contains(&"a".into()));
    // The first probe decides at once (see the module docs): kill `a` only after it passed, so
    // that only the workers' failures can mark it down within the next second.
    expect_event(&lb, "probe passed", Some(a.addr), 1, Duration::from_secs(5));

    let killed = Instant::now();
    rt.block_on(a.stop());
    // Round robin alternates: within 8 connections, 3 or 4 go to the dead backend and fail.
    let results = rt.block_on(greetings(addr, 8));
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert!((3..=4).contains(&failed), "{results:?}");
    let down = wait_event(&lb, "backend down", Some(a.addr), 1, Duration::from_secs(1))
        .unwrap_or_else(|| panic!("not marked down:\n{}", lb.log_text()));
    assert!(
        down.line.contains("3 connect failures in a row"),
        "{}",
        down.line
    );
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // Down at once: every connection now goes to b.
    let after = names(&rt.block_on(greetings(addr, 20)));
    assert!(after.iter().all(|n| n == "b"), "{after:?}");

    // The probes bring it back (rise = 1, interval 1 s).
    rt.block_on(a.restart());
    assert!(
        wait_event(
            &lb,
            "backend up",
            Some(a.addr),
            1,
            Duration::from_secs(1) + SLACK
        )
        .is_some(),
        "{}",
        lb.log_text()
    );
    assert!(names(&rt.block_on(greetings(addr, 6))).contains(&"a".into()));
    assert_eq!(
        events(&lb, "backend down", Some(a.addr)).len(),
        1,
        "the probe task did not log the same transition again"
    );
    println!("passive mark-down after {took:?}");
}

/// Opens a session through `addr`, checks it echoes, and returns it.
async fn session(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut name = [0u8; 2];
    s.read_exact(&mut name).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut echo = [0u8; 4];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"ping");
    s
}

/// Whether the session still echoes (`Ok(true)`), or how it ended.
async fn still_echoes(s: &mut TcpStream) -> Result<bool, String> {
    if let Err(e) = s.write_all(b"more").await {
        return Err(format!("write: {e}"));
    }
    let mut echo = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut echo)).await {
        Err(_) => Err("no echo within 2 s".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(_)) => Ok(&echo == b"more"),
    }
}

/// Many sessions (more than compio's cross-thread wake queue of 64 per worker), so closing them
/// all at once would show a wake-up storm from the control plane as a hang.
#[test]
fn on_backend_down_shutdown_closes_live_sessions_and_keep_leaves_them() {
    const SESSIONS: usize = 300;
    let rt = runtime();
    // The backend keeps serving traffic; only its health port goes away.
    let traffic = rt.block_on(Switchable::start("t", LOCAL));
    let health_port = rt.block_on(Switchable::start("h", LOCAL));
    let keys = format!(
        "interval = \"100ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1\nport = {}",
        health_port.addr.port()
    );
    let keep = service_config(
        "keep",
        "round_robin",
        &[traffic.addr],
        &format!("access_log = true\n{}", health(&keys)),
    );
    let shut = service_config(
        "shut",
        "round_robin",
        &[traffic.addr],
        &format!(
            "access_log = true\non_backend_down = \"shutdown\"\n{}",
            health(&keys)
        ),
    );
    let lb = Ringlb::start(&config("", &[keep, shut]));
    let (mut kept, mut shut_down) = rt.block_on(async {
        let mut shut = Vec::with_capacity(SESSIONS);
        for _ in 0..SESSIONS {
            shut.push(session(lb.addr("shut")).await);
        }
        (session(lb.addr("keep")).await, shut)
    });

    let stopped = Instant::now();
    rt.block_on(health_port.stop());
    assert!(
        wait_for(Duration::from_secs(2), || events(
            &lb,
            "backend down",
            Some(traffic.addr)
        )
        .len()
            == 2),
        "{}",
        lb.log_text()
    );
    rt.block_on(async {
        for (i, s) in shut_down.iter_mut().enumerate() {
            let ended = still_echoes(s).await;
            assert!(
                ended.is_err(),
                "shutdown session {i} still works: {ended:?}"
            );
        }
        assert_eq!(still_echoes(&mut kept).await, Ok(true), "the kept session");
    });
    println!(
        "{SESSIONS} sessions closed {:?} after the health port went away",
        stopped.elapsed()
    );
    let closed = || {
        lb.log_text()
            .lines()
            .filter(|l| l.contains("service=shut") && l.contains("end=\"backend_down\""))
            .count()
    };
    assert!(
        wait_for(Duration::from_secs(2), || closed() == SESSIONS),
        "{} of {SESSIONS} access-log lines with end=backend_down:\n{}",
        closed(),
        lb.log_text()
    );
    assert!(
        !lb.log_text()
            .lines()
            .any(|l| l.contains("service=keep") && l.contains(" end=")),
        "the kept session ended:\n{}",
        lb.log_text()
    );
    // ringlb still serves: the health port back, new sessions work.
    rt.block_on(health_port.restart());
    assert!(wait_for(Duration::from_secs(2), || events(
        &lb,
        "backend up",
        Some(traffic.addr)
    )
    .len()
        == 2));
    rt.block_on(async {
        let mut again = session(lb.addr("shut")).await;
        assert_eq!(still_echoes(&mut again).await, Ok(true));
    });
}

#[test]
fn with_no_backend_ready_clients_are_closed_at_once_and_it_is_logged_once_per_transition() {
    let rt = runtime();
    let a = rt.block_on(Switchable::start("a", LOCAL));
    let svc = service_config(
        "svc",
        "round_robin",
        &[a.addr],
        &health("interval = \"100ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1"),
    );
    let lb = Ringlb::start(&config("", &[svc]));
    let addr = lb.addr("svc");
    for round in 1..=2 {
        rt.block_on(a.stop());
        assert!(
            wait_event(
                &lb,
                "service down: no backend is up, new connections are closed at once",
                None,
                round,
                Duration::from_secs(2)
            )
            .is_some(),
            "{}",
            lb.log_text()
        );
        rt.block_on(async {
            for _ in 0..30 {
                let started = Instant::now();
                let r = greeting(addr, None).await;
                assert!(r.is_err(), "{r:?}");
                assert!(
                    started.elapsed() < Duration::from_millis(300),
                    "closed after {:?}",
                    started.elapsed()
                );
            }
        });
        rt.block_on(a.restart());
        assert!(
            wait_event(&lb, "service up", None, round, Duration::from_secs(2)).is_some(),
            "{}",
            lb.log_text()
        );
        assert_eq!(names(&rt.block_on(greetings(addr, 3))), ["a", "a", "a"]);
    }
    // Once per transition, not per refused connection (60 of them).
    assert_eq!(
        events(
            &lb,
            "service down: no backend is up, new connections are closed at once",
            None
        )
        .len(),
        2
    );
    assert_eq!(events(&lb, "service up", None).len(), 2);
}

/// Threads of the ringlb process, by name.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|t| {
            let path = t.unwrap().path().join("comm");
            std::fs::read_to_string(path).unwrap().trim().to_owned()
        })
        .collect()
}

#[test]
fn a_thousand_probe_rounds_against_a_backend_that_drops_syns_leak_no_fd() {
    const ROUNDS: usize = 1000;
    let silent = Blackhole::new();
    let svc = service_config(
        "svc",
        "round_robin",
        &[silent.addr],
        &health("interval = \"5ms\"\ntimeout = \"4ms\"\nrise = 1\nfall = 1"),
    );
    // Each failed probe is a debug line: they count the rounds.
    let lb = Ringlb::start_with_log(&config("", &[svc]), "info,ringlb::control::health=debug");
    let probes = || {
        lb.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("probe failed") && l.contains("reason=timeout"))
            .count()
    };
    assert!(wait_for(Duration::from_secs(5), || probes() >= 10));
    let baseline = lb.fd_count();
    let mut max = baseline;
    let started = Instant::now();
    while probes() < ROUNDS {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "only {} rounds in 60 s",
            probes()
        );
        max = max.max(lb.fd_count());
        std::thread::sleep(Duration::from_millis(20));
    }
    let end = lb.fd_count();
    println!(
        "{} probe rounds in {:?}: fds baseline {baseline}, max {max}, end {end}",
        probes(),
        started.elapsed()
    );
    // At most the one probe in flight at a time differs.
    assert!(max <= baseline + 1, "fds grew from {baseline} to {max}");
    assert!(end <= baseline + 1, "fds grew from {baseline} to {end}");
    // Probes run on the control-plane thread, beside the workers.
    let threads = thread_names(lb.pid());
    assert_eq!(
        threads.iter().filter(|t| *t == "ringlb-health").count(),
        1,
        "{threads:?}"
    );
    assert_eq!(
        events(&lb, "backend down", Some(silent.addr)).len(),
        1,
        "one transition, logged once"
    );
}

/// A backend whose health port flaps for about 10 s: 10 cycles of down and up (the issue asks for
/// a minute; probes every 100 ms make 10 s about 100 probe rounds and 20 transitions). Its traffic port keeps
/// accepting and records when, so a connection sent while ringlb had it marked down would show.
#[test]
fn a_flapping_backend_never_gets_a_connection_while_marked_down() {
    const CYCLES: usize = 10;
    const PHASE: Duration = Duration::from_millis(600);
    /// A connection chosen just before a mark-down can arrive just after it (and the up line's
    /// timestamp is taken just after the flag flips): accepts this close to a transition are
    /// not counted.
    const GRACE: Duration = Duration::from_millis(20);
    let rt = runtime();
    let flapping = rt.block_on(Switchable::start("f", LOCAL));
    let flap_health = rt.block_on(Switchable::start("fh", LOCAL));
    // `port` applies to every backend of the service: the steady one lives on another loopback
    // address, with its health port on the same port number there.
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let steady = rt.block_on(Switchable::start("s", other));
    let _steady_health = rt.block_on(Switchable::start_at(
        "sh",
        SocketAddr::new(other, flap_health.addr.port()),
    ));
    let svc = service_config(
        "svc",
        "round_robin",
        &[flapping.addr, steady.addr],
        &health(&format!(
            "interval = \"100ms\"\ntimeout = \"50ms\"\nrise = 2\nfall = 2\n\
             passive_failures = 0\nport = {}",
            flap_health.addr.port()
        )),
    );
    let lb = Ringlb::start(&config("", &[svc]));
    let addr = lb.addr("svc");

    // Clients: connections one after another, each told which backend it reached.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let clients = rt.spawn(async move {
        let (mut ok, mut errors) = (0usize, Vec::new());
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            match greeting(addr, None).await {
                Ok(_) => ok += 1,
                Err(e) => errors.push(e),
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        (ok, errors)
    });
    for cycle in 1..=CYCLES {
        rt.block_on(flap_health.stop());
        assert!(
            wait_event(&lb, "backend down", Some(flapping.addr), cycle, PHASE * 5).is_some(),
            "cycle {cycle}: not marked down:\n{}",
            lb.log_text()
        );
        std::thread::sleep(PHASE.saturating_sub(Duration::from_millis(250)));
        rt.block_on(flap_health.restart());
        assert!(
            wait_event(&lb, "backend up", Some(flapping.addr), cycle, PHASE * 5).is_some(),
            "cycle {cycle}: not marked up:\n{}",
            lb.log_text()
        );
        std::thread::sleep(PHASE.saturating_sub(Duration::from_millis(250)));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, errors) = rt.block_on(clients).unwrap();

    let downs = events(&lb, "backend down", Some(flapping.addr));
    let ups = events(&lb, "backend up", Some(flapping.addr));
    // Each transition logged once: exactly one line per flap, alternating.
    assert_eq!((downs.len(), ups.len()), (CYCLES, CYCLES));
    let accepts = flapping.accepts();
    let mut inside = Vec::new();
    let mut during_up = 0;
    for (k, (down, up)) in downs.iter().zip(&ups).enumerate() {
        assert!(down.at < up.at, "cycle {k}: up logged before down");
        if let Some(next) = downs.get(k + 1) {
            assert!(up.at < next.at, "cycle {k}: two downs in a row");
            during_up += accepts
                .iter()
                .filter(|&&t| t > up.at + GRACE && t < next.at)
                .count();
        }
        inside.extend(
            accepts
                .iter()
                .filter(|&&t| t > down.at + GRACE && t + GRACE < up.at)
                .map(|t| (k, t.duration_since(down.at).unwrap())),
        );
    }
    println!(
        "{ok} client connections, {} to the flapping backend ({during_up} inside up windows), {} \
         to the steady one",
        accepts.len(),
        steady.accepted()
    );
    assert!(
        inside.is_empty(),
        "connections accepted while marked down (cycle, time after the mark): {inside:?}"
    );
    assert!(errors.is_empty(), "client errors: {errors:?}");
    assert!(
        during_up > 0,
        "the flapping backend got no traffic while up"
    );
    assert_eq!(
        ok,
        accepts.len() + steady.accepted(),
        "every client connection reached exactly one backend"
    );
}
