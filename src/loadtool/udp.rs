//! The UDP load (`udp`): each "connection" is a connected UDP socket that sends a datagram and
//! waits for the reply, in a closed loop or on the open-loop timetable.
//!
//! A datagram may be lost; a reply that does not come within `--timeout` counts as a "timeout".
//! When the request has at least 8 bytes, its first 8 carry a sequence number, so a late reply
//! to an earlier request is told apart and skipped rather than taken for the current one.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use compio::BufResult;
use compio::net::UdpSocket;

use super::report::ErrorKind;
use super::runner::{Ctx, Schedule, next_due};

/// Bytes at the start of a request that carry its sequence number.
const SEQ_LEN: usize = 8;

async fn open(ctx: &Ctx) -> Result<UdpSocket, ErrorKind> {
    let local: SocketAddr = if ctx.plan.target.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|e| ErrorKind::of(&e))?;
    socket
        .connect(ctx.plan.target)
        .await
        .map_err(|e| ErrorKind::of(&e))?;
    ctx.counters.connections.add(1);
    Ok(socket)
}

/// `udp`: datagram request/response on one socket.
pub async fn rr(ctx: &Ctx, index: usize) {
    let plan = &*ctx.plan;
    let socket = match open(ctx).await {
        Ok(s) => s,
        Err(kind) => return ctx.error(kind).await,
    };
    let numbered = plan.request.len() >= SEQ_LEN;
    let mut schedule = Schedule::new(plan, index, ctx.start);
    let mut request = plan.request.clone();
    let capacity = plan.reply_size.max(plan.request.len());
    let mut reply = Some(Vec::with_capacity(capacity));
    // Distinct per socket, so a stray datagram from another socket never matches.
    let mut seq = (index as u64) << 32;
    while let Some(due) = next_due(ctx, &mut schedule).await {
        if !ctx.take_ticket() {
            return;
        }
        seq += 1;
        if numbered {
            request[..SEQ_LEN].copy_from_slice(&seq.to_le_bytes());
        }
        let sent = Instant::now();
        let BufResult(result, r) = socket.send(request).await;
        request = r;
        if let Err(e) = result {
            ctx.error(ErrorKind::of(&e)).await;
            continue;
        }
        ctx.counters.sent.add(request.len() as u64);
        let deadline = sent + plan.timeout;
        loop {
            let mut buf = reply.take().unwrap_or_else(|| Vec::with_capacity(capacity));
            buf.clear();
            match compio::time::timeout_at(deadline, socket.recv(buf)).await {
                // The buffer went with the cancelled receive; the next one is new.
                Err(_) => {
                    ctx.error(ErrorKind::Timeout).await;
                    break;
                }
                Ok(BufResult(Err(e), b)) => {
                    reply = Some(b);
                    ctx.error(ErrorKind::of(&e)).await;
                    break;
                }
                Ok(BufResult(Ok(n), b)) => {
                    let current = !numbered || (n >= SEQ_LEN && b[..SEQ_LEN] == request[..SEQ_LEN]);
                    let mismatch = plan.verify && b[..n] != request[..];
                    reply = Some(b);
                    if !current {
                        // A late reply to an earlier request: keep waiting for this one's.
                        continue;
                    }
                    ctx.counters.received.add(n as u64);
                    if mismatch {
                        ctx.error(ErrorKind::Mismatch).await;
                    } else {
                        let now = Instant::now();
                        let intended = if plan.rate.is_some() { due } else { sent };
                        ctx.completed(intended, sent, now);
                    }
                    break;
                }
            }
        }
    }
}
