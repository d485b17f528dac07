//! The admin port's bounds, against the real process: a slowloris flood of half-sent requests is
//! closed within the header timeout while `/metrics` answers and ringlb's descriptors stay
//! within the admin cap; oversized, slow and idle requests are refused or closed; and thousands
//! of idle admin connections under a low open-files limit leave the data plane, its health
//! checks and a scraper (answered within a second) untouched.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::admin::{Metrics, get, http};
use common::{Backend, Ringlb, config, runtime, service_config, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One TCP service in front of `backend` (with `service_extra` keys), and `[admin]` with
/// `admin_extra` keys.
fn admin_config(backend: SocketAddr, service_extra: &str, admin_extra: &str) -> String {
    format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n{admin_extra}\n",
        config(
            "",
            &[service_config(
                "echo",
                "round_robin",
                &[backend],
                service_extra
            )]
        )
    )
}

/// Connects to `admin` within a bounded time.
fn connect(admin: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&admin, Duration::from_secs(30)).expect("admin connect")
}

/// Whether ringlb has closed `s` (set non-blocking): EOF or a reset, after any answer it sent.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

/// Reads from `s` (blocking, with a read timeout) until EOF, a reset or the timeout; returns
/// what arrived and whether the connection ended.
fn read_until_closed(s: &mut TcpStream, timeout: Duration) -> (String, bool) {
    s.set_read_timeout(Some(timeout)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (String::from_utf8_lossy(&got).into_owned(), false);
            }
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
        }
        if Instant::now() >= deadline {
            return (String::from_utf8_lossy(&got).into_owned(), false);
        }
    }
}

#[test]
fn slowloris_is_closed_within_the_header_timeout_while_metrics_answers() {
    const FLOOD: usize = 2000;
    const CAP: usize = 64;
    let header_timeout = Duration::from_secs(1);
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let lb = Ringlb::start(&admin_config(
        echo.addr,
        "",
        &format!("max_connections = {CAP}\nheader_timeout = \"1s\""),
    ));
    let admin = lb.admin.unwrap();
    let baseline = lb.fd_count();

    // Each sends a request line and one header, and never the end of its headers.
    let started = Instant::now();
    let mut flood = Vec::with_capacity(FLOOD);
    let mut max_fds = 0;
    let mut slowest = Duration::ZERO;
    for i in 0..FLOOD {
        let t = Instant::now();
        let mut s = connect(admin);
        slowest = slowest.max(t.elapsed());
        // ringlb may already have closed it to make room: a failed write is expected then.
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: ringlb\r\nX-Slow: ");
        flood.push(s);
        if i % 100 == 0 {
            max_fds = max_fds.max(lb.fd_count());
        }
    }
    let opened = Instant::now();
    max_fds = max_fds.max(lb.fd_count());

    // A scraper gets its answer while the flood's connections are still held.
    let scrape = Metrics::scrape(admin);
    let held = scrape.sum("ringlb_admin_connections_open", &[]);
    assert!(
        held >= 2.0,
        "the scrape and some of the flood open at once, got {held}"
    );

    // ringlb closes every one of them within the header timeout and a margin.
    for s in &flood {
        s.set_nonblocking(true).unwrap();
    }
    let mut open: Vec<TcpStream> = flood;
    let all_closed = wait_for(header_timeout + Duration::from_secs(3), || {
        max_fds = max_fds.max(lb.fd_count());
        open.retain_mut(|s| !closed_by_peer(s));
        open.is_empty()
    });
    let took = opened.elapsed();
    assert!(
        all_closed,
        "{} of {FLOOD} half-sent requests still open {took:?} after the last was sent",
        open.len()
    );
    eprintln!(
        "{FLOOD} half-sent requests sent in {:?} (slowest connect {slowest:?}); all closed {took:?} after the last; ringlb fds: baseline {baseline}, at most {max_fds}",
        opened - started
    );
    // The cap, one newcomer held while a slot is freed, and the scrape's own connection.
    assert!(
        max_fds <= baseline + CAP + 2,
        "ringlb held {max_fds} fds, baseline {baseline}, admin cap {CAP}"
    );

    let after = Metrics::scrape(admin);
    let at_cap = after.sum("ringlb_admin_connections_closed_at_cap_total", &[]);
    let timed_out = after.sum("ringlb_admin_timeouts_total", &[("phase", "header")]);
    assert!(
        at_cap >= 1.0 && timed_out >= 1.0,
        "closed at the cap {at_cap}, timed out {timed_out}"
    );
    assert!(
        at_cap + timed_out >= FLOOD as f64,
        "every half-sent request counted: closed at the cap {at_cap}, timed out {timed_out}"
    );
    assert!(after.sum("ringlb_admin_connections_total", &[]) >= (FLOOD + 2) as f64);
    lb.assert_fds_back_to(baseline, Duration::from_secs(5));
}

#[test]
fn oversized_slow_and_idle_requests_are_refused_or_closed() {
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let lb = Ringlb::start(&admin_config(
        echo.addr,
        "",
        "header_timeout = \"1s\"\nbody_timeout = \"1s\"",
    ));
    let admin = lb.admin.unwrap();
    let margin = Duration::from_secs(3);

    // A 100 KiB header: 431, or the connection closed, never read whole.
    let mut s = connect(admin);
    let mut request = b"GET /status HTTP/1.1\r\nHost: ringlb\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 100 * 1024));
    request.extend_from_slice(b"\r\n\r\n");
    let _ = s.write_all(&request);
    let (answer, ended) = read_until_closed(&mut s, margin);
    assert!(
        ended && (answer.is_empty() || answer.starts_with("HTTP/1.1 431")),
        "ended {ended}: {answer:?}"
    );

    // A body over the limit: 413.
    let big = format!("{{\"weight\": 1, \"pad\": \"{}\"}}", "x".repeat(32 * 1024));
    let path = format!("/services/echo/backends/{}/weight", echo.addr);
    let a = http(admin, "PUT", &path, Some(&big), None);
    assert_eq!(a.code, 413, "{}", a.body);

    // A body that stops short: 408 within the body timeout, then closed.
    let mut s = connect(admin);
    let sent = Instant::now();
    s.write_all(
        format!("PUT {path} HTTP/1.1\r\nHost: ringlb\r\nContent-Length: 20\r\n\r\n{{\"we")
            .as_bytes(),
    )
    .unwrap();
    let (answer, ended) = read_until_closed(&mut s, Duration::from_secs(1) + margin);
    assert!(
        ended && answer.starts_with("HTTP/1.1 408"),
        "ended {ended} after {:?}: {answer:?}",
        sent.elapsed()
    );

    // A kept-alive connection that sends nothing more is closed at the header timeout.
    let mut s = connect(admin);
    s.write_all(b"GET /status HTTP/1.1\r\nHost: ringlb\r\n\r\n")
        .unwrap();
    let answered = Instant::now();
    let (answer, ended) = read_until_closed(&mut s, Duration::from_secs(1) + margin);
    assert!(
        ended && answer.starts_with("HTTP/1.1 200"),
        "ended {ended}: {answer:?}"
    );
    let idle = answered.elapsed();
    assert!(
        idle >= Duration::from_millis(900),
        "closed after {idle:?}, before the header timeout"
    );

    // ringlb keeps serving, and counted each case.
    let status = get(admin, "/status").json();
    assert_eq!(status["services"][0]["backends"][0]["weight"], 1);
    let m = Metrics::scrape(admin);
    assert!(m.sum("ringlb_admin_requests_too_large_total", &[]) >= 2.0);
    assert_eq!(
        m.sum("ringlb_admin_timeouts_total", &[("phase", "body")]),
        1.0
    );
    assert!(m.sum("ringlb_admin_timeouts_total", &[("phase", "header")]) >= 1.0);
}

#[test]
fn idle_admin_connections_under_a_low_fd_limit_leave_the_data_plane_alone() {
    const NOFILE: u64 = 1024;
    const IDLE: usize = 3000;
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let lb = Ringlb::start_with_nofile(
        &admin_config(
            echo.addr,
            "[service.health]\nkind = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"150ms\"",
            "header_timeout = \"30s\"",
        ),
        Some(NOFILE),
    );
    let admin = lb.admin.unwrap();
    let service = lb.addr("echo");
    assert!(
        wait_for(Duration::from_secs(5), || {
            get(admin, "/status").json()["services"][0]["backends"][0]["state"] == "up"
        }),
        "the backend comes up"
    );
    let backend = [("service", "echo")];
    let before = Metrics::scrape(admin);
    let transitions = before.sum("ringlb_backend_health_transitions_total", &backend);
    let probes = before.sum("ringlb_backend_probes_total", &backend);

    // Thousands of idle admin connections, far more than the fd limit allows, kept open by
    // the test (ringlb closes all but its cap as they come).
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        idle.push(connect(admin));
    }
    let fds_with_idle = lb.fd_count();
    assert!(
        fds_with_idle < 200,
        "ringlb holds {fds_with_idle} fds with {IDLE} idle admin connections"
    );
    // A scraper is answered within a second while they are held.
    let asked = Instant::now();
    let scrape = Metrics::scrape(admin);
    let took = asked.elapsed();
    assert!(scrape.has("ringlb_uptime_seconds"));
    assert!(
        took < Duration::from_secs(1),
        "/metrics took {took:?} with {IDLE} idle admin connections"
    );

    // Data-plane clients, as many as the connection budget admits, all open at once: every
    // one is proxied and echoed.
    let clients = before.sum("ringlb_connection_budget", &[]) as usize;
    assert!(
        clients >= 200,
        "budget {clients} under {NOFILE} fds with the admin cap kept aside"
    );
    let (echoed, held) = rt.block_on(async {
        let mut streams = Vec::with_capacity(clients);
        for _ in 0..clients {
            streams.push(tokio::net::TcpStream::connect(service).await.unwrap());
        }
        let tasks: Vec<_> = streams
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                tokio::spawn(async move {
                    let msg = format!("client {i}\n");
                    let mut got = vec![0u8; msg.len()];
                    s.write_all(msg.as_bytes()).await?;
                    s.read_exact(&mut got).await?;
                    Ok::<_, std::io::Error>((got == msg.as_bytes(), s))
                })
            })
            .collect();
        let mut ok = 0;
        let mut open = Vec::with_capacity(clients);
        for t in tasks {
            if let Ok(Ok(Ok((true, s)))) = tokio::time::timeout(Duration::from_secs(20), t).await {
                ok += 1;
                open.push(s);
            }
        }
        (ok, open)
    });
    let fds_with_clients = lb.fd_count();
    eprintln!(
        "nofile {NOFILE}: ringlb fds {fds_with_idle} with {IDLE} idle admin connections, {fds_with_clients} with {clients} clients too"
    );
    assert_eq!(echoed, clients, "data-plane clients echoed");
    drop(held);

    // Health checks ran meanwhile and never failed; nothing failed locally.
    let m = Metrics::scrape(admin);
    assert!(m.sum("ringlb_backend_probes_total", &backend) > probes);
    assert_eq!(m.sum("ringlb_backend_probe_failures_total", &backend), 0.0);
    assert_eq!(
        m.sum("ringlb_backend_health_transitions_total", &backend),
        transitions
    );
    assert_eq!(m.sum("ringlb_backend_up", &backend), 1.0);
    assert_eq!(
        m.sum("ringlb_service_local_connect_failures_total", &backend),
        0.0
    );
    assert_eq!(m.sum("ringlb_service_no_backend_total", &backend), 0.0);
    assert!(
        m.sum("ringlb_admin_connections_closed_at_cap_total", &[]) >= (IDLE - 64) as f64,
        "idle admin connections closed at the cap"
    );
    assert!(!lb.log_text().contains("Too many open files"));
    drop(idle);
}
