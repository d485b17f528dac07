//! Benches of the balancer core: one `candidates` call per algorithm over 10 backends, and the
//! Maglev table build for 10, 100 and 1,000 backends.
//!
//! Run with `cargo bench --bench balancer`; a quick pass:
//! `cargo bench --bench balancer -- --warm-up-time 1 --measurement-time 2`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ringlb::balancer::maglev::Maglev;
use ringlb::balancer::{Algorithm, BackendSpec, BackendView, DEFAULT_MAGLEV_SIZE, Selector};

/// Backends per service in the `candidates` benches: a typical database or cache pool.
const BACKENDS: usize = 10;

/// Candidates asked per call: the first choice plus two fallbacks, what a data plane that retries
/// a failed connect twice asks for.
const MAX_CANDIDATES: usize = 3;

/// The view the data plane gives: shared atomics per backend (padding left out; one thread).
struct AtomicView {
    active: Vec<AtomicU64>,
    ready: Vec<AtomicBool>,
}

impl BackendView for AtomicView {
    fn len(&self) -> usize {
        self.active.len()
    }
    fn active(&self, i: usize) -> u64 {
        self.active[i].load(Ordering::Relaxed)
    }
    fn ready(&self, i: usize) -> bool {
        self.ready[i].load(Ordering::Relaxed)
    }
}

fn keys(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("10.0.{}.{}:5432", i / 256, i % 256))
        .collect()
}

/// Weights 1..=4 in turn, so the weighted algorithms have real work.
fn specs(keys: &[String]) -> Vec<BackendSpec<'_>> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| BackendSpec {
            key,
            weight: (i % 4) as u32 + 1,
        })
        .collect()
}

fn candidates(c: &mut Criterion) {
    let keys = keys(BACKENDS);
    let specs = specs(&keys);
    let view = AtomicView {
        active: (0..BACKENDS)
            .map(|i| AtomicU64::new((i * 7 % 5) as u64))
            .collect(),
        ready: (0..BACKENDS).map(|_| AtomicBool::new(true)).collect(),
    };
    let mut group = c.benchmark_group("candidates_10_backends");
    for algorithm in Algorithm::ALL {
        let selector = Selector::new(algorithm, &specs, DEFAULT_MAGLEV_SIZE);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut out = Vec::with_capacity(MAX_CANDIDATES);
        let mut ip = 0x0a00_0001u32;
        group.bench_function(algorithm.name(), |b| {
            b.iter(|| {
                ip = ip.wrapping_add(1);
                let client = IpAddr::V4(Ipv4Addr::from(ip));
                selector.candidates(&view, client, &mut rng, MAX_CANDIDATES, &mut out);
                black_box(out[0])
            })
        });
    }
    group.finish();
}

fn maglev_build(c: &mut Criterion) {
    let mut group = c.benchmark_group("maglev_build_65537");
    // A build of 1,000 backends takes milliseconds; 10 samples keep the bench short.
    group.sample_size(10);
    for n in [10, 100, 1000] {
        let keys = keys(n);
        let specs = specs(&keys);
        group.bench_with_input(BenchmarkId::from_parameter(n), &specs, |b, specs| {
            b.iter(|| Maglev::build(black_box(specs), DEFAULT_MAGLEV_SIZE))
        });
    }
    group.finish();
}

criterion_group!(benches, candidates, maglev_build);
criterion_main!(benches);
