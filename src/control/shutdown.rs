//! Process-wide shutdown coordination between the signal handler and the workers.
//!
//! Owns: the three phases of a shutdown and the wake-ups that announce them. Does not own
//! signal handling itself (`main` maps SIGTERM/SIGINT onto these calls) or any socket.
//!
//! - `Running`: workers accept and forward.
//! - `Draining`: listeners are closed at once; live connections may finish.
//! - `Aborting`: the drain deadline passed (or a second signal came): live connections are closed.

use std::sync::atomic::{AtomicU8, Ordering};

use event_listener::Event;

use super::wait::wait_until;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

/// Shared by `main` and every worker thread.
#[derive(Debug)]
pub struct Shutdown {
    phase: AtomicU8,
    changed: Event,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

impl Shutdown {
    /// A coordinator in the `Running` phase.
    pub fn new() -> Shutdown {
        Shutdown {
            phase: AtomicU8::new(RUNNING),
            changed: Event::new(),
        }
    }

    /// Stop accepting; live connections may finish. Idempotent.
    pub fn drain(&self) {
        self.advance(DRAINING);
    }

    /// Close every live connection now. Idempotent.
    pub fn abort(&self) {
        self.advance(ABORTING);
    }

    fn advance(&self, to: u8) {
        if self.phase.fetch_max(to, Ordering::AcqRel) < to {
            self.changed.notify(usize::MAX);
        }
    }

    /// Whether a drain (or abort) has begun.
    pub fn is_draining(&self) -> bool {
        self.phase.load(Ordering::Acquire) >= DRAINING
    }

    /// Whether live connections must be closed now.
    pub fn is_aborting(&self) -> bool {
        self.phase.load(Ordering::Acquire) >= ABORTING
    }

    /// Resolves once a drain (or abort) has begun.
    pub async fn draining(&self) {
        self.wait_for(DRAINING).await
    }

    /// Resolves once live connections must be closed.
    pub async fn aborting(&self) {
        self.wait_for(ABORTING).await
    }

    async fn wait_for(&self, phase: u8) {
        wait_until(&self.changed, || {
            self.phase.load(Ordering::Acquire) >= phase
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_only_move_forward() {
        let s = Shutdown::new();
        assert!(!s.is_draining());
        s.abort();
        s.drain();
        assert!(s.is_draining());
        assert!(s.is_aborting());
    }

    #[test]
    fn waiters_wake_on_drain_from_another_thread() {
        let s = std::sync::Arc::new(Shutdown::new());
        let s2 = s.clone();
        let t = std::thread::spawn(move || s2.drain());
        futures_executor_block_on(s.draining());
        t.join().unwrap();
        assert!(s.is_draining());
        assert!(!s.is_aborting());
    }

    /// The waiters are runtime-agnostic futures; drive one on a plain compio runtime.
    fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
        compio::runtime::Runtime::new().unwrap().block_on(f)
    }
}
