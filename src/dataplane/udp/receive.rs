//! Receiving clients' datagrams on a UDP service's socket: a multishot receive into the worker's
//! buffer pool while it runs, the readiness-plus-syscall path while it cannot.
//!
//! Owns the service's receive loop and the choice between the two ways of receiving; each
//! datagram, however received, goes to [`UdpService::forward_up`]. Does not own what happens to
//! a datagram (the parent module) nor the buffer pool (the worker registers it; its buffers are
//! shared with the reply readers of `upstream`).
//!
//! See the parent module's "Receiving client datagrams" for why and when each way is used.

use std::future::Future;
use std::io;
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
    /// The multishot receive ended by itself: arm another at once.
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
    let mut drain = pin!(svc.worker.retiring(&svc.retire));
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_DATAGRAM);
    let mut candidates: Vec<usize> = Vec::new();
    // The multishot receive is used from this instant on.
    let mut multishot_from = Instant::now();
    loop {
        let ended = if Instant::now() >= multishot_from {
            receive_multishot(&svc, drain.as_mut(), &mut candidates).await
        } else {
            receive_fallback(&svc, drain.as_mut(), &mut buf, &mut candidates).await
        };
        match ended {
            Ended::Retired => break,
            Ended::Rearm | Ended::Received => {}
            Ended::FallBack(wait) => multishot_from = Instant::now() + wait,
        }
    }
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
    svc: &Rc<UdpService>,
    mut drain: Pin<&mut impl Future<Output = ()>>,
    candidates: &mut Vec<usize>,
) -> Ended {
    let stream = match arm(&svc.socket) {
        Ok(stream) => stream,
        Err(e) => return multishot_failed(svc, &e),
    };
    let mut stream = pin!(stream);
    loop {
        let item = match select(stream.next(), drain.as_mut()).await {
            Either::Left((item, _)) => item,
            // Dropping the stream cancels the receive; buffers it filled go back to the pool.
            Either::Right(_) => return Ended::Retired,
        };
        match item {
            Some(Ok(Some(datagram))) => svc.forward_pooled(datagram, candidates).await,
            // The kernel ended the receive (after its last datagram, if any): arm another.
            Some(Ok(None)) | None => return Ended::Rearm,
            // The pool had no buffer when a datagram arrived: the datagram is still queued on the
            // socket, where the fallback way reads it.
            Some(Err(e)) if is_pool_empty(&e) => return Ended::FallBack(REARM_AFTER_DRY),
            Some(Err(e)) => return multishot_failed(svc, &e),
        }
    }
}

/// The kernel refused or failed the multishot receive: the fallback way reads the socket for
/// [`REARM_AFTER_ERROR`].
fn multishot_failed(svc: &UdpService, e: &io::Error) -> Ended {
    if let Some(suppressed) = Reason::UdpReceive.admit() {
        tracing::debug!(service = %svc.name, error = %e, suppressed,
            "udp multishot receive failed: receiving without it for a while");
    }
    Ended::FallBack(REARM_AFTER_ERROR)
}

/// The fallback way: waits for one datagram with an io_uring `recvfrom` into the loop's own
/// buffer, then takes up to [`DRAIN_BATCH`] more already queued with non-blocking receives.
async fn receive_fallback(
    svc: &Rc<UdpService>,
    mut drain: Pin<&mut impl Future<Output = ()>>,
    buf: &mut Vec<u8>,
    candidates: &mut Vec<usize>,
) -> Ended {
    let mut owned = std::mem::take(buf);
    owned.clear();
    let recv = pin!(svc.socket.recv_from(owned));
    let BufResult(received, b) = match select(recv, drain.as_mut()).await {
        Either::Left((r, _)) => r,
        Either::Right(_) => return Ended::Retired,
    };
    owned = b;
    match received {
        Ok((_, client)) => {
            owned = svc.forward_up(owned, client, candidates).await;
            // Datagrams already queued are taken with non-blocking receives: one trip round the
            // event loop for a burst, not one per datagram.
            for _ in 0..DRAIN_BATCH {
                match recv_now(&svc.socket, &mut owned) {
                    Ok(Some(client)) => owned = svc.forward_up(owned, client, candidates).await,
                    Ok(None) => break,
                    Err(e) => {
                        if let Some(suppressed) = Reason::UdpReceive.admit() {
                            tracing::debug!(service = %svc.name, error = %e, suppressed,
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
                tracing::debug!(service = %svc.name, error = %e, suppressed,
                    "udp receive failed");
            }
            compio::time::sleep(RECV_ERROR_BACKOFF).await;
        }
    }
    *buf = owned;
    Ended::Received
}

impl UdpService {
    /// Sends on one datagram of the multishot receive, from its pool buffer, which then goes
    /// back to the pool.
    async fn forward_pooled(
        self: &Rc<Self>,
        datagram: RecvMsgMultiResult,
        candidates: &mut Vec<usize>,
    ) {
        let client = datagram.addr().and_then(|a| a.as_socket());
        let truncated = datagram.flags().contains(ReturnFlags::TRUNC);
        match client {
            // Pool buffers have room for the largest datagram and its header: never truncated.
            Some(client) if !truncated => {
                let len = datagram.data().len();
                let buffer = datagram.into_inner();
                // The payload is the end of the buffer, after the header and source address.
                let payload = buffer.buf_len() - len;
                drop(
                    self.forward_up(buffer.slice(payload..), client, candidates)
                        .await,
                );
            }
            _ => {
                self.current_state().counters.udp_datagrams_dropped.inc();
                if let Some(suppressed) = Reason::UdpReceive.admit() {
                    tracing::debug!(service = %self.name, truncated, suppressed,
                        "udp datagram without a source address or truncated: dropped");
                }
                drop(datagram);
            }
        }
        // The buffer is back in the pool.
        self.buffer_freed.notify(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
