//! Receiving clients' datagrams on a UDP service's socket: a multishot receive into the worker's
//! buffer pool while it runs, an io_uring `recvfrom` followed by non-blocking receives while it
//! cannot.
//!
//! Owns the service's receive loop and the choice between the two ways of receiving; each
//! datagram, however received, goes to one [`Handler`] (the service's is
//! [`UdpService::forward_up`]). Does not own what happens to a datagram (the parent module), the
//! multishot receive itself (`multishot`, shared with the reply readers of `replies`), nor the
//! buffer pool (the worker registers it; its buffers are shared with the reply readers).
//!
//! See the parent module's "Receiving client datagrams" for why and when each way is used.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::rc::Rc;

use compio::BufResult;
use compio::buf::IoBuf;
use compio::net::UdpSocket;
use futures_util::future::{Either, select};

use crate::control::log_limit::Reason;

use super::super::worker::LoopGuard;
use super::flow::End;
use super::multishot::{self, Pooled, Rearm};
use super::upstream::recv_now;
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

/// How a run of one way of receiving ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    /// The drain began or the service is retired.
    Retired,
    /// The multishot receive ended by itself after a datagram: arm another at once.
    Rearm,
    /// The multishot receive could not go on for a while (no free buffer, or an error).
    FallBack(std::time::Duration),
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
    let mut rearm = Rearm::now();
    loop {
        let ended = if rearm.due() {
            receive_multishot(socket, drain.as_mut(), handler).await
        } else {
            receive_fallback(socket, drain.as_mut(), &mut buf, handler).await
        };
        match ended {
            Ended::Retired => return,
            Ended::Rearm | Ended::Received => {}
            Ended::FallBack(wait) => rearm.fall_back(wait),
        }
    }
}

/// Receives datagrams with one multishot receive until it ends, the pool runs dry or the drain
/// begins.
async fn receive_multishot(
    socket: &UdpSocket,
    mut drain: Pin<&mut impl Future<Output = ()>>,
    handler: &mut impl Handler,
) -> Ended {
    let stream = match multishot::arm(socket) {
        Ok(stream) => stream,
        Err(e) => return Ended::FallBack(multishot::failed(handler.name(), &e)),
    };
    let mut stream = pin!(stream);
    let mut received = false;
    loop {
        let next = pin!(multishot::next(stream.as_mut(), &mut received));
        let next = match select(next, drain.as_mut()).await {
            Either::Left((next, _)) => next,
            // Dropping the stream cancels the receive; buffers it filled go back to the pool.
            Either::Right(_) => return Ended::Retired,
        };
        match next {
            Ok(datagram) => handle_pooled(Pooled::new(datagram), handler).await,
            Err(multishot::Ended::Rearm) => return Ended::Rearm,
            // The pool had no buffer when a datagram arrived: the datagram is still queued on the
            // socket, where the fallback way reads it.
            Err(multishot::Ended::FallBack(wait)) => return Ended::FallBack(wait),
            Err(multishot::Ended::Failed(e)) => {
                return Ended::FallBack(multishot::failed(handler.name(), &e));
            }
        }
    }
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
async fn handle_pooled(datagram: Pooled, handler: &mut impl Handler) {
    match datagram.source {
        Some(client) if !datagram.truncated => {
            drop(handler.datagram(datagram.payload, client).await);
        }
        _ => {
            handler.dropped();
            if let Some(suppressed) = Reason::UdpReceive.admit() {
                tracing::debug!(service = %handler.name(), truncated = datagram.truncated,
                    suppressed, "udp datagram without a source address or truncated: dropped");
            }
            drop(datagram);
        }
    }
    handler.buffer_back();
}

#[cfg(test)]
mod tests {
    use super::super::multishot::arm;
    use super::super::multishot::testing::{runtime, wait_within};
    use super::super::upstream::is_pool_empty;
    use super::*;
    use compio::buf::IntoInner;
    use compio::driver::op::ReturnFlags;
    use futures_util::StreamExt;
    use std::cell::RefCell;
    use std::time::Duration;

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
    async fn wait_until(done: impl FnMut() -> bool) -> bool {
        wait_within(Duration::from_secs(5), done).await
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
