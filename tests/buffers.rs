//! Forwarding buffers through a real ringlb process: an idle proxied connection holds none, and
//! a reader that does not read stalls its writer instead of growing memory.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, Ringlb, config, pattern, runtime, service_config, wait_for};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Opens a connection to `addr` and echoes `message` through it (so both directions of the
/// proxied connection moved data and the backend side is connected).
async fn open_and_echo(addr: SocketAddr, message: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    s.read_exact(&mut back).await.unwrap();
    assert!(back == message, "echo differs");
    s
}

/// 2,000 idle proxied connections, each of which moved 32 KiB each way through 64 KiB buffers.
/// Before forwarding buffers were taken only while data moves, each connection kept its two
/// buffers with the pages that data had touched (about 64 KiB of RSS per connection here, and at
/// least two 4 KiB pages, 8 KiB, whatever the data). Now a connection holds its task and
/// in-flight poll operations only: measured 2.6 to 2.7 KiB in debug and release builds (65.7 KiB
/// with the old code). The bound, 6 KiB, leaves room for allocator and build differences and is
/// below the two pages the old code touched at the very least.
///
/// Connections are opened and echoed one at a time, so at most one direction holds a buffer at
/// any moment and the worker's spare buffers (taken back from earlier connections, warmed up
/// before the baseline) do not grow with the count.
#[test]
fn idle_connections_hold_no_forwarding_buffers() {
    const CONNS: usize = 2000;
    const WARM_UP: usize = 50;
    const MAX_KIB_PER_CONN: f64 = 6.0;
    let message = pattern(7, 32 * 1024);
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let lb = Ringlb::start(&config(
        "",
        &[service_config(
            "idle",
            "round_robin",
            &[echo.addr],
            "buffer_size = \"64KiB\"",
        )],
    ));
    let addr = lb.addr("idle");
    let fds = lb.fd_count();
    // Warm up (allocator, spare buffers, tables), then let those connections close.
    rt.block_on(async {
        for _ in 0..WARM_UP {
            drop(open_and_echo(addr, &message).await);
        }
    });
    assert!(
        wait_for(Duration::from_secs(10), || lb.fd_count() <= fds),
        "warm-up connections still open in ringlb"
    );
    let before = lb.rss_kib();
    let held: Vec<TcpStream> = rt.block_on(async {
        let mut held = Vec::with_capacity(CONNS);
        for _ in 0..CONNS {
            held.push(open_and_echo(addr, &message).await);
        }
        held
    });
    // Every connection is proxied (two fds in ringlb each) before memory is read.
    assert!(
        wait_for(Duration::from_secs(10), || lb.fd_count() >= fds + 2 * CONNS),
        "ringlb holds {} fds, expected {} more than {fds}",
        lb.fd_count(),
        2 * CONNS
    );
    let after = lb.rss_kib();
    let per_conn = after.saturating_sub(before) as f64 / CONNS as f64;
    eprintln!(
        "RSS {before} KiB -> {after} KiB with {CONNS} idle connections: {per_conn:.2} KiB each"
    );
    assert!(
        per_conn < MAX_KIB_PER_CONN,
        "{per_conn:.2} KiB of RSS per idle proxied connection ({before} -> {after} KiB), bound {MAX_KIB_PER_CONN}"
    );
    // The connections still forward after their idle spell.
    rt.block_on(async {
        for mut s in held.into_iter().step_by(200) {
            s.write_all(b"still there").await.unwrap();
            let mut back = [0u8; 11];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"still there");
        }
    });
}

/// The largest value of a `/proc/sys/net/ipv4/tcp_[rw]mem` triple: how far Linux may grow a
/// socket's buffer on its own.
fn tcp_mem_max(name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).unwrap();
    text.split_whitespace().last().unwrap().parse().unwrap()
}

/// A backend pushes far more than fits in every buffer on the way to a client that does not
/// read. The push must stall once the buffers on the path are full: the client's receive
/// buffer and the backend's send buffer (both set small here), ringlb's two socket buffers (at
/// most the kernel's autotuning maxima) and ringlb's one forwarding buffer. ringlb's own memory
/// stays put meanwhile. Then the client reads everything, byte-exact.
#[test]
fn a_reader_that_does_not_read_stalls_its_writer() {
    const SMALL_BUF: u32 = 64 * 1024;
    const BUFFER_SIZE: u64 = 16 * 1024;
    // Linux doubles a requested socket buffer size (bookkeeping overhead).
    let bound = 2 * 2 * u64::from(SMALL_BUF)
        + tcp_mem_max("tcp_rmem")
        + tcp_mem_max("tcp_wmem")
        + BUFFER_SIZE;
    let total = (2 * bound + (1 << 20)) as usize;
    let rt = runtime();
    let written = Arc::new(AtomicU64::new(0));
    let (backend, pushing) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let written = written.clone();
        let pushing = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            socket2::SockRef::from(&s)
                .set_send_buffer_size(SMALL_BUF as usize)
                .unwrap();
            let (_r, mut w) = s.into_split();
            let data = pattern(3, total);
            for chunk in data.chunks(64 * 1024) {
                w.write_all(chunk).await.unwrap();
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            }
            w.shutdown().await.unwrap();
        });
        (addr, pushing)
    });
    let lb = Ringlb::start(&config(
        "",
        &[service_config("push", "round_robin", &[backend], "")],
    ));
    let rss_before = lb.rss_kib();
    let client = rt.block_on(async {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(SMALL_BUF).unwrap();
        socket.connect(lb.addr("push")).await.unwrap()
    });
    // Wait for the push to stall: no progress for a whole second.
    let mut last = (written.load(Ordering::SeqCst), Instant::now());
    let stalled = wait_for(Duration::from_secs(30), || {
        let now = written.load(Ordering::SeqCst);
        if now != last.0 {
            last = (now, Instant::now());
        }
        now > 0 && last.1.elapsed() >= Duration::from_secs(1)
    });
    let pushed = written.load(Ordering::SeqCst);
    assert!(
        stalled,
        "the backend kept writing to a client that does not read: {pushed} bytes so far"
    );
    assert!(
        pushed <= bound,
        "{pushed} bytes left the backend before it stalled; the buffers on the path hold {bound}"
    );
    let rss_stalled = lb.rss_kib();
    assert!(
        rss_stalled < rss_before + 32 * 1024,
        "ringlb's RSS grew from {rss_before} KiB to {rss_stalled} KiB behind a stalled reader"
    );
    eprintln!(
        "stalled after {pushed} bytes (bound {bound}); RSS {rss_before} -> {rss_stalled} KiB"
    );
    // Now read: everything arrives, in order, then EOF.
    rt.block_on(async move {
        let mut client = client;
        let mut hasher = Sha256::new();
        let mut got = 0usize;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = tokio::time::timeout(Duration::from_secs(30), client.read(&mut buf))
                .await
                .expect("data keeps coming once the client reads")
                .unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            got += n;
        }
        assert_eq!(got, total, "bytes received");
        assert!(
            hasher.finalize().to_vec() == Sha256::digest(pattern(3, total)).to_vec(),
            "digest of the received stream"
        );
        pushing.await.unwrap();
    });
}
