//! A small UDP request/response load generator and echo server, for `tools/bench-udp.sh`.
//!
//! INTERIM: this stands in until `ringlb bench udp` (the load tool) lands; then the benchmark
//! script should switch to it and this example can go.
//!
//! ```sh
//! cargo run --release --example udp_rr -- echo --listen 127.0.0.1:9000 --threads 2 --for-secs 600
//! cargo run --release --example udp_rr -- load --target 127.0.0.1:9000 --clients 32 \
//!     --window 4 --size 64 --secs 10
//! ```
//!
//! `load` opens `--clients` UDP sockets (each one flow through a balancer), keeps `--window`
//! requests of `--size` bytes in flight on each, sends a new request for every reply, and after
//! `--warmup-secs` counts replies for `--secs` seconds. It prints one line:
//! `rps=<replies per second> p50_us=<median round trip> p99_us=<99th percentile> lost=<n>`.
//! A request with no reply within 500 ms counts as lost and its window slot is refilled, so the
//! run always ends on time. Replies are checked against their requests (same length, same
//! sequence number). `echo` answers every datagram with itself from `--threads` `SO_REUSEPORT`
//! sockets and exits by itself after `--for-secs`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// How long a request may wait for its reply before it counts as lost.
const LOST_AFTER: Duration = Duration::from_millis(500);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(mode) = args.first() else {
        usage();
    };
    let opt = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let num = |name: &str, default: &str| -> u64 {
        opt(name, default)
            .parse()
            .unwrap_or_else(|_| panic!("{name} wants a number"))
    };
    match mode.as_str() {
        "echo" => echo(
            opt("--listen", "127.0.0.1:9000")
                .parse()
                .expect("--listen IP:port"),
            num("--threads", "1") as usize,
            Duration::from_secs(num("--for-secs", "600")),
        ),
        "load" => load(
            opt("--target", "127.0.0.1:9000")
                .parse()
                .expect("--target IP:port"),
            num("--clients", "32") as usize,
            num("--window", "4") as usize,
            num("--size", "64") as usize,
            Duration::from_secs(num("--warmup-secs", "1")),
            Duration::from_secs(num("--secs", "10")),
        ),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: udp_rr echo --listen ADDR [--threads N] [--for-secs S]\n       \
         udp_rr load --target ADDR [--clients N] [--window W] [--size BYTES] [--warmup-secs S] [--secs S]"
    );
    std::process::exit(2);
}

fn echo(listen: SocketAddr, threads: usize, lifetime: Duration) {
    let deadline = Instant::now() + lifetime;
    let handles: Vec<_> = (0..threads.max(1))
        .map(|_| {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(listen),
                socket2::Type::DGRAM,
                None,
            )
            .unwrap();
            s.set_reuse_port(true).unwrap();
            s.set_recv_buffer_size(4 << 20).unwrap();
            s.bind(&listen.into()).unwrap();
            let s: std::net::UdpSocket = s.into();
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65_536];
                while Instant::now() < deadline {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

fn load(
    target: SocketAddr,
    clients: usize,
    window: usize,
    size: usize,
    warmup: Duration,
    secs: Duration,
) {
    assert!(size >= 8, "--size must hold an 8-byte sequence number");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = Instant::now() + warmup;
    let end = start + secs;
    let results = rt.block_on(async move {
        let tasks: Vec<_> = (0..clients)
            .map(|_| tokio::spawn(client(target, window.max(1), size, start, end)))
            .collect();
        let mut all = Vec::with_capacity(tasks.len());
        for t in tasks {
            all.push(t.await.unwrap());
        }
        all
    });
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let (mut replies, mut lost) = (0u64, 0u64);
    for (h, r, l) in results {
        hist.add(h).unwrap();
        replies += r;
        lost += l;
    }
    println!(
        "rps={:.0} p50_us={} p99_us={} lost={}",
        replies as f64 / secs.as_secs_f64(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        lost
    );
}

/// One flow: returns (round-trip histogram in µs, replies counted, requests lost).
async fn client(
    target: SocketAddr,
    window: usize,
    size: usize,
    start: Instant,
    end: Instant,
) -> (hdrhistogram::Histogram<u64>, u64, u64) {
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(target).await.unwrap();
    let mut req = vec![0u8; size];
    let mut buf = vec![0u8; 65_536];
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::with_capacity(window);
    let (mut seq, mut replies, mut lost) = (0u64, 0u64, 0u64);
    while Instant::now() < end {
        while in_flight.len() < window {
            req[..8].copy_from_slice(&seq.to_le_bytes());
            if socket.send(&req).await.is_err() {
                break;
            }
            in_flight.push_back((seq, Instant::now()));
            seq += 1;
        }
        let wait = LOST_AFTER.min(end.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                let got = u64::from_le_bytes(buf[..8.min(n)].try_into().unwrap_or([0; 8]));
                if in_flight.front().is_none_or(|&(front, _)| got < front) {
                    // A late reply to a request already counted lost.
                    continue;
                }
                // Loopback keeps a flow's order; requests older than the reply were lost.
                while let Some(&(s, sent)) = in_flight.front() {
                    in_flight.pop_front();
                    if s == got {
                        assert_eq!(n, size, "reply length");
                        let now = Instant::now();
                        if now >= start {
                            replies += 1;
                            let _ = hist.record(sent.elapsed().as_micros().max(1) as u64);
                        }
                        break;
                    }
                    lost += 1;
                }
            }
            Ok(Err(_)) | Err(_) => {
                if Instant::now() < end {
                    lost += in_flight.len() as u64;
                    in_flight.clear();
                }
            }
        }
    }
    (hist, replies, lost)
}
