//! Network namespaces a test creates for itself: `lo` up, sysctls of its own (a tiny
//! `ip_local_port_range`, say), removed on drop even when the test fails. Threads enter one with
//! `setns(2)` so that the sockets they make, and the processes they start, live inside it.

use std::os::fd::AsRawFd;
use std::process::Command;

/// A network namespace, deleted on drop.
pub struct Netns {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub name: String,
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Netns {
    /// A new namespace (named after `prefix` and this process) with `lo` up and `sysctls` (`key=value`) set inside it.
    pub fn new(prefix: &str, sysctls: &[&str]) -> Netns {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("ringlb-{prefix}-{}-{nanos}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for s in sysctls {
            ip(&["netns", "exec", &ns.name, "sysctl", "-q", "-w", s]);
        }
        ns
    }

    /// Runs `f` on a thread that entered the namespace first; returns its result, or resumes
    /// its panic here.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        run_in(&self.name, f)
    }
}

/// Runs `f` on a thread that entered network namespace `name` (made by `ip netns add`): the
/// sockets it creates live there. Returns `f`'s result, or resumes its panic here.
pub fn run_in<T: Send>(name: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path).expect("the namespace's file");
            // SAFETY: setns(2) on a valid open namespace fd only changes this thread's
            // network namespace; no memory is involved. The thread was started for this.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}
