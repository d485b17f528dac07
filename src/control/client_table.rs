//! The per-client table of `[service.limits]`: for each client (an IPv4 address, or an IPv6
//! address cut to its `ipv6_prefix`), its live connections and its token bucket of new
//! connections, shared by every worker of the process.
//!
//! Owns: the table, its bound and its eviction order, the bucket arithmetic, and the permit a
//! connection holds while it is live. Does not own the decision of which check runs first or
//! what a refusal does (`super::access`), nor the counters in `/metrics` (the caller counts the
//! evictions this table reports).
//!
//! Bounded: the table holds at most `max_clients` entries, allocated when it is made; a new
//! client when it is full takes the place of the least recently seen one (an idle one among the
//! few least recent, when there is one), and that eviction is reported. A flood from a million
//! sources therefore costs a fixed amount of memory; what it loses is the history of the
//! clients it pushes out (an evicted client starts again with a full bucket and no live
//! connection counted; its live connections' permits then release nothing).
//!
//! Cost per connection: one hash of the key, one short lock of one of up to 64 shards (picked
//! by the hash), a map lookup and a few integer updates; a clock read only with a rate. No
//! allocation after the table is made: the slots and the map are sized for the shard's bound.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::time::Instant;

use crossbeam::utils::CachePadded;
use parking_lot::Mutex;

use crate::config::ClientLimits;

/// Most shards: enough that workers rarely meet on one lock.
const MAX_SHARDS: usize = 64;

/// How many of the least recent entries an insert looks at for one with no live connection.
const EVICTION_SCAN: usize = 4;

/// No slot.
const NIL: u32 = u32::MAX;

/// Why a client's new connection is refused by the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Over {
    /// It holds `max_connections_per_client` live connections already.
    Connections,
    /// Its bucket is empty (`connection_rate_per_client`).
    Rate,
}

/// A live connection's hold on its client's count; give it back with [`ClientTable::release`].
#[derive(Debug)]
pub struct Permit {
    shard: u32,
    slot: u32,
    generation: u64,
}

/// One client.
#[derive(Debug)]
struct Entry {
    key: u128,
    /// Which insert made this entry: a permit of an evicted entry releases nothing.
    generation: u64,
    /// Live connections.
    live: u32,
    /// Newer (toward the head) and older neighbours in the recency list.
    newer: u32,
    older: u32,
    /// Tokens in the bucket at `stamp` (nanoseconds since the table's origin).
    tokens: f64,
    stamp: u64,
}

/// One shard: its map, its slots and its recency list (head: most recent).
#[derive(Debug)]
struct Shard {
    map: HashMap<u128, u32, RandomState>,
    slots: Vec<Entry>,
    capacity: usize,
    head: u32,
    tail: u32,
    generations: u64,
}

/// The table of one service's clients.
#[derive(Debug)]
pub struct ClientTable {
    shards: Box<[CachePadded<Mutex<Shard>>]>,
    /// Picks a client's shard (keyed per table, so a sender cannot aim at one shard).
    hasher: RandomState,
    max_connections: u32,
    /// Tokens per nanosecond and the bucket's size; `None`: no rate limit.
    rate: Option<(f64, f64)>,
    ipv6_prefix: u8,
    origin: Instant,
}

impl ClientTable {
    /// An empty table for `limits`, with room for `max_clients` clients allocated now.
    pub fn new(limits: &ClientLimits) -> ClientTable {
        let total = limits.max_clients.max(1);
        let count = total.min(MAX_SHARDS);
        let shards = (0..count)
            .map(|i| {
                // The bound split exactly: the first `total % count` shards take one more.
                let capacity = total / count + usize::from(i < total % count);
                CachePadded::new(Mutex::new(Shard {
                    map: HashMap::with_capacity_and_hasher(capacity, RandomState::new()),
                    slots: Vec::with_capacity(capacity),
                    capacity,
                    head: NIL,
                    tail: NIL,
                    generations: 0,
                }))
            })
            .collect();
        ClientTable {
            shards,
            hasher: RandomState::new(),
            max_connections: limits.max_connections.unwrap_or(u32::MAX),
            rate: limits
                .rate
                .map(|r| (r.per_second() / 1e9, f64::from(limits.burst))),
            ipv6_prefix: limits.ipv6_prefix,
            origin: Instant::now(),
        }
    }

    /// The key of `ip`: an IPv4 address as itself (mapped into IPv6 space), an IPv6 address
    /// cut to the table's prefix.
    pub fn key(&self, ip: IpAddr) -> u128 {
        client_key(ip, self.ipv6_prefix)
    }

    /// One new connection of `ip`, now: a permit, or why it is over its limits. The `bool` is
    /// whether a client was evicted to make room for this one.
    pub fn admit(&self, ip: IpAddr) -> (Result<Permit, Over>, bool) {
        let key = self.key(ip);
        let now = match self.rate {
            Some(_) => self.origin.elapsed().as_nanos() as u64,
            None => 0,
        };
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        let mut shard = self.shards[index].lock();
        let shard = &mut *shard;
        if let Some(&slot) = shard.map.get(&key) {
            shard.touch(slot);
            let entry = &mut shard.slots[slot as usize];
            if entry.live >= self.max_connections {
                return (Err(Over::Connections), false);
            }
            if let Some((per_ns, burst)) = self.rate {
                let refilled = entry.tokens + now.saturating_sub(entry.stamp) as f64 * per_ns;
                entry.tokens = refilled.min(burst);
                entry.stamp = now;
                if entry.tokens < 1.0 {
                    return (Err(Over::Rate), false);
                }
                entry.tokens -= 1.0;
            }
            entry.live += 1;
            let permit = Permit {
                shard: index as u32,
                slot,
                generation: entry.generation,
            };
            return (Ok(permit), false);
        }
        let tokens = self.rate.map_or(0.0, |(_, burst)| burst - 1.0);
        if self.rate.is_some() && tokens < 0.0 {
            return (Err(Over::Rate), false);
        }
        let (slot, evicted) = shard.insert(key, tokens, now);
        let permit = Permit {
            shard: index as u32,
            slot,
            generation: shard.slots[slot as usize].generation,
        };
        (Ok(permit), evicted)
    }

    /// A connection admitted with `permit` has closed.
    pub fn release(&self, permit: &Permit) {
        let mut shard = self.shards[permit.shard as usize].lock();
        if let Some(entry) = shard.slots.get_mut(permit.slot as usize)
            && entry.generation == permit.generation
        {
            entry.live = entry.live.saturating_sub(1);
        }
    }

    /// Clients tracked now (never more than the table's bound).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map.len()).sum()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Live connections counted for `ip`'s client (0 when it is not tracked).
    pub fn live(&self, ip: IpAddr) -> u32 {
        let key = self.key(ip);
        let index = (self.hasher.hash_one(key) % self.shards.len() as u64) as usize;
        let shard = self.shards[index].lock();
        shard
            .map
            .get(&key)
            .map_or(0, |&slot| shard.slots[slot as usize].live)
    }
}

impl Shard {
    /// Moves `slot` to the head of the recency list.
    fn touch(&mut self, slot: u32) {
        if self.head == slot {
            return;
        }
        self.unlink(slot);
        self.push_front(slot);
    }

    fn unlink(&mut self, slot: u32) {
        let (newer, older) = {
            let e = &self.slots[slot as usize];
            (e.newer, e.older)
        };
        match newer {
            NIL => self.head = older,
            n => self.slots[n as usize].older = older,
        }
        match older {
            NIL => self.tail = newer,
            o => self.slots[o as usize].newer = newer,
        }
    }

    fn push_front(&mut self, slot: u32) {
        let old_head = self.head;
        {
            let e = &mut self.slots[slot as usize];
            e.newer = NIL;
            e.older = old_head;
        }
        if old_head != NIL {
            self.slots[old_head as usize].newer = slot;
        }
        self.head = slot;
        if self.tail == NIL {
            self.tail = slot;
        }
    }

    /// Adds a client with one live connection; full, the victim's slot is reused. Returns the
    /// slot and whether a client was evicted.
    fn insert(&mut self, key: u128, tokens: f64, now: u64) -> (u32, bool) {
        self.generations += 1;
        let entry = Entry {
            key,
            generation: self.generations,
            live: 1,
            newer: NIL,
            older: NIL,
            tokens,
            stamp: now,
        };
        let (slot, evicted) = if self.slots.len() < self.capacity {
            self.slots.push(entry);
            ((self.slots.len() - 1) as u32, false)
        } else {
            let victim = self.victim();
            self.unlink(victim);
            let old = std::mem::replace(&mut self.slots[victim as usize], entry);
            self.map.remove(&old.key);
            (victim, true)
        };
        self.map.insert(key, slot);
        self.push_front(slot);
        (slot, evicted)
    }

    /// The entry to evict: the least recent with no live connection among the last
    /// [`EVICTION_SCAN`], else the least recent.
    fn victim(&self) -> u32 {
        let mut at = self.tail;
        for _ in 0..EVICTION_SCAN {
            if at == NIL {
                break;
            }
            if self.slots[at as usize].live == 0 {
                return at;
            }
            at = self.slots[at as usize].newer;
        }
        self.tail
    }
}

/// `ip` as a table key: IPv4 (also written IPv4-mapped) as its mapped IPv6 bits; IPv6 with the
/// bits past `ipv6_prefix` cleared.
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().to_bits(),
        IpAddr::V6(v6) => {
            let keep = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - keep).unwrap_or(0);
            v6.to_bits() & mask
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;
    use crate::config::Rate;

    fn limits(max: Option<u32>, rate: Option<Rate>, burst: u32, clients: usize) -> ClientLimits {
        ClientLimits {
            max_connections: max,
            rate,
            burst,
            ipv6_prefix: 64,
            max_clients: clients,
        }
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n))
    }

    #[test]
    fn keys_group_ipv6_by_prefix_and_keep_ipv4_apart() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a, 64), client_key(b, 64));
        assert_ne!(client_key(a, 64), client_key(c, 64));
        assert_ne!(client_key(a, 128), client_key(b, 128));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped, 64), client_key(ip(1), 64));
        assert_ne!(client_key(ip(1), 64), client_key(ip(2), 64));
        assert_ne!(
            client_key("::1".parse().unwrap(), 64),
            client_key(ip(0), 64)
        );
    }

    #[test]
    fn live_connections_are_capped_and_released() {
        let table = ClientTable::new(&limits(Some(2), None, 0, 100));
        let (a, _) = table.admit(ip(1));
        let (b, _) = table.admit(ip(1));
        let a = a.unwrap();
        let b = b.unwrap();
        assert_eq!(table.admit(ip(1)).0.unwrap_err(), Over::Connections);
        assert!(
            table.admit(ip(2)).0.is_ok(),
            "another client has its own count"
        );
        assert_eq!(table.live(ip(1)), 2);
        table.release(&a);
        let c = table.admit(ip(1)).0.expect("a slot came back");
        table.release(&b);
        table.release(&c);
        assert_eq!(table.live(ip(1)), 0);
    }

    #[test]
    fn the_bucket_allows_its_burst_then_the_rate() {
        let rate = Rate {
            count: 10,
            per: Duration::from_millis(100),
        };
        let table = ClientTable::new(&limits(None, Some(rate), 3, 100));
        for _ in 0..3 {
            let p = table.admit(ip(1)).0.expect("within the burst");
            table.release(&p);
        }
        assert_eq!(table.admit(ip(1)).0.unwrap_err(), Over::Rate);
        // 100 per second: a token comes back within 10 ms.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match table.admit(ip(1)).0 {
                Ok(_) => break,
                Err(over) => assert_eq!(over, Over::Rate),
            }
            assert!(Instant::now() < deadline, "no token came back");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn the_table_stays_at_its_bound_and_reports_evictions() {
        let table = ClientTable::new(&limits(Some(5), None, 0, 1000));
        let mut evictions = 0;
        for n in 0..20_000 {
            let (permit, evicted) = table.admit(ip(n));
            let permit = permit.unwrap();
            evictions += usize::from(evicted);
            table.release(&permit);
        }
        assert_eq!(table.len(), 1000);
        assert_eq!(evictions, 20_000 - 1000);
    }

    #[test]
    fn an_evicted_clients_permit_releases_nothing_of_its_successor() {
        // One shard of one client: each new client evicts the last.
        let table = ClientTable::new(&limits(Some(1), None, 0, 1));
        let old = table.admit(ip(1)).0.unwrap();
        let (new, evicted) = table.admit(ip(2));
        assert!(evicted);
        let _new = new.unwrap();
        table.release(&old);
        assert_eq!(
            table.live(ip(2)),
            1,
            "the old permit did not touch the new entry"
        );
        assert_eq!(table.admit(ip(2)).0.unwrap_err(), Over::Connections);
    }

    #[test]
    fn eviction_takes_the_least_recent_idle_client_and_keeps_touched_ones() {
        let mut shard = Shard {
            map: HashMap::with_capacity_and_hasher(3, RandomState::new()),
            slots: Vec::with_capacity(3),
            capacity: 3,
            head: NIL,
            tail: NIL,
            generations: 0,
        };
        // Oldest first: 1 (live), 2 (idle), 3 (idle).
        for key in 1..=3 {
            assert!(!shard.insert(key, 0.0, 0).1);
        }
        for key in [2, 3] {
            let slot = shard.map[&key];
            shard.slots[slot as usize].live = 0;
        }
        // 3 seen again: now 2 is the least recent idle client.
        shard.touch(shard.map[&3]);
        assert!(shard.insert(4, 0.0, 0).1);
        let mut kept: Vec<u128> = shard.map.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(
            kept,
            [1, 3, 4],
            "the live client 1 stayed though least recent"
        );
        // Every entry live: the least recent goes.
        for slot in 0..3 {
            shard.slots[slot].live = 1;
        }
        assert!(shard.insert(5, 0.0, 0).1);
        let mut kept: Vec<u128> = shard.map.keys().copied().collect();
        kept.sort_unstable();
        assert_eq!(kept, [3, 4, 5]);
        assert_eq!(shard.map.len(), shard.slots.len());
    }
}
