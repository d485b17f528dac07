//! Zero-copy forwarding of bulk transfers (`splice = true`, the default) through a real ringlb
//! process: byte-exact both ways, counted in /metrics, switched off by `splice = false`,
//! resets and slow readers handled as on the copy path, no pipe left open afterwards.

mod common;

use std::time::Duration;

use common::admin::Metrics;
use common::{
    Ringlb, config, exchange_bulk, one_connection_backend, pattern, runtime, service_config,
    source_sink_backend,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ADMIN: &str = "[admin]\nlisten = \"127.0.0.1:0\"\n";

/// ringlb with an admin API in front of `services`.
fn start(services: &[String]) -> Ringlb {
    Ringlb::start(&format!("{}\n{ADMIN}", config("", services)))
}

fn spliced(lb: &Ringlb, service: &str) -> f64 {
    Metrics::scrape(lb.admin.unwrap()).sum(
        "ringlb_service_spliced_bytes_total",
        &[("service", service)],
    )
}

#[test]
fn bulk_transfers_are_spliced_byte_exact_unless_switched_off() {
    const LEN: usize = 16 << 20;
    let rt = runtime();
    let (spliced_backend, spliced_digest) = rt.block_on(source_sink_backend(LEN));
    let (copied_backend, copied_digest) = rt.block_on(source_sink_backend(LEN));
    let lb = start(&[
        service_config("spliced", "round_robin", &[spliced_backend], ""),
        service_config("copied", "round_robin", &[copied_backend], "splice = false"),
    ]);
    let fds = lb.fd_count();
    rt.block_on(exchange_bulk(lb.addr("spliced"), LEN, spliced_digest));
    rt.block_on(exchange_bulk(lb.addr("copied"), LEN, copied_digest));
    // Each direction copies the read that showed it is a bulk transfer (one 16 KiB buffer),
    // then splices the rest.
    let moved = spliced(&lb, "spliced");
    assert!(
        moved > (2 * LEN - 2 * (1 << 20)) as f64 && moved <= (2 * LEN) as f64,
        "spliced {moved} of {} bytes",
        2 * LEN
    );
    assert_eq!(spliced(&lb, "copied"), 0.0);
    // The connections' pipes closed with them.
    lb.assert_fds_back_to(fds, Duration::from_secs(5));
}

#[test]
fn a_backend_reset_during_a_spliced_transfer_reaches_the_client_as_a_reset() {
    const LEN: usize = 8 << 20;
    let rt = runtime();
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel();
    let backend = one_connection_backend(&rt, |mut s| async move {
        s.write_all(&pattern(3, LEN)).await.unwrap();
        // Reset once the client has the first half: the rest is still in flight.
        let _ = sent_rx.await;
        s.set_zero_linger().unwrap();
        drop(s);
    });
    let lb = start(&[service_config("rst", "round_robin", &[backend], "")]);
    let addr = lb.addr("rst");
    let outcome = rt.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut got = vec![0u8; LEN / 2];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, pattern(3, LEN)[..LEN / 2], "bytes before the reset");
        let _ = sent_tx.send(());
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("the client hears of the reset")
    });
    let err = outcome.expect_err("a reset, not EOF");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert!(spliced(&lb, "rst") > 0.0, "the transfer was spliced");
}

#[test]
fn a_client_that_stops_reading_stalls_a_spliced_backend() {
    const LEN: usize = 256 << 20;
    let rt = runtime();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = written.clone();
    let backend = one_connection_backend(&rt, |mut s| async move {
        let chunk = pattern(4, 64 << 10);
        while counter.load(std::sync::atomic::Ordering::SeqCst) < LEN {
            if s.write_all(&chunk).await.is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    let lb = start(&[service_config("slow", "round_robin", &[backend], "")]);
    let addr = lb.addr("slow");
    rt.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // Read a little so the transfer is under way (and spliced), then stop reading.
        let mut first = vec![0u8; 1 << 20];
        s.read_exact(&mut first).await.unwrap();
        // The backend's writes stop once the socket buffers on the way and one pipe are full:
        // wait until the count holds still for half a second.
        let mut last = written.load(std::sync::atomic::Ordering::SeqCst);
        let mut still_since = std::time::Instant::now();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while still_since.elapsed() < Duration::from_millis(500) {
            assert!(
                std::time::Instant::now() < deadline,
                "the backend never stalled"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = written.load(std::sync::atomic::Ordering::SeqCst);
            if now != last {
                last = now;
                still_since = std::time::Instant::now();
            }
        }
        // Loopback socket buffers grow to a few MiB each; far below the 256 MiB offered.
        assert!(
            last < 64 << 20,
            "the backend wrote {last} bytes to a client that stopped reading"
        );
        drop(s);
    });
    assert!(spliced(&lb, "slow") > 0.0, "the transfer was spliced");
}
