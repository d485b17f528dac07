//! A real NGINX (`/usr/sbin/nginx`, stream module) behind ringlb: a `listen ... proxy_protocol`
//! server on a free loopback port that proxies to an upstream the test gives and logs, per
//! session, the client address the PROXY header carried (`$proxy_protocol_addr`). Runs in the
//! foreground (`daemon off`) with its prefix, config, pid and logs in its own directory; killed
//! on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::health::free_port;
use crate::common::{TempDir, die_with_parent, send_signal, temp_dir, wait_for};

/// Where Debian installs the dynamic stream module (libnginx-mod-stream).
const STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

/// A running NGINX.
pub struct Nginx {
    /// Where it listens (PROXY protocol expected first).
    pub addr: SocketAddr,
    child: Child,
    dir: TempDir,
}

impl Nginx {
    /// Starts NGINX proxying to `upstream`; returns once it accepts connections.
    pub fn start(upstream: SocketAddr) -> Nginx {
        let dir = temp_dir();
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let d = dir.path().display();
        let load = if std::path::Path::new(STREAM_MODULE).exists() {
            format!("load_module {STREAM_MODULE};\n")
        } else {
            String::new()
        };
        let config = format!(
            "{load}worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             stream {{\n\
               log_format pp 'pp=$proxy_protocol_addr:$proxy_protocol_port to=$proxy_protocol_server_addr:$proxy_protocol_server_port bytes=$bytes_received';\n\
               access_log {d}/access.log pp;\n\
               server {{ listen {addr} proxy_protocol; proxy_pass {upstream}; }}\n\
             }}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, config).unwrap();
        let mut command = Command::new(binary());
        die_with_parent(&mut command);
        let mut child = command
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .arg("-c")
            .arg(&path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        // Readiness without a connection (which would log a broken header): the listening
        // socket appears in /proc/net/tcp.
        let up = wait_for(Duration::from_secs(10), || listening(addr.port()));
        if !up {
            let _ = child.kill();
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            panic!("nginx did not listen on {addr}: {:?}\n{log}", child.wait());
        }
        Nginx { addr, child, dir }
    }

    /// The access log's lines so far (one per finished session).
    pub fn log_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.log_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("access.log")
    }
}

impl Drop for Nginx {
    /// A fast shutdown (SIGTERM): the master stops its worker and exits. A SIGKILL of the
    /// master alone would leave the worker running, orphaned, with its listening socket.
    fn drop(&mut self) {
        // The child is not reaped yet (its `Child` is here), so its pid names no other process.
        send_signal(self.child.id(), libc::SIGTERM);
        let exited = wait_for(Duration::from_secs(5), || {
            matches!(self.child.try_wait(), Ok(Some(_)))
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether some socket listens on loopback TCP port `port` (from /proc/net/tcp).
pub fn listening(port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
    })
}

/// The nginx binary: on PATH, else Debian's place.
fn binary() -> &'static str {
    if std::path::Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}
