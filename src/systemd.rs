//! Living under systemd: the notify protocol (`Type=notify`), the watchdog, and socket
//! activation.
//!
//! Owns: what ringlb tells the service manager and when: `READY=1` once every listener is bound
//! and the workers run ([`ready`], called by `main` where the ready line is printed, with
//! `MAINPID=` when this process took over from another through an upgrade), `RELOADING=1` with
//! `MONOTONIC_USEC=` then `READY=1` around every reload ([`reloading`] and [`reloaded`], called
//! by the one reload path, [`crate::admin::Instance::reload`], so SIGHUP and `POST /reload`
//! alike), `STOPPING=1` when a drain starts ([`stopping`]), and the [`Watch`] thread, which
//! sends a `STATUS=` line (services, live connections, draining) whenever it changes and at
//! least every [`STATUS_EVERY`], and `WATCHDOG=1` every half of `WATCHDOG_USEC` while every
//! worker turned its loop within [`crate::admin::health::STALE_AFTER`]. Also reads the
//! listening sockets systemd passes ([`activated`]): matched to services by
//! `FileDescriptorName=`, checked by the data plane against the config.
//!
//! Does not own: the unit file, the listeners' use (`dataplane`), or the upgrade handshake
//! (`upgrade`). Without `NOTIFY_SOCKET` every call here is a no-op, so ringlb run by hand or
//! in a container behaves as before.

use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sd_notify::NotifyState;

use crate::admin::Instance;
use crate::admin::health::STALE_AFTER;
use crate::dataplane::Inherited;

/// The longest a `STATUS=` line goes without being sent again, even when nothing changed.
pub const STATUS_EVERY: Duration = Duration::from_secs(10);

/// How often the [`Watch`] thread looks at the live-connection count for a changed status.
const STATUS_CHECK: Duration = Duration::from_secs(1);

/// Sends `states` to the service manager, when there is one. Failures are logged at debug
/// level only: a manager that went away must not disturb the balancer.
fn notify(states: &[NotifyState]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot notify the service manager");
    }
}

/// `READY=1`: every listener is bound and the workers run. `main_pid` is this process's id
/// when it took over from another ringlb (a binary upgrade): the manager follows it from then
/// on.
pub fn ready(status: &str, main_pid: Option<u32>) {
    match main_pid {
        Some(pid) => notify(&[
            NotifyState::MainPid(pid),
            NotifyState::Ready,
            NotifyState::Status(status),
        ]),
        None => notify(&[NotifyState::Ready, NotifyState::Status(status)]),
    }
}

/// `MAINPID=`: the process that serves from now on (sent by the old process of an upgrade, the
/// one the manager accepts messages from with `NotifyAccess=main`).
pub fn main_pid(pid: u32) {
    notify(&[NotifyState::MainPid(pid)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=`, as `Type=notify-reload` asks: a reload begins.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the config"),
        ]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// `READY=1` after a reload, whether it was applied or refused (the running config serves
/// either way).
pub fn reloaded(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`: the drain began.
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// What ringlb is doing, as one `STATUS=` line.
pub fn status_line(instance: &Instance) -> String {
    let config = instance.config();
    let live = instance.budget().active();
    if instance.dataplane().draining() {
        return format!("draining: {live} live connections left");
    }
    let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
    format!(
        "serving {} services ({}) on {} workers; {live} live connections",
        names.len(),
        names.join(", "),
        instance.dataplane().workers()
    )
}

/// The thread that keeps the manager informed while ringlb runs: status lines and watchdog
/// pings. Stops when dropped.
#[derive(Debug)]
pub struct Watch {
    stop: Option<crossbeam::channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    /// Starts the thread when there is a service manager to tell (`NOTIFY_SOCKET`); otherwise
    /// a `Watch` that does nothing.
    pub fn start(instance: Arc<Instance>) -> std::io::Result<Watch> {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Ok(Watch {
                stop: None,
                thread: None,
            });
        }
        let watchdog = sd_notify::watchdog_enabled().map(|usec| usec / 2);
        if let Some(every) = watchdog {
            tracing::info!(every = ?every, "systemd watchdog enabled");
        }
        let (stop, stopped) = crossbeam::channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("ringlb-systemd".to_owned())
            .spawn(move || watch(&instance, watchdog, &stopped))?;
        Ok(Watch {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether the watchdog may be fed: every worker turned its loop within [`STALE_AFTER`], or
/// the drain began (workers then exit one by one as their connections end; the drain has its
/// own deadline).
pub fn workers_alive(instance: &Instance) -> bool {
    let dataplane = instance.dataplane();
    dataplane.draining()
        || dataplane
            .stats()
            .iter()
            .all(|w| w.since_beat().is_some_and(|age| age <= STALE_AFTER))
}

fn watch(
    instance: &Instance,
    watchdog: Option<Duration>,
    stopped: &crossbeam::channel::Receiver<()>,
) {
    let mut last_status = String::new();
    let mut status_sent = Instant::now();
    let mut next_ping = Instant::now();
    let mut stuck_said = false;
    loop {
        let now = Instant::now();
        if let Some(every) = watchdog
            && now >= next_ping
        {
            if workers_alive(instance) {
                notify(&[NotifyState::Watchdog]);
                stuck_said = false;
            } else if !stuck_said {
                tracing::error!("a worker's loop is stuck: watchdog pings stop");
                stuck_said = true;
            }
            next_ping = now + every;
        }
        let status = status_line(instance);
        if status != last_status || now.duration_since(status_sent) >= STATUS_EVERY {
            notify(&[NotifyState::Status(&status)]);
            last_status = status;
            status_sent = now;
        }
        let mut wait = STATUS_CHECK;
        if watchdog.is_some() {
            wait = wait.min(next_ping.saturating_duration_since(Instant::now()));
        }
        match stopped.recv_timeout(wait) {
            Err(crossbeam::channel::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
    }
}

/// The listening sockets systemd passed (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`), by
/// name; empty when none were passed to this process (`LISTEN_PID` names another one, as in
/// an upgrade's new process, which is also started without these variables). A passed socket
/// whose name matches no service is closed and logged; the data plane checks the others
/// against the config. Call once: the descriptors are owned by what this returns.
pub fn activated(services: &[&str]) -> std::io::Result<Inherited> {
    let fds: Vec<(i32, String)> = sd_notify::listen_fds_with_names()?.collect();
    let mut inherited = Inherited::strict();
    for (fd, name) in fds {
        // SAFETY: systemd passed `fd` to this process for its use alone (LISTEN_PID is ours);
        // nothing else in ringlb knows about it, so this is its one owner.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if services.contains(&name.as_str()) {
            tracing::info!(service = %name, fd, "listening socket passed by systemd");
            inherited.insert(name, vec![owned]);
        } else {
            tracing::warn!(name = %name, fd,
                "systemd passed a socket whose name (FileDescriptorName=) is no service: closed");
        }
    }
    Ok(inherited)
}
