//! Polling a group of a connection's futures only after one of them asked to be polled.
//!
//! Owns: [`WakeGate`], a wake-up flag with a waker of its own. A connection's task waits on its
//! two directions and on signals that rarely fire (the idle timer, the worker's abort, the
//! backend's close event). A wake-up of the task is nearly always a direction's I/O, yet it used
//! to poll the signals too, and their polls are not free: a compio timer is looked up in the
//! runtime's timer tree (twice, and deeper the more connections the worker holds) and an event
//! listener takes its lock. Polled through a gate, the signals register the gate's waker, and the
//! task polls them again only once that waker fired. A gate costs one small allocation per
//! connection (about 70 bytes with its handle); the directions are not gated, since a gate each
//! measured no cheaper per request than polling the idle direction, and it would cost that
//! memory twice more on every idle connection. Does not own: what the futures are or what their
//! results mean (`super::proxy`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// What a gate's waker reaches: the flag, and the task to wake.
#[derive(Default)]
struct Flag {
    /// A future polled through the gate woke it since the gate last polled them.
    woken: AtomicBool,
    /// The task that polls through the gate.
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A wake-up flag for a group of futures polled by one task: see the module doc.
pub(super) struct WakeGate {
    flag: Arc<Flag>,
}

impl WakeGate {
    /// A gate whose first [`poll`](Self::poll) polls the group (so that it registers the gate's
    /// waker).
    pub fn new() -> Self {
        let flag = Arc::new(Flag::default());
        flag.woken.store(true, Ordering::Relaxed);
        WakeGate { flag }
    }

    /// Runs `poll_group` with the gate's waker when the group woke the gate since the last
    /// call (or this is the first call); otherwise returns `Pending` without running it. Either
    /// way the caller's task is woken when the group wakes the gate next.
    pub fn poll<T>(
        &self,
        cx: &Context<'_>,
        poll_group: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        // Registered before the flag is read: a wake-up between the two is not lost, since it
        // sets the flag and wakes the task registered here.
        self.flag.task.register(cx.waker());
        if !self.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        // Made when the group runs, which is rare, rather than kept: one word less per connection.
        let waker = Waker::from(self.flag.clone());
        poll_group(&mut Context::from_waker(&waker))
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::atomic::AtomicUsize;

    use super::*;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn the_group_runs_first_then_only_after_it_woke_the_gate() {
        let task = Arc::new(CountingWaker::default());
        let task_waker = Waker::from(task.clone());
        let cx = Context::from_waker(&task_waker);
        let gate = WakeGate::new();
        let runs = Cell::new(0);
        let kept: Cell<Option<Waker>> = Cell::new(None);
        let poll = || {
            gate.poll(&cx, |group_cx| {
                runs.set(runs.get() + 1);
                kept.set(Some(group_cx.waker().clone()));
                Poll::<()>::Pending
            })
        };

        assert!(poll().is_pending());
        assert_eq!(runs.get(), 1, "the first poll runs the group");
        // Woken by something else (a direction's I/O): the group is not run.
        assert!(poll().is_pending());
        assert!(poll().is_pending());
        assert_eq!(runs.get(), 1);
        assert_eq!(task.0.load(Ordering::SeqCst), 0);

        // The group's waker fires: the task is woken, and the next poll runs the group.
        kept.take().expect("the group kept the gate's waker").wake();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(poll().is_pending());
        assert_eq!(runs.get(), 2);
        assert!(poll().is_pending());
        assert_eq!(runs.get(), 2, "one wake-up, one run");
    }

    #[test]
    fn a_ready_group_returns_its_value() {
        let task_waker = Waker::from(Arc::new(CountingWaker::default()));
        let cx = Context::from_waker(&task_waker);
        let gate = WakeGate::new();
        assert_eq!(gate.poll(&cx, |_| Poll::Ready(7)), Poll::Ready(7));
    }
}
