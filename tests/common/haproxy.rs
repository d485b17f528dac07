//! A real HAProxy (`/usr/sbin/haproxy`, TCP mode) in front of ringlb: one frontend on a free
//! loopback port, one server line with the options a test gives (`send-proxy`,
//! `send-proxy-v2`). Runs in the foreground (`-db`) from a config in its own directory; killed
//! on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::health::free_port;
use crate::common::nginx::listening;
use crate::common::{TempDir, die_with_parent, temp_dir, wait_for};

/// A running HAProxy.
pub struct Haproxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Haproxy {
    /// Starts HAProxy forwarding every connection to `server` with `server_options` on its
    /// server line; returns once the frontend accepts connections.
    pub fn start(server: SocketAddr, server_options: &str) -> Haproxy {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = format!(
            "global\n  maxconn 64\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend fe\n  bind {addr}\n  default_backend be\n\
             backend be\n  server s1 {server} {server_options}\n"
        );
        Haproxy::with_config(addr, &config)
    }

    /// Starts HAProxy with the whole `config`, whose frontend binds `addr`; returns once that
    /// frontend accepts connections.
    pub fn with_config(addr: SocketAddr, config: &str) -> Haproxy {
        let dir = temp_dir();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(binary());
        die_with_parent(&mut command);
        let mut child = command
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy starts");
        // Readiness without a connection (it would reach the server): the listening socket.
        let up = wait_for(Duration::from_secs(10), || listening(addr.port()));
        if !up {
            let _ = child.kill();
            panic!("haproxy did not listen on {addr}: {:?}", child.wait());
        }
        Haproxy {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The haproxy binary: on PATH, else Debian's place.
fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/haproxy").exists() {
        "/usr/sbin/haproxy"
    } else {
        "haproxy"
    }
}
