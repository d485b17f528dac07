//! Waiting on an [`Event`] for a condition that other tasks or threads make true.
//!
//! Owns: [`wait_until`] and [`wait_for`], the one check-register-check loop that every waiter
//! of ringlb (shutdown phases, the connection budget, the health checker's stop, the closing
//! signal of a service, a worker's drain and its local flags) goes through. Does not own the
//! events or the state they guard: the caller passes both, and whoever changes the state
//! notifies the event after the change is visible.
//!
//! # Why the condition is checked twice
//!
//! An [`Event`] keeps no notification for listeners that register later: a `notify` with no
//! listener registered is lost. A waiter that checked its condition, found it false, and only
//! then registered would miss a change (and its `notify`) that landed between the two, and
//! could sleep forever. So the loop checks, registers, and checks again before sleeping: a
//! change before the registration is seen by the second check, a change after it wakes the
//! listener. The first check keeps the common case (condition already true) free of the
//! listener's allocation. A wake-up does not prove the condition (events are shared, and one
//! `notify` may stand for another waiter's change), so after each one the loop checks again.

use event_listener::Event;

/// Resolves once `done` returns true, re-checking after every notification of `event`.
///
/// `done` must only read state whose writers notify `event` after they change it.
pub async fn wait_until(event: &Event, mut done: impl FnMut() -> bool) {
    wait_for(event, || done().then_some(())).await
}

/// Resolves with the value `ready` returns once it returns `Some`, re-checking after every
/// notification of `event` (see the module docs for why twice).
///
/// `ready` must only read state whose writers notify `event` after they change it.
pub async fn wait_for<T>(event: &Event, mut ready: impl FnMut() -> Option<T>) -> T {
    loop {
        if let Some(value) = ready() {
            return value;
        }
        // Register before the second check so a notify between the two is not missed.
        let listener = event.listen();
        if let Some(value) = ready() {
            return value;
        }
        listener.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    /// Polls `future` once with a waker that does nothing.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn a_notify_between_the_first_check_and_registering_is_not_lost() {
        let event = Event::new();
        let flag = Cell::new(false);
        let checks = Cell::new(0);
        let waiting = pin!(wait_until(&event, || {
            checks.set(checks.get() + 1);
            if checks.get() == 1 {
                // Another task makes the condition true and notifies right after the first
                // check, before the waiter has registered: that notify reaches nobody.
                flag.set(true);
                event.notify(usize::MAX);
                return false;
            }
            flag.get()
        }));
        assert_eq!(
            poll_once(waiting),
            Poll::Ready(()),
            "the second check sees the change whose notify reached no listener"
        );
        assert_eq!(checks.get(), 2);
    }

    #[test]
    fn wakes_only_once_the_condition_holds_and_returns_its_value() {
        let event = Event::new();
        let generation = Cell::new(7_u64);
        let mut waiting = pin!(wait_for(&event, || {
            let now = generation.get();
            (now != 7).then_some(now)
        }));
        assert_eq!(poll_once(waiting.as_mut()), Poll::Pending);
        // A notify without a change: the waiter checks again and keeps waiting.
        event.notify(usize::MAX);
        assert_eq!(poll_once(waiting.as_mut()), Poll::Pending);
        generation.set(9);
        event.notify(usize::MAX);
        assert_eq!(poll_once(waiting.as_mut()), Poll::Ready(9));
    }

    #[test]
    fn a_condition_already_true_resolves_at_once() {
        let event = Event::new();
        assert_eq!(
            poll_once(pin!(wait_for(&event, || Some(3)))),
            Poll::Ready(3)
        );
    }

    #[test]
    fn setters_on_other_threads_always_wake_the_waiter() {
        // Each round races a setter thread against the waiter's checks and registration; a lost
        // notify would leave the waiter asleep and the round unanswered.
        const ROUNDS: u64 = 200;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let runtime = compio::runtime::Runtime::new().unwrap();
            for round in 0..ROUNDS {
                let shared = Arc::new((AtomicBool::new(false), Event::new()));
                let setter = {
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        shared.0.store(true, Ordering::Release);
                        shared.1.notify(usize::MAX);
                    })
                };
                runtime.block_on(wait_until(&shared.1, || shared.0.load(Ordering::Acquire)));
                setter.join().unwrap();
                done_tx.send(round).unwrap();
            }
        });
        for round in 0..ROUNDS {
            let got = done_rx
                .recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("round {round}: the waiter missed its wake-up"));
            assert_eq!(got, round);
        }
        waiter.join().unwrap();
    }
}
