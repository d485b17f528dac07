//! `ringlb demo`: a first look with nothing to install.
//!
//! Starts three echo backends on loopback (weights 1, 2 and 3), a balancer in front of them using
//! weighted round robin from an embedded config (a [`Server`], started as `ringlb run` starts
//! one), drives a bounded request/response load through it from client threads, and prints how
//! many connections each backend served, the throughput, and latency percentiles. Every part
//! stops by itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

use crate::config::Config;
use crate::server::Server;

/// The embedded configuration; `{backend0}`..`{backend2}` are replaced by the echo servers'
/// addresses, which the kernel picks.
pub const DEMO_CONFIG: &str = r#"
[runtime]
workers = 2
drain_timeout = "2s"

[[service]]
name = "echo"
listen = "127.0.0.1:0"
algorithm = "weighted_round_robin"
connect_timeout = "1s"
idle_timeout = "30s"
# Far above the demo's clients, and within the connection budget of a 20,000 open-files limit.
max_connections = 4096

[[service.backend]]
address = "{backend0}"
weight = 1

[[service.backend]]
address = "{backend1}"
weight = 2

[[service.backend]]
address = "{backend2}"
weight = 3
"#;

/// Options of `ringlb demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Requests per client connection before it reconnects.
    #[arg(long, default_value_t = 50)]
    pub requests: usize,
    /// Request (and echoed reply) size in bytes.
    #[arg(long, default_value_t = 512)]
    pub size: usize,
}

/// Runs the demo and prints its report to stdout.
pub fn run(options: &DemoOptions) -> anyhow::Result<()> {
    if options.clients == 0 || options.requests == 0 || options.size == 0 {
        bail!("--clients, --requests and --size must be at least 1");
    }
    let backends: Vec<EchoServer> = (0..3)
        .map(|_| EchoServer::start())
        .collect::<Result<_, _>>()
        .context("cannot start the demo's echo backends")?;
    let mut text = DEMO_CONFIG.to_string();
    for (i, b) in backends.iter().enumerate() {
        text = text.replace(&format!("{{backend{i}}}"), &b.address.to_string());
    }
    let config = Config::parse(&text, "<demo>")?;
    // The same start-up as `ringlb run`; with no file behind the config, nothing to reload.
    let mut server = Server::start(config, None)?;
    let config = server.config();
    let target = server.listening()[0].address;
    println!(
        "ringlb demo: balancer on {target} ({} workers, weighted_round_robin) -> 3 echo backends",
        config.runtime.workers
    );
    println!(
        "load: {} clients, {} requests of {} bytes per connection, {} s\n",
        options.clients, options.requests, options.size, options.seconds
    );

    let report = drive_load(target, options)?;
    server.drain_until(Instant::now() + server.drain_timeout());
    server.stop();

    let served: Vec<u64> = backends
        .iter()
        .map(|b| b.connections.load(Ordering::Relaxed))
        .collect();
    let total: u64 = served.iter().sum();
    println!(
        "{:<24} {:>6} {:>12} {:>8} {:>8}",
        "backend", "weight", "connections", "share", "expected"
    );
    for (i, (b, n)) in backends.iter().zip(&served).enumerate() {
        let weight = config.services[0].backends[i].weight;
        println!(
            "{:<24} {:>6} {:>12} {:>7.1}% {:>7.1}%",
            b.address.to_string(),
            weight,
            n,
            percent(*n, total),
            100.0 * f64::from(weight) / 6.0
        );
    }
    report.print();
    if report.errors > 0 {
        bail!("{} client errors during the demo", report.errors);
    }
    Ok(())
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// What the clients measured.
struct LoadReport {
    elapsed: Duration,
    connections: u64,
    requests: u64,
    bytes: u64,
    errors: u64,
    latency_us: Histogram<u64>,
}

impl LoadReport {
    fn print(&self) {
        let secs = self.elapsed.as_secs_f64();
        println!();
        println!(
            "connections   {:>10}  ({:.0}/s)",
            self.connections,
            self.connections as f64 / secs
        );
        println!(
            "requests      {:>10}  ({:.0}/s)",
            self.requests,
            self.requests as f64 / secs
        );
        println!(
            "throughput    {:>10.1}  MiB/s each way",
            self.bytes as f64 / secs / (1024.0 * 1024.0)
        );
        println!("errors        {:>10}", self.errors);
        let h = &self.latency_us;
        println!(
            "latency (us)  p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.90),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
    }
}

fn drive_load(target: SocketAddr, options: &DemoOptions) -> anyhow::Result<LoadReport> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(options.seconds);
    let handles: Vec<_> = (0..options.clients)
        .map(|_| {
            let options = options.clone();
            std::thread::spawn(move || client(target, &options, deadline))
        })
        .collect();
    let mut report = LoadReport {
        elapsed: Duration::ZERO,
        connections: 0,
        requests: 0,
        bytes: 0,
        errors: 0,
        latency_us: Histogram::new(3)?,
    };
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a demo client thread panicked"))?;
        report.connections += r.connections;
        report.requests += r.requests;
        report.bytes += r.bytes;
        report.errors += r.errors;
        report.latency_us.add(&r.latency_us)?;
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// One client thread: connect, `requests` echoed round trips, close; again until `deadline`.
fn client(target: SocketAddr, options: &DemoOptions, deadline: Instant) -> LoadReport {
    let mut report = LoadReport {
        elapsed: Duration::ZERO,
        connections: 0,
        requests: 0,
        bytes: 0,
        errors: 0,
        latency_us: Histogram::new(3).expect("3 significant figures is a valid precision"),
    };
    let request: Vec<u8> = (0..options.size).map(|i| (i % 251) as u8).collect();
    let mut reply = vec![0u8; options.size];
    while Instant::now() < deadline {
        let mut stream = match TcpStream::connect(target) {
            Ok(s) => s,
            Err(_) => {
                report.errors += 1;
                continue;
            }
        };
        report.connections += 1;
        let _ = stream.set_nodelay(true);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        for _ in 0..options.requests {
            let t = Instant::now();
            let ok = stream.write_all(&request).is_ok()
                && stream.read_exact(&mut reply).is_ok()
                && reply == request;
            if !ok {
                report.errors += 1;
                break;
            }
            report.requests += 1;
            report.bytes += request.len() as u64;
            let _ = report.latency_us.record(t.elapsed().as_micros() as u64);
        }
    }
    report
}

/// A loopback echo server on its own threads that counts the connections it served.
struct EchoServer {
    address: SocketAddr,
    connections: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl EchoServer {
    fn start() -> std::io::Result<EchoServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, stopped) = (connections.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopped.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                count.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let _ = stream.set_nodelay(true);
                    let mut buf = [0u8; 16 * 1024];
                    loop {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if stream.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        Ok(EchoServer {
            address,
            connections,
            stop,
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag and returns.
        let _ = TcpStream::connect(self.address);
    }
}
