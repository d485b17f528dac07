//! Waiting for a socket to become readable: an io_uring poll per wait, or, once a connection has
//! shown it lives on, one multishot poll that stays armed for the rest of its life.
//!
//! Owns: the [`Readiness`] of one direction's source socket and ringlb's own io_uring op for a
//! multishot poll ([`PollMulti`]). Does not own reading (the caller reads with a non-blocking
//! `recv(2)` after each wake-up, see `pump`) or writability waits.
//!
//! # Why
//!
//! A one-shot poll (`POLL_ADD`) is one io_uring request per wait: on a persistent connection
//! carrying small requests and replies, two per request (one per direction), a third of the
//! kernel round trips ringlb makes per request. A multishot poll (`IORING_POLL_ADD_MULTI`) is
//! armed once and posts a completion each time data arrives, so a request costs its `recv` and
//! its send only, as HAProxy's level-triggered epoll with speculative reads does.
//!
//! A multishot poll is not free for a short connection: arming it is a request, and ending it
//! another (a cancel, when the direction ends); and while it is armed, the kernel keeps the
//! socket open until the cancel completes, one io_uring round trip after ringlb drops it. So a
//! direction starts with one-shot polls and arms the multishot one at its
//! [`MULTISHOT_AFTER`]th wait: connections that live for one request or two (connect-mode
//! loads, most short sessions) never pay for it.
//!
//! # Edges, not levels
//!
//! A multishot poll reports arrivals: a completion when data (or EOF, or an error) arrives, not
//! "there is data" each time it is asked. The caller must therefore read until the source is
//! drained before it waits again: a read that came back short of its buffer (or found nothing)
//! drained the data, and anything arriving after that posts a new completion. Not so the end: a
//! peer's FIN or reset that arrives with (or right behind) data is reported by that one
//! completion, but the read returns the data first and the end only on the next read. So the
//! poll also asks for `POLLRDHUP`, and a completion that reports an end (`POLLRDHUP`, `POLLHUP`,
//! `POLLERR`) takes the direction back to one-shot polls, which complete at once while the end
//! is unread. A read that filled its
//! buffer may have left data behind, so the next wait after it is `level`: a one-shot poll that
//! completes at once when data is queued. Completions that arrive while the direction is busy
//! reading or writing are counted, not queued one by one: the next wait consumes them all and
//! returns at once, and the read that follows finds the data (or, when an earlier read took it,
//! nothing, one failed `recv`). If the kernel ends the multishot poll (it may, for example when
//! its completion queue overflows), the final completion counts as an arrival and the next wait
//! arms a new one.

use std::io;

use compio::BufResult;
use compio::driver::op::{Interest, PollOnce};
use compio::driver::{AsFd, AsRawFd, Extra, OpCode, OpEntry, SharedFd, ToSharedFd};
use compio::net::TcpStream;
use compio::runtime::SubmitMulti;
use futures_util::StreamExt;
use futures_util::stream::FusedStream;
use socket2::Socket;

/// The wait at which a direction arms its multishot poll (see the module doc): the third. A
/// connection-per-request load (a request, a reply, the client's close) waits at most twice per
/// direction, so it stays on one-shot polls; a persistent connection switches on its third
/// request.
pub(super) const MULTISHOT_AFTER: u32 = 3;

/// How one direction waits for its source to become readable (see the module doc).
pub(super) struct Readiness<'a> {
    stream: &'a TcpStream,
    /// One-shot waits so far; counts up to [`MULTISHOT_AFTER`].
    waits: u32,
    /// The armed multishot poll, once the direction has switched to it.
    multishot: Option<SubmitMulti<PollMulti>>,
    /// The multishot poll reported the source's end (EOF or an error): one-shot polls from
    /// then on.
    ended: bool,
}

/// Poll events that say the source is ending: the peer's FIN (`POLLRDHUP`), a hang-up or an
/// error. Each is reported once, by the arrival that brings it, but a read returns the data
/// queued before it first and the end only on the next read: see "Edges, not levels".
const ENDING: i16 = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR;

impl<'a> Readiness<'a> {
    pub(super) fn new(stream: &'a TcpStream) -> Self {
        Readiness {
            stream,
            waits: 0,
            multishot: None,
            ended: false,
        }
    }

    /// Resolves once the source has data to read, has reached EOF or has failed. `level`: the
    /// last read filled its buffer, so data may be queued that no new arrival will report (see
    /// "Edges, not levels").
    pub(super) async fn wait(&mut self, level: bool) -> io::Result<()> {
        if self.multishot.is_none() {
            if level || self.ended || self.waits + 1 < MULTISHOT_AFTER {
                self.waits = self.waits.saturating_add(1);
                return readable(self.stream).await;
            }
            let op = PollMulti::new(self.stream.to_shared_fd());
            self.multishot = Some(compio::runtime::submit_multi(op));
        }
        if level {
            return readable(self.stream).await;
        }
        let armed = self.multishot.as_mut().expect("armed above");
        match armed.next().await {
            Some(BufResult(result, _)) => {
                let ending = result
                    .as_ref()
                    .map_or(true, |&mask| mask as i16 & ENDING != 0);
                if ending {
                    // EOF or an error is queued behind the data: reads from now on go on
                    // until it is read, with one-shot (level) polls.
                    self.multishot = None;
                    self.ended = true;
                } else if armed.is_terminated() {
                    // The kernel ended the multishot poll: the next wait arms a new one.
                    self.multishot = None;
                }
                result.map(drop)
            }
            None => {
                self.multishot = None;
                Ok(())
            }
        }
    }

    /// Whether the multishot poll is armed (for tests).
    #[cfg(test)]
    fn is_multishot(&self) -> bool {
        self.multishot.is_some()
    }
}

/// Resolves once `stream` has data to read, has reached EOF or has failed (a one-shot io_uring
/// `POLL_ADD`; dropping the future cancels it).
pub(super) async fn readable(stream: &TcpStream) -> io::Result<()> {
    let poll = PollOnce::new(stream.to_shared_fd(), Interest::Readable);
    compio::runtime::submit(poll).await.0.map(drop)
}

/// A multishot `POLL_ADD` for readability on a socket: posts a completion (flagged "more") on
/// each arrival until it is cancelled, which dropping its [`SubmitMulti`] stream does.
pub(super) struct PollMulti {
    fd: SharedFd<Socket>,
}

impl PollMulti {
    fn new(fd: SharedFd<Socket>) -> Self {
        PollMulti { fd }
    }
}

/// Completions of a [`PollMulti`] not yet taken by its waiter, folded into one: a waiter wants
/// to know that something arrived, not how many times.
#[derive(Default)]
pub(super) struct Arrivals {
    latest: Option<(io::Result<usize>, Extra)>,
}

// SAFETY: the submission entry refers to nothing but the socket's raw fd, and the op owns a
// `SharedFd` of that socket for as long as the operation runs (compio keeps the op alive until
// its final completion, also after a cancel), so the fd stays open and is the same socket for
// every completion the kernel posts.
unsafe impl OpCode for PollMulti {
    type Control = Arrivals;

    fn create_entry(&mut self, _: &mut Arrivals) -> OpEntry {
        let fd = io_uring::types::Fd(self.fd.as_fd().as_raw_fd());
        io_uring::opcode::PollAdd::new(fd, (libc::POLLIN | libc::POLLRDHUP) as u32)
            .multi(true)
            .build()
            .into()
    }

    unsafe fn push_multishot(
        &mut self,
        arrivals: &mut Arrivals,
        result: io::Result<usize>,
        extra: Extra,
    ) {
        // The events of every arrival since the waiter last looked, together: an end reported
        // by an earlier arrival must not be hidden by a later one.
        let result = match (arrivals.latest.take(), result) {
            (Some((Ok(before), _)), Ok(now)) => Ok(before | now),
            (Some((Err(e), _)), _) | (_, Err(e)) => Err(e),
            (None, now) => now,
        };
        arrivals.latest = Some((result, extra));
    }

    fn pop_multishot(&mut self, arrivals: &mut Arrivals) -> Option<BufResult<usize, Extra>> {
        arrivals
            .latest
            .take()
            .map(|(result, extra)| BufResult(result, extra))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use compio::io::AsyncWriteExt;
    use compio::net::TcpListener;

    use super::super::super::sys::recv_now;
    use super::*;

    /// A connected pair on loopback: (the side ringlb reads, the peer that writes to it).
    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (peer, accepted) = futures_util::join!(TcpStream::connect(addr), listener.accept());
        (accepted.unwrap().0, peer.unwrap())
    }

    /// Waits with a deadline, so a missed wake-up fails the test instead of hanging it.
    async fn wait(ready: &mut Readiness<'_>, level: bool) -> io::Result<()> {
        let deadline = Duration::from_secs(5);
        compio::time::timeout(deadline, ready.wait(level))
            .await
            .expect("a wake-up within 5 s")
    }

    /// Writes all of `bytes` from the peer.
    async fn send(peer: &mut TcpStream, bytes: Vec<u8>) {
        let (written, _) = peer.write_all(bytes).await.into();
        written.unwrap();
    }

    /// A readiness of `ours` taken through its one-shot waits to the multishot poll, one
    /// message of 10 bytes per wait.
    async fn switched<'a>(ours: &'a TcpStream, peer: &mut TcpStream) -> Readiness<'a> {
        let mut ready = Readiness::new(ours);
        for _ in 0..MULTISHOT_AFTER {
            send(peer, vec![1u8; 10]).await;
            wait(&mut ready, false).await.unwrap();
            assert_eq!(drain(ours), 10);
        }
        assert!(ready.is_multishot());
        ready
    }

    /// Reads what is queued (at most 64 KiB) without waiting.
    fn drain(stream: &TcpStream) -> usize {
        let mut buf = Vec::with_capacity(64 * 1024);
        match recv_now(stream, &mut buf, 64 * 1024) {
            Ok(Some(n)) => n,
            Ok(None) => 0,
            Err(e) => panic!("recv: {e}"),
        }
    }

    #[compio::test]
    async fn every_arrival_wakes_the_waiter_after_the_switch_to_multishot() {
        let (ours, mut peer) = pair().await;
        let mut ready = Readiness::new(&ours);
        for round in 0..10u32 {
            send(&mut peer, vec![round as u8; 100]).await;
            wait(&mut ready, false).await.unwrap();
            assert_eq!(drain(&ours), 100, "round {round}");
            assert_eq!(ready.is_multishot(), round + 1 >= MULTISHOT_AFTER);
        }
    }

    #[compio::test]
    async fn arrivals_while_busy_are_not_lost() {
        let (ours, mut peer) = pair().await;
        let mut ready = switched(&ours, &mut peer).await;
        // Two arrivals while the direction does not wait: waits and reads until both are in,
        // and no arrival is lost on the way (each wait returns within its deadline). Usually
        // one wait takes both; the second may still be in the kernel's loopback backlog when
        // the first wait returns, and then its own arrival wakes the next wait.
        send(&mut peer, vec![2u8; 10]).await;
        send(&mut peer, vec![3u8; 10]).await;
        let mut got = 0;
        for _ in 0..2 {
            wait(&mut ready, false).await.unwrap();
            got += drain(&ours);
            if got == 20 {
                break;
            }
        }
        assert_eq!(got, 20);
        // EOF is an arrival too.
        drop(peer);
        wait(&mut ready, false).await.unwrap();
        let mut rest = Vec::with_capacity(16);
        assert_eq!(recv_now(&ours, &mut rest, 16).unwrap(), Some(0));
    }

    #[compio::test]
    async fn an_end_behind_data_is_not_missed() {
        let (ours, mut peer) = pair().await;
        let mut ready = switched(&ours, &mut peer).await;
        // Data and the FIN arrive in one segment (corked, then shut down): one completion, a
        // short read that returns the data, and a second wait that must still see the end.
        socket2::SockRef::from(&peer).set_tcp_cork(true).unwrap();
        send(&mut peer, vec![2u8; 10]).await;
        socket2::SockRef::from(&peer)
            .shutdown(std::net::Shutdown::Write)
            .unwrap();
        wait(&mut ready, false).await.unwrap();
        assert_eq!(drain(&ours), 10);
        wait(&mut ready, false).await.unwrap();
        let mut rest = Vec::with_capacity(16);
        assert_eq!(recv_now(&ours, &mut rest, 16).unwrap(), Some(0));
    }

    #[compio::test]
    async fn a_level_wait_finds_data_left_behind_by_a_full_read() {
        let (ours, mut peer) = pair().await;
        let mut ready = switched(&ours, &mut peer).await;
        send(&mut peer, vec![7u8; 3000]).await;
        wait(&mut ready, false).await.unwrap();
        // A read that fills a small buffer leaves data behind; no new arrival will report it,
        // so the next wait is a level one, which completes at once.
        let mut small = Vec::with_capacity(1000);
        assert_eq!(recv_now(&ours, &mut small, 1000).unwrap(), Some(1000));
        wait(&mut ready, true).await.unwrap();
        assert_eq!(drain(&ours), 2000);
    }
}
