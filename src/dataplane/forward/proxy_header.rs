//! The PROXY header of an accepted client (`accept_proxy`), read before anything else happens
//! to the connection.
//!
//! Owns: refusing a source outside `trusted`, reading the header off the socket within
//! `proxy_timeout`, counting and logging each refusal. The header's bytes are taken off the
//! socket and nothing more: each read first looks at what is queued (`MSG_PEEK`), then
//! consumes only what belongs to the header, so the client's own bytes that came in the same
//! segment stay queued for the backend. Does not own: the header's grammar and limits
//! (`crate::proxyproto`), nor the header written to backends (`connect`).

use std::net::SocketAddr;

use compio::net::TcpStream;

use crate::control::ServiceState;
use crate::control::log_limit::Reason;
use crate::proxyproto::{MAX_HEADER_LEN, Parse, Parsed, Reject, parse_header};

use super::super::sys::{peek_now, recv_now};
use super::readiness::readable;

/// The two ends of a client connection as ringlb reports them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Ends {
    /// The client: the connection's peer, or the source a trusted PROXY header gave.
    pub(super) client: SocketAddr,
    /// The address the client connected to: the header's destination, else the connection's
    /// local address; `None` when no backend header needs it (not looked up).
    pub(super) service: Option<SocketAddr>,
}

/// Reads the client's PROXY header when the service takes one: the ends the rest of the
/// connection uses, or `None` when the connection must be closed (refused and counted).
pub(super) async fn accept(
    state: &ServiceState,
    client: &TcpStream,
    peer: SocketAddr,
) -> Option<Ends> {
    let config = &state.config;
    let local = || {
        if state.sends_proxy {
            client.local_addr().ok()
        } else {
            None
        }
    };
    let Some(accept) = &config.accept_proxy else {
        return Some(Ends {
            client: peer,
            service: local(),
        });
    };
    let read = if accept.trusts(peer.ip()) {
        match compio::time::timeout(accept.timeout, read_header(client)).await {
            Ok(read) => read,
            Err(_) => Err(Reject::Timeout),
        }
    } else {
        Err(Reject::Untrusted)
    };
    match read {
        Ok(Parsed {
            addresses: Some((source, destination)),
            ..
        }) => Some(Ends {
            client: SocketAddr::new(source.ip().to_canonical(), source.port()),
            service: Some(destination),
        }),
        // LOCAL (or UNKNOWN): the connection's own addresses.
        Ok(Parsed {
            addresses: None, ..
        }) => Some(Ends {
            client: peer,
            service: local(),
        }),
        Err(reason) => {
            state.counters.proxy_rejected.inc(reason);
            if let Some(suppressed) = Reason::ProxyRejected.admit() {
                tracing::warn!(service = %config.name, client = %peer, reason = reason.as_str(),
                    suppressed, "PROXY header refused: client connection closed");
            }
            None
        }
    }
}

/// Reads one header, taking off the socket exactly its bytes.
async fn read_header(client: &TcpStream) -> Result<Parsed, Reject> {
    // The header's bytes taken so far, and what the last look found queued.
    let mut header = Vec::with_capacity(256);
    let mut queued = Vec::new();
    let mut scratch = Vec::new();
    loop {
        readable(client).await.map_err(|_| Reject::Closed)?;
        let room = MAX_HEADER_LEN - header.len();
        match peek_now(client, &mut queued, room) {
            Ok(Some(0)) | Err(_) => return Err(Reject::Closed),
            Ok(Some(_)) => {}
            Ok(None) => continue,
        }
        let taken = header.len();
        header.extend_from_slice(&queued);
        // Every byte looked at is the header's while it is incomplete, so all of it is taken;
        // once complete, only the rest of the header is.
        let (parsed, take) = match parse_header(&header)? {
            Parse::Complete(parsed) => (Some(parsed), parsed.len - taken),
            Parse::Incomplete => (None, queued.len()),
        };
        match recv_now(client, &mut scratch, take) {
            Ok(Some(n)) if n == take => {}
            _ => return Err(Reject::Closed),
        }
        if let Some(parsed) = parsed {
            return Ok(parsed);
        }
        if header.len() >= MAX_HEADER_LEN {
            return Err(Reject::Oversized);
        }
    }
}
