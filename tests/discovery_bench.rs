//! Discovery at scale, measured: a real ringlb process discovering N backends (100, 1,000,
//! 10,000) from the stand-in Consul of `common::consul`. For each N it measures how long one
//! registry change (an instance deregistered or registered again, which wakes the blocking
//! query) takes to show in `/status`, and ringlb's resident memory per discovered backend; at
//! N = 1,000 it runs `ringlb bench rr` through the service without churn and again while the
//! set changes 10 times a second.
//!
//! A benchmark, not a timed test: it asserts only that every change is applied and that no
//! request fails, and prints its numbers. Every backend is a distinct address `127.1.x.y:P`;
//! the first 1,000 of them are real echo listeners (the only ones traffic reaches), the others
//! are never connected to since nothing is sent through a service that lists them.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::admin::{Metrics, get};
use common::consul::Consul;
use common::{Backend, Ringlb, runtime, wait_for};

/// Registry changes timed per N.
const CHANGES: usize = 20;
/// Seconds of each `bench rr` run, quiet and under churn (the product's scale target: 60 s).
const RR_SECS: u64 = 60;
/// Echo listeners: the backends that can carry traffic.
const LISTENERS: usize = 1_000;

/// The `i`th backend address: distinct loopback IPs, one port.
fn backend(i: usize, port: u16) -> SocketAddr {
    let ip = Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
    SocketAddr::new(IpAddr::V4(ip), port)
}

/// One TCP service discovering `orders` from `consul`, with room for 20,000 instances.
fn config(consul: &Consul) -> String {
    format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"orders\"\nlisten = \"127.0.0.1:0\"\nconnect_timeout = \"1s\"\n\
         [service.discovery]\nkind = \"consul\"\naddress = \"{}\"\nservice = \"orders\"\n\
         wait = \"60s\"\nmax_backends = 20000\n",
        consul.url()
    )
}

/// The service's discovery status: (applied Consul index, backends listed).
fn discovery(lb: &Ringlb) -> (u64, usize) {
    let s = get(lb.admin.unwrap(), "/status").json();
    let s = &s["services"][0];
    (
        s["discovery"]["consul_index"].as_u64().unwrap_or(0),
        s["backends"].as_array().map_or(0, Vec::len),
    )
}

/// Polls `/status` until ringlb has applied the registry's current index; returns how long
/// that took from `since`, or panics after 10 s.
fn applied(lb: &Ringlb, consul: &Consul, since: Instant) -> Duration {
    let want = consul.index();
    let admin = lb.admin.unwrap();
    let mut at = None;
    let ok = common::wait_for_every(Duration::from_millis(1), Duration::from_secs(10), || {
        let s = get(admin, "/status").json();
        let done = s["services"][0]["discovery"]["consul_index"]
            .as_u64()
            .is_some_and(|i| i >= want);
        if done {
            at = Some(since.elapsed());
        }
        done
    });
    assert!(ok, "index {want} not applied within 10 s");
    at.unwrap()
}

fn updates(lb: &Ringlb) -> f64 {
    Metrics::scrape(lb.admin.unwrap())
        .sum("ringlb_discovery_updates_total", &[("service", "orders")])
}

/// Runs `ringlb bench rr` against `addr` for [`RR_SECS`] with 50 connections; the JSON report.
fn bench_rr(addr: SocketAddr) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args(["bench", "rr", &addr.to_string()])
        .args([
            "--connections",
            "50",
            "--duration",
            &format!("{RR_SECS}s"),
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("ringlb bench runs")
}

fn report(child: std::process::Child) -> serde_json::Value {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ringlb bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

struct Row {
    n: usize,
    median: Duration,
    max: Duration,
    status_fetch: Duration,
    load: Duration,
    rss_kib: u64,
    cpu_per_change: Duration,
}

/// Starts ringlb on `n` registered instances; returns it once `/status` lists all of them.
fn load(consul: &Consul, n: usize, port: u16) -> (Ringlb, Duration) {
    for i in 0..n {
        consul.register(&format!("i{i}"), "orders", backend(i, port), &[], 1);
    }
    let started = Instant::now();
    let lb = Ringlb::start(&config(consul));
    assert!(
        wait_for(Duration::from_secs(60), || discovery(&lb).1 == n),
        "ringlb did not list {n} backends"
    );
    (lb, started.elapsed())
}

/// `CHANGES` changes, alternately deregistering and registering again instance `i0`, each
/// timed from the registry's change to `/status` showing its index.
fn time_changes(lb: &Ringlb, consul: &Consul, port: u16) -> Vec<Duration> {
    use std::sync::atomic::Ordering::SeqCst;
    let mut took = Vec::with_capacity(CHANGES);
    for k in 0..CHANGES {
        // The change wakes a waiting blocking query: the watch's next query is in first.
        assert!(wait_for(Duration::from_secs(5), || consul
            .open
            .load(SeqCst)
            >= 1));
        let since = Instant::now();
        if k.is_multiple_of(2) {
            consul.deregister("i0");
        } else {
            consul.register("i0", "orders", backend(0, port), &[], 1);
        }
        took.push(applied(lb, consul, since));
    }
    took.sort();
    took
}

/// One `bench rr` run while instance `i0` is deregistered and registered again 10 times a
/// second (at most 10 per second of the run, bounded by the run's length plus 2 s): the report, the changes made and the discovery
/// updates `/metrics` counted meanwhile (changes that land together count as one update).
/// ringlb's own CPU time (user + system, from /proc) per applied change: `CPU_CHANGES` changes
/// paced 10 a second with nobody polling `/status` in between (a poll at 10,000 backends costs
/// more than the change), less the idle CPU of an equal window without changes.
fn cpu_per_change(lb: &Ringlb, consul: &Consul, port: u16) -> Duration {
    const CPU_CHANGES: u32 = 30;
    let window = Duration::from_millis(100) * CPU_CHANGES;
    let idle = {
        let before = lb.cpu_time();
        std::thread::sleep(window);
        lb.cpu_time().saturating_sub(before)
    };
    let before = lb.cpu_time();
    let start = Instant::now();
    for k in 0..CPU_CHANGES {
        // i0 is registered before and after (an even number of changes).
        if k.is_multiple_of(2) {
            consul.deregister("i0");
        } else {
            consul.register("i0", "orders", backend(0, port), &[], 1);
        }
        let next = start + Duration::from_millis(100) * (k + 1);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let want = consul.index();
    assert!(
        common::wait_for_every(Duration::from_millis(50), Duration::from_secs(10), || {
            discovery(lb).0 >= want
        }),
        "the last change was not applied"
    );
    let used = lb.cpu_time().saturating_sub(before);
    used.saturating_sub(idle) / CPU_CHANGES
}

fn churned_rr(lb: &Ringlb, consul: &Consul, port: u16) -> (serde_json::Value, u64, f64) {
    let before = updates(lb);
    let mut bench = bench_rr(lb.addr("orders"));
    let start = Instant::now();
    let mut made = 0u64;
    while made < 10 * RR_SECS && start.elapsed() < Duration::from_secs(RR_SECS + 2) {
        if bench.try_wait().unwrap().is_some() {
            break;
        }
        if made.is_multiple_of(2) {
            consul.deregister("i0");
        } else {
            consul.register("i0", "orders", backend(0, port), &[], 1);
        }
        made += 1;
        let next = start + Duration::from_millis(100) * made as u32;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let out = report(bench);
    applied(lb, consul, Instant::now());
    // An even count leaves i0 registered: the next run starts from the full set.
    if !made.is_multiple_of(2) {
        consul.register("i0", "orders", backend(0, port), &[], 1);
        made += 1;
        applied(lb, consul, Instant::now());
    }
    (out, made, updates(lb) - before)
}

#[test]
#[ignore = "benchmark: run with cargo test --release --test discovery_bench -- --ignored --nocapture"]
fn discovery_scale() {
    let rt = runtime();
    // The echo listeners, all on one port of distinct loopback addresses.
    let first = rt.block_on(Backend::echo_at(&backend(0, 0).to_string(), None));
    let port = first.addr.port();
    let mut echo = vec![first];
    for i in 1..LISTENERS {
        echo.push(rt.block_on(Backend::echo_at(&backend(i, port).to_string(), None)));
    }

    // Baseline: one backend.
    let rss_base = {
        let consul = rt.block_on(Consul::start(None));
        let (lb, _) = load(&consul, 1, port);
        time_changes(&lb, &consul, port);
        lb.rss_kib()
    };

    let mut rows = Vec::new();
    let mut rr = Vec::new();
    // `DISCOVERY_BENCH_SIZES=1000` (a comma list) measures only those sizes, and
    // `DISCOVERY_BENCH_RR=0` skips the rr runs (to profile the change path alone).
    let sizes: Vec<usize> = std::env::var("DISCOVERY_BENCH_SIZES").map_or_else(
        |_| vec![100, 1_000, 10_000],
        |v| {
            v.split(',')
                .map(|n| n.trim().parse().expect("a size"))
                .collect()
        },
    );
    let with_rr = std::env::var("DISCOVERY_BENCH_RR").map_or(true, |v| v != "0");
    // Quiet and churned rr runs, interleaved: 7 rounds by default (`DISCOVERY_BENCH_ROUNDS`).
    let rounds: usize = std::env::var("DISCOVERY_BENCH_ROUNDS")
        .map_or(7, |v| v.parse().expect("a number of rounds"));
    for n in sizes {
        let consul = rt.block_on(Consul::start(None));
        let (lb, load_time) = load(&consul, n, port);
        eprintln!("N = {n}: listed in {load_time:?}");
        let took = time_changes(&lb, &consul, port);
        let cpu_per_change = cpu_per_change(&lb, &consul, port);
        let fetch = {
            let t = Instant::now();
            discovery(&lb);
            t.elapsed()
        };
        rows.push(Row {
            n,
            median: took[took.len() / 2],
            max: took[took.len() - 1],
            status_fetch: fetch,
            load: load_time,
            rss_kib: lb.rss_kib(),
            cpu_per_change,
        });
        if n == 1_000 && with_rr {
            // i0 is registered again after an even number of changes: all n are in the set.
            assert_eq!(discovery(&lb).1, n);
            let addr = lb.addr("orders");
            // Quiet and churned runs interleaved, so drift on the shared machine
            // shows instead of passing for an effect of churn.
            let mut runs = Vec::new();
            for _ in 0..rounds {
                let cpu = lb.cpu_time();
                let quiet = report(bench_rr(addr));
                let quiet_cpu = lb.cpu_time().saturating_sub(cpu);
                let cpu = lb.cpu_time();
                let (churned, made, counted) = churned_rr(&lb, &consul, port);
                let churned_cpu = lb.cpu_time().saturating_sub(cpu);
                // ringlb's CPU per request, in microseconds.
                let per_request = |r: &serde_json::Value, cpu: Duration| {
                    let requests = r["requests_per_s"].as_f64().unwrap() * RR_SECS as f64;
                    cpu.as_secs_f64() * 1e6 / requests
                };
                for r in [&quiet, &churned] {
                    assert_eq!(r["errors_total"], 0, "{r}");
                }
                runs.push((
                    quiet["requests_per_s"].as_f64().unwrap(),
                    churned["requests_per_s"].as_f64().unwrap(),
                    made,
                    counted,
                    per_request(&quiet, quiet_cpu),
                    per_request(&churned, churned_cpu),
                ));
            }
            rr = runs;
        }
    }

    eprintln!();
    eprintln!("baseline RSS (1 backend): {rss_base} KiB");
    eprintln!(
        "{:>7} | {:>12} | {:>14} | {:>11} | {:>14} | {:>12} | {:>9} | {:>14}",
        "N",
        "first load",
        "change median",
        "change max",
        "CPU / change",
        "/status GET",
        "RSS KiB",
        "KiB / backend"
    );
    for r in &rows {
        eprintln!(
            "{:>7} | {:>9.1} ms | {:>11.1} ms | {:>8.1} ms | {:>11.1} ms | {:>9.1} ms | {:>9} | {:>14.2}",
            r.n,
            r.load.as_secs_f64() * 1e3,
            r.median.as_secs_f64() * 1e3,
            r.max.as_secs_f64() * 1e3,
            r.cpu_per_change.as_secs_f64() * 1e3,
            r.status_fetch.as_secs_f64() * 1e3,
            r.rss_kib,
            r.rss_kib.saturating_sub(rss_base) as f64 / r.n as f64,
        );
    }
    eprintln!("bench rr at N = 1,000 (50 connections, {RR_SECS} s per run):");
    for (round, (quiet, churned, made, counted, quiet_us, churned_us)) in rr.iter().enumerate() {
        eprintln!(
            "  round {}: {quiet:.0} req/s quiet, {churned:.0} req/s with 10 changes/s \
             ({:.1}% of quiet); ringlb CPU per request {quiet_us:.2} us quiet, {churned_us:.2} us \
             churned; {made} changes made, {counted} discovery updates counted",
            round + 1,
            churned / quiet * 100.0
        );
        assert!(
            *counted >= 1.0 && *counted <= *made as f64,
            "updates {counted} for {made} changes"
        );
    }
    if !rr.is_empty() {
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let quiet = median(rr.iter().map(|r| r.0).collect());
        let churned = median(rr.iter().map(|r| r.1).collect());
        let ratios = median(rr.iter().map(|r| r.1 / r.0).collect());
        let quiet_us = median(rr.iter().map(|r| r.4).collect());
        let churned_us = median(rr.iter().map(|r| r.5).collect());
        eprintln!(
            "  medians of {} rounds: {quiet:.0} req/s quiet, {churned:.0} req/s churned \
             ({:.1}%; median of the per-round ratios {:.1}%); ringlb CPU per request \
             {quiet_us:.2} us quiet, {churned_us:.2} us churned ({:.1}%)",
            rr.len(),
            churned / quiet * 100.0,
            ratios * 100.0,
            churned_us / quiet_us * 100.0
        );
    }
    drop(echo);
}
