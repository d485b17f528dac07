//! SIGTERM: listeners close at once, live connections finish byte-exact within the drain time,
//! the rest are closed at the deadline, and the process exits 0.

mod common;

use std::time::{Duration, Instant};

use common::{Backend, Ringlb, config, runtime, service_config, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[test]
fn sigterm_lets_live_connections_finish_then_exits_zero() {
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let mut lb = Ringlb::start(&config(
        "drain_timeout = \"10s\"",
        &[service_config("echo", "round_robin", &[echo.addr], "")],
    ));
    let addr = lb.addr("echo");
    let mut conns: Vec<TcpStream> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..20 {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            v.push(s);
        }
        v
    });

    lb.signal(libc::SIGTERM);
    // The listener closes at once: new connections are refused.
    assert!(
        wait_for(Duration::from_secs(2), || std::net::TcpStream::connect(
            addr
        )
        .is_err()),
        "listener still accepting after SIGTERM"
    );
    assert_eq!(
        lb.wait_exit(Duration::from_millis(200)),
        None,
        "exited with connections live"
    );

    // Live connections keep working and finish byte-exact.
    rt.block_on(async {
        for (i, s) in conns.iter_mut().enumerate() {
            let msg = vec![i as u8; 100_000];
            s.write_all(&msg).await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            assert_eq!(got, msg);
        }
    });
    drop(conns);
    let started = Instant::now();
    assert_eq!(lb.wait_exit(Duration::from_secs(5)), Some(0));
    // Exit followed the last connection, not the 10 s deadline.
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[test]
fn drain_deadline_closes_stuck_connections_and_exits_zero() {
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let mut lb = Ringlb::start(&config(
        "drain_timeout = \"500ms\"",
        &[service_config("echo", "round_robin", &[echo.addr], "")],
    ));
    let addr = lb.addr("echo");
    rt.block_on(async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        let sent = Instant::now();
        lb.signal(libc::SIGTERM);
        // The connection stays idle; the deadline closes it.
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "closed at the deadline: {n:?}");
        let waited = sent.elapsed();
        assert!(
            waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
            "{waited:?}"
        );
    });
    assert_eq!(lb.wait_exit(Duration::from_secs(5)), Some(0));
}

#[test]
fn drain_deadline_with_two_thousand_live_connections_exits_promptly() {
    const CONNS: usize = 2000;
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let mut lb = Ringlb::start(&config(
        "drain_timeout = \"1s\"",
        &[service_config("echo", "least_conn", &[echo.addr], "")],
    ));
    let addr = lb.addr("echo");
    let mut conns = rt.block_on(async {
        let mut v = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            v.push(s);
        }
        v
    });
    let signalled = Instant::now();
    lb.signal(libc::SIGTERM);
    // Every connection is closed at the deadline, all at once, and the process exits 0.
    assert_eq!(
        lb.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        lb.log_text()
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(5),
        "{:?}",
        signalled.elapsed()
    );
    rt.block_on(async {
        for s in conns.iter_mut() {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
                .await
                .unwrap();
            assert!(matches!(n, Ok(0) | Err(_)), "closed by the drain: {n:?}");
        }
    });
}
