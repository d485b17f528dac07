//! A stand-in for systemd's side of the notify protocol (`sd_notify`): a datagram socket that
//! ringlb's `NOTIFY_SOCKET` names, recording every message with its arrival time. It does not
//! start or supervise processes.
#![allow(dead_code)]

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{TempDir, temp_dir, wait_for};

/// The test's notify socket: every message ringlb sends, with when it arrived.
pub struct Manager {
    messages: Arc<Mutex<Vec<(Instant, String)>>>,
    /// Where the socket is bound: ringlb's `NOTIFY_SOCKET`.
    pub path: PathBuf,
    _dir: TempDir,
}

impl Manager {
    /// Binds the socket in a directory of its own and collects what arrives on a thread.
    pub fn start() -> Manager {
        let dir = temp_dir();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let messages = Arc::new(Mutex::new(Vec::new()));
        let sink = messages.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            // Ends when the test process exits (bounded by the test's own deadlines).
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                sink.lock().unwrap().push((Instant::now(), text));
            }
        });
        Manager {
            messages,
            path,
            _dir: dir,
        }
    }

    /// Every message so far, in arrival order.
    pub fn all(&self) -> Vec<(Instant, String)> {
        self.messages.lock().unwrap().clone()
    }

    /// The index of the first message from `from` on with every one of `parts`, waiting up to
    /// ten seconds.
    pub fn wait(&self, from: usize, parts: &[&str]) -> usize {
        let mut found = None;
        wait_for(Duration::from_secs(10), || {
            found = self
                .all()
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, m))| parts.iter().all(|p| m.lines().any(|l| l.starts_with(p))))
                .map(|(i, _)| i);
            found.is_some()
        });
        found.unwrap_or_else(|| {
            panic!(
                "no message with {parts:?} after #{from}; got {:?}",
                self.all().iter().map(|(_, m)| m).collect::<Vec<_>>()
            )
        })
    }

    /// When each `WATCHDOG=1` arrived.
    pub fn pings(&self) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
            .map(|(t, _)| t)
            .collect()
    }
}
