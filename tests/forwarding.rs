//! Forwarding through a real ringlb process: byte-exactness, concurrency, half-close, resets,
//! failover over refused and silent backends, idle timeout.

mod common;

use std::time::{Duration, Instant};

use common::{
    Backend, Blackhole, Ringlb, config, exchange_bulk, one_connection_backend, pattern, read_all,
    refused_addr, runtime, service_config, sha, source_sink_backend,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

#[test]
fn sixty_four_mib_each_way_is_byte_exact() {
    const LEN: usize = 64 << 20;
    let rt = runtime();
    let (backend, received_digest) = rt.block_on(source_sink_backend(LEN));
    let lb = Ringlb::start(&config(
        "",
        &[service_config("bulk", "round_robin", &[backend], "")],
    ));
    let addr = lb.addr("bulk");
    rt.block_on(exchange_bulk(addr, LEN, received_digest));
}

#[test]
fn two_thousand_concurrent_connections_are_byte_exact_and_leave_no_fds() {
    const CONNS: usize = 2000;
    const LEN: usize = 32 * 1024;
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let lb = Ringlb::start(&config(
        "",
        &[service_config("echo", "least_conn", &[echo.addr], "")],
    ));
    let addr = lb.addr("echo");
    let baseline = lb.fd_count();
    rt.block_on(async move {
        // Open every connection and see each reach the backend (one echoed byte) before the
        // bulk of the bytes moves, so all 2,000 are live at once. Failures are counted, never
        // unwrapped, so a broken run fails instead of hanging.
        let mut streams = Vec::with_capacity(CONNS);
        for i in 0..CONNS {
            let data = pattern(i as u64 + 10, LEN);
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&data[..1]).await.unwrap();
            let mut first = [0u8; 1];
            s.read_exact(&mut first).await.unwrap();
            assert_eq!(first[0], data[0]);
            streams.push((s, data));
        }
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|(s, data)| {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.into_split();
                    let rest = data[1..].to_vec();
                    let writer = tokio::spawn(async move {
                        w.write_all(&rest).await.is_ok() && w.shutdown().await.is_ok()
                    });
                    let mut got = data[..1].to_vec();
                    let read = r.read_to_end(&mut got).await.is_ok();
                    read && writer.await.unwrap_or(false) && sha(&got) == sha(&data)
                })
            })
            .collect();
        let mut exact = 0;
        for t in tasks {
            let done = tokio::time::timeout(Duration::from_secs(60), t).await;
            if let Ok(Ok(true)) = done {
                exact += 1;
            }
        }
        assert_eq!(exact, CONNS, "connections whose echo matched byte for byte");
    });
    assert_eq!(echo.accepted(), CONNS as u64);
    lb.assert_fds_back_to(baseline, Duration::from_secs(5));
}

#[test]
fn client_half_close_still_delivers_the_reply() {
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let lb = Ringlb::start(&config(
        "",
        &[service_config("echo", "round_robin", &[echo.addr], "")],
    ));
    let addr = lb.addr("echo");
    rt.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let data = pattern(7, 3 << 20);
        s.write_all(&data).await.unwrap();
        s.shutdown().await.unwrap();
        // The echo backend keeps sending after our EOF reached it, then closes.
        let got = read_all(&mut s).await.unwrap();
        assert_eq!(sha(&got), sha(&data));
    });
}

#[test]
fn backend_half_close_still_delivers_the_request() {
    const LEN: usize = 3 << 20;
    let rt = runtime();
    let (tx, rx) = oneshot::channel();
    let backend = one_connection_backend(&rt, |mut s| async move {
        s.write_all(b"banner").await.unwrap();
        s.shutdown().await.unwrap(); // backend done talking, still listening
        let got = read_all(&mut s).await.unwrap();
        let _ = tx.send(sha(&got));
    });
    let lb = Ringlb::start(&config(
        "",
        &[service_config("hc", "round_robin", &[backend], "")],
    ));
    let addr = lb.addr("hc");
    rt.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut banner = Vec::new();
        // EOF from the backend arrives after the banner...
        (&mut s)
            .take(1 << 20)
            .read_to_end(&mut banner)
            .await
            .unwrap();
        assert_eq!(banner, b"banner");
        // ...and the client-to-backend direction still carries every byte.
        let data = pattern(9, LEN);
        s.write_all(&data).await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(rx.await.unwrap(), sha(&data));
    });
}

#[test]
fn backend_reset_reaches_the_client_as_a_reset() {
    let rt = runtime();
    let backend = one_connection_backend(&rt, |mut s| async move {
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        s.set_zero_linger().unwrap();
        drop(s); // RST
    });
    let lb = Ringlb::start(&config(
        "",
        &[service_config("rst", "round_robin", &[backend], "")],
    ));
    let addr = lb.addr("rst");
    rt.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let res = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap();
        let err = res.expect_err("a reset, not EOF or data");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
        assert!(started.elapsed() < Duration::from_secs(1));
    });
}

#[test]
fn client_reset_reaches_the_backend_as_a_reset() {
    let rt = runtime();
    let (tx, rx) = oneshot::channel();
    let backend = one_connection_backend(&rt, |mut s| async move {
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        s.write_all(b"ok").await.unwrap();
        let res = s.read(&mut b).await;
        let _ = tx.send(res.map_err(|e| e.kind()));
    });
    let lb = Ringlb::start(&config(
        "",
        &[service_config("rst", "round_robin", &[backend], "")],
    ));
    let addr = lb.addr("rst");
    rt.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hello").await.unwrap();
        let mut ok = [0u8; 2];
        s.read_exact(&mut ok).await.unwrap();
        s.set_zero_linger().unwrap();
        drop(s);
        let seen = tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, Err(std::io::ErrorKind::ConnectionReset));
    });
}

#[test]
fn refused_and_silent_backends_fail_over_within_connect_timeout() {
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let silent = Blackhole::new();
    let refused = refused_addr();
    let backends = [refused, silent.addr, echo.addr];
    let svc = service_config(
        "fo",
        "round_robin",
        &backends,
        "connect_timeout = \"400ms\"\nretries = 2",
    );
    let lb = Ringlb::start(&config("", &[svc]));
    let addr = lb.addr("fo");
    rt.block_on(async move {
        for i in 0..12u8 {
            let started = Instant::now();
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i);
            // At worst: the silent backend's full connect timeout, then the echo backend.
            assert!(
                started.elapsed() < Duration::from_millis(1200),
                "took {:?}",
                started.elapsed()
            );
        }
    });
    assert_eq!(echo.accepted(), 12);
}

#[test]
fn no_reachable_backend_closes_the_client_at_once() {
    let rt = runtime();
    let lb = Ringlb::start(&config(
        "",
        &[service_config(
            "none",
            "round_robin",
            &[refused_addr(), refused_addr()],
            "retries = 1",
        )],
    ));
    let addr = lb.addr("none");
    rt.block_on(async move {
        let started = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0) | Err(_)), "closed, not data: {n:?}");
        assert!(started.elapsed() < Duration::from_millis(500));
    });
}

#[test]
fn idle_connection_is_closed_after_idle_timeout() {
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let svc = service_config(
        "idle",
        "round_robin",
        &[echo.addr],
        "idle_timeout = \"300ms\"",
    );
    let lb = Ringlb::start(&config("", &[svc]));
    let addr = lb.addr("idle");
    rt.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Activity keeps it open past the timeout...
        let mut quiet = Instant::now();
        for i in 0..5 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
            s.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            quiet = Instant::now();
        }
        // ...silence closes it.
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(3), s.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(n, Ok(0)), "EOF after idle timeout, got {n:?}");
        let waited = quiet.elapsed();
        assert!(
            waited >= Duration::from_millis(250) && waited < Duration::from_millis(1300),
            "{waited:?}"
        );
    });
}
