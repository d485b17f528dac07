//! A multishot `recvmsg` into the worker's buffer pool, and what its completions mean: the one
//! way both kinds of UDP socket are read while it runs (the service's socket by `receive`, each
//! link's upstream socket by `replies`).
//!
//! Owns: arming the receive, telling a datagram from the ways the receive ends (after its last
//! datagram, the pool dry, an error), where a datagram's payload and source are in its pool
//! buffer, and when a socket may arm its next multishot receive after one could not go on. Does
//! not own what is done with a datagram, nor the fallback way of reading a socket (each reader
//! has its own), nor the buffer pool (the worker registers it).
//!
//! See the parent module's "Receiving client datagrams" and "Receiving replies" for why and when
//! it is used.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::{Duration, Instant};

use compio::buf::{IntoInner, IoBuf, Slice};
use compio::driver::op::{RecvFlags, RecvMsgMulti, RecvMsgMultiResult, ReturnFlags};
use compio::driver::{BufferRef, ToSharedFd};
use compio::net::UdpSocket;
use futures_util::{Stream, StreamExt};

use crate::control::log_limit::Reason;

use super::upstream::is_pool_empty;

/// How long a socket is read the fallback way after the buffer pool ran dry under its multishot
/// receive (or after one ended without a datagram), before a multishot receive is armed again:
/// long enough for the backlog to be read and the buffers to come back, short enough that a
/// burst moves the socket off the multishot receive only briefly.
pub(super) const REARM_AFTER_DRY: Duration = Duration::from_millis(20);

/// How long a socket is read the fallback way after the kernel refused or failed a multishot
/// receive, before one is tried again (a kernel without it fails every try, once per this
/// period).
pub(super) const REARM_AFTER_ERROR: Duration = Duration::from_secs(1);

/// One item of a multishot receive's stream: a datagram, the end without one, or the error that
/// ended it.
pub(super) type Item = io::Result<Option<RecvMsgMultiResult>>;

/// A multishot `recvmsg` of `socket` into the worker's buffer pool: one completion per datagram
/// (with its source and a header, in a pool buffer), no readiness poll, no receive that finds
/// nothing. Dropping the stream cancels the receive; buffers it filled and did not hand out go
/// back to the pool, and the fd it holds is released once the kernel confirms the cancellation.
pub(super) fn arm(socket: &UdpSocket) -> io::Result<impl Stream<Item = Item> + use<>> {
    compio::runtime::Runtime::with_current(|rt| {
        let pool = rt.buffer_pool()?;
        let op = RecvMsgMulti::new(socket.to_shared_fd(), &pool, 0, RecvFlags::empty())?;
        // No ancillary data: the control length is 0.
        Ok(rt.submit_multi(op).into_managed_with(pool, 0))
    })
}

/// How a multishot receive ended.
#[derive(Debug)]
pub(super) enum Ended {
    /// The kernel ended it after a datagram: arm another at once.
    Rearm,
    /// It cannot go on for this long: the pool had no buffer when a datagram arrived (the
    /// datagram is still queued on the socket), or it ended without any datagram (so a receive
    /// that keeps ending at once cannot spin).
    FallBack(Duration),
    /// The kernel refused it or it failed with this error.
    Failed(io::Error),
}

/// The next datagram of a multishot receive, or how the receive ended. `received` tells
/// whether it has delivered a datagram yet (set here). Cancel-safe: dropping the future loses
/// nothing.
pub(super) async fn next<S: Stream<Item = Item>>(
    mut stream: Pin<&mut S>,
    received: &mut bool,
) -> Result<RecvMsgMultiResult, Ended> {
    match stream.next().await {
        Some(Ok(Some(datagram))) => {
            *received = true;
            Ok(datagram)
        }
        Some(Ok(None)) | None if *received => Err(Ended::Rearm),
        Some(Ok(None)) | None => Err(Ended::FallBack(REARM_AFTER_DRY)),
        Some(Err(e)) if is_pool_empty(&e) => Err(Ended::FallBack(REARM_AFTER_DRY)),
        Some(Err(e)) => Err(Ended::Failed(e)),
    }
}

/// Logs (rate-limited) that the kernel refused or failed a multishot receive on `socket_of`'s
/// socket; returns how long the socket is read the fallback way: [`REARM_AFTER_ERROR`].
pub(super) fn failed(socket_of: &str, e: &io::Error) -> Duration {
    if let Some(suppressed) = Reason::UdpReceive.admit() {
        tracing::debug!(service = %socket_of, error = %e, suppressed,
            "udp multishot receive failed: receiving without it for a while");
    }
    REARM_AFTER_ERROR
}

/// A datagram of a multishot receive, taken apart.
pub(super) struct Pooled {
    /// Its source (`None` when the kernel reported none).
    pub(super) source: Option<SocketAddr>,
    /// Whether it was cut to the buffer. Pool buffers have room for the largest datagram and the
    /// header before it ([`MAX_DATAGRAM`](super::MAX_DATAGRAM)), so never in practice.
    pub(super) truncated: bool,
    /// The payload: the end of the pool buffer, after the header and source address. The buffer
    /// goes back to the pool when this is dropped.
    pub(super) payload: Slice<BufferRef>,
}

impl Pooled {
    pub(super) fn new(datagram: RecvMsgMultiResult) -> Pooled {
        let source = datagram.addr().and_then(|a| a.as_socket());
        let truncated = datagram.flags().contains(ReturnFlags::TRUNC);
        let len = datagram.data().len();
        let buffer = datagram.into_inner();
        let start = buffer.buf_len() - len;
        Pooled {
            source,
            truncated,
            payload: buffer.slice(start..),
        }
    }
}

/// When a socket may arm its next multishot receive.
#[derive(Debug)]
pub(super) struct Rearm {
    /// The multishot receive is used from this instant on.
    from: Instant,
}

impl Rearm {
    /// A multishot receive may be armed at once.
    pub(super) fn now() -> Rearm {
        Rearm {
            from: Instant::now(),
        }
    }

    /// Whether a multishot receive may be armed now.
    pub(super) fn due(&self) -> bool {
        Instant::now() >= self.from
    }

    /// The socket is read the fallback way for `wait` before a multishot receive is armed
    /// again.
    pub(super) fn fall_back(&mut self, wait: Duration) {
        self.from = Instant::now() + wait;
    }
}

/// What the unit tests of the multishot receive's users share.
#[cfg(test)]
pub(super) mod testing {
    use std::num::NonZeroU16;
    use std::time::{Duration, Instant};

    use super::super::MAX_DATAGRAM;

    /// A runtime whose buffer pool is the worker's: `buffers` buffers of [`MAX_DATAGRAM`] bytes.
    pub(in super::super) fn runtime(buffers: u16) -> compio::runtime::Runtime {
        let mut proactor = compio::driver::ProactorBuilder::new();
        proactor
            .buffer_pool_size(NonZeroU16::new(buffers).unwrap())
            .buffer_pool_buffer_len(MAX_DATAGRAM);
        compio::runtime::RuntimeBuilder::new()
            .with_proactor(proactor)
            .build()
            .unwrap()
    }

    /// Polls `done` every millisecond for up to `timeout`; whether it came true.
    pub(in super::super) async fn wait_within(
        timeout: Duration,
        mut done: impl FnMut() -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while !done() {
            if Instant::now() > deadline {
                return false;
            }
            compio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }
}
