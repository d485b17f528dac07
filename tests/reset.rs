//! Data before a reset, through a real ringlb process: when one side sends data and then resets
//! its connection (RST, no FIN), everything ringlb read from it reaches the other side, byte
//! exact, and only then is that side reset. Both directions, on the copy path and spliced.
//!
//! The reader on the far side reads slowly (small reads with pauses, through a small receive
//! buffer), so when the reset comes ringlb still holds bytes for it: in its own buffer or pipe
//! and in its socket's send queue. What ringlb read is what /metrics counts for the backend
//! once the connection closed (`ringlb_backend_bytes_received_total` from the backend,
//! `ringlb_backend_bytes_sent_total` to it).

mod common;

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use common::admin::Metrics;
use common::{Ringlb, config, one_connection_backend, pattern, runtime, service_config, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;

/// What the resetting side sends: far more than the socket buffers on the way hold while the
/// reader is slow.
const LEN: usize = 1 << 20;

/// The slow reader reads this much at a time...
const READ_SIZE: usize = 4096;

/// ...and pauses this long between reads.
const PAUSE: Duration = Duration::from_millis(2);

/// The slow reader's receive buffer, so that its kernel does not absorb what ringlb holds. Not
/// smaller: the kernel doubles it, and a window below loopback's 64 KiB segment size slows the
/// transfer to the persist timer's probes.
const RECV_BUFFER: u32 = 64 * 1024;

/// Bytes the reader takes before the other side resets: the transfer is under way and ringlb's
/// buffers toward the reader are full.
const BEFORE_RESET: usize = 16 * 1024;

/// Longest a whole slow read of what ringlb holds may take.
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// ringlb with an admin API in front of one backend; `splice` switches the service's option.
fn start(backend: std::net::SocketAddr, splice: bool) -> Ringlb {
    let extra = format!("splice = {splice}\nidle_timeout = \"20s\"");
    let services = [service_config("rst", "round_robin", &[backend], &extra)];
    Ringlb::start(&format!(
        "{}\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        config("", &services)
    ))
}

/// A backend-labelled byte counter of the service, 0 before the connection closed.
fn backend_bytes(lb: &Ringlb, metric: &str) -> usize {
    Metrics::scrape(lb.admin.unwrap()).sum(metric, &[("service", "rst")]) as usize
}

fn spliced(lb: &Ringlb) -> f64 {
    Metrics::scrape(lb.admin.unwrap())
        .sum("ringlb_service_spliced_bytes_total", &[("service", "rst")])
}

/// Reads `s` slowly until it ends; returns the bytes and how it ended (an error, or `Ok` at
/// EOF). `first` is told once the first [`BEFORE_RESET`] bytes are in.
async fn read_slowly(
    s: &mut TcpStream,
    first: oneshot::Sender<()>,
) -> (Vec<u8>, std::io::Result<()>) {
    let mut first = Some(first);
    let mut got = Vec::new();
    let mut buf = vec![0u8; READ_SIZE];
    let deadline = Instant::now() + READ_DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "still reading after {READ_DEADLINE:?} ({} bytes)",
            got.len()
        );
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Err(_) => panic!("no byte, EOF or reset for 5 s after {} bytes", got.len()),
            Ok(Ok(0)) => return (got, Ok(())),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return (got, Err(e)),
        }
        if got.len() >= BEFORE_RESET
            && let Some(tx) = first.take()
        {
            let _ = tx.send(());
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// Shrinks the receive buffer of a connected socket (the window it advertises from now on).
fn small_receive_buffer(s: &TcpStream) {
    socket2::SockRef::from(s)
        .set_recv_buffer_size(RECV_BUFFER as usize)
        .unwrap();
}

/// Checks what the slow reader got: a byte-exact prefix of what was sent, as long as what
/// ringlb read (the counter `metric`), ended by a reset; and that the transfer went through
/// splice exactly when the service's `splice` option is on.
fn check(
    lb: &Ringlb,
    metric: &str,
    sent: &[u8],
    got: &[u8],
    end: std::io::Result<()>,
    splice: bool,
) {
    let err = end.expect_err("a reset, not a clean EOF");
    assert_eq!(err.kind(), ErrorKind::ConnectionReset, "{err}");
    assert!(got.len() > BEFORE_RESET, "only {} bytes arrived", got.len());
    assert!(
        got == &sent[..got.len()],
        "the {} bytes received are not a prefix of what was sent",
        got.len()
    );
    // The counters are added when ringlb's side of the connection closes.
    let counted = wait_for(Duration::from_secs(5), || backend_bytes(lb, metric) > 0);
    assert!(counted, "{metric} never counted the connection");
    assert_eq!(
        got.len(),
        backend_bytes(lb, metric),
        "bytes received against bytes ringlb read ({metric})"
    );
    if splice {
        assert!(spliced(lb) > 0.0, "the transfer was spliced");
    } else {
        assert_eq!(spliced(lb), 0.0);
    }
}

fn backend_resets_after_sending(splice: bool) {
    let rt = runtime();
    let (first_tx, first_rx) = oneshot::channel();
    let backend = one_connection_backend(&rt, |mut s| async move {
        // The backend's own socket buffer takes all of it; ringlb reads what the window allows.
        s.write_all(&pattern(21, LEN)).await.unwrap();
        let _ = first_rx.await;
        s.set_zero_linger().unwrap();
        drop(s); // RST
    });
    let lb = start(backend, splice);
    let addr = lb.addr("rst");
    let (got, end) = rt.block_on(async move {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(RECV_BUFFER).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        read_slowly(&mut s, first_tx).await
    });
    check(
        &lb,
        "ringlb_backend_bytes_received_total",
        &pattern(21, LEN),
        &got,
        end,
        splice,
    );
}

fn client_resets_after_sending(splice: bool) {
    let rt = runtime();
    let (first_tx, first_rx) = oneshot::channel();
    let (result_tx, result_rx) = oneshot::channel();
    let backend = one_connection_backend(&rt, |mut s| async move {
        small_receive_buffer(&s);
        let _ = result_tx.send(read_slowly(&mut s, first_tx).await);
    });
    let lb = start(backend, splice);
    let addr = lb.addr("rst");
    let (got, end) = rt.block_on(async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&pattern(22, LEN)).await.unwrap();
        tokio::time::timeout(READ_DEADLINE, first_rx)
            .await
            .expect("the backend gets the first bytes")
            .unwrap();
        s.set_zero_linger().unwrap();
        drop(s); // RST
        tokio::time::timeout(READ_DEADLINE, result_rx)
            .await
            .expect("the backend's read ends")
            .unwrap()
    });
    check(
        &lb,
        "ringlb_backend_bytes_sent_total",
        &pattern(22, LEN),
        &got,
        end,
        splice,
    );
}

#[test]
fn data_before_a_backend_reset_reaches_the_client_then_the_reset() {
    backend_resets_after_sending(false);
}

#[test]
fn data_before_a_backend_reset_reaches_the_client_then_the_reset_when_spliced() {
    backend_resets_after_sending(true);
}

#[test]
fn data_before_a_client_reset_reaches_the_backend_then_the_reset() {
    client_resets_after_sending(false);
}

#[test]
fn data_before_a_client_reset_reaches_the_backend_then_the_reset_when_spliced() {
    client_resets_after_sending(true);
}
