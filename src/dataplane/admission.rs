//! What the data plane does with the admission decision of `control::access`: a refused TCP
//! client is closed with a reset at once (`SO_LINGER` 0, so ringlb holds no socket of it in
//! TIME_WAIT); a refused UDP datagram is dropped and opens no flow.
//!
//! Owns only that handling. The decision, its counters and its log lines are
//! [`crate::control::access::admit`]'s; where it runs is the caller's (first thing in
//! `forward::serve`, on the client's address; a flow's first datagram in `udp`).

use std::net::SocketAddr;

use compio::net::TcpStream;

use crate::control::ServiceState;
use crate::control::access::{self, ClientGuard};

/// Admits `client` (the connection's client address) to `state`'s service, or sets `stream`
/// to reset when it is closed and returns `None`: the caller then drops it.
pub(super) fn admit_tcp<'a>(
    state: &'a ServiceState,
    stream: &TcpStream,
    client: SocketAddr,
) -> Option<ClientGuard<'a>> {
    match access::admit(state, client) {
        Ok(guard) => Some(guard),
        Err(_) => {
            if let Err(e) = stream.set_zero_linger() {
                tracing::debug!(error = %e, "cannot set SO_LINGER 0 on a refused client");
            }
            None
        }
    }
}

/// Whether a datagram from `client` may open a flow of `state`'s service.
pub(super) fn admit_datagram(state: &ServiceState, client: SocketAddr) -> bool {
    access::admit_datagram(state, client)
}
