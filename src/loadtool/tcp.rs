//! The TCP loads: `rr` (persistent connections), `connect` (a connection per request),
//! `stream` (bulk transfer) and `idle` (open, then hold). One function per mode, each driving
//! one connection slot as a task on its thread's runtime until the budget or the deadline.
//!
//! Errors never end the load: each is counted by kind, and a broken persistent connection is
//! replaced by a new one on the next request.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use compio::net::TcpStream;

use super::report::ErrorKind;
use super::runner::{Ctx, Schedule, next_due};

/// `idle` opens its connections this far apart on each thread, so thousands of connects do not
/// overflow the target's accept queue at once (5,000 over two threads take half a second).
const IDLE_CONNECT_SPACING: Duration = Duration::from_micros(200);

/// Smallest read buffer of `stream`: replies are read in chunks of at least this.
const MIN_STREAM_READ: usize = 16 * 1024;

/// Connects to the target within `--timeout`, with `TCP_NODELAY` as latency tests want.
async fn open(ctx: &Ctx) -> Result<TcpStream, ErrorKind> {
    match compio::time::timeout(ctx.plan.timeout, TcpStream::connect(ctx.plan.target)).await {
        Ok(Ok(stream)) => {
            // Without it, small requests wait for delayed ACKs (Nagle).
            let _ = stream.set_nodelay(true);
            ctx.counters.connections.add(1);
            Ok(stream)
        }
        Ok(Err(e)) => Err(ErrorKind::of(&e)),
        Err(_) => Err(ErrorKind::Timeout),
    }
}

/// A request and a reply buffer, handed to the kernel and back for each exchange.
struct Buffers {
    request: Vec<u8>,
    reply: Vec<u8>,
}

impl Buffers {
    fn new(ctx: &Ctx) -> Buffers {
        Buffers {
            request: ctx.plan.request.clone(),
            reply: Vec::with_capacity(ctx.plan.reply_size),
        }
    }
}

async fn write_then_read(stream: &TcpStream, b: Buffers) -> (std::io::Result<()>, Buffers) {
    let mut writer = stream;
    let BufResult(written, request) = writer.write_all(b.request).await;
    let mut reply = b.reply;
    if let Err(e) = written {
        return (Err(e), Buffers { request, reply });
    }
    // read_exact fills the buffer's capacity: exactly one reply.
    reply.clear();
    let mut reader = stream;
    let BufResult(read, reply) = reader.read_exact(reply).await;
    (read, Buffers { request, reply })
}

/// Sends the request and reads one reply within `--timeout`.
async fn exchange(
    ctx: &Ctx,
    stream: &TcpStream,
    bufs: &mut Option<Buffers>,
) -> Result<(), ErrorKind> {
    let b = bufs.take().unwrap_or_else(|| Buffers::new(ctx));
    match compio::time::timeout(ctx.plan.timeout, write_then_read(stream, b)).await {
        // The buffers went with the cancelled operation; the next exchange makes new ones.
        Err(_) => Err(ErrorKind::Timeout),
        Ok((result, b)) => {
            let outcome = match result {
                Ok(()) if ctx.plan.verify && b.reply != b.request => Err(ErrorKind::Mismatch),
                Ok(()) => {
                    ctx.counters.sent.add(b.request.len() as u64);
                    ctx.counters.received.add(b.reply.len() as u64);
                    Ok(())
                }
                Err(e) => Err(ErrorKind::of(&e)),
            };
            *bufs = Some(b);
            outcome
        }
    }
}

/// `rr`: requests over one persistent connection, reconnecting after a failure.
pub async fn rr(ctx: &Ctx, index: usize) {
    let open_loop = ctx.plan.rate.is_some();
    let mut schedule = Schedule::new(&ctx.plan, index, ctx.start);
    let mut bufs = Some(Buffers::new(ctx));
    let mut stream: Option<TcpStream> = None;
    while let Some(due) = next_due(ctx, &mut schedule).await {
        if !ctx.take_ticket() {
            return;
        }
        let s = match stream.take() {
            Some(s) => s,
            None => match open(ctx).await {
                Ok(s) => s,
                Err(kind) => {
                    ctx.error(kind).await;
                    continue;
                }
            },
        };
        let sent = Instant::now();
        match exchange(ctx, &s, &mut bufs).await {
            Ok(()) => {
                let intended = if open_loop { due } else { sent };
                ctx.completed(intended, sent, Instant::now());
                stream = Some(s);
            }
            Err(kind) => ctx.error(kind).await,
        }
    }
}

/// `connect`: for each request a new connection: connect, send, read the reply, close. The
/// latency includes the connect.
pub async fn connect(ctx: &Ctx, index: usize) {
    let open_loop = ctx.plan.rate.is_some();
    let mut schedule = Schedule::new(&ctx.plan, index, ctx.start);
    let mut bufs = Some(Buffers::new(ctx));
    while let Some(due) = next_due(ctx, &mut schedule).await {
        if !ctx.take_ticket() {
            return;
        }
        let started = Instant::now();
        let stream = match open(ctx).await {
            Ok(s) => s,
            Err(kind) => {
                ctx.error(kind).await;
                continue;
            }
        };
        let result = exchange(ctx, &stream, &mut bufs).await;
        let now = Instant::now();
        // The client closes first, as a short-lived client does.
        drop(stream);
        match result {
            Ok(()) => ctx.completed(if open_loop { due } else { started }, started, now),
            Err(kind) => ctx.error(kind).await,
        }
    }
}

/// `stream`: writes `--size` chunks as fast as the connection takes them (up to this
/// connection's share of `--bytes`, then half-closes), and reads back whatever the server
/// returns (an echo returns everything; a sink nothing) until the server closes.
pub async fn stream(ctx: &Ctx, index: usize) {
    let s = match open(ctx).await {
        Ok(s) => s,
        Err(kind) => return ctx.error(kind).await,
    };
    let share = ctx.plan.bytes_of(index);
    let writer = async {
        let mut w = &s;
        let mut chunk = ctx.plan.request.clone();
        let mut left = share;
        while !ctx.expired() {
            let n = match left {
                Some(0) => break,
                Some(l) => chunk.len().min(usize::try_from(l).unwrap_or(usize::MAX)),
                None => chunk.len(),
            };
            chunk.truncate(n);
            let BufResult(written, c) = w.write_all(chunk).await;
            chunk = c;
            if let Err(e) = written {
                return ctx.error(ErrorKind::of(&e)).await;
            }
            ctx.counters.sent.add(n as u64);
            if let Some(l) = left.as_mut() {
                *l -= n as u64;
            }
        }
        if let Err(e) = w.shutdown().await {
            ctx.error(ErrorKind::of(&e)).await;
        }
    };
    let reader = async {
        let mut r = &s;
        let mut buf = Vec::with_capacity(ctx.plan.request.len().max(MIN_STREAM_READ));
        loop {
            buf.clear();
            let BufResult(read, b) = r.read(buf).await;
            buf = b;
            match read {
                Ok(0) => return,
                Ok(n) => ctx.counters.received.add(n as u64),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return ctx.error(ErrorKind::of(&e)).await,
            }
        }
    };
    futures_util::future::join(writer, reader).await;
}

/// `idle`: opens a connection, sends `--size` bytes and reads them back (so that a proxy in
/// between has connected its backend side), then holds it open until the deadline.
pub async fn idle(ctx: &Ctx, index: usize) {
    let slot = u32::try_from(index / ctx.plan.threads).unwrap_or(u32::MAX);
    compio::time::sleep(IDLE_CONNECT_SPACING * slot).await;
    let opened = match open(ctx).await {
        Ok(s) => {
            let mut bufs = Some(Buffers::new(ctx));
            if ctx.plan.request.is_empty() {
                Ok(s)
            } else {
                exchange(ctx, &s, &mut bufs).await.map(|()| s)
            }
        }
        Err(kind) => Err(kind),
    };
    ctx.settled.fetch_add(1, Ordering::Relaxed);
    match opened {
        // Held until the deadline cuts this task.
        Ok(_held) => std::future::pending::<()>().await,
        Err(kind) => ctx.counters.error(kind),
    }
}
