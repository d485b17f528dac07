//! UDP fixtures shared by the integration tests: backends on loopback served by a thread each
//! (echo, or answers that name the backend and the source it saw), blocking clients that ask and
//! wait for the reply, a UDP service's config, ringlb's `udp totals` line, and real DNS (a
//! dnsmasq process and DNS messages built and parsed with hickory-proto).
//!
//! Everything here is plain `std` sockets and processes. The only checks made here are the ones
//! every caller needs: a reply comes from the address asked, and ringlb exits 0 on SIGTERM before
//! its totals are read; what ringlb should do with the traffic is for the tests to assert.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{Ringlb, TempDir, temp_dir, wait_for};

/// How long a test waits for one reply that must come.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a test backend answers to each datagram.
#[derive(Clone, Copy)]
pub enum Reply {
    /// The datagram itself.
    Echo,
    /// `"<name> <source address>"`: which backend answered, and the upstream socket it saw.
    Whoami(&'static str),
    /// Two datagrams: `"<name> <source> 1"` and `"<name> <source> 2"`.
    Twice(&'static str),
    /// Like [`Reply::Whoami`] to datagrams that start with the given bytes; nothing to others.
    WhoamiIfPrefixed(&'static str, &'static [u8]),
    /// This many datagrams at once, each its number (`u32`, little-endian) then the datagram.
    Burst(u32),
}

/// A UDP backend on loopback served by one thread until dropped (or [`UdpBackend::close`]d,
/// which closes its port: later datagrams to it are refused with ICMP port unreachable).
pub struct UdpBackend {
    pub addr: SocketAddr,
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpBackend {
    pub fn start(reply: Reply) -> UdpBackend {
        let socket = big_buffers(UdpSocket::bind("127.0.0.1:0").unwrap());
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (count, halt) = (received.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65_536];
            while !halt.load(Ordering::Relaxed) {
                let Ok((n, src)) = socket.recv_from(&mut buf) else {
                    continue;
                };
                count.fetch_add(1, Ordering::Relaxed);
                let _ = match reply {
                    Reply::Echo => socket.send_to(&buf[..n], src),
                    Reply::Whoami(name) => socket.send_to(format!("{name} {src}").as_bytes(), src),
                    Reply::Twice(name) => socket
                        .send_to(format!("{name} {src} 1").as_bytes(), src)
                        .and_then(|_| socket.send_to(format!("{name} {src} 2").as_bytes(), src)),
                    Reply::WhoamiIfPrefixed(name, prefix) if buf[..n].starts_with(prefix) => {
                        socket.send_to(format!("{name} {src}").as_bytes(), src)
                    }
                    Reply::WhoamiIfPrefixed(..) => Ok(0),
                    Reply::Burst(count) => (0..count).try_fold(0, |_, seq| {
                        let reply = [&seq.to_le_bytes()[..], &buf[..n]].concat();
                        socket.send_to(&reply, src)
                    }),
                };
            }
        });
        UdpBackend {
            addr,
            received,
            stop,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops serving and closes the port.
    pub fn close(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for UdpBackend {
    fn drop(&mut self) {
        self.close();
    }
}

/// Asks for 4 MiB socket buffers (the kernel caps them at net.core.rmem_max / wmem_max).
pub fn big_buffers(socket: UdpSocket) -> UdpSocket {
    let s = socket2::Socket::from(socket);
    s.set_recv_buffer_size(4 << 20).unwrap();
    s.set_send_buffer_size(4 << 20).unwrap();
    s.into()
}

/// A client socket on loopback whose receives give up after [`REPLY_TIMEOUT`].
pub fn client() -> UdpSocket {
    client_on(Ipv4Addr::LOCALHOST)
}

pub fn client_on(ip: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).unwrap();
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    s
}

/// Sends `msg` to `to` and returns the reply, or `None` when none came within `timeout`.
pub fn try_ask(s: &UdpSocket, to: SocketAddr, msg: &[u8], timeout: Duration) -> Option<Vec<u8>> {
    s.set_read_timeout(Some(timeout)).unwrap();
    s.send_to(msg, to).unwrap();
    let mut buf = vec![0u8; 65_536];
    let got = s.recv_from(&mut buf).ok().map(|(n, from)| {
        assert_eq!(from, to, "replies come from the service's address");
        buf.truncate(n);
        buf
    });
    s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
    got
}

pub fn ask(s: &UdpSocket, to: SocketAddr, msg: &[u8]) -> Vec<u8> {
    try_ask(s, to, msg, REPLY_TIMEOUT)
        .unwrap_or_else(|| panic!("no reply from {to} within {REPLY_TIMEOUT:?}"))
}

/// Parses a `Whoami` reply: (backend name, the source address the backend saw).
pub fn whoami(reply: &[u8]) -> (String, SocketAddr) {
    let text = std::str::from_utf8(reply).unwrap();
    let mut parts = text.split(' ');
    let name = parts.next().unwrap().to_string();
    let src = parts.next().unwrap().parse().unwrap();
    (name, src)
}

/// The config of one UDP service on port 0 in front of `backends`, with extra service keys.
pub fn udp_service(name: &str, algorithm: &str, backends: &[SocketAddr], extra: &str) -> String {
    let mut c = format!(
        "[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
         algorithm = \"{algorithm}\"\n{extra}\n"
    );
    for b in backends {
        c.push_str(&format!("\n[[service.backend]]\naddress = \"{b}\"\n"));
    }
    c
}

/// Stops ringlb with SIGTERM and returns the figures of its `udp totals` line for `service`.
pub fn stop_and_read_totals(lb: &mut Ringlb, service: &str) -> HashMap<String, u64> {
    lb.signal(libc::SIGTERM);
    assert_eq!(
        lb.wait_exit(Duration::from_secs(10)),
        Some(0),
        "ringlb exits 0 after SIGTERM"
    );
    let wanted = format!("service={service} ");
    let line = lb
        .wait_log_all(&["udp totals", &wanted], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no udp totals line; log:\n{}", lb.log_text()));
    line.split_whitespace()
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

// ---- DNS ----

/// A loopback port free for both UDP and TCP (dnsmasq listens on both).
pub fn free_dns_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break port;
        }
    }
}

/// dnsmasq in the foreground on 127.0.0.1:`port`, answering only what the caller adds (no
/// upstream, no /etc/hosts, no config file), its pid in `pid_file`, its output discarded.
pub fn dnsmasq_command(port: u16, pid_file: &std::path::Path) -> Command {
    let binary = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect(
            "dnsmasq is not installed: this test needs it (Debian: apt-get install dnsmasq; \
             .ci/run installs it)",
        );
    let mut cmd = Command::new(binary);
    cmd.args([
        "--no-resolv",
        "--no-hosts",
        "--keep-in-foreground",
        "--bind-interfaces",
        "--listen-address=127.0.0.1",
        "--conf-file=/dev/null",
        "--log-facility=-",
    ])
    .arg(format!("--port={port}"))
    .arg(format!("--pid-file={}", pid_file.display()))
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        // As root dnsmasq would switch to user "nobody"; stay root, nothing to protect here.
        cmd.arg("--user=root");
    }
    cmd
}

/// A dnsmasq process answering `test.ringlb` with `answer`, killed on drop.
pub struct Dnsmasq {
    pub addr: SocketAddr,
    child: Child,
    _dir: TempDir,
}

impl Dnsmasq {
    pub fn start(answer: Ipv4Addr) -> Dnsmasq {
        let dir = temp_dir();
        let port = free_dns_port();
        let mut cmd = dnsmasq_command(port, &dir.path().join("dnsmasq.pid"));
        cmd.arg(format!("--address=/test.ringlb/{answer}"));
        let child = cmd.spawn().expect("dnsmasq starts");
        let mut d = Dnsmasq {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            _dir: dir,
        };
        // Ready once it answers directly.
        let probe = client();
        let ready = wait_for(Duration::from_secs(10), || {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!("dnsmasq exited at start: {status}");
            }
            try_ask(
                &probe,
                d.addr,
                &dns_query(1, "test.ringlb.", false),
                Duration::from_millis(100),
            )
            .is_some()
        });
        assert!(ready, "dnsmasq on {} did not answer within 10 s", d.addr);
        d
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn dns_query(id: u16, name: &str, aaaa: bool) -> Vec<u8> {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    let kind = if aaaa {
        RecordType::AAAA
    } else {
        RecordType::A
    };
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    m.to_vec().unwrap()
}

/// Parses a DNS response: (id, the A records' addresses).
pub fn dns_answer(bytes: &[u8]) -> (u16, Vec<Ipv4Addr>) {
    use hickory_proto::op::{Message, MessageType, ResponseCode};
    use hickory_proto::rr::RData;
    let m = Message::from_vec(bytes).expect("a well-formed DNS message");
    assert_eq!(m.metadata.message_type, MessageType::Response);
    let ips = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    if !m.answers.is_empty() {
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    }
    (m.metadata.id, ips)
}
