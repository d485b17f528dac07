//! End-to-end tests of `ringlb bench` through the real binary: `bench serve` as the server, the
//! load modes as clients, results read from `--json`.
//!
//! Every load here is bounded by `--requests`/`--bytes` and a short `--duration`, so each test
//! takes well under a few seconds.

mod common;

use std::process::Command;

use serde_json::Value;

use common::BenchServe;

/// A `ringlb bench serve` process with `extra` options, bounded to a minute.
fn server(extra: &[&str]) -> BenchServe {
    BenchServe::start(&[&["--duration", "60s"], extra].concat())
}

/// Runs `ringlb bench ARGS --json` and returns the report; the command must succeed.
fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .output()
        .expect("ringlb bench runs");
    assert!(
        out.status.success(),
        "ringlb bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn u(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {report}"))
}

fn latency(report: &Value, which: &str, p: &str) -> f64 {
    report[which][p]
        .as_f64()
        .unwrap_or_else(|| panic!("{which}.{p} missing in {report}"))
}

#[test]
fn rr_reports_exactly_the_requested_count_without_errors() {
    let server = server(&[]);
    let addr = server.addr.to_string();
    let r = bench(&[
        "rr",
        &addr,
        "--requests",
        "1000",
        "--connections",
        "8",
        "-d",
        "20s",
        "--verify",
    ]);
    assert_eq!(u(&r, "requests"), 1000, "{r}");
    assert_eq!(u(&r, "errors_total"), 0, "{r}");
    assert_eq!(u(&r, "connections_opened"), 8, "{r}");
    assert_eq!(u(&r, "bytes_sent"), 1000 * 64);
    assert_eq!(latency(&r, "latency_us", "count") as u64, 1000);
    assert!(latency(&r, "latency_us", "p99") >= latency(&r, "latency_us", "p50"));
}

#[test]
fn connect_mode_opens_one_connection_per_request() {
    let server = server(&[]);
    let addr = server.addr.to_string();
    let r = bench(&[
        "connect",
        &addr,
        "--requests",
        "300",
        "--connections",
        "4",
        "-d",
        "20s",
    ]);
    assert_eq!(u(&r, "requests"), 300, "{r}");
    assert_eq!(u(&r, "connections_opened"), 300, "{r}");
    assert_eq!(u(&r, "errors_total"), 0, "{r}");
}

#[test]
fn stream_moves_the_requested_bytes_echoed_or_sunk() {
    let echo = server(&[]);
    let r = bench(&[
        "stream",
        &echo.addr.to_string(),
        "--bytes",
        "3MiB",
        "--connections",
        "3",
        "-d",
        "20s",
    ]);
    assert_eq!(u(&r, "bytes_sent"), 3 << 20, "{r}");
    assert_eq!(u(&r, "bytes_received"), 3 << 20, "{r}");
    assert_eq!(u(&r, "errors_total"), 0, "{r}");

    let sink = server(&["--sink"]);
    let r = bench(&[
        "stream",
        &sink.addr.to_string(),
        "--bytes",
        "5000001",
        "--connections",
        "2",
        "-d",
        "20s",
    ]);
    assert_eq!(u(&r, "bytes_sent"), 5_000_001, "{r}");
    assert_eq!(u(&r, "bytes_received"), 0, "{r}");
    assert!(r["sent_gbit_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn udp_mode_against_the_udp_echo_server() {
    let server = server(&["--udp"]);
    let addr = server.addr.to_string();
    let r = bench(&[
        "udp",
        &addr,
        "--requests",
        "500",
        "--connections",
        "4",
        "-d",
        "20s",
        "--verify",
    ]);
    assert_eq!(u(&r, "requests"), 500, "{r}");
    assert_eq!(u(&r, "errors_total"), 0, "{r}");
    assert_eq!(u(&r, "bytes_received"), 500 * 64);
}

/// The server answers each request after 20 ms, so one connection serves 50 requests/s; asked
/// for 100/s, the backlog grows through the run. Latency measured from each request's intended
/// send time grows with it (hundreds of ms); latency measured from the actual send (what a
/// closed-loop tool records, "coordinated omission") stays at about 20 ms.
#[test]
fn open_loop_latency_includes_queueing() {
    let server = server(&["--delay", "20ms"]);
    let addr = server.addr.to_string();
    let r = bench(&[
        "rr",
        &addr,
        "--connections",
        "1",
        "--rate",
        "100",
        "--duration",
        "1s",
    ]);
    assert_eq!(u(&r, "errors_total"), 0, "{r}");
    let corrected_p50 = latency(&r, "latency_us", "p50");
    let service_p50 = latency(&r, "service_time_us", "p50");
    assert!(
        corrected_p50 > 100_000.0,
        "corrected p50 {corrected_p50} us should include the queue: {r}"
    );
    assert!(
        service_p50 < 60_000.0,
        "service p50 {service_p50} us should be about the 20 ms delay: {r}"
    );
    assert!(latency(&r, "latency_us", "max") > 300_000.0, "{r}");

    // Below capacity, the two agree: nothing queues.
    let r = bench(&[
        "rr",
        &addr,
        "--connections",
        "4",
        "--rate",
        "50",
        "--duration",
        "1s",
    ]);
    assert!(latency(&r, "latency_us", "p50") < 60_000.0, "{r}");
}

#[test]
fn refused_port_is_reported_as_refused_errors() {
    // A port that was just free: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let r = bench(&[
        "rr",
        &addr,
        "--requests",
        "20",
        "--connections",
        "2",
        "-d",
        "10s",
    ]);
    assert_eq!(u(&r, "requests"), 0, "{r}");
    assert_eq!(r["errors"]["refused"].as_u64(), Some(20), "{r}");
    assert_eq!(u(&r, "errors_total"), 20, "{r}");

    let r = bench(&[
        "connect",
        &addr,
        "--requests",
        "5",
        "--connections",
        "1",
        "-d",
        "10s",
    ]);
    assert_eq!(r["errors"]["refused"].as_u64(), Some(5), "{r}");
}

#[test]
fn table_output_lists_rate_latency_and_errors() {
    let server = server(&[]);
    let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
        .args([
            "bench",
            "rr",
            &server.addr.to_string(),
            "-n",
            "200",
            "--connections",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in ["requests", "p50", "p99.9", "max", "errors       none"] {
        assert!(text.contains(word), "{word:?} missing in:\n{text}");
    }
}

#[test]
fn idle_holds_connections_open_until_the_deadline() {
    let server = server(&[]);
    let r = bench(&[
        "idle",
        &server.addr.to_string(),
        "--connections",
        "50",
        "-d",
        "300ms",
    ]);
    assert_eq!(u(&r, "connections_opened"), 50, "{r}");
    assert_eq!(u(&r, "bytes_received"), 50, "{r}");
    assert_eq!(u(&r, "errors_total"), 0, "{r}");
}

/// Runs `ringlb bench merge ARGS`; its output and whether it succeeded.
fn merge(args: &[&std::path::Path], json: bool) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringlb"));
    cmd.args(["bench", "merge"]).args(args);
    if json {
        cmd.arg("--json");
    }
    cmd.output().expect("ringlb bench merge runs")
}

#[test]
fn merge_adds_the_histograms_of_real_runs() {
    let echo = server(&[]);
    let addr = echo.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    let mut reports = Vec::new();
    for (i, n) in ["400", "700"].into_iter().enumerate() {
        let r = bench(&["rr", &addr, "-n", n, "--connections", "4", "-d", "10s"]);
        assert_eq!(u(&r, "errors_total"), 0, "{r}");
        assert!(r["latency_histogram"].is_string(), "{r}");
        let path = dir.path().join(format!("run{i}.json"));
        std::fs::write(&path, r.to_string()).unwrap();
        files.push(path);
        reports.push(r);
    }
    let paths: Vec<_> = files.iter().map(|p| p.as_path()).collect();
    let out = merge(&paths, true);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["mode"], "rr", "{m}");
    assert_eq!(u(&m, "reports"), 2, "{m}");
    let each = |p: &'static str| reports.iter().map(move |r| latency(r, "latency_us", p));
    assert_eq!(
        latency(&m, "latency_us", "count") as u64,
        each("count").sum::<f64>() as u64,
        "{m}"
    );
    assert_eq!(
        latency(&m, "latency_us", "max"),
        each("max").fold(0.0, f64::max),
        "{m}"
    );
    // The median of all latencies lies between the medians of the two runs.
    let p50 = latency(&m, "latency_us", "p50");
    assert!(
        each("p50").fold(f64::MAX, f64::min) <= p50 && p50 <= each("p50").fold(0.0, f64::max),
        "{m}"
    );
    assert!(latency(&m, "latency_us", "p99") >= p50, "{m}");

    let table = String::from_utf8(merge(&paths, false).stdout).unwrap();
    for word in ["2 rr reports", "1100 latencies", "p99.9", "max"] {
        assert!(table.contains(word), "{word:?} missing in:\n{table}");
    }

    // A file that is not a report, and a report without latencies, are refused by name.
    let notes = dir.path().join("notes.txt");
    std::fs::write(&notes, "p99 was fine").unwrap();
    let out = merge(&[&files[0], &notes], true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("notes.txt") && err.contains("not JSON"),
        "{err}"
    );

    let sink = server(&["--sink"]);
    let s = bench(&[
        "stream",
        &sink.addr.to_string(),
        "--bytes",
        "64KiB",
        "-d",
        "10s",
    ]);
    let stream = dir.path().join("stream.json");
    std::fs::write(&stream, s.to_string()).unwrap();
    let out = merge(&[&stream], true);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stream.json") && err.contains("without a latency histogram"),
        "{err}"
    );
}
