//! Unit tests of the worker: the accept loop's pacing, the freed-slot relays between worker
//! threads, and the worker's ring settings.

use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use event_listener::Event;

use super::{ACCEPT_BURST, ACCEPT_PROBE_EVERY, AcceptPace};
use crate::control::{ConnectionBudget, ServiceState};

/// Runs the accept loop's pacing over wake-ups that each find `queued` connections: the
/// accepts it tries per wake-up (an `EAGAIN` counts as one).
fn accepts_per_wakeup(pace: &mut AcceptPace, queued: &[usize]) -> Vec<usize> {
    queued
        .iter()
        .map(|&queued| {
            let mut attempt = 1;
            loop {
                if !pace.tries(attempt) {
                    pace.waits(attempt - 1, false);
                    return attempt - 1;
                }
                if attempt > queued {
                    pace.waits(attempt, true);
                    return attempt;
                }
                attempt += 1;
            }
        })
        .collect()
}

#[test]
fn one_connection_per_wakeup_costs_one_accept_but_a_burst_is_noticed() {
    let mut pace = AcceptPace::default();
    // One connection per wake-up: one accept each, and a probe (a second accept, EAGAIN)
    // once per ACCEPT_PROBE_EVERY wake-ups.
    let n = ACCEPT_PROBE_EVERY as usize;
    let tried = accepts_per_wakeup(&mut pace, &vec![1; 2 * n]);
    assert_eq!(tried.iter().sum::<usize>(), 2 * n + 2, "{tried:?}");
    // Connections now queue up: within ACCEPT_PROBE_EVERY wake-ups a probe finds the second
    // one and that wake-up takes all of them (and one EAGAIN), as each one after it does.
    let tried = accepts_per_wakeup(&mut pace, &vec![5; n + 3]);
    let probe = tried.iter().position(|&t| t == 6).expect("a probe");
    assert!(probe < n, "{tried:?}");
    assert!(tried[..probe].iter().all(|&t| t == 1), "{tried:?}");
    assert!(tried[probe..].iter().all(|&t| t == 6), "{tried:?}");
    // A flood is taken ACCEPT_BURST at a time.
    assert_eq!(accepts_per_wakeup(&mut pace, &[1000]), [ACCEPT_BURST]);
    // Back to one per wake-up: the first wake-up that finds one stops the bursts.
    assert_eq!(accepts_per_wakeup(&mut pace, &[1, 1, 1]), [2, 1, 1]);
    // A spurious wake-up (nothing queued) changes nothing.
    assert_eq!(accepts_per_wakeup(&mut pace, &[0]), [1]);
}

/// Connections of two workers queued for the slots of a small budget: each freed slot
/// reaches them through one relay task per worker, and every one of them gets its turn.
/// When every queued connection waited on the process-wide budget itself, a freed slot woke
/// all of the other worker's queued connections through that thread's bounded wake queue,
/// and two workers that freed slots at once could each wait for the other's queue forever.
#[test]
fn queued_connections_of_two_workers_all_get_a_slot_through_their_relays() {
    const PER_WORKER: usize = 300;
    let text = "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:0\"\n\
                [[service.backend]]\naddress = \"127.0.0.1:9001\"\n";
    let config = crate::config::Config::parse(text, "test").unwrap();
    let budget = Arc::new(ConnectionBudget::new(2));
    let service = config.services.into_iter().next().unwrap();
    let state = Arc::new(ServiceState::new(service, budget.clone()));
    let (done_tx, done) = crossbeam::channel::unbounded();
    for _ in 0..2 {
        let (budget, state, done_tx) = (budget.clone(), state.clone(), done_tx.clone());
        std::thread::spawn(move || {
            super::runtime(None).unwrap().block_on(async move {
                let local = Rc::new(Event::new());
                let relay = {
                    let local = local.clone();
                    compio::runtime::spawn(async move {
                        super::relay_freed_slots(&budget, &local).await
                    })
                };
                let queued = (0..PER_WORKER).map(|_| {
                    let (state, local, done_tx) = (state.clone(), local.clone(), done_tx.clone());
                    compio::runtime::spawn(async move {
                        loop {
                            state.wait_for_slot(&local).await;
                            if state.try_acquire_slot() {
                                break;
                            }
                        }
                        // Held across a turn of the loop, as a connection holds its slot.
                        compio::time::sleep(Duration::from_micros(20)).await;
                        state.release_slot();
                        let _ = done_tx.send(());
                    })
                });
                futures_util::future::join_all(queued.collect::<Vec<_>>()).await;
                drop(relay);
            });
        });
    }
    for served in 0..2 * PER_WORKER {
        done.recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                panic!(
                    "{served} of {} queued connections got a slot",
                    2 * PER_WORKER
                )
            });
    }
}

#[test]
fn a_workers_ring_runs_completion_work_only_for_the_worker() {
    let runtime = super::runtime(None).unwrap();
    let err = crate::dataplane::tests::wait_from_another_thread(runtime.as_raw_fd()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EEXIST), "{err}");
}
