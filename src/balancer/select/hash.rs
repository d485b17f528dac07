//! `source_hash`: Maglev lookup of a stable hash of the client IP.
//!
//! The first candidate is the table's backend for the client; further candidates are the next
//! distinct backends met walking the table forward from the client's slot. Not-ready backends
//! are skipped, so while a backend is down only its own clients move (each to the next backend
//! of its walk), and they come back when it is ready again. Every ringlb process with the same
//! backend keys, weights and table size sends a client to the same backend.

use std::net::IpAddr;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::super::maglev::Maglev;
use super::{BackendView, Ctx};

/// Seed of the client-IP hash. Fixed forever: changing it remaps every client. (ASCII
/// "ringlb" followed by 0x10, distinct from the Maglev permutation seeds.)
const CLIENT_SEED: u64 = 0x7269_6e67_6c62_0010;

/// The stable hash of a client IP that `source_hash` looks up: xxh3-64 with a fixed seed over
/// the address bytes (4 for IPv4, 16 for IPv6), identical in every ringlb process, platform and
/// Rust version. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as a dual-stack socket reports
/// IPv4 clients) hashes as the IPv4 address, so a client keeps its backend whichever listener
/// family accepted it.
#[must_use]
pub fn source_hash(client: IpAddr) -> u64 {
    match client.to_canonical() {
        IpAddr::V4(v4) => xxh3_64_with_seed(&v4.octets(), CLIENT_SEED),
        IpAddr::V6(v6) => xxh3_64_with_seed(&v6.octets(), CLIENT_SEED),
    }
}

/// Walks `table` from the client's slot; then, for ready backends that own no slot (only when
/// the table is smaller than the backend set), index order from a client-derived start.
pub(super) fn source_hash_candidates<V: BackendView>(
    ctx: &Ctx<'_, V>,
    table: &Maglev,
    client: IpAddr,
    out: &mut Vec<usize>,
) {
    let hash = source_hash(client);
    ctx.fill_walk(table.walk(hash), out);
    // n >= 1, and the remainder is < n, so it fits usize.
    ctx.fill_rotation((hash % ctx.n as u64) as usize, out);
}

#[cfg(test)]
mod tests {
    use super::super::testing::{FixedView, specs};
    use super::super::{Algorithm, DEFAULT_MAGLEV_SIZE, Selector};
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn clients(count: u32) -> impl Iterator<Item = IpAddr> {
        (0..count).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919)))
    }

    fn first(s: &Selector, view: &FixedView, client: IpAddr, max: usize) -> Vec<usize> {
        let mut out = Vec::new();
        s.candidates(
            view,
            client,
            &mut fastrand::Rng::with_seed(1),
            max,
            &mut out,
        );
        out
    }

    #[test]
    fn client_hash_is_stable_across_versions() {
        // Golden values: if these change, every source_hash client of every deployment moves.
        assert_eq!(
            source_hash(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
            GOLDEN_V4
        );
        assert_eq!(source_hash("2001:db8::1".parse().unwrap()), GOLDEN_V6);
    }
    const GOLDEN_V4: u64 = 16_864_875_034_614_900_613;
    const GOLDEN_V6: u64 = 113_054_520_173_593_768;

    #[test]
    fn mapped_ipv4_hashes_as_ipv4() {
        let v4 = Ipv4Addr::new(198, 51, 100, 9);
        assert_eq!(
            source_hash(IpAddr::V4(v4)),
            source_hash(IpAddr::V6(v4.to_ipv6_mapped()))
        );
        assert_ne!(
            source_hash(IpAddr::V4(v4)),
            source_hash(IpAddr::V6(Ipv6Addr::LOCALHOST))
        );
    }

    #[test]
    fn same_ip_gets_the_same_backend_from_independently_built_selectors() {
        let w = [1, 2, 3, 1, 1, 4, 2, 1];
        let view = FixedView::all_ready(w.len());
        let a = Selector::new(Algorithm::SourceHash, &specs(&w), DEFAULT_MAGLEV_SIZE);
        let b = Selector::new(Algorithm::SourceHash, &specs(&w), DEFAULT_MAGLEV_SIZE);
        let mut used = vec![false; w.len()];
        for c in clients(2000) {
            let fa = first(&a, &view, c, 3);
            assert_eq!(fa, first(&b, &view, c, 3), "{c}");
            // And the same on every call of one selector.
            assert_eq!(fa, first(&a, &view, c, 3), "{c}");
            used[fa[0]] = true;
        }
        assert!(
            used.iter().all(|&u| u),
            "hash sends everyone to a few backends: {used:?}"
        );
    }

    #[test]
    fn down_backend_clients_go_to_their_next_choice_and_nobody_else_moves() {
        let w = [1, 1, 2, 1, 3];
        let s = Selector::new(Algorithm::SourceHash, &specs(&w), DEFAULT_MAGLEV_SIZE);
        let all = FixedView::all_ready(w.len());
        let mut down = all.clone();
        down.ready[2] = false;
        let mut moved = 0;
        for c in clients(5000) {
            let before = first(&s, &all, c, 2);
            let after = first(&s, &down, c, 1);
            if before[0] == 2 {
                assert_eq!(after[0], before[1], "{c}: not its next choice");
                moved += 1;
            } else {
                assert_eq!(after[0], before[0], "{c} moved though its backend is ready");
            }
        }
        assert!(moved > 0);
    }

    #[test]
    fn further_candidates_follow_the_table_walk() {
        let w = [1; 6];
        let s = Selector::new(Algorithm::SourceHash, &specs(&w), 1009);
        let table = s.maglev().unwrap();
        for c in clients(200) {
            let mut want = Vec::new();
            for i in table.walk(source_hash(c)) {
                if !want.contains(&i) {
                    want.push(i);
                }
            }
            want.truncate(4);
            assert_eq!(first(&s, &FixedView::all_ready(6), c, 4), want, "{c}");
        }
    }

    #[test]
    fn backends_without_a_slot_still_serve_as_last_candidates() {
        // A 5-slot table for 8 backends: at least 3 of them own no slot.
        let s = Selector::new(Algorithm::SourceHash, &specs(&[1; 8]), 5);
        let view = FixedView::all_ready(8);
        let out = first(&s, &view, IpAddr::V4(Ipv4Addr::LOCALHOST), 8);
        assert_eq!(out.len(), 8);
        let mut sorted = out.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..8).collect::<Vec<_>>());
    }
}
