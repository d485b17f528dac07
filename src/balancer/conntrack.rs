//! A worker's connection-tracking table: one entry per live proxied TCP connection.
//!
//! Owns: the bookkeeping of live connections (who, to which backend, state, since when, bytes
//! each way, last activity) and the table's bound. Does not own sockets, timers or the clock:
//! callers pass `now` in, so the table is tested without I/O.
//!
//! Each worker has its own table (no sharing, no locks). It is the source of truth for the
//! worker's live connections: the idle timeout reads `last_activity`, the drain waits for the
//! table to empty, and the admin API (`ringlb connections`) lists it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;

use super::ServiceId;

/// Where a tracked connection is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted; connecting to a backend.
    Connecting,
    /// Both directions open.
    Established,
    /// The client sent EOF; the backend-to-client direction still flows.
    ClientClosed,
    /// The backend sent EOF; the client-to-backend direction still flows.
    BackendClosed,
}

/// One tracked connection.
#[derive(Clone, Debug)]
pub struct Conn {
    /// The service's identity, stable across reloads.
    pub service: ServiceId,
    /// The backend's address, once chosen.
    pub backend: Option<SocketAddr>,
    /// The client's address.
    pub client: SocketAddr,
    /// Current state.
    pub state: ConnState,
    /// When the connection was accepted.
    pub started: Instant,
    /// When bytes last moved either way (or the connection was accepted).
    pub last_activity: Instant,
    /// Bytes from the client to the backend.
    pub bytes_up: u64,
    /// Bytes from the backend to the client.
    pub bytes_down: u64,
}

impl Conn {
    /// A connection just accepted from `client` for `service`.
    pub fn accepted(service: ServiceId, client: SocketAddr, now: Instant) -> Conn {
        Conn {
            service,
            backend: None,
            client,
            state: ConnState::Connecting,
            started: now,
            last_activity: now,
            bytes_up: 0,
            bytes_down: 0,
        }
    }
}

/// Handle of a tracked connection; valid until [`ConnTable::remove`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId(usize);

/// The table is full: the connection must not be admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("connection table full ({0} entries)")]
pub struct TableFull(pub usize);

/// A bounded table of live connections.
#[derive(Debug)]
pub struct ConnTable {
    conns: Slab<Conn>,
    capacity: usize,
    rejected: u64,
}

impl ConnTable {
    /// An empty table that holds at most `capacity` connections.
    pub fn new(capacity: usize) -> ConnTable {
        ConnTable {
            conns: Slab::new(),
            capacity,
            rejected: 0,
        }
    }

    /// Tracks a connection, or refuses it (and counts the refusal) when the table is full.
    pub fn insert(&mut self, conn: Conn) -> Result<ConnId, TableFull> {
        if self.conns.len() >= self.capacity {
            self.rejected += 1;
            return Err(TableFull(self.capacity));
        }
        Ok(ConnId(self.conns.insert(conn)))
    }

    /// Stops tracking a connection and returns its final record.
    pub fn remove(&mut self, id: ConnId) -> Option<Conn> {
        self.conns.try_remove(id.0)
    }

    /// The record of a live connection.
    pub fn get(&self, id: ConnId) -> Option<&Conn> {
        self.conns.get(id.0)
    }

    /// Records the chosen backend; the connection is now established.
    pub fn established(&mut self, id: ConnId, backend: SocketAddr, now: Instant) {
        if let Some(c) = self.conns.get_mut(id.0) {
            c.backend = Some(backend);
            c.state = ConnState::Established;
            c.last_activity = now;
        }
    }

    /// Records `n` bytes moved from the client to the backend.
    pub fn record_up(&mut self, id: ConnId, n: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(id.0) {
            c.bytes_up += n;
            c.last_activity = now;
        }
    }

    /// Records `n` bytes moved from the backend to the client.
    pub fn record_down(&mut self, id: ConnId, n: u64, now: Instant) {
        if let Some(c) = self.conns.get_mut(id.0) {
            c.bytes_down += n;
            c.last_activity = now;
        }
    }

    /// Records a half-close.
    pub fn set_state(&mut self, id: ConnId, state: ConnState) {
        if let Some(c) = self.conns.get_mut(id.0) {
            c.state = state;
        }
    }

    /// How long until the connection has been idle for `idle_timeout`: `None` when it already
    /// has (or is not tracked), so the caller closes it.
    pub fn idle_remaining(
        &self,
        id: ConnId,
        idle_timeout: Duration,
        now: Instant,
    ) -> Option<Duration> {
        let c = self.conns.get(id.0)?;
        let deadline = c.last_activity + idle_timeout;
        deadline
            .checked_duration_since(now)
            .filter(|d| !d.is_zero())
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether no connection is tracked.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The bound given at creation.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Connections refused because the table was full, since creation.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Live connections, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Conn> {
        self.conns.iter().map(|(_, c)| c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn full_table_refuses_and_counts() {
        let now = Instant::now();
        let mut t = ConnTable::new(2);
        let a = t
            .insert(Conn::accepted(ServiceId(0), client(1), now))
            .unwrap();
        t.insert(Conn::accepted(ServiceId(0), client(2), now))
            .unwrap();
        assert_eq!(
            t.insert(Conn::accepted(ServiceId(0), client(3), now)),
            Err(TableFull(2))
        );
        assert_eq!(t.rejected(), 1);
        t.remove(a).unwrap();
        assert!(
            t.insert(Conn::accepted(ServiceId(0), client(3), now))
                .is_ok()
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn bytes_and_activity_are_recorded_per_direction() {
        let t0 = Instant::now();
        let mut t = ConnTable::new(4);
        let id = t
            .insert(Conn::accepted(ServiceId(1), client(1), t0))
            .unwrap();
        t.established(id, client(2), t0);
        t.record_up(id, 10, t0 + Duration::from_secs(1));
        t.record_down(id, 7, t0 + Duration::from_secs(2));
        let c = t.get(id).unwrap();
        assert_eq!(
            (c.bytes_up, c.bytes_down, c.backend),
            (10, 7, Some(client(2)))
        );
        assert_eq!(c.state, ConnState::Established);
        assert_eq!(c.last_activity, t0 + Duration::from_secs(2));
    }

    #[test]
    fn idle_deadline_moves_with_activity() {
        let t0 = Instant::now();
        let idle = Duration::from_secs(10);
        let mut t = ConnTable::new(1);
        let id = t
            .insert(Conn::accepted(ServiceId(0), client(1), t0))
            .unwrap();
        assert_eq!(
            t.idle_remaining(id, idle, t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        t.record_up(id, 1, t0 + Duration::from_secs(8));
        assert_eq!(
            t.idle_remaining(id, idle, t0 + Duration::from_secs(12)),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            t.idle_remaining(id, idle, t0 + Duration::from_secs(18)),
            None
        );
    }

    #[test]
    fn removed_connection_is_gone() {
        let now = Instant::now();
        let mut t = ConnTable::new(1);
        let id = t
            .insert(Conn::accepted(ServiceId(0), client(1), now))
            .unwrap();
        assert!(t.remove(id).is_some());
        assert!(t.remove(id).is_none());
        assert!(t.is_empty());
        assert_eq!(t.idle_remaining(id, Duration::from_secs(1), now), None);
    }
}
