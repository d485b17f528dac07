//! A dnsmasq process serving records a test chooses (host records, SRV records, a hosts
//! directory the test rewrites while it runs), authoritative for `test.ringlb` so unknown names
//! there are NXDOMAIN, and that a test can stop and start again on the same port.
//!
//! Nothing here checks what a resolver makes of the answers: that is for the tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Child;
use std::time::Duration;

use crate::common::udp::{client, dns_query, dnsmasq_command, free_dns_port, try_ask};
use crate::common::{TempDir, temp_dir, wait_for};

/// A dnsmasq on 127.0.0.1:<port> with its own hosts directory; killed on drop.
pub struct DnsServer {
    pub addr: SocketAddr,
    args: Vec<String>,
    child: Option<Child>,
    dir: TempDir,
}

impl DnsServer {
    /// Starts dnsmasq with `args` added to the fixed ones (loopback only, no upstream, no
    /// /etc/hosts, `test.ringlb` local, `--hostsdir` = [`DnsServer::hosts_dir`]).
    pub fn start(args: &[String]) -> DnsServer {
        let dir = temp_dir();
        std::fs::create_dir(dir.path().join("hosts")).unwrap();
        let port = free_dns_port();
        let mut server = DnsServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            args: args.to_vec(),
            child: None,
            dir,
        };
        server.restart();
        server
    }

    /// The directory dnsmasq reads hosts files from, and re-reads when a file changes.
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Writes (or replaces) one hosts file of the hosts directory, atomically (dnsmasq sees
    /// the rename by inotify).
    pub fn write_hosts(&self, file: &str, lines: &str) {
        let tmp = self.dir.path().join(format!("{file}.tmp"));
        std::fs::write(&tmp, lines).unwrap();
        std::fs::rename(&tmp, self.hosts_dir().join(file)).unwrap();
    }

    /// Kills dnsmasq; the port stays unanswered until [`DnsServer::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts dnsmasq again (on the same port, with the same arguments) and waits until it
    /// answers.
    pub fn restart(&mut self) {
        self.stop();
        let mut cmd = dnsmasq_command(self.addr.port(), &self.dir.path().join("dnsmasq.pid"));
        cmd.args(["--local=/test.ringlb/", "--address=/ready.ringlb/127.0.0.1"])
            .arg(format!("--hostsdir={}", self.hosts_dir().display()))
            .args(&self.args);
        let mut child = cmd.spawn().expect("dnsmasq starts");
        let probe = client();
        let ready = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("dnsmasq exited at start: {status}");
            }
            try_ask(
                &probe,
                self.addr,
                &dns_query(1, "ready.ringlb.", false),
                Duration::from_millis(100),
            )
            .is_some()
        });
        self.child = Some(child);
        assert!(ready, "dnsmasq on {} did not answer within 10 s", self.addr);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop();
    }
}
