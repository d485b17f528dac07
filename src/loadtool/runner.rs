//! Runs a [`Plan`]: one thread per `--threads`, each with its own compio (io_uring) runtime
//! driving its share of the connections as tasks; the calling thread shows progress and merges
//! the results.
//!
//! Owns: the open-files limit a load needs, thread start and the common start line (a barrier),
//! each thread's context ([`Ctx`]: deadline, request budget, counters, histograms), the
//! open-loop schedule, and the progress line. Guarantees: every task is cut at the deadline (`start + duration`), and with
//! `--requests N` exactly N attempts are made over all threads unless the deadline comes first.

use std::cell::{Cell, RefCell};
use std::io::{IsTerminal, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossbeam::utils::CachePadded;
use hdrhistogram::Histogram;

use super::args::{Mode, Plan};
use super::report::{Counters, ErrorKind, Report, ThreadResult, histogram, record};
use super::{tcp, udp};

/// How long a task waits after this machine ran out of ports or fds before trying again.
const EXHAUSTION_BACKOFF: Duration = Duration::from_millis(10);

/// What the tasks of one thread share (one thread, so `Cell` and `RefCell`).
pub struct Ctx {
    pub plan: Arc<Plan>,
    pub counters: Arc<CachePadded<Counters>>,
    pub latency: RefCell<Histogram<u64>>,
    pub service: RefCell<Histogram<u64>>,
    /// Request attempts this thread may still make; `None`: bounded by time only.
    budget: Cell<Option<u64>>,
    pub start: Instant,
    /// The run's deadline on this thread.
    pub end: Instant,
    /// `idle`: connections (over all threads) that are open or failed to open.
    pub settled: Arc<AtomicUsize>,
}

impl Ctx {
    /// Takes one request attempt from the budget; false when the budget is spent.
    #[inline]
    pub fn take_ticket(&self) -> bool {
        match self.budget.get() {
            None => true,
            Some(0) => false,
            Some(n) => {
                self.budget.set(Some(n - 1));
                true
            }
        }
    }

    /// Whether the run's time is up.
    #[inline]
    pub fn expired(&self) -> bool {
        Instant::now() >= self.end
    }

    /// Counts an error; after a local exhaustion (ports, fds) waits a little before going on.
    pub async fn error(&self, kind: ErrorKind) {
        self.counters.error(kind);
        if kind.is_local_exhaustion() {
            compio::time::sleep(EXHAUSTION_BACKOFF).await;
        }
    }

    /// Records a completed request: `intended` is when it was due (open loop) or sent.
    #[inline]
    pub fn completed(&self, intended: Instant, sent: Instant, now: Instant) {
        self.counters.requests.add(1);
        record(&mut self.latency.borrow_mut(), now - intended);
        if self.plan.rate.is_some() {
            record(&mut self.service.borrow_mut(), now - sent);
        }
    }
}

/// The open-loop timetable of one connection: requests are due at `first + k * interval`.
pub struct Schedule {
    next: Instant,
    interval: Duration,
}

impl Schedule {
    /// The timetable of connection `index`, or `None` in a closed loop. Connections are spread
    /// evenly over one interval, so the whole load is a steady `rate`.
    pub fn new(plan: &Plan, index: usize, start: Instant) -> Option<Schedule> {
        let rate = plan.rate?;
        Some(Schedule {
            next: start + Duration::from_secs_f64(index as f64 / rate),
            interval: Duration::from_secs_f64(plan.connections as f64 / rate),
        })
    }

    /// When the next request is due; advances the timetable.
    pub fn advance(&mut self) -> Instant {
        let due = self.next;
        self.next += self.interval;
        due
    }
}

/// Waits until the next request of `schedule` is due and returns that time, or returns `None`
/// when it falls after the deadline. In a closed loop returns now.
pub async fn next_due(ctx: &Ctx, schedule: &mut Option<Schedule>) -> Option<Instant> {
    match schedule {
        None => (!ctx.expired()).then(Instant::now),
        Some(s) => {
            let due = s.advance();
            if due >= ctx.end {
                return None;
            }
            // Behind schedule: send at once; the wait shows up in the corrected latency.
            compio::time::sleep_until(due).await;
            Some(due)
        }
    }
}

fn thread_main(
    plan: Arc<Plan>,
    thread: usize,
    counters: Arc<CachePadded<Counters>>,
    settled: Arc<AtomicUsize>,
    barrier: Arc<Barrier>,
) -> std::io::Result<ThreadResult> {
    let runtime = crate::dataplane::ring_runtime();
    // Everyone passes the barrier, also a thread whose runtime failed, so nobody waits forever.
    barrier.wait();
    let runtime = runtime?;
    runtime.block_on(async move {
        let start = Instant::now();
        let ctx = Rc::new(Ctx {
            budget: Cell::new(plan.requests_of(thread)),
            end: start + plan.duration,
            plan: plan.clone(),
            counters,
            latency: RefCell::new(histogram()),
            service: RefCell::new(histogram()),
            start,
            settled,
        });
        let tasks: Vec<_> = plan
            .connections_of(thread)
            .map(|index| {
                let ctx = ctx.clone();
                compio::runtime::spawn(async move {
                    let end = ctx.end;
                    let task = async {
                        match ctx.plan.mode {
                            Mode::Rr => tcp::rr(&ctx, index).await,
                            Mode::Connect => tcp::connect(&ctx, index).await,
                            Mode::Stream => tcp::stream(&ctx, index).await,
                            Mode::Idle => tcp::idle(&ctx, index).await,
                            Mode::Udp => udp::rr(&ctx, index).await,
                        }
                    };
                    // The deadline cuts whatever is in flight; compio cancels the operations.
                    let _ = compio::time::timeout_at(end, task).await;
                })
            })
            .collect();
        for task in tasks {
            // A panicking task is a bug; it ends only its own connection here.
            let _ = task.await;
        }
        let elapsed = start.elapsed().min(plan.duration);
        Ok(ThreadResult {
            elapsed,
            latency: ctx.latency.replace(histogram()),
            service: ctx.service.replace(histogram()),
        })
    })
}

/// Descriptors a load needs besides one per connection: the runtimes' rings, stdio, spare.
const FD_SPARE: u64 = 64;

/// Raises the soft open-files limit (up to the hard one) when `connections` sockets would not fit
/// under it; a load that still does not fit counts `fds` errors rather than failing here.
fn raise_fd_limit(connections: usize) {
    let needed = connections as u64 + FD_SPARE;
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft);
    if soft >= needed {
        return;
    }
    match rlimit::increase_nofile_limit(needed) {
        Ok(n) if n >= needed => {}
        Ok(n) => eprintln!(
            "the open-files limit is {n}, below the {needed} this load needs: expect fds errors"
        ),
        Err(e) => eprintln!("cannot raise the open-files limit to {needed}: {e}"),
    }
}

/// Runs the load to its end and returns the merged report.
pub fn run(plan: Plan) -> anyhow::Result<Report> {
    raise_fd_limit(plan.connections);
    let plan = Arc::new(plan);
    let counters: Vec<_> = (0..plan.threads)
        .map(|_| Arc::new(CachePadded::new(Counters::default())))
        .collect();
    let settled = Arc::new(AtomicUsize::new(0));
    let barrier = Arc::new(Barrier::new(plan.threads + 1));
    let mut handles = Vec::with_capacity(plan.threads);
    for (thread, c) in counters.iter().enumerate() {
        let (plan, c, settled, barrier) =
            (plan.clone(), c.clone(), settled.clone(), barrier.clone());
        let handle = std::thread::Builder::new()
            .name(format!("bench-{thread}"))
            .spawn(move || thread_main(plan, thread, c, settled, barrier))
            .context("cannot start a load thread")?;
        handles.push(handle);
    }
    barrier.wait();
    let started = Instant::now();
    let tty = !plan.json && std::io::stdout().is_terminal();
    let mut shown = Duration::ZERO;
    let mut announced = plan.mode != Mode::Idle;
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        if !announced && settled.load(Ordering::Relaxed) >= plan.connections {
            let errors: u64 = counters.iter().map(|c| c.error_total()).sum();
            let open = plan.connections as u64 - errors.min(plan.connections as u64);
            eprintln!("holding {open} connections ({errors} failed to open)");
            announced = true;
        }
        let elapsed = started.elapsed();
        if tty && elapsed >= shown + Duration::from_secs(1) {
            shown = elapsed;
            progress(&plan, &counters, elapsed);
        }
    }
    if tty && !shown.is_zero() {
        print!("\r\x1b[K");
        let _ = std::io::stdout().flush();
    }
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))?
            .context("cannot start an io_uring runtime")?;
        results.push(r);
    }
    let refs: Vec<&Counters> = counters.iter().map(|c| &***c).collect();
    Ok(Report::build(&plan, &refs, &results))
}

fn progress(plan: &Plan, counters: &[Arc<CachePadded<Counters>>], elapsed: Duration) {
    let secs = elapsed.as_secs_f64();
    let sum = |f: fn(&Counters) -> u64| counters.iter().map(|c| f(c)).sum::<u64>();
    let errors = sum(Counters::error_total);
    let line = match plan.mode {
        Mode::Stream => {
            let bytes = sum(|c| c.sent.get());
            format!("{:.3} Gbit/s sent", bytes as f64 * 8.0 / secs / 1e9)
        }
        Mode::Idle => format!("{} connections open", sum(|c| c.connections.get())),
        Mode::Connect => {
            let n = sum(|c| c.connections.get());
            format!("{n} connections  {:.0}/s", n as f64 / secs)
        }
        Mode::Rr | Mode::Udp => {
            let n = sum(|c| c.requests.get());
            format!("{n} requests  {:.0}/s", n as f64 / secs)
        }
    };
    print!("\r\x1b[K[{secs:6.1}s] {line}  {errors} errors");
    let _ = std::io::stdout().flush();
}
