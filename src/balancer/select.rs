//! STUB
use std::sync::atomic::{AtomicUsize, Ordering};
pub const DEFAULT_MAGLEV_SIZE: usize = 65537;
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    RoundRobin,
    WeightedRoundRobin,
    Random,
    PowerOfTwo,
    LeastConn,
    SourceHash,
}
pub struct BackendSpec<'a> {
    pub key: &'a str,
    pub weight: u32,
}
pub trait BackendView {
    fn len(&self) -> usize;
    fn active(&self, i: usize) -> u64;
    fn ready(&self, i: usize) -> bool;
}
#[derive(Debug)]
pub struct Selector {
    n: usize,
    cursor: AtomicUsize,
    algorithm: Algorithm,
}
impl Selector {
    pub fn new(algorithm: Algorithm, backends: &[BackendSpec<'_>], _m: usize) -> Self {
        Selector {
            n: backends.len(),
            cursor: AtomicUsize::new(0),
            algorithm,
        }
    }
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
    pub fn candidates(
        &self,
        view: &impl BackendView,
        _client: std::net::IpAddr,
        _rng: &mut fastrand::Rng,
        max: usize,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        for k in 0..self.n {
            let i = (start + k) % self.n;
            if view.ready(i) && out.len() < max {
                out.push(i);
            }
        }
    }
}
