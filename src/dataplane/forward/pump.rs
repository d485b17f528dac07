//! One direction of a proxied connection: bytes from one socket to the other, through a buffer or,
//! for a bulk transfer, through a pipe.
//!
//! Owns: waiting for the source (io_uring polls), reading into a buffer and writing it out,
//! switching a bulk direction to splice, counting the bytes moved on the tracking entry, and the
//! half-close at EOF. Does not own: how the two directions end together, the idle timeout or
//! resets (the parent module), the spare buffers (`buffers`), the pipes (`super::splice`) or the
//! non-blocking socket calls (`super::sys`).
//!
//! # Buffers
//!
//! A direction holds a buffer only while data moves, as HAProxy does. It waits for its source
//! with an io_uring poll for readability (`POLL_ADD`), which needs no buffer, then takes a buffer
//! from the worker's [`SpareBuffers`](super::SpareBuffers), reads with a non-blocking `recv(2)` and writes the bytes
//! out through io_uring (a full buffer is first offered to a non-blocking `send(2)`, see
//! "Sends" below). A read that filled the buffer suggests more is queued: the direction keeps the
//! buffer and reads again at once (up to [`READ_STREAK`] times before it waits on io_uring
//! again, so other connections get their turn); any other read, or one that would block, gives
//! the buffer back before the next wait. So an idle connection holds
//! no forwarding buffer, a busy one keeps its buffer for as long as reads fill it, and the memory
//! bound is unchanged: at most 2 × `buffer_size` per connection while data is in flight, plus the
//! spares each worker keeps (`buffers::SPARE_BUFFERS` per buffer size).
//!
//! Why not receive into io_uring provided buffers (the kernel picks a buffer only when data
//! arrives, as the UDP replies do): compio 0.19 registers one buffer ring per runtime (group 1,
//! its size fixed when the runtime is built, here 64 KiB datagram buffers for UDP), and a ring is
//! a fixed set shared by every connection of the worker: writes stalled by slow readers would
//! hold its buffers and stall every other connection's reads (and UDP's replies). Spare buffers
//! come from the heap when none is left, so one connection never waits on another's.
//!
//! # First read
//!
//! In most protocols the client speaks first (HTTP, TLS, Redis, PostgreSQL), and its first bytes
//! are queued by the time the backend connection is made. So the client-to-backend direction
//! tries its first read before any wait: one io_uring poll less per connection, as HAProxy's
//! speculative first receive does. When the client waits for the server to speak first, that
//! read finds nothing (`EAGAIN`) and the direction waits as usual.
//!
//! # PROXY header
//!
//! With `send_proxy`, the backend must receive the header before any client byte. The
//! client-to-backend direction writes it with the bytes of its first read, in one send (the
//! header alone would cost a kernel round trip per connection), or alone when that read finds
//! nothing yet (the backend may be the one to speak first) or the client's end.
//!
//! # Sends
//!
//! Only full buffers are offered to a non-blocking `send(2)` first: sending small messages that
//! way too cost request/response loads (`ringlb bench rr`, 50 connections, 64 B) 16% of their
//! throughput in interleaved runs (38,600 against 45,900 req/s), while io_uring sends a loop
//! turn's writes together: a send that wakes a peer on this CPU may preempt the worker at once, a
//! batch of sends only once.
//!
//! # Splice
//!
//! A direction whose read filled its buffer is a bulk transfer. When the service splices (the
//! default) and the worker has a pipe to spare, the direction goes on through [`pump_spliced`]:
//! socket to pipe to socket with splice(2), no copy through ringlb's memory, up to 64 KiB per
//! call (see `splice`). Small messages stay on the buffer path: a splice costs two calls where a
//! copy costs one recv.

use std::cell::Cell;
use std::io;
use std::time::Instant;

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::driver::ToSharedFd;
use compio::driver::op::{Interest, PollOnce};
use compio::io::AsyncWriteExt;
use compio::net::TcpStream;

use crate::balancer::conntrack::{ConnId, ConnState};
use crate::control::ServiceState;

use super::super::splice::Pipe;
use super::super::sys::{recv_now, send_now};
use super::super::worker::Worker;
use super::readiness::{Readiness, readable};

/// The two directions of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dir {
    /// Client to backend.
    Up,
    /// Backend to client.
    Down,
}

/// How one direction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DirEnd {
    /// The reader sent EOF; every byte was written and the writer's side was shut down (or,
    /// when the other direction had already ended at EOF, left for the close that follows).
    Eof,
    /// Reading from the source failed (reset or error), or it reached EOF after the source was
    /// known to have failed; every byte read before was written.
    ReadFailed,
    /// Writing to the destination failed (reset or error).
    WriteFailed,
}

/// Copies one direction through buffers of `buffer_size` bytes until EOF or failure, holding a
/// buffer only while data moves (see the module doc); a bulk transfer goes on through a pipe
/// when the service splices ([`pump_spliced`]).
///
/// `from_failed` is set once the other direction failed to write to `from`: that write may have
/// taken the socket's error, so a later EOF from `from` is its reset, not a FIN, and ends this
/// direction as [`DirEnd::ReadFailed`] without shutting `to` down.
///
/// `header` (client to backend only): the PROXY header, written before anything else (see
/// "PROXY header" in the module doc).
pub(super) async fn pump(
    worker: &Worker,
    state: &ServiceState,
    id: ConnId,
    dir: Dir,
    (from, to): (&TcpStream, &TcpStream),
    from_failed: &Cell<bool>,
    mut header: Option<Vec<u8>>,
) -> DirEnd {
    let size = state.config.buffer_size;
    let mut writer = to;
    // The buffer kept after a read that filled it; `None` while waiting for data.
    let mut held: Option<Vec<u8>> = None;
    // Reads since this direction last waited on io_uring (see `READ_STREAK`).
    let mut streak = 0;
    // Whether the next read is tried before any wait (see "First read" in the module doc).
    let mut speculate = dir == Dir::Up;
    let mut ready = Readiness::new(from);
    // Whether the last read filled its buffer, so data may be left that no new arrival will
    // report (see `readiness`).
    let mut filled = false;
    loop {
        let mut buf = match held.take() {
            Some(buf) => buf,
            None if speculate => {
                speculate = false;
                worker.spare_buffers.take(size)
            }
            None => {
                streak = 0;
                if ready.wait(filled).await.is_err() {
                    return DirEnd::ReadFailed;
                }
                worker.spare_buffers.take(size)
            }
        };
        let received = recv_now(from, &mut buf, size);
        filled = matches!(received, Ok(Some(n)) if n == size);
        if let Some(mut first) = header.take() {
            // The header goes out with the client's first bytes, or alone when the client has
            // sent nothing yet (the backend may have to speak first) or has closed.
            if let Ok(Some(n)) = received {
                first.extend_from_slice(&buf[..n]);
            }
            let BufResult(written, _) = writer.write_all(first).await;
            if written.is_err() {
                worker.spare_buffers.give(size, buf);
                return DirEnd::WriteFailed;
            }
            if let Ok(Some(n @ 1..)) = received {
                record(worker, id, dir, n);
                worker.spare_buffers.give(size, buf);
                continue;
            }
        }
        match received {
            Ok(Some(0)) => {
                worker.spare_buffers.give(size, buf);
                return end_of_source(worker, id, dir, to, from_failed);
            }
            Ok(Some(n)) => {
                // A full buffer (bulk transfer) is first offered to a non-blocking send(2),
                // which saves an io_uring round trip; what does not fit, and any smaller read
                // (see "Sends" in the module doc), goes through io_uring, which waits for room. Until it
                // is out, this direction reads nothing more.
                let sent = if n == size {
                    match send_now(to, &buf) {
                        Ok(sent) => sent.unwrap_or(0),
                        Err(_) => return DirEnd::WriteFailed,
                    }
                } else {
                    0
                };
                if sent < n {
                    streak = 0;
                    let BufResult(written, rest) = writer.write_all(buf.slice(sent..)).await;
                    buf = rest.into_inner();
                    if written.is_err() {
                        return DirEnd::WriteFailed;
                    }
                }
                record(worker, id, dir, n);
                // A read that filled the buffer is a bulk transfer: it goes on zero-copy
                // through a pipe when the service splices and the worker has one to spare.
                if n == size
                    && state.config.splice
                    && let Some(pipe) = worker.pipes.open(from, to)
                {
                    worker.spare_buffers.give(size, buf);
                    // Splicing waits with one-shot polls of its own.
                    drop(ready);
                    let ends = (from, to);
                    return pump_spliced(worker, state, id, dir, ends, pipe, from_failed).await;
                }
                streak += 1;
                if n == size && streak < READ_STREAK {
                    // Probably more queued: read again at once, with this buffer.
                    held = Some(buf);
                } else {
                    worker.spare_buffers.give(size, buf);
                }
            }
            // Nothing queued (the source was drained, or the wake-up was spurious): give the
            // buffer back and wait.
            Ok(None) => worker.spare_buffers.give(size, buf),
            Err(_) => return DirEnd::ReadFailed,
        }
    }
}

/// The rest of a bulk direction, through `pipe` (see `splice`): the source's bytes are
/// spliced into the pipe and the pipe written out to the destination before anything more is
/// read, until EOF or failure. Ends as [`pump`] does.
async fn pump_spliced(
    worker: &Worker,
    state: &ServiceState,
    id: ConnId,
    dir: Dir,
    (from, to): (&TcpStream, &TcpStream),
    mut pipe: Pipe<'_>,
    from_failed: &Cell<bool>,
) -> DirEnd {
    // Fills since this direction last waited on io_uring (see `READ_STREAK`). The first fill
    // follows a read that filled the buffer, so more is probably queued: no wait before it.
    let mut streak = 0;
    loop {
        match pipe.fill(from) {
            Ok(Some(0)) => return end_of_source(worker, id, dir, to, from_failed),
            Ok(Some(n)) => {
                while pipe.queued() > 0 {
                    match pipe.drain(to) {
                        // The pipe is not empty, so a splice that moves nothing has failed.
                        Ok(Some(0)) => return DirEnd::WriteFailed,
                        Ok(Some(_)) => {}
                        Ok(None) => {
                            if writable(to).await.is_err() {
                                return DirEnd::WriteFailed;
                            }
                        }
                        Err(_) => return DirEnd::WriteFailed,
                    }
                }
                record(worker, id, dir, n);
                state.counters.spliced_bytes.add(n as u64);
                streak += 1;
                // A short fill drained the source; otherwise fill again at once, but let the
                // worker's other connections run every `READ_STREAK` fills.
                if n < SPLICE_FULL || streak >= READ_STREAK {
                    streak = 0;
                    if readable(from).await.is_err() {
                        return DirEnd::ReadFailed;
                    }
                }
            }
            Ok(None) => {
                streak = 0;
                if readable(from).await.is_err() {
                    return DirEnd::ReadFailed;
                }
            }
            Err(_) => return DirEnd::ReadFailed,
        }
    }
}

/// A fill of at least this many bytes suggests more is queued behind it: half a default pipe,
/// as the pipe's 16 slots may fill before its 64 KiB do.
const SPLICE_FULL: usize = 32 * 1024;

/// Counts `n` bytes moved in direction `dir` on the connection's tracking entry.
fn record(worker: &Worker, id: ConnId, dir: Dir, n: usize) {
    let now = Instant::now();
    let mut table = worker.table.borrow_mut();
    match dir {
        Dir::Up => table.record_up(id, n as u64, now),
        Dir::Down => table.record_down(id, n as u64, now),
    }
}

/// Ends a direction at its source's EOF: a reset when the source is known to have failed (see
/// [`pump`]), else a half-close, unless the other direction already ended at its own EOF.
///
/// Then both sides have sent their FIN and every byte has been written: the parent module closes
/// both sockets as soon as this direction returns, and a close(2) of a socket whose peer's bytes
/// were all read sends the same FIN that shutdown(2) would. The shutdown is skipped, one system
/// call less per connection closed in order. The parent records the other direction's EOF in the
/// tracking entry's state (`ClientClosed` after the client-to-backend direction, `BackendClosed`
/// after the other) before this direction can see its own.
fn end_of_source(
    worker: &Worker,
    id: ConnId,
    dir: Dir,
    to: &TcpStream,
    from_failed: &Cell<bool>,
) -> DirEnd {
    if from_failed.get() {
        return DirEnd::ReadFailed;
    }
    let other_ended = match dir {
        Dir::Up => ConnState::BackendClosed,
        Dir::Down => ConnState::ClientClosed,
    };
    if worker.table.borrow().get(id).map(|c| c.state) == Some(other_ended) {
        return DirEnd::Eof;
    }
    shut_down_write(to)
}

/// Ends a direction at EOF: shuts down writing toward the other side (half-close; the other
/// direction keeps flowing until it ends too). shutdown(2) on a TCP socket never blocks, and
/// io_uring would run its SHUTDOWN opcode on a kernel worker thread (iou-wrk), so the plain
/// syscall is cheaper here.
fn shut_down_write(to: &TcpStream) -> DirEnd {
    match socket2::SockRef::from(to).shutdown(std::net::Shutdown::Write) {
        Ok(()) => DirEnd::Eof,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => DirEnd::Eof,
        Err(_) => DirEnd::WriteFailed,
    }
}

/// Reads and sends in a row that one direction makes without waiting on io_uring, when every
/// read fills its buffer and every send goes out at once: the direction then waits for
/// readability once, so a bulk transfer lets the worker's other connections run at least every
/// `READ_STREAK` × `buffer_size` bytes (256 KiB at the default).
const READ_STREAK: u32 = 16;

/// Resolves once `stream` has room to write, or has failed (an io_uring `POLL_ADD`).
async fn writable(stream: &TcpStream) -> io::Result<()> {
    let poll = PollOnce::new(stream.to_shared_fd(), Interest::Writable);
    compio::runtime::submit(poll).await.0.map(drop)
}
