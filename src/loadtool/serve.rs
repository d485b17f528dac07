//! `ringlb bench serve`: an echo or sink server, TCP or UDP, to put behind a proxy as its backend
//! (or to load directly, for the ceiling).
//!
//! Owns: one thread per `--threads`, each with its own compio (io_uring) runtime and its own
//! `SO_REUSEPORT` socket on the one address, so the kernel spreads connections and flows over
//! them, as ringlb's workers do. Prints `listening tcp|udp ADDRESS` on stdout once it serves (the
//! port is the kernel's choice when `--listen` has port 0), then runs until `--duration` passes
//! or the process is stopped.

use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;
use compio::BufResult;
use compio::io::{AsyncRead, AsyncWriteExt};
use compio::net::{TcpListener, TcpStream, UdpSocket};
use socket2::{Domain, Protocol, Socket, Type};

use super::args::{parse_bytes, parse_duration};

/// Listen backlog: deep enough that thousands of connects in a burst wait instead of failing
/// (the kernel caps it at net.core.somaxconn).
const BACKLOG: u32 = 4096;

/// Receives kept in flight per UDP socket, so a delayed reply does not stall the others.
const UDP_TASKS: usize = 16;

/// How long accepting pauses after running out of file descriptors.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

fn parse_buffer(text: &str) -> Result<usize, String> {
    match parse_bytes(text)? {
        n @ 1..=16_777_216 => Ok(n as usize),
        _ => Err(format!("{text:?}: must be 1 byte to 16MiB")),
    }
}

/// Options of `bench serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 lets the kernel choose (printed on stdout).
    #[arg(short = 'l', long, default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// Serve UDP (datagrams echoed to their sender) instead of TCP.
    #[arg(long)]
    pub udp: bool,
    /// Read and discard everything instead of echoing it.
    #[arg(long)]
    pub sink: bool,
    /// Wait this long before echoing each read (a slow server, to observe queueing): a duration
    /// as in the config file ("1ms", "0.5ms").
    #[arg(long, value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Server threads, each with its own io_uring runtime. Default: the CPUs this process may use.
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    /// Stop after this long, a duration as in the config file ("30s") (default: run until
    /// stopped by a signal).
    #[arg(short = 'd', long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Read buffer per TCP connection (and largest UDP datagram): a byte size as in the config
    /// file ("64KiB", "64k").
    #[arg(long, value_parser = parse_buffer, default_value = "64KiB")]
    pub buffer: usize,
    /// TCP: each connection starts with a PROXY protocol header (v1 or v2, as ringlb's
    /// `send_proxy` writes), which is read and dropped, not echoed; a connection whose header is
    /// refused is closed.
    #[arg(long)]
    pub proxy_protocol: bool,
}

#[derive(Clone, Copy)]
struct Behaviour {
    sink: bool,
    proxy_protocol: bool,
    delay: Option<Duration>,
    buffer: usize,
}

/// Runs the server until `--duration` passes (or forever).
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if threads == 0 || threads > 1024 {
        anyhow::bail!("--threads must be 1 to 1024");
    }
    let behaviour = Behaviour {
        sink: args.sink,
        proxy_protocol: args.proxy_protocol,
        delay: args.delay,
        buffer: args.buffer,
    };
    let mut handles = Vec::with_capacity(threads);
    let (protocol, address) = if args.udp {
        let (sockets, address) = bind_udp(args.listen, threads)
            .with_context(|| format!("cannot bind UDP {}", args.listen))?;
        for (i, socket) in sockets.into_iter().enumerate() {
            handles.push(spawn(i, move || serve_udp(socket, behaviour))?);
        }
        ("udp", address)
    } else {
        let (listeners, address) = crate::dataplane::bind_tcp(args.listen, threads, BACKLOG)?;
        for (i, listener) in listeners.into_iter().enumerate() {
            handles.push(spawn(i, move || serve_tcp(listener, behaviour))?);
        }
        ("tcp", address)
    };
    let what = if args.sink { "sink" } else { "echo" };
    println!("listening {protocol} {address} ({what}, {threads} threads)");
    std::io::stdout().flush()?;
    match args.duration {
        Some(d) => std::thread::sleep(d),
        None => {
            for h in handles {
                // A server thread returns only when its runtime failed.
                if let Ok(Err(e)) = h.join() {
                    return Err(e).context("server thread failed");
                }
            }
        }
    }
    Ok(())
}

fn spawn(
    i: usize,
    f: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> anyhow::Result<std::thread::JoinHandle<std::io::Result<()>>> {
    std::thread::Builder::new()
        .name(format!("serve-{i}"))
        .spawn(f)
        .context("cannot start a server thread")
}

fn bind_udp(
    addr: SocketAddr,
    count: usize,
) -> std::io::Result<(Vec<std::net::UdpSocket>, SocketAddr)> {
    let mut sockets = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(bound), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.bind(&bound.into())?;
        let socket: std::net::UdpSocket = socket.into();
        if bound.port() == 0 {
            bound = socket.local_addr()?;
        }
        sockets.push(socket);
    }
    Ok((sockets, bound))
}

fn serve_tcp(listener: std::net::TcpListener, behaviour: Behaviour) -> std::io::Result<()> {
    let runtime = crate::dataplane::ring_runtime()?;
    runtime.block_on(async move {
        let listener = TcpListener::from_std(listener)?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    compio::runtime::spawn(tcp_connection(stream, behaviour)).detach();
                }
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    compio::time::sleep(ACCEPT_BACKOFF).await;
                }
                // A client that reset while queued ends only its own connection.
                Err(_) => {}
            }
        }
    })
}

async fn tcp_connection(stream: TcpStream, behaviour: Behaviour) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(behaviour.buffer);
    let (mut reader, mut writer) = (&stream, &stream);
    // With --proxy-protocol: the header's bytes read so far, until it is whole.
    let mut header = behaviour.proxy_protocol.then(Vec::new);
    loop {
        buf.clear();
        let BufResult(read, b) = reader.read(buf).await;
        buf = b;
        if let (Ok(n), Some(head)) = (&read, &mut header)
            && *n > 0
        {
            head.extend_from_slice(&buf);
            match crate::proxyproto::parse_header(head) {
                Ok(crate::proxyproto::Parse::Complete(parsed)) => {
                    buf.clear();
                    buf.extend_from_slice(&head[parsed.len..]);
                    header = None;
                    if buf.is_empty() {
                        continue;
                    }
                }
                Ok(crate::proxyproto::Parse::Incomplete) => continue,
                Err(_) => return,
            }
        }
        match read {
            // EOF (echo: everything was written back) or a failure: close.
            Ok(0) | Err(_) => return,
            Ok(_) if behaviour.sink => {}
            Ok(_) => {
                if let Some(d) = behaviour.delay {
                    compio::time::sleep(d).await;
                }
                let BufResult(written, b) = writer.write_all(buf).await;
                buf = b;
                if written.is_err() {
                    return;
                }
            }
        }
    }
}

fn serve_udp(socket: std::net::UdpSocket, behaviour: Behaviour) -> std::io::Result<()> {
    let runtime = crate::dataplane::ring_runtime()?;
    runtime.block_on(async move {
        let socket = Rc::new(UdpSocket::from_std(socket)?);
        let tasks: Vec<_> = (0..UDP_TASKS)
            .map(|_| compio::runtime::spawn(udp_loop(socket.clone(), behaviour)))
            .collect();
        for t in tasks {
            let _ = t.await;
        }
        Ok(())
    })
}

async fn udp_loop(socket: Rc<UdpSocket>, behaviour: Behaviour) {
    let mut buf = Vec::with_capacity(behaviour.buffer);
    loop {
        buf.clear();
        let BufResult(received, b) = socket.recv_from(buf).await;
        buf = b;
        let Ok((_, peer)) = received else {
            // ICMP errors from earlier replies surface here; they end nothing.
            continue;
        };
        if behaviour.sink {
            continue;
        }
        if let Some(d) = behaviour.delay {
            compio::time::sleep(d).await;
        }
        let BufResult(_, b) = socket.send_to(buf, peer).await;
        buf = b;
    }
}
