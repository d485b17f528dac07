//! The stick table of session persistence: client IP -> the backend it was last sent to.
//!
//! Owns: the entries, their expiry (`ttl` after last use) and the table's bound (`max_entries`,
//! with evictions counted). Does not own: whether an entry is honoured (the caller checks that
//! the backend is still ready and in the active group), the clock (`now` is passed in), or I/O.
//!
//! One table per service, shared by every worker: it is split into shards, each a small map
//! behind its own `parking_lot` mutex, chosen by a hash of the IP, so workers rarely meet on a
//! lock and a lock is held only for a map lookup or insert (never across I/O).
//!
//! Backends are stored by address, not by index, so an entry keeps meaning the same server
//! when the backend set around it changes (a reload adding or removing other backends).
//!
//! Bound: the shards' capacities add up to exactly `max_entries`. When a shard is full, an
//! insert first drops expired entries among a sample, else evicts the least recently used of
//! a sample of [`EVICTION_SAMPLE`] entries (Redis's approximated LRU): O(1) per insert instead of
//! a scan or a second linked structure.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Most shards a table is split into. 64 keeps the chance that two of up to a few dozen workers
/// want the same shard at once small, while a shard still holds `max_entries / 64` entries.
pub const MAX_SHARDS: usize = 64;

/// Entries looked at to choose one to evict. Redis uses 5 by default and found 10 close to true
/// LRU; 8 is between.
pub const EVICTION_SAMPLE: usize = 8;

#[derive(Clone, Copy, Debug)]
struct Entry {
    client: IpAddr,
    backend: SocketAddr,
    /// Last use + ttl.
    expires: Instant,
}

#[derive(Debug)]
struct Shard {
    /// Client -> position in `entries`.
    index: HashMap<IpAddr, usize>,
    /// Dense, so a random sample is a random position.
    entries: Vec<Entry>,
    capacity: usize,
    /// xorshift state for sampling.
    rng: u64,
}

impl Shard {
    fn remove_at(&mut self, pos: usize) {
        let removed = self.entries.swap_remove(pos);
        self.index.remove(&removed.client);
        if let Some(moved) = self.entries.get(pos) {
            self.index.insert(moved.client, pos);
        }
    }

    fn next_random(&mut self) -> u64 {
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng = x;
        x
    }
}

/// What the table has done since it was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StickStats {
    /// Entries held now (expired ones not yet removed included).
    pub entries: usize,
    /// Live entries dropped to make room for another client.
    pub evictions: u64,
    /// Entries removed because their ttl had passed.
    pub expired: u64,
}

/// A bounded, sharded map of client IP to backend address with a time to live.
#[derive(Debug)]
pub struct StickTable {
    shards: Box<[Mutex<Shard>]>,
    ttl: Duration,
    max_entries: usize,
    evictions: AtomicU64,
    expired: AtomicU64,
}

impl StickTable {
    /// A table of at most `max_entries` (at least 1) entries, each living `ttl` after last use.
    pub fn new(ttl: Duration, max_entries: usize) -> StickTable {
        let max_entries = max_entries.max(1);
        let shard_count = max_entries.min(MAX_SHARDS);
        let base = max_entries / shard_count;
        let extra = max_entries % shard_count;
        let shards = (0..shard_count)
            .map(|i| {
                Mutex::new(Shard {
                    index: HashMap::new(),
                    entries: Vec::new(),
                    capacity: base + usize::from(i < extra),
                    rng: 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1),
                })
            })
            .collect();
        StickTable {
            shards,
            ttl,
            max_entries,
            evictions: AtomicU64::new(0),
            expired: AtomicU64::new(0),
        }
    }

    /// How long an entry lives after its last use.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The bound on entries.
    pub fn max_entries(&self) -> usize {
        self.max_entries
    }

    fn shard(&self, client: IpAddr) -> &Mutex<Shard> {
        let hash = match client {
            IpAddr::V4(v4) => xxhash_rust::xxh3::xxh3_64(&v4.octets()),
            IpAddr::V6(v6) => xxhash_rust::xxh3::xxh3_64(&v6.octets()),
        };
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    /// The backend `client` sticks to, unless there is none or it expired (then it is removed).
    /// Does not refresh: call [`StickTable::stick`] once the connection is made.
    pub fn lookup(&self, client: IpAddr, now: Instant) -> Option<SocketAddr> {
        let mut shard = self.shard(client).lock();
        let pos = *shard.index.get(&client)?;
        let entry = shard.entries[pos];
        if entry.expires <= now {
            shard.remove_at(pos);
            self.expired.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(entry.backend)
    }

    /// Makes `client` stick to `backend` until `now + ttl` (inserting, moving or refreshing).
    pub fn stick(&self, client: IpAddr, backend: SocketAddr, now: Instant) {
        let expires = now + self.ttl;
        let mut shard = self.shard(client).lock();
        if let Some(&pos) = shard.index.get(&client) {
            shard.entries[pos].backend = backend;
            shard.entries[pos].expires = expires;
            return;
        }
        if shard.entries.len() >= shard.capacity {
            self.make_room(&mut shard, now);
        }
        let pos = shard.entries.len();
        shard.entries.push(Entry {
            client,
            backend,
            expires,
        });
        shard.index.insert(client, pos);
    }

    /// Removes one entry of a full shard: an expired one among the sample if there is one,
    /// else the sampled entry used longest ago.
    fn make_room(&self, shard: &mut Shard, now: Instant) {
        let len = shard.entries.len();
        if len == 0 {
            return;
        }
        let mut oldest = None::<(usize, Instant)>;
        for _ in 0..EVICTION_SAMPLE.min(len) {
            let pos = (shard.next_random() % len as u64) as usize;
            let expires = shard.entries[pos].expires;
            if expires <= now {
                shard.remove_at(pos);
                self.expired.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if oldest.is_none_or(|(_, e)| expires < e) {
                oldest = Some((pos, expires));
            }
        }
        if let Some((pos, _)) = oldest {
            shard.remove_at(pos);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets `client`.
    pub fn remove(&self, client: IpAddr) {
        let mut shard = self.shard(client).lock();
        if let Some(pos) = shard.index.get(&client).copied() {
            shard.remove_at(pos);
        }
    }

    /// Entries held and counts of evictions and expiries. Locks each shard in turn.
    pub fn stats(&self) -> StickStats {
        StickStats {
            entries: self.shards.iter().map(|s| s.lock().entries.len()).sum(),
            evictions: self.evictions.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    fn t(ms: u64) -> Instant {
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    fn ip(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n))
    }

    fn backend(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_client_sticks_until_ttl_after_its_last_use() {
        let table = StickTable::new(Duration::from_secs(10), 100);
        assert_eq!(table.lookup(ip(1), t(0)), None);
        table.stick(ip(1), backend(1), t(0));
        assert_eq!(table.lookup(ip(1), t(9_999)), Some(backend(1)));
        // Used again at 9 s: lives until 19 s.
        table.stick(ip(1), backend(1), t(9_000));
        assert_eq!(table.lookup(ip(1), t(18_999)), Some(backend(1)));
        assert_eq!(table.lookup(ip(1), t(19_000)), None);
        assert_eq!(table.stats().expired, 1);
        assert_eq!(table.stats().entries, 0, "the expired entry is gone");
    }

    #[test]
    fn sticking_again_moves_a_client_to_its_new_backend() {
        let table = StickTable::new(Duration::from_secs(10), 100);
        table.stick(ip(1), backend(1), t(0));
        table.stick(ip(1), backend(2), t(1));
        assert_eq!(table.lookup(ip(1), t(2)), Some(backend(2)));
        assert_eq!(table.stats().entries, 1);
        table.remove(ip(1));
        assert_eq!(table.lookup(ip(1), t(2)), None);
    }

    #[test]
    fn lookups_do_not_refresh() {
        let table = StickTable::new(Duration::from_secs(1), 10);
        table.stick(ip(1), backend(1), t(0));
        assert!(table.lookup(ip(1), t(900)).is_some());
        assert_eq!(table.lookup(ip(1), t(1_000)), None);
    }

    #[test]
    fn a_full_table_evicts_and_counts_and_stays_within_its_bound() {
        let table = StickTable::new(Duration::from_secs(3600), 50);
        for n in 0..500 {
            table.stick(ip(n), backend(1), t(u64::from(n)));
        }
        let stats = table.stats();
        assert_eq!(stats.entries, 50);
        assert_eq!(stats.evictions, 450);
        assert_eq!(stats.expired, 0);
        // Approximate LRU: most survivors are among the most recently used.
        let recent = (400..500)
            .filter(|&n| table.lookup(ip(n), t(1000)).is_some())
            .count();
        assert!(recent >= 35, "only {recent} of 50 survivors are recent");
    }

    #[test]
    fn a_full_table_prefers_dropping_expired_entries() {
        // One entry, one shard: the sample always sees the entry in it.
        let table = StickTable::new(Duration::from_millis(100), 1);
        table.stick(ip(1), backend(1), t(0));
        // ip(1) has expired at 200 ms: room is made without an eviction.
        table.stick(ip(2), backend(1), t(200));
        assert_eq!(table.stats().evictions, 0);
        assert_eq!(table.stats().expired, 1);
        // ip(2) is live at 250 ms: making room for ip(3) evicts it.
        table.stick(ip(3), backend(1), t(250));
        let stats = table.stats();
        assert_eq!((stats.evictions, stats.expired, stats.entries), (1, 1, 1));
        assert_eq!(table.lookup(ip(3), t(251)), Some(backend(1)));
    }

    #[test]
    fn ipv6_clients_are_keys_too() {
        let table = StickTable::new(Duration::from_secs(1), 10);
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        table.stick(v6, backend(9), t(0));
        assert_eq!(table.lookup(v6, t(1)), Some(backend(9)));
    }

    #[test]
    fn shared_by_threads() {
        let table = std::sync::Arc::new(StickTable::new(Duration::from_secs(60), 1000));
        let threads: Vec<_> = (0..4u32)
            .map(|k| {
                let table = table.clone();
                std::thread::spawn(move || {
                    for n in 0..2000 {
                        table.stick(ip(k * 10_000 + n), backend(k as u16 + 1), t(0));
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        let stats = table.stats();
        assert_eq!(stats.entries, 1000);
        assert_eq!(stats.evictions, 7000);
    }

    proptest! {
        #[test]
        fn never_more_entries_than_max(
            max in 1usize..200,
            ops in prop::collection::vec((0u32..300, 0u64..5000), 1..600),
        ) {
            let table = StickTable::new(Duration::from_millis(700), max);
            let mut now = 0;
            for (client, dt) in ops {
                now += dt % 50;
                if dt % 3 == 0 {
                    let _ = table.lookup(ip(client), t(now));
                } else {
                    table.stick(ip(client), backend(1), t(now));
                }
                prop_assert!(table.stats().entries <= max);
            }
        }
    }
}
