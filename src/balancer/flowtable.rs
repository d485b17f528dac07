//! A worker's UDP flow table for one service: a bounded least-recently-used map from client
//! address to flow.
//!
//! Owns: which flows exist, their activity (datagrams and bytes each way, last activity), the
//! bound (`capacity`), eviction of the least recently used flow when full, expiry after the idle
//! timeout, and the `udp_replies` rule. Counts every eviction and expiry. Does not own sockets,
//! timers or the clock: `now` is passed in, and what a flow carries for the I/O layer (its
//! upstream socket, its reader task) is the opaque `V`, which the table only moves and drops.
//!
//! Structure: a [`Slab`] of nodes linked into one doubly linked list, most recently used at the
//! head, plus a `HashMap` from client address to slab index. Lookup, touch, insert, eviction and
//! removal are O(1); expiry pops from the tail, O(1) per expired flow. Memory is bounded by
//! `capacity` nodes whatever the number of client addresses: a new flow beyond the bound evicts
//! the least recently used one first.
//!
//! The map uses the standard library's keyed SipHash (`RandomState`): client addresses are chosen
//! by whoever sends datagrams, so an unkeyed hash would let a sender aim every flow at one bucket.
//!
//! Guarantees: `len() <= capacity()` after every call; the list holds exactly the flows of the
//! map; no method panics. Expiry relies on `now` never going backwards between calls (the data
//! plane passes `Instant::now()`); if it did, a flow could expire late by at most the skew.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use slab::Slab;

/// One tracked flow: a client address of one service, and what the I/O layer keeps for it.
#[derive(Debug)]
pub struct Flow<V> {
    /// The client's address (the table's key).
    pub client: SocketAddr,
    /// When the first datagram arrived.
    pub started: Instant,
    /// When a datagram last moved either way.
    pub last_activity: Instant,
    /// Datagrams from the client.
    pub datagrams_up: u64,
    /// Datagrams back to the client (replies).
    pub datagrams_down: u64,
    /// Bytes from the client.
    pub bytes_up: u64,
    /// Bytes back to the client.
    pub bytes_down: u64,
    /// The I/O layer's state for this flow (dropped with the flow).
    pub value: V,
}

/// What the `udp_replies` rule says after a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplyVerdict {
    /// The flow goes on.
    Continue,
    /// Every client datagram got its replies: the flow ends now.
    Done,
}

fn verdict<V>(flow: &Flow<V>, replies: Option<u32>) -> ReplyVerdict {
    match replies {
        Some(n) if flow.datagrams_down >= u64::from(n).saturating_mul(flow.datagrams_up) => {
            ReplyVerdict::Done
        }
        _ => ReplyVerdict::Continue,
    }
}

const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node<V> {
    prev: usize,
    next: usize,
    flow: Flow<V>,
}

/// The bounded LRU flow table. See the module documentation.
#[derive(Debug)]
pub struct FlowTable<V> {
    index: HashMap<SocketAddr, usize>,
    nodes: Slab<Node<V>>,
    /// Most recently used.
    head: usize,
    /// Least recently used: the next to be evicted or to expire.
    tail: usize,
    capacity: usize,
    idle_timeout: Duration,
    evicted: u64,
    expired: u64,
}

impl<V> FlowTable<V> {
    /// An empty table holding at most `capacity` flows (at least 1) that expire after
    /// `idle_timeout` without traffic. Memory grows with use, up to `capacity` entries.
    pub fn new(capacity: usize, idle_timeout: Duration) -> FlowTable<V> {
        FlowTable {
            index: HashMap::new(),
            nodes: Slab::new(),
            head: NIL,
            tail: NIL,
            capacity: capacity.max(1),
            idle_timeout,
            evicted: 0,
            expired: 0,
        }
    }

    /// The flow of `client`, without counting it as activity.
    pub fn get(&self, client: &SocketAddr) -> Option<&Flow<V>> {
        let &i = self.index.get(client)?;
        self.nodes.get(i).map(|n| &n.flow)
    }

    /// The flow of `client`, mutable, without counting it as activity.
    pub fn get_mut(&mut self, client: &SocketAddr) -> Option<&mut Flow<V>> {
        let &i = self.index.get(client)?;
        self.nodes.get_mut(i).map(|n| &mut n.flow)
    }

    /// Records a datagram of `bytes` from `client` at `now`: the flow becomes the most recently
    /// used. Returns the flow, or `None` when `client` has none (the caller then inserts one).
    pub fn record_up(
        &mut self,
        client: &SocketAddr,
        bytes: usize,
        now: Instant,
    ) -> Option<&mut Flow<V>> {
        let &i = self.index.get(client)?;
        self.move_to_head(i);
        let flow = &mut self.nodes.get_mut(i)?.flow;
        flow.datagrams_up += 1;
        flow.bytes_up += bytes as u64;
        flow.last_activity = now;
        Some(flow)
    }

    /// Records a reply of `bytes` to `client` at `now`: the flow becomes the most recently used.
    ///
    /// With `replies = Some(n)`, the flow is [`ReplyVerdict::Done`] once it has carried `n`
    /// replies for each client datagram (`udp_replies`, as nginx's `proxy_responses`): with
    /// `n = 1`, a DNS client that sends an A and an AAAA query from one port gets both answers
    /// before its flow ends. The caller removes a done flow. `None` when `client` has no flow.
    pub fn record_down(
        &mut self,
        client: &SocketAddr,
        bytes: usize,
        now: Instant,
        replies: Option<u32>,
    ) -> Option<ReplyVerdict> {
        let &i = self.index.get(client)?;
        self.move_to_head(i);
        let flow = &mut self.nodes.get_mut(i)?.flow;
        flow.datagrams_down += 1;
        flow.bytes_down += bytes as u64;
        flow.last_activity = now;
        Some(verdict(flow, replies))
    }

    /// What the `udp_replies` rule says of `client`'s flow now (see [`FlowTable::record_down`]).
    /// A caller that learnt [`ReplyVerdict::Done`] and then waited (e.g. sending the reply on)
    /// asks again before ending the flow: a client datagram that arrived meanwhile awaits its own
    /// replies. `None` when `client` has no flow.
    pub fn verdict(&self, client: &SocketAddr, replies: Option<u32>) -> Option<ReplyVerdict> {
        self.get(client).map(|f| verdict(f, replies))
    }

    /// Tracks a new flow for `client`, whose first datagram (of `bytes`) arrived at `now`.
    ///
    /// Returns the flow that had to go to keep the bound: the least recently used one when the
    /// table was full (counted in [`FlowTable::evicted`]), or the previous flow of the same client
    /// if there was one (replaced, not counted). The caller drops it, which releases its `V`.
    pub fn insert(
        &mut self,
        client: SocketAddr,
        bytes: usize,
        value: V,
        now: Instant,
    ) -> Option<Flow<V>> {
        let displaced = match self.remove(&client) {
            Some(old) => Some(old),
            None => self.make_room(),
        };
        let i = self.nodes.insert(Node {
            prev: NIL,
            next: NIL,
            flow: Flow {
                client,
                started: now,
                last_activity: now,
                datagrams_up: 1,
                datagrams_down: 0,
                bytes_up: bytes as u64,
                bytes_down: 0,
                value,
            },
        });
        self.push_head(i);
        self.index.insert(client, i);
        displaced
    }

    /// When the table is full, evicts the least recently used flow (counted in
    /// [`FlowTable::evicted`]) and returns it; otherwise does nothing. Lets a caller release the
    /// evicted flow's resources before it creates the new flow's, so the two never coexist.
    pub fn make_room(&mut self) -> Option<Flow<V>> {
        if self.nodes.len() < self.capacity {
            return None;
        }
        let flow = self.unlink_and_remove(self.tail)?;
        self.evicted += 1;
        Some(flow)
    }

    /// Stops tracking `client`'s flow and returns it.
    pub fn remove(&mut self, client: &SocketAddr) -> Option<Flow<V>> {
        let i = self.index.get(client).copied()?;
        self.unlink_and_remove(i)
    }

    /// Removes and returns the least recently used flow if it has been idle for the idle timeout
    /// at `now` (counted in [`FlowTable::expired`]). Call until `None` to expire every idle flow;
    /// each call is O(1).
    pub fn pop_expired(&mut self, now: Instant) -> Option<Flow<V>> {
        let tail = self.nodes.get(self.tail)?;
        if tail.flow.last_activity + self.idle_timeout > now {
            return None;
        }
        let flow = self.unlink_and_remove(self.tail)?;
        self.expired += 1;
        Some(flow)
    }

    /// When the least recently used flow will have been idle for the idle timeout (the earliest
    /// expiry), or `None` when the table is empty. A flow inserted later expires no earlier than
    /// its insertion time plus the idle timeout.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.nodes
            .get(self.tail)
            .map(|n| n.flow.last_activity + self.idle_timeout)
    }

    /// Removes every flow, returning them (most recently used first).
    pub fn drain(&mut self) -> Vec<Flow<V>> {
        let mut out = Vec::with_capacity(self.nodes.len());
        while let Some(flow) = self.unlink_and_remove(self.head) {
            out.push(flow);
        }
        out
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The bound given at creation (at least 1).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The idle timeout given at creation.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Flows evicted to make room since creation.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Flows expired by the idle timeout since creation.
    pub fn expired(&self) -> u64 {
        self.expired
    }

    /// Client addresses from the most to the least recently used.
    pub fn clients_by_recency(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let mut i = self.head;
        std::iter::from_fn(move || {
            let node = self.nodes.get(i)?;
            i = node.next;
            Some(node.flow.client)
        })
    }

    fn unlink(&mut self, i: usize) {
        let Some(node) = self.nodes.get(i) else {
            return;
        };
        let (prev, next) = (node.prev, node.next);
        match self.nodes.get_mut(prev) {
            Some(p) => p.next = next,
            None => self.head = next,
        }
        match self.nodes.get_mut(next) {
            Some(n) => n.prev = prev,
            None => self.tail = prev,
        }
    }

    fn push_head(&mut self, i: usize) {
        let old = self.head;
        if let Some(node) = self.nodes.get_mut(i) {
            node.prev = NIL;
            node.next = old;
        }
        match self.nodes.get_mut(old) {
            Some(h) => h.prev = i,
            None => self.tail = i,
        }
        self.head = i;
    }

    fn move_to_head(&mut self, i: usize) {
        if self.head != i {
            self.unlink(i);
            self.push_head(i);
        }
    }

    fn unlink_and_remove(&mut self, i: usize) -> Option<Flow<V>> {
        if !self.nodes.contains(i) {
            return None;
        }
        self.unlink(i);
        let node = self.nodes.remove(i);
        self.index.remove(&node.flow.client);
        Some(node.flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const IDLE: Duration = Duration::from_secs(30);

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    fn order(t: &FlowTable<u32>) -> Vec<u16> {
        t.clients_by_recency().map(|c| c.port()).collect()
    }

    #[test]
    fn full_table_evicts_the_least_recently_used_and_counts_it() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(3, IDLE);
        for p in 1..=3 {
            assert!(t.insert(client(p), 10, u32::from(p), t0).is_none());
        }
        // Touching 1 makes 2 the least recently used.
        t.record_up(&client(1), 5, t0).unwrap();
        let gone = t.insert(client(4), 10, 4, t0).expect("an eviction");
        assert_eq!((gone.client, gone.value), (client(2), 2));
        assert_eq!(t.evicted(), 1);
        assert_eq!(t.len(), 3);
        assert_eq!(order(&t), [4, 1, 3]);
        assert!(t.get(&client(2)).is_none());
    }

    #[test]
    fn make_room_evicts_only_when_full() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(2, IDLE);
        t.insert(client(1), 1, 1, t0);
        assert!(t.make_room().is_none());
        t.insert(client(2), 1, 2, t0);
        assert_eq!(t.make_room().unwrap().client, client(1));
        assert_eq!((t.len(), t.evicted()), (1, 1));
        assert!(t.insert(client(3), 1, 3, t0).is_none());
    }

    #[test]
    fn replies_also_count_as_activity() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(2, IDLE);
        t.insert(client(1), 1, 1, t0);
        t.insert(client(2), 1, 2, t0);
        t.record_down(&client(1), 1, t0, None).unwrap();
        let gone = t.insert(client(3), 1, 3, t0).unwrap();
        assert_eq!(gone.client, client(2));
    }

    #[test]
    fn inserting_an_existing_client_replaces_without_counting_an_eviction() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(1, IDLE);
        t.insert(client(1), 1, 1, t0);
        let old = t.insert(client(1), 1, 2, t0).unwrap();
        assert_eq!(old.value, 1);
        assert_eq!(t.get(&client(1)).unwrap().value, 2);
        assert_eq!((t.len(), t.evicted()), (1, 0));
    }

    #[test]
    fn idle_flows_expire_oldest_first_and_activity_postpones_expiry() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut t = FlowTable::new(10, s(10));
        t.insert(client(1), 1, 1, t0);
        t.insert(client(2), 1, 2, t0 + s(2));
        t.insert(client(3), 1, 3, t0 + s(4));
        assert_eq!(t.next_expiry(), Some(t0 + s(10)));
        t.record_down(&client(1), 1, t0 + s(5), None).unwrap();
        assert_eq!(t.next_expiry(), Some(t0 + s(12)));
        assert!(t.pop_expired(t0 + s(11)).is_none());
        assert_eq!(t.pop_expired(t0 + s(12)).unwrap().client, client(2));
        assert!(t.pop_expired(t0 + s(12)).is_none());
        let now = t0 + s(15);
        let expired: Vec<_> = std::iter::from_fn(|| t.pop_expired(now))
            .map(|f| f.client.port())
            .collect();
        assert_eq!(expired, [3, 1]);
        assert_eq!(t.expired(), 3);
        assert!(t.is_empty());
        assert_eq!(t.next_expiry(), None);
    }

    #[test]
    fn counts_and_bytes_are_kept_per_direction() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(4, IDLE);
        t.insert(client(1), 100, 0, t0);
        t.record_up(&client(1), 50, t0).unwrap();
        t.record_down(&client(1), 7, t0, None).unwrap();
        let f = t.get(&client(1)).unwrap();
        assert_eq!(
            (f.datagrams_up, f.bytes_up, f.datagrams_down, f.bytes_down),
            (2, 150, 1, 7)
        );
        assert!(t.record_up(&client(9), 1, t0).is_none());
        assert!(t.record_down(&client(9), 1, t0, Some(1)).is_none());
    }

    #[test]
    fn replies_rule_waits_for_every_request_to_be_answered() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(4, IDLE);
        // One query, one answer: done.
        t.insert(client(1), 40, 0, t0);
        assert_eq!(
            t.record_down(&client(1), 90, t0, Some(1)),
            Some(ReplyVerdict::Done)
        );
        // Two queries from one port (A and AAAA): the first answer does not end the flow.
        t.insert(client(2), 40, 0, t0);
        assert_eq!(t.verdict(&client(2), Some(1)), Some(ReplyVerdict::Continue));
        t.record_up(&client(2), 40, t0).unwrap();
        assert_eq!(
            t.record_down(&client(2), 90, t0, Some(1)),
            Some(ReplyVerdict::Continue)
        );
        assert_eq!(
            t.record_down(&client(2), 90, t0, Some(1)),
            Some(ReplyVerdict::Done)
        );
        // A query that arrives after an answer was counted reopens the question.
        t.insert(client(5), 40, 0, t0);
        assert_eq!(
            t.record_down(&client(5), 90, t0, Some(1)),
            Some(ReplyVerdict::Done)
        );
        t.record_up(&client(5), 40, t0).unwrap();
        assert_eq!(t.verdict(&client(5), Some(1)), Some(ReplyVerdict::Continue));
        assert_eq!(t.verdict(&client(9), Some(1)), None);
        // Two replies expected per request.
        t.insert(client(3), 40, 0, t0);
        assert_eq!(
            t.record_down(&client(3), 1, t0, Some(2)),
            Some(ReplyVerdict::Continue)
        );
        assert_eq!(
            t.record_down(&client(3), 1, t0, Some(2)),
            Some(ReplyVerdict::Done)
        );
        // Without the option, flows never end by replies.
        t.insert(client(4), 1, 0, t0);
        for _ in 0..5 {
            assert_eq!(
                t.record_down(&client(4), 1, t0, None),
                Some(ReplyVerdict::Continue)
            );
        }
    }

    #[test]
    fn removal_and_drain_empty_the_table() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(4, IDLE);
        for p in 1..=4 {
            t.insert(client(p), 1, u32::from(p), t0);
        }
        assert_eq!(t.remove(&client(3)).unwrap().value, 3);
        assert!(t.remove(&client(3)).is_none());
        assert_eq!(order(&t), [4, 2, 1]);
        let all: Vec<_> = t.drain().into_iter().map(|f| f.value).collect();
        assert_eq!(all, [4, 2, 1]);
        assert!(t.is_empty());
        assert_eq!(order(&t), Vec::<u16>::new());
        assert_eq!((t.evicted(), t.expired()), (0, 0));
    }

    #[test]
    fn capacity_zero_is_treated_as_one() {
        let t0 = Instant::now();
        let mut t = FlowTable::new(0, IDLE);
        t.insert(client(1), 1, 1, t0);
        assert_eq!(t.insert(client(2), 1, 2, t0).unwrap().client, client(1));
        assert_eq!(t.len(), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Up(u16),
        Down(u16),
        Remove(u16),
        /// Advance the clock by this many seconds, then expire.
        Tick(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Up to 64 distinct clients against tables of 1 to 16 flows: plenty of evictions.
        prop_oneof![
            4 => (0u16..64).prop_map(Op::Up),
            2 => (0u16..64).prop_map(Op::Down),
            1 => (0u16..64).prop_map(Op::Remove),
            1 => (0u8..20).prop_map(Op::Tick),
        ]
    }

    proptest! {
        /// The table against a plain model (a Vec ordered most recent first).
        #[test]
        fn table_matches_a_model_and_never_exceeds_its_bound(
            capacity in 1usize..=16,
            ops in prop::collection::vec(op(), 1..400),
        ) {
            let idle = Duration::from_secs(30);
            let t0 = Instant::now();
            let mut now = t0;
            let mut t: FlowTable<u16> = FlowTable::new(capacity, idle);
            // (port, last activity)
            let mut model: Vec<(u16, Instant)> = Vec::new();
            let (mut evicted, mut expired) = (0u64, 0u64);
            for op in ops {
                match op {
                    Op::Up(p) => {
                        let pos = model.iter().position(|&(q, _)| q == p);
                        if t.record_up(&client(p), 1, now).is_some() {
                            let pos = pos.expect("model has it");
                            model.remove(pos);
                        } else {
                            prop_assert!(pos.is_none());
                            let gone = t.insert(client(p), 1, p, now);
                            if model.len() == capacity {
                                let (lru, _) = model.pop().unwrap();
                                prop_assert_eq!(gone.map(|f| f.value), Some(lru));
                                evicted += 1;
                            } else {
                                prop_assert!(gone.is_none());
                            }
                        }
                        model.insert(0, (p, now));
                    }
                    Op::Down(p) => {
                        let pos = model.iter().position(|&(q, _)| q == p);
                        let seen = t.record_down(&client(p), 1, now, None);
                        prop_assert_eq!(seen.is_some(), pos.is_some());
                        if let Some(pos) = pos {
                            model.remove(pos);
                            model.insert(0, (p, now));
                        }
                    }
                    Op::Remove(p) => {
                        let pos = model.iter().position(|&(q, _)| q == p);
                        prop_assert_eq!(t.remove(&client(p)).map(|f| f.value), pos.map(|i| model[i].0));
                        if let Some(pos) = pos {
                            model.remove(pos);
                        }
                    }
                    Op::Tick(secs) => {
                        now += Duration::from_secs(u64::from(secs));
                        while let Some(f) = t.pop_expired(now) {
                            let (p, last) = model.pop().expect("model has the expired flow");
                            prop_assert_eq!(f.value, p);
                            prop_assert!(last + idle <= now);
                            expired += 1;
                        }
                        if let Some(&(_, last)) = model.last() {
                            prop_assert!(last + idle > now, "an idle flow was left behind");
                        }
                    }
                }
                prop_assert!(t.len() <= capacity);
                prop_assert_eq!(t.len(), model.len());
                let order: Vec<u16> = t.clients_by_recency().map(|c| c.port()).collect();
                let expected: Vec<u16> = model.iter().map(|&(p, _)| p).collect();
                prop_assert_eq!(order, expected);
                prop_assert_eq!(t.evicted(), evicted);
                prop_assert_eq!(t.expired(), expired);
                prop_assert_eq!(t.next_expiry(), model.last().map(|&(_, l)| l + idle));
            }
        }
    }
}
