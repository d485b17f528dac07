//! Benches of the per-worker connection-tracking table (`ConnTable`): inserting and removing
//! entries, as every accepted and closed connection does, and the per-chunk byte accounting the
//! forwarding loop does.
//!
//! Run with `cargo bench --bench conntrack`; a quick pass:
//! `cargo bench --bench conntrack -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ringlb::balancer::ServiceId;
use ringlb::balancer::conntrack::{Conn, ConnId, ConnTable};

/// Entries inserted or removed per measured batch.
const BATCH: usize = 1000;

/// Live connections already in the table: an idle worker, a busy one, and one near the default
/// `max_connections` (10,000).
const FILLS: [usize; 3] = [0, 1_000, 10_000];

fn client(i: usize) -> SocketAddr {
    SocketAddr::from((
        [10, 0, (i >> 8) as u8, i as u8],
        40_000 + (i % 20_000) as u16,
    ))
}

fn filled(n: usize, now: Instant) -> (ConnTable, Vec<ConnId>) {
    let mut table = ConnTable::new(FILLS[2] + 2 * BATCH);
    let ids = (0..n)
        .map(|i| {
            table
                .insert(Conn::accepted(ServiceId(0), client(i), now))
                .unwrap()
        })
        .collect();
    (table, ids)
}

fn insert(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("conntrack_insert");
    group.throughput(Throughput::Elements(BATCH as u64));
    for fill in FILLS {
        group.bench_with_input(BenchmarkId::from_parameter(fill), &fill, |b, &fill| {
            b.iter_batched_ref(
                || filled(fill, now).0,
                |table| {
                    for i in 0..BATCH {
                        black_box(
                            table
                                .insert(Conn::accepted(ServiceId(0), client(i), now))
                                .unwrap(),
                        );
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn remove(c: &mut Criterion) {
    let now = Instant::now();
    let mut group = c.benchmark_group("conntrack_remove");
    group.throughput(Throughput::Elements(BATCH as u64));
    for fill in FILLS {
        group.bench_with_input(BenchmarkId::from_parameter(fill), &fill, |b, &fill| {
            b.iter_batched_ref(
                || {
                    let (mut table, _) = filled(fill, now);
                    let ids: Vec<ConnId> = (0..BATCH)
                        .map(|i| {
                            table
                                .insert(Conn::accepted(ServiceId(0), client(i), now))
                                .unwrap()
                        })
                        .collect();
                    (table, ids)
                },
                |(table, ids)| {
                    for id in ids.iter() {
                        black_box(table.remove(*id));
                    }
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// One connection's whole bookkeeping: insert, established, a chunk each way, remove.
fn lifecycle(c: &mut Criterion) {
    let now = Instant::now();
    let (mut table, _) = filled(FILLS[2], now);
    let mut i = 0usize;
    c.bench_function("conntrack_lifecycle_10000_live", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let id = table
                .insert(Conn::accepted(ServiceId(0), client(i), now))
                .unwrap();
            table.established(id, client(1), now);
            table.record_up(id, 64, now);
            table.record_down(id, 64, now);
            black_box(table.remove(id))
        })
    });
}

criterion_group!(benches, insert, remove, lifecycle);
criterion_main!(benches);
