//! Receiving clients' datagrams on a UDP service's socket: a multishot receive into the worker's
//! buffer pool while it runs, an io_uring `recvfrom` followed by non-blocking receives while it
//! cannot.
//!
//! Owns the service's receive loop and the choice between the two ways of receiving; each
//! datagram, however received, goes to one [`Handler`] (the service's is
//! [`UdpService::forward_up`]). Does not own what happens to a datagram (the parent module) nor
//! the buffer pool (the worker registers it; its buffers are shared with the reply readers of
//! `upstream`).
//!
//! See the parent module's "Receiving client datagrams" for why and when each way is used.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::rc::Rc;
use std::time::{Duration, Instant};

use compio::BufResult;
use compio::buf::{IntoInner, IoBuf};
use compio::driver::ToSharedFd;
use compio::driver::op::{RecvFlags, RecvMsgMulti, RecvMsgMultiResult, ReturnFlags};
use compio::net::UdpSocket;
use futures_util::StreamExt;
use futures_util::future::{Either, select};

use crate::control::log_limit::Reason;

use super::super::worker::LoopGuard;
use super::flow::End;
use super::upstream::{is_pool_empty, recv_now};
use super::{DRAIN_BATCH, MAX_DATAGRAM, RECV_ERROR_BACKOFF, UdpService};

/// What is done with each client datagram received.
pub(super) trait Handler {
    /// Handles one datagram (all of `buf`) from `client`; returns the buffer.
    async fn datagram<B: IoBuf>(&mut self, buf: B, client: SocketAddr) -> B;
    /// A datagram that cannot be handled (truncated, or without a source address) was dropped.
    fn dropped(&mut self);
    /// A buffer of the pool went back to it.
    fn buffer_back(&self);
    /// The service's name, for logs.
    fn name(&self) -> &str;
}

/// The service's handler: each datagram goes on to its flow's backend.
struct Forward {
    svc: Rc<UdpService>,
    /// Reused for every backend choice.
    candidates: Vec<usize>,
}

impl Handler for Forward {
    async fn datagram<B: IoBuf>(&mut self, buf: B, client: SocketAddr) -> B {
        self.svc.forward_up(buf, client, &mut self.candidates).await
    }

    fn dropped(&mut self) {
        self.svc
            .current_state()
            .counters
            .udp_datagrams_dropped
            .inc();
    }

    fn buffer_back(&self) {
        self.svc.buffer_freed.notify(1);
    }

    fn name(&self) -> &str {
        &self.svc.name
    }
}

/// How long the service's socket is read the fallback way after the buffer pool ran dry under
/// the multishot receive, before a multishot receive is armed again: long enough for the
/// backlog to be read and the buffers to come back, short enough that a burst moves the socket
/// off the multishot receive only briefly.
const REARM_AFTER_DRY: Duration = Duration::from_millis(20);

/// How long the service's socket is read the fallback way after the kernel refused or failed a
/// multishot receive, before one is tried again (a kernel without it fails every try, once per
/// this period).
const REARM_AFTER_ERROR: Duration = Duration::from_secs(1);

/// How a run of one way of receiving ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The drain began or the service is retired.
    Retired,
    /// The multishot receive ended by itself after a datagram: arm another at once.
    Rearm,
    /// The multishot receive could not go on for a while (no free buffer, or an error).
    FallBack(Duration),
    /// The fallback way received what was queued; it goes on until its time is up.
    Received,
}

/// Receives client datagrams until the drain begins (or a reload retires the service), then
/// drops every flow.
pub(super) async fn receive_loop(svc: Rc<UdpService>, _running: LoopGuard) {
    // Made once: a fresh drain future per datagram would allocate a listener each time.
    let drain = pin!(svc.worker.retiring(&svc.retire));
    let mut forward = Forward {
        svc: svc.clone(),
        candidates: Vec::new(),
    };
    receive(&svc.socket, drain, &mut forward).await;
    let flows = svc.flows.borrow_mut().drain();
    for flow in flows {
        svc.log_end(&flow, End::Shutdown);
    }
    tracing::debug!(
        worker = svc.worker.index,
        service = %svc.name,
        "udp socket closed"
    );
}

/// Receives datagrams on `socket` and hands each to `handler`, until `drain` resolves: with a
/// multishot receive while it runs, the fallback way for a while after it could not.
async fn receive(
    socket: &UdpSocket,
    mut drain: Pin<&mut impl Future<Output = ()>>,
    handler: &mut impl Handler,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_DATAGRAM);
    // The multishot receive is used from this instant on.
    let mut multishot_from = Instant::now();
    loop {
        let ended = if Instant::now() >= multishot_from {
            receive_multishot(socket, drain.as_mut(), handler).await
        } else {
            receive_fallback(socket, drain.as_mut(), &mut buf, handler).await
        };
        match ended {
            Ended::Retired => return,
            Ended::Rearm | Ended::Received => {}
            Ended::FallBack(wait) => multishot_from = Instant::now() + wait,
        }
    }
}

/// A multishot `recvmsg` of the service's socket into the worker's buffer pool: one completion
/// per datagram, no readiness poll, no receive that finds nothing.
fn arm(socket: &UdpSocket) -> io::Result<impl futures_util::Stream<Item = MultishotItem>> {
    compio::runtime::Runtime::with_current(|rt| {
        let pool = rt.buffer_pool()?;
        let op = RecvMsgMulti::new(socket.to_shared_fd(), &pool, 0, RecvFlags::empty())?;
        // No ancillary data: the control length is 0.
        Ok(rt.submit_multi(op).into_managed_with(pool, 0))
    })
}

/// One item of the multishot stream: a datagram, the end without one, or the error that ended
/// it.
type MultishotItem = io::Result<Option<RecvMsgMultiResult>>;

/// Receives datagrams with one multishot receive until it ends, the pool runs dry or the drain
/// begins.
async fn receive_multishot(
    socket: &UdpSocket,
    mut drain: Pin<&mut impl Future<Output = ()>>,
    handler: &mut impl Handler,
) -> Ended {
    let stream = match arm(socket) {
        Ok(stream) => stream,
        Err(e) => return multishot_failed(handler, &e),
    };
    let mut stream = pin!(stream);
    let mut received = false;
    loop {
        let item = match select(stream.next(), drain.as_mut()).await {
            Either::Left((item, _)) => item,
            // Dropping the stream cancels the receive; buffers it filled go back to the pool.
            Either::Right(_) => return Ended::Retired,
        };
        match item {
            Some(Ok(Some(datagram))) => {
                received = true;
                handle_pooled(datagram, handler).await;
            }
            // The kernel ended the receive after its last datagram: arm another. One that ends
            // without any is not armed again at once, so it cannot spin.
            Some(Ok(None)) | None if received => return Ended::Rearm,
            Some(Ok(None)) | None => return Ended::FallBack(REARM_AFTER_DRY),
            // The pool had no buffer when a datagram arrived: the datagram is still queued on the
            // socket, where the fallback way reads it.
            Some(Err(e)) if is_pool_empty(&e) => return Ended::FallBack(REARM_AFTER_DRY),
            Some(Err(e)) => return multishot_failed(handler, &e),
        }
    }
}

/// The kernel refused or failed the multishot receive: the fallback way reads the socket for
/// [`REARM_AFTER_ERROR`].
fn multishot_failed(handler: &impl Handler, e: &io::Error) -> Ended {
    if let Some(suppressed) = Reason::UdpReceive.admit() {
        tracing::debug!(service = %handler.name(), error = %e, suppressed,
            "udp multishot receive failed: receiving without it for a while");
    }
    Ended::FallBack(REARM_AFTER_ERROR)
}

/// The fallback way: waits for one datagram with an io_uring `recvfrom` into the loop's own
/// buffer, then takes up to [`DRAIN_BATCH`] more already queued with non-blocking receives.
async fn receive_fallback(
    socket: &UdpSocket,
    mut drain: Pin<&mut impl Future<Output = ()>>,
    buf: &mut Vec<u8>,
    handler: &mut impl Handler,
) -> Ended {
    let mut owned = std::mem::take(buf);
    owned.clear();
    let recv = pin!(socket.recv_from(owned));
    let BufResult(received, b) = match select(recv, drain.as_mut()).await {
        Either::Left((r, _)) => r,
        Either::Right(_) => return Ended::Retired,
    };
    owned = b;
    match received {
        Ok((_, client)) => {
            owned = handler.datagram(owned, client).await;
            // Datagrams already queued are taken with non-blocking receives: one trip round the
            // event loop for a burst, not one per datagram.
            for _ in 0..DRAIN_BATCH {
                match recv_now(socket, &mut owned) {
                    Ok(Some(client)) => owned = handler.datagram(owned, client).await,
                    Ok(None) => break,
                    Err(e) => {
                        if let Some(suppressed) = Reason::UdpReceive.admit() {
                            tracing::debug!(service = %handler.name(), error = %e, suppressed,
                                "udp receive failed");
                        }
                        break;
                    }
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
        Err(e) => {
            if let Some(suppressed) = Reason::UdpReceive.admit() {
                tracing::debug!(service = %handler.name(), error = %e, suppressed,
                    "udp receive failed");
            }
            compio::time::sleep(RECV_ERROR_BACKOFF).await;
        }
    }
    *buf = owned;
    Ended::Received
}

/// Hands one datagram of the multishot receive to `handler` from its pool buffer, which then
/// goes back to the pool.
async fn handle_pooled(datagram: RecvMsgMultiResult, handler: &mut impl Handler) {
    let client = datagram.addr().and_then(|a| a.as_socket());
    let truncated = datagram.flags().contains(ReturnFlags::TRUNC);
    match client {
        // Pool buffers have room for the largest datagram and its header: never truncated.
        Some(client) if !truncated => {
            let len = datagram.data().len();
            let buffer = datagram.into_inner();
            // The payload is the end of the buffer, after the header and source address.
            let payload = buffer.buf_len() - len;
            drop(handler.datagram(buffer.slice(payload..), client).await);
        }
        _ => {
            handler.dropped();
            if let Some(suppressed) = Reason::UdpReceive.admit() {
                tracing::debug!(service = %handler.name(), truncated, suppressed,
                    "udp datagram without a source address or truncated: dropped");
            }
            drop(datagram);
        }
    }
    handler.buffer_back();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::num::NonZeroU16;

    /// A runtime whose buffer pool is the worker's: `buffers` buffers of [`MAX_DATAGRAM`] bytes.
    fn runtime(buffers: u16) -> compio::runtime::Runtime {
        let mut proactor = compio::driver::ProactorBuilder::new();
        proactor
            .buffer_pool_size(NonZeroU16::new(buffers).unwrap())
            .buffer_pool_buffer_len(MAX_DATAGRAM);
        compio::runtime::RuntimeBuilder::new()
            .with_proactor(proactor)
            .build()
            .unwrap()
    }

    /// The largest datagrams of both families arrive whole through the multishot receive, with
    /// their source: the pool's buffers have room for the header before the payload.
    #[test]
    fn the_largest_datagrams_arrive_whole_through_the_multishot_receive() {
        runtime(4).block_on(async {
            for (local, max) in [("127.0.0.1:0", 65_507), ("[::1]:0", 65_527)] {
                let socket = UdpSocket::bind(local).await.unwrap();
                let sender = std::net::UdpSocket::bind(local).unwrap();
                let payload: Vec<u8> = (0..max).map(|i| (i % 251) as u8).collect();
                sender
                    .send_to(&payload, socket.local_addr().unwrap())
                    .unwrap();
                let mut stream = pin!(arm(&socket).unwrap());
                let got = stream.next().await.unwrap().unwrap().unwrap();
                assert!(!got.flags().contains(ReturnFlags::TRUNC), "{local}");
                assert_eq!(got.data().len(), max, "{local}");
                assert!(got.data() == &payload[..], "{local}");
                let from = got.addr().and_then(|a| a.as_socket());
                assert_eq!(from, Some(sender.local_addr().unwrap()), "{local}");
                // The payload is the end of the buffer, as `forward_pooled` cuts it.
                let len = got.data().len();
                let buffer = got.into_inner();
                let cut = buffer.buf_len() - len;
                assert!(buffer.slice(cut..).as_init() == &payload[..], "{local}");
            }
        });
    }

    /// What the fallback relies on: with every pool buffer taken, the multishot receive ends with
    /// ENOBUFS and the datagram that found no buffer stays queued on the socket.
    #[test]
    fn a_dry_pool_ends_the_multishot_receive_and_keeps_the_datagram_queued() {
        runtime(2).block_on(async {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for i in 0..3u8 {
                sender.send_to(&[i; 10], addr).unwrap();
            }
            let mut stream = pin!(arm(&socket).unwrap());
            let mut held = Vec::new();
            let ended = loop {
                match stream.next().await {
                    Some(Ok(Some(datagram))) => held.push(datagram),
                    other => break other.map(|r| r.map(|d| d.map(|d| d.data().to_vec()))),
                }
            };
            assert_eq!(held.len(), 2, "one datagram per pool buffer");
            for (i, datagram) in held.iter().enumerate() {
                assert_eq!(datagram.data(), &[i as u8; 10]);
            }
            match ended {
                Some(Err(e)) => assert!(is_pool_empty(&e), "{e:?}"),
                other => panic!("the receive did not end with ENOBUFS: {other:?}"),
            }
            drop(held);
            let mut buf = Vec::new();
            assert_eq!(
                recv_now(&socket, &mut buf).unwrap(),
                Some(sender.local_addr().unwrap())
            );
            assert_eq!(buf, [2u8; 10]);
        });
    }

    /// Records what it is handed: each datagram's number and whether it came in a pool buffer.
    struct Recorder {
        got: Rc<RefCell<Vec<(u32, bool)>>>,
    }

    impl Handler for Recorder {
        async fn datagram<B: IoBuf>(&mut self, buf: B, _client: SocketAddr) -> B {
            let seq = u32::from_le_bytes(buf.as_init()[..4].try_into().unwrap());
            let pooled = std::any::type_name::<B>() != std::any::type_name::<Vec<u8>>();
            // A slow handler: the buffer is held across turns of the event loop.
            compio::time::sleep(Duration::from_millis(1)).await;
            self.got.borrow_mut().push((seq, pooled));
            buf
        }

        fn dropped(&mut self) {
            panic!("a datagram was dropped");
        }

        fn buffer_back(&self) {}

        fn name(&self) -> &str {
            "test"
        }
    }

    /// Polls `done` every millisecond for up to 5 s.
    async fn wait_until(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            if Instant::now() > deadline {
                return false;
            }
            compio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// A backlog ten times the pool: the multishot receive fills every buffer and ends, the
    /// fallback reads the rest, every datagram is handled once and in order, and the multishot
    /// receive is armed again afterwards.
    #[test]
    fn a_backlog_beyond_the_pool_is_read_by_the_fallback_then_the_multishot_resumes() {
        const POOL: u16 = 4;
        const BACKLOG: u32 = 40;
        runtime(POOL).block_on(async {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = socket.local_addr().unwrap();
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for seq in 0..BACKLOG {
                sender.send_to(&seq.to_le_bytes(), addr).unwrap();
            }
            let got = Rc::new(RefCell::new(Vec::new()));
            let mut recorder = Recorder { got: got.clone() };
            let receiver = compio::runtime::spawn(async move {
                let drain = pin!(std::future::pending::<()>());
                receive(&socket, drain, &mut recorder).await;
            });
            let all = wait_until(|| got.borrow().len() >= BACKLOG as usize).await;
            assert!(all, "handled {} of {BACKLOG}", got.borrow().len());
            let seqs: Vec<u32> = got.borrow().iter().map(|&(seq, _)| seq).collect();
            assert_eq!(
                seqs,
                (0..BACKLOG).collect::<Vec<_>>(),
                "each once, in order"
            );
            let pooled = got.borrow().iter().filter(|&&(_, pooled)| pooled).count();
            assert!(
                got.borrow()[0].1,
                "the first datagram came by the multishot receive"
            );
            assert!(
                pooled < BACKLOG as usize,
                "the fallback read part of the backlog"
            );
            // Later datagrams, one at a time: once its pause is over, the multishot receive is
            // armed again.
            let mut seq = BACKLOG;
            let resumed = wait_until(|| {
                if got.borrow().len() == seq as usize {
                    if got.borrow().last().is_some_and(|&(_, pooled)| pooled) {
                        return true;
                    }
                    sender.send_to(&seq.to_le_bytes(), addr).unwrap();
                    seq += 1;
                }
                false
            })
            .await;
            assert!(resumed, "no datagram came by the multishot receive again");
            drop(receiver);
        });
    }
}
