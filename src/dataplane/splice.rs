//! Zero-copy forwarding for bulk transfers: socket → pipe → socket with splice(2).
//!
//! A direction whose reads fill its buffer (see `forward`) is a bulk transfer. It then takes a
//! pipe from its worker's [`Pipes`] and moves the rest of its bytes through it: splice(2) from
//! the source socket into the pipe hands over the socket buffer's pages, and splice(2) from the
//! pipe into the destination socket hands them on, so the bytes are never copied through
//! ringlb's memory, and each call moves up to a pipe's capacity (64 KiB by default) instead of a
//! buffer. HAProxy's `option splice-auto` does the same.
//!
//! Guarantees, the same as the copy path's: a pipe holds at most its capacity, and nothing more
//! is read until the pipe has been written out, so a slow reader still stalls its writer; every
//! byte read is written before the direction ends at EOF. Both calls are non-blocking (the pipe
//! is opened `O_NONBLOCK` and both sockets are switched to `O_NONBLOCK` when the direction starts
//! splicing; io_uring's own operations on them wait for readiness either way) and report as the
//! data path's other non-blocking calls do (see `sys`); readiness is awaited through io_uring
//! polls.
//!
//! A direction keeps its pipe until the connection ends; an idle pipe holds no data pages. Each
//! worker opens at most [`PIPES_PER_WORKER`] pipes at once (their descriptors are kept out of the
//! connection budget); a bulk transfer that finds none left, or fails to open one, copies.

use std::cell::Cell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};

use compio::net::TcpStream;
use rustix::pipe::{PipeFlags, SpliceFlags, pipe_with, splice};

use crate::control::PIPES_PER_WORKER;

use super::sys::nonblocking;

/// Bytes asked of one splice(2) from a socket: a default pipe's capacity (16 pages). The kernel
/// moves less when the pipe's slots fill first or less is queued.
const PIPE_CHUNK: usize = 64 * 1024;

/// A worker's count of open pipes against [`PIPES_PER_WORKER`] (one thread: `Cell`).
#[derive(Default)]
pub(super) struct Pipes {
    open: Cell<u64>,
}

impl Pipes {
    /// Opens a pipe for a direction from `from` to `to`, switching both sockets to non-blocking
    /// mode; `None` when the worker has none left or the kernel refuses (the direction copies).
    pub fn open(&self, from: &TcpStream, to: &TcpStream) -> Option<Pipe<'_>> {
        if self.open.get() >= PIPES_PER_WORKER {
            return None;
        }
        let (read, write) = match pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK) {
            Ok(ends) => ends,
            Err(e) => {
                tracing::debug!(error = %e, "cannot open a splice pipe; copying");
                return None;
            }
        };
        for stream in [from, to] {
            if let Err(e) = socket2::SockRef::from(stream).set_nonblocking(true) {
                tracing::debug!(error = %e, "cannot make a socket non-blocking; copying");
                return None;
            }
        }
        self.open.set(self.open.get() + 1);
        Some(Pipe {
            read,
            write,
            queued: 0,
            pipes: self,
        })
    }

    /// Pipes open now.
    #[cfg(test)]
    pub fn open_count(&self) -> u64 {
        self.open.get()
    }
}

/// One direction's pipe. Dropping it closes both ends; bytes still in it are discarded, which
/// happens only when the connection ends abnormally (reset, timeout, shutdown).
pub(super) struct Pipe<'a> {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes in the pipe, not yet written to the destination.
    queued: usize,
    pipes: &'a Pipes,
}

impl Pipe<'_> {
    /// Moves what `from` has queued into the (empty) pipe: the bytes moved, `Some(0)` at EOF,
    /// `None` when nothing is queued (the convention of [`super::sys`]).
    pub fn fill(&mut self, from: &TcpStream) -> io::Result<Option<usize>> {
        debug_assert_eq!(
            self.queued, 0,
            "a pipe is written out before it is filled again"
        );
        let n = nonblocking(|| {
            splice(
                from.as_fd(),
                None,
                &self.write,
                None,
                PIPE_CHUNK,
                SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
            )
            .map_err(io::Error::from)
        })?;
        self.queued = n.unwrap_or(0);
        Ok(n)
    }

    /// Moves queued bytes on to `to`: the bytes moved, `None` when `to` has no room.
    pub fn drain(&mut self, to: &TcpStream) -> io::Result<Option<usize>> {
        let n = nonblocking(|| {
            splice(
                &self.read,
                None,
                to.as_fd(),
                None,
                self.queued,
                SpliceFlags::MOVE | SpliceFlags::NONBLOCK,
            )
            .map_err(io::Error::from)
        })?;
        self.queued -= n.unwrap_or(0);
        Ok(n)
    }

    /// Bytes in the pipe, not yet written out.
    pub fn queued(&self) -> usize {
        self.queued
    }
}

impl Drop for Pipe<'_> {
    fn drop(&mut self) {
        self.pipes.open.set(self.pipes.open.get() - 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A compio stream on loopback (blocking, as compio creates them) and its std peer; called
    /// inside the runtime.
    fn pair() -> (TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (TcpStream::from_std(server).unwrap(), client)
    }

    #[test]
    fn bytes_go_through_the_pipe_in_order_and_eof_is_seen() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            use std::io::{Read, Write};
            let (src, mut src_peer) = pair();
            let (dst, mut dst_peer) = pair();
            let pipes = Pipes::default();
            let mut pipe = pipes.open(&src, &dst).unwrap();
            assert_eq!(pipes.open_count(), 1);
            // Nothing queued: the source reports it instead of blocking the thread.
            assert_eq!(pipe.fill(&src).unwrap(), None);
            let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
            let mut got = Vec::new();
            let mut sent = 0;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while got.len() < data.len() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} of {} bytes through the pipe",
                    got.len(),
                    data.len()
                );
                if sent < data.len() {
                    let end = (sent + 50_000).min(data.len());
                    src_peer.write_all(&data[sent..end]).unwrap();
                    sent = end;
                }
                match pipe.fill(&src) {
                    Ok(Some(n)) => assert!(n > 0),
                    Ok(None) => {}
                    Err(e) => panic!("fill: {e}"),
                }
                while pipe.queued() > 0 {
                    pipe.drain(&dst).unwrap();
                }
                dst_peer
                    .set_read_timeout(Some(std::time::Duration::from_millis(1)))
                    .unwrap();
                let mut buf = [0u8; 65536];
                while let Ok(n) = dst_peer.read(&mut buf) {
                    got.extend_from_slice(&buf[..n]);
                    if n == 0 {
                        break;
                    }
                }
            }
            assert_eq!(got, data);
            src_peer.shutdown(std::net::Shutdown::Write).unwrap();
            // EOF once the peer's FIN arrived (a poll would say so; here, retry briefly).
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            loop {
                match pipe.fill(&src) {
                    Ok(Some(0)) => break,
                    Ok(None) => {
                        assert!(std::time::Instant::now() < deadline, "no EOF");
                        std::thread::yield_now();
                    }
                    other => panic!("expected EOF, got {other:?}"),
                }
            }
            drop(pipe);
            assert_eq!(pipes.open_count(), 0);
        });
    }

    #[test]
    fn a_worker_opens_at_most_its_share_of_pipes() {
        compio::runtime::Runtime::new().unwrap().block_on(async {
            let (a, _a_peer) = pair();
            let (b, _b_peer) = pair();
            let pipes = Pipes::default();
            let held: Vec<_> = (0..PIPES_PER_WORKER)
                .map(|_| pipes.open(&a, &b).expect("within the bound"))
                .collect();
            assert!(pipes.open(&a, &b).is_none(), "over the bound");
            drop(held);
            assert_eq!(pipes.open_count(), 0);
            assert!(
                pipes.open(&a, &b).is_some(),
                "freed pipes are available again"
            );
        });
    }
}
