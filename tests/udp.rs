//! UDP through a real ringlb process: datagrams of every size byte-exact and in order, bursts of
//! replies beyond the buffer pool, the flow bound under a flood of source ports, idle expiry,
//! `udp_replies`, refused backends, per-packet mode, every algorithm, the drain, and real DNS
//! (dnsmasq) queried with a DNS library.
//!
//! The backends, clients and DNS fixtures are in `common::udp`. What ringlb tracks is observed
//! from outside: the source port a backend sees (one upstream socket per flow), ringlb's open file
//! descriptors, and the `udp totals` line it logs when it stops.

mod common;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use common::udp::{
    Dnsmasq, REPLY_TIMEOUT, Reply, UdpBackend, ask, big_buffers, client, client_on, dns_answer,
    dns_query, stop_and_read_totals, try_ask, udp_service, whoami,
};
use common::{Ringlb, config, wait_for};

// ---- 100,000 datagrams of every size ----

/// Datagrams per flow and flows: 4 × 25,000 = 100,000.
const FLOWS: usize = 4;
const PER_FLOW: u64 = 25_000;
/// Datagrams a flow keeps in flight at most...
const WINDOW: usize = 8;
/// ...and bytes (a larger datagram travels alone). Four flows then keep at most 256 KiB in
/// flight, which fits the smallest socket buffers Linux gives by default (2 × 212992 bytes), so
/// loopback drops nothing and every datagram must come back.
const WINDOW_BYTES: usize = 48 * 1024;
const MAX_UDP: usize = 65_507;

/// Size of datagram `seq` of a flow: every 1000th is the largest (65,507), the next one byte;
/// the others are log-uniform between 1 and 65,507 (as many of 1-2 bytes as of 32-64 KiB).
fn datagram_size(flow: usize, seq: u64) -> usize {
    match seq % 1000 {
        0 => MAX_UDP,
        1 => 1,
        _ => {
            let mut x = (seq + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (flow as u64 + 1);
            x ^= x >> 29;
            x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x ^= x >> 32;
            let bits = (x % 16) as u32;
            let low = 1usize << bits;
            (low + (x >> 8) as usize % low).min(MAX_UDP)
        }
    }
}

/// Fills `out` with datagram `seq` of `flow`: a 12-byte header (flow, seq), cut to the size, then
/// pseudo-random bytes starting at an offset that depends on `seq`.
fn datagram(noise: &[u8], flow: usize, seq: u64, size: usize, out: &mut Vec<u8>) {
    let mut header = [0u8; 12];
    header[..4].copy_from_slice(&(flow as u32).to_le_bytes());
    header[4..].copy_from_slice(&seq.to_le_bytes());
    out.clear();
    out.extend_from_slice(&header[..size.min(12)]);
    let start = (seq % 61) as usize;
    out.extend_from_slice(&noise[start..start + size.saturating_sub(12)]);
}

#[test]
fn hundred_thousand_datagrams_of_every_size_come_back_exact_and_in_order() {
    let backends = [
        UdpBackend::start(Reply::Echo),
        UdpBackend::start(Reply::Echo),
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let mut lb = Ringlb::start(&config(
        "",
        &[udp_service("bulk", "round_robin", &addrs, "")],
    ));
    let addr = lb.addr("bulk");
    let mut noise = vec![0u8; MAX_UDP + 64];
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    for b in noise.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let started = Instant::now();
    let (largest, smallest) = std::thread::scope(|scope| {
        let flows: Vec<_> = (0..FLOWS)
            .map(|flow| {
                let noise = &noise;
                scope.spawn(move || {
                    let s = big_buffers(client());
                    s.connect(addr).unwrap();
                    let mut out = Vec::with_capacity(MAX_UDP);
                    let mut expected = Vec::with_capacity(MAX_UDP);
                    let mut reply = vec![0u8; 65_536];
                    let mut in_flight: VecDeque<(u64, usize)> = VecDeque::new();
                    let mut in_flight_bytes = 0;
                    let (mut next, mut done) = (0u64, 0u64);
                    let (mut largest, mut smallest) = (0, usize::MAX);
                    while done < PER_FLOW {
                        while next < PER_FLOW && in_flight.len() < WINDOW {
                            let size = datagram_size(flow, next);
                            if !in_flight.is_empty() && in_flight_bytes + size > WINDOW_BYTES {
                                break;
                            }
                            datagram(noise, flow, next, size, &mut out);
                            assert_eq!(s.send(&out).unwrap(), size);
                            in_flight.push_back((next, size));
                            in_flight_bytes += size;
                            next += 1;
                        }
                        let n = match s.recv(&mut reply) {
                            Ok(n) => n,
                            Err(e) => panic!(
                                "flow {flow}: no reply to datagram {} ({} bytes) within \
                                 {REPLY_TIMEOUT:?}: {e}",
                                in_flight[0].0, in_flight[0].1
                            ),
                        };
                        let (seq, size) = in_flight.pop_front().unwrap();
                        datagram(noise, flow, seq, size, &mut expected);
                        assert!(
                            reply[..n] == expected[..],
                            "flow {flow}: reply {seq} ({n} bytes) is not request {seq} \
                             ({size} bytes): lost, reordered or altered"
                        );
                        in_flight_bytes -= size;
                        largest = largest.max(size);
                        smallest = smallest.min(size);
                        done += 1;
                    }
                    (largest, smallest)
                })
            })
            .collect();
        flows
            .into_iter()
            .map(|f| f.join().unwrap())
            .fold((0, usize::MAX), |(l, s), (fl, fs)| (l.max(fl), s.min(fs)))
    });
    let elapsed = started.elapsed();
    eprintln!(
        "{} datagrams ({}..={} bytes) echoed in {elapsed:?}",
        FLOWS as u64 * PER_FLOW,
        smallest,
        largest
    );
    assert_eq!((smallest, largest), (1, MAX_UDP));
    let total: u64 = backends.iter().map(|b| b.received()).sum();
    assert_eq!(
        total,
        FLOWS as u64 * PER_FLOW,
        "backends saw every datagram once"
    );
    assert!(
        backends.iter().all(|b| b.received() > 0),
        "flows were spread over both backends"
    );
    let totals = stop_and_read_totals(&mut lb, "bulk");
    assert_eq!(totals["datagrams_up"], FLOWS as u64 * PER_FLOW);
    assert_eq!(totals["datagrams_down"], FLOWS as u64 * PER_FLOW);
    assert_eq!(totals["datagrams_dropped"], 0);
    assert_eq!(totals["flows_opened"], FLOWS as u64);
}

#[test]
fn empty_datagrams_are_forwarded_both_ways() {
    let echo = UdpBackend::start(Reply::Echo);
    let lb = Ringlb::start(&config(
        "",
        &[udp_service("empty", "round_robin", &[echo.addr], "")],
    ));
    let s = client();
    for _ in 0..3 {
        assert_eq!(ask(&s, lb.addr("empty"), b""), b"");
        assert_eq!(ask(&s, lb.addr("empty"), b"x"), b"x");
    }
}

#[test]
fn a_burst_of_replies_to_many_flows_all_reach_their_clients() {
    // More flows than the worker's pool has reply buffers (128), all answered at once: a reader
    // that finds the pool empty waits for a buffer; no reply is lost or misrouted.
    // 300 small datagrams in flight at once fit the default socket buffers (2 × 212992 bytes).
    const CLIENTS: usize = 300;
    let echo = UdpBackend::start(Reply::Echo);
    let lb = Ringlb::start(&config(
        "",
        &[udp_service("burst", "round_robin", &[echo.addr], "")],
    ));
    let addr = lb.addr("burst");
    let clients: Vec<_> = (0..CLIENTS).map(|_| big_buffers(client())).collect();
    for round in 0..5u8 {
        for (i, s) in clients.iter().enumerate() {
            let msg = [&(i as u32).to_le_bytes()[..], &[round; 100]].concat();
            s.send_to(&msg, addr).unwrap();
        }
        for (i, s) in clients.iter().enumerate() {
            let mut buf = [0u8; 256];
            let (n, _) = s
                .recv_from(&mut buf)
                .unwrap_or_else(|e| panic!("round {round}: client {i} got no reply: {e}"));
            assert_eq!(n, 104);
            assert_eq!(
                &buf[..4],
                &(i as u32).to_le_bytes(),
                "round {round}: client {i}"
            );
            assert!(buf[4..n].iter().all(|&b| b == round));
        }
    }
}

#[test]
fn bursts_of_replies_beyond_the_buffer_pool_all_reach_their_clients_in_order() {
    // Every request is answered with a burst of 100 replies, to 8 flows at once: 800 replies in
    // flight, far more than the worker's pool holds (128 buffers), so the links' multishot
    // receives (armed at each reader's third wait, in the first burst) may find the pool dry and
    // end, and the one-shot way then reads the rest until they are armed again (whether the pool
    // runs dry depends on timing; the `replies` module's unit test makes it certain). Every reply
    // must reach its client, in order: 100 small replies fit the upstream socket's default
    // receive buffer (212992 bytes), and the clients' buffers are large, so the kernel drops none.
    const CLIENTS: usize = 8;
    const BURST: u32 = 100;
    const ROUNDS: u8 = 4;
    let backend = UdpBackend::start(Reply::Burst(BURST));
    let lb = Ringlb::start(&config(
        "",
        &[udp_service("bursts", "round_robin", &[backend.addr], "")],
    ));
    let addr = lb.addr("bursts");
    let clients: Vec<_> = (0..CLIENTS).map(|_| big_buffers(client())).collect();
    let mut buf = [0u8; 64];
    for round in 0..ROUNDS {
        for (i, s) in clients.iter().enumerate() {
            s.send_to(&[i as u8, round], addr).unwrap();
        }
        for (i, s) in clients.iter().enumerate() {
            for seq in 0..BURST {
                let (n, _) = s.recv_from(&mut buf).unwrap_or_else(|e| {
                    panic!(
                        "round {round}: client {i}: no reply {seq} of {BURST}: {e}; log:\n{}",
                        lb.log_text()
                    )
                });
                let expected = [&seq.to_le_bytes()[..], &[i as u8, round]].concat();
                assert_eq!(&buf[..n], &expected[..], "round {round}: client {i}");
            }
        }
    }
    assert_eq!(backend.received(), (CLIENTS * usize::from(ROUNDS)) as u64);
}

#[test]
fn a_backlog_of_established_flows_is_all_answered_in_order() {
    // While ringlb is stopped, 200 clients queue 4 datagrams each (about 400 per worker's
    // socket, 1 MB: well within its receive buffer, so the kernel drops none); once it runs
    // again, the whole backlog is received (in pool buffers, several per io_uring wake-up),
    // forwarded and answered, each flow's datagrams in order.
    const CLIENTS: usize = 200;
    const EACH: u8 = 4;
    const SIZE: usize = 1_000;
    let echo = UdpBackend::start(Reply::Echo);
    let lb = Ringlb::start(&config(
        "",
        &[udp_service("backlog", "round_robin", &[echo.addr], "")],
    ));
    let addr = lb.addr("backlog");
    let clients: Vec<_> = (0..CLIENTS).map(|_| big_buffers(client())).collect();
    let message = |i: usize, seq: u8| {
        let mut m = (i as u32).to_le_bytes().to_vec();
        m.resize(SIZE, seq);
        m
    };
    // Every client's flow is open first, so the backlog is all of established flows.
    for (i, s) in clients.iter().enumerate() {
        assert_eq!(ask(s, addr, &message(i, 0)), message(i, 0), "client {i}");
    }
    lb.signal(libc::SIGSTOP);
    for seq in 1..=EACH {
        for (i, s) in clients.iter().enumerate() {
            s.send_to(&message(i, seq), addr).unwrap();
        }
    }
    lb.signal(libc::SIGCONT);
    let started = Instant::now();
    let mut buf = vec![0u8; 2 * SIZE];
    for (i, s) in clients.iter().enumerate() {
        for seq in 1..=EACH {
            let (n, _) = s.recv_from(&mut buf).unwrap_or_else(|e| {
                panic!(
                    "client {i}: no reply {seq} of {EACH} after {:?}: {e}; log:\n{}",
                    started.elapsed(),
                    lb.log_text()
                )
            });
            assert!(buf[..n] == message(i, seq), "client {i}: reply {seq}");
        }
    }
    assert_eq!(echo.received(), (CLIENTS * (usize::from(EACH) + 1)) as u64);
}

#[test]
fn a_flood_of_new_clients_that_drains_the_buffer_pool_is_all_forwarded() {
    // New clients beyond a small flow table, queued while ringlb is stopped: each new flow waits
    // for an ended flow's fd to close (one io_uring round trip) while its datagram holds a pool
    // buffer, and meanwhile the multishot receive goes on filling buffers with the backlog, so
    // the worker's pool (128 buffers) often runs dry and the receive ends (whether it does
    // depends on timing; the receive module's unit test makes it certain). Every datagram must
    // be read (by the fallback receive once the multishot one ended) and forwarded, within the
    // time bound; none is lost (the backlog, about 100 KB per worker's socket, is far below its
    // receive buffer).
    const CLIENTS: usize = 1_000;
    let echo = UdpBackend::start(Reply::Echo);
    let lb = Ringlb::start(&config(
        "",
        &[udp_service(
            "flood",
            "round_robin",
            &[echo.addr],
            "udp_max_flows = 4",
        )],
    ));
    let addr = lb.addr("flood");
    let clients: Vec<_> = (0..CLIENTS).map(|_| client()).collect();
    lb.signal(libc::SIGSTOP);
    for (i, s) in clients.iter().enumerate() {
        s.send_to(&(i as u32).to_le_bytes(), addr).unwrap();
    }
    lb.signal(libc::SIGCONT);
    let all = wait_for(Duration::from_secs(10), || {
        echo.received() == CLIENTS as u64
    });
    assert!(
        all,
        "the backend got {} of {CLIENTS} datagrams; log:\n{}",
        echo.received(),
        lb.log_text()
    );
}

// ---- the flow bound ----

#[test]
fn ten_thousand_client_ports_never_take_more_than_max_flows() {
    const PORTS: usize = 10_000;
    const FIRST_PORT: u16 = 10_000;
    const MAX_FLOWS: usize = 1_000;
    // Other fds ringlb may open meanwhile (none are expected; a little room for the runtime).
    const SLACK: usize = 16;
    let backends = [
        UdpBackend::start(Reply::Whoami("a")),
        UdpBackend::start(Reply::Whoami("b")),
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let mut lb = Ringlb::start(&config(
        "",
        &[udp_service(
            "flood",
            "round_robin",
            &addrs,
            &format!("udp_max_flows = {MAX_FLOWS}"),
        )],
    ));
    let addr = lb.addr("flood");
    let baseline = lb.fd_count();
    // An established flow that stays active must keep its upstream socket through the flood.
    let hot = client();
    let (hot_backend, hot_upstream) = whoami(&ask(&hot, addr, b"hot"));
    let mut peak_fds = 0;
    let mut rss_full = 0;
    // Ports below Linux's ephemeral range (32768-60999), so none is one the kernel hands out
    // meanwhile, and each distinct: a port given back and handed out again would be the same
    // flow. A port something else holds is skipped.
    let mut ports = FIRST_PORT..FIRST_PORT + 2 * PORTS as u16;
    for i in 0..PORTS {
        let s = loop {
            let port = ports.next().expect("enough free client ports");
            if let Ok(s) = UdpSocket::bind((Ipv4Addr::LOCALHOST, port)) {
                break s;
            }
        };
        s.set_read_timeout(Some(REPLY_TIMEOUT)).unwrap();
        let (_, _) = whoami(&ask(&s, addr, b"new"));
        drop(s);
        if i % 50 == 0 {
            let (b, up) = whoami(&ask(&hot, addr, b"hot"));
            assert_eq!(
                (b.as_str(), up),
                (hot_backend.as_str(), hot_upstream),
                "the active flow kept its backend and upstream socket (after {i} new ports)"
            );
        }
        if i == 2 * MAX_FLOWS {
            rss_full = rss_kib(lb.pid());
        }
        if i % 250 == 0 || i == PORTS - 1 {
            let fds = lb.fd_count();
            peak_fds = peak_fds.max(fds);
            assert!(
                fds <= baseline + MAX_FLOWS + SLACK,
                "after {i} ports ringlb holds {fds} fds (baseline {baseline}, max_flows {MAX_FLOWS})"
            );
        }
    }
    // Memory: once the tables are full (after 2,000 ports), 8,000 more ports do not grow it.
    let rss_end = rss_kib(lb.pid());
    assert!(
        rss_end < rss_full + 8 * 1024,
        "ringlb's RSS grew from {rss_full} KiB to {rss_end} KiB with full flow tables"
    );
    // The tables are full: one upstream socket per tracked flow, no more.
    let fds = lb.fd_count();
    assert!(
        fds + SLACK >= baseline + MAX_FLOWS && fds <= baseline + MAX_FLOWS + SLACK,
        "ringlb holds {fds} fds with full tables (baseline {baseline})"
    );
    let totals = stop_and_read_totals(&mut lb, "flood");
    let opened = totals["flows_opened"];
    assert_eq!(opened, PORTS as u64 + 1, "one flow per client port");
    assert!(
        totals["flows_peak"] <= MAX_FLOWS as u64,
        "peak {} flows",
        totals["flows_peak"]
    );
    assert_eq!(
        totals["flows_evicted"],
        opened - MAX_FLOWS as u64,
        "every flow beyond the bound evicted one, and each eviction was counted"
    );
    assert_eq!(totals["flows_expired"], 0);
    eprintln!(
        "peak fds {peak_fds} (baseline {baseline}); RSS {rss_full} -> {rss_end} KiB; {totals:?}"
    );
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

// ---- ending flows ----

#[test]
fn idle_flow_expires_and_its_upstream_socket_closes() {
    let backend = UdpBackend::start(Reply::Whoami("a"));
    let lb = Ringlb::start(&config(
        "",
        &[udp_service(
            "idle",
            "round_robin",
            &[backend.addr],
            "udp_idle_timeout = \"400ms\"",
        )],
    ));
    let addr = lb.addr("idle");
    let baseline = lb.fd_count();
    let s = client();
    let (_, first) = whoami(&ask(&s, addr, b"1"));
    assert_eq!(
        lb.fd_count(),
        baseline + 1,
        "one upstream socket for the flow"
    );
    // Traffic every 200 ms keeps the flow (and its upstream socket) past the idle timeout...
    let mut last = Instant::now();
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        let (_, up) = whoami(&ask(&s, addr, b"again"));
        last = Instant::now();
        assert_eq!(up, first, "an active flow keeps its upstream socket");
    }
    // ...and silence ends it: the upstream socket is closed.
    assert!(
        wait_for(Duration::from_secs(3), || lb.fd_count() == baseline),
        "upstream socket still open {:?} after the last datagram",
        last.elapsed()
    );
    let quiet = last.elapsed();
    assert!(
        quiet >= Duration::from_millis(350),
        "flow ended after only {quiet:?} of silence"
    );
    // The next datagram opens a new flow, with a new upstream socket.
    let (_, second) = whoami(&ask(&s, addr, b"after"));
    assert_ne!(second, first, "a new flow after expiry");
}

#[test]
fn udp_replies_ends_flows_once_every_request_is_answered() {
    let one = UdpBackend::start(Reply::Whoami("one"));
    let two = UdpBackend::start(Reply::Twice("two"));
    let lb = Ringlb::start(&config(
        "",
        &[
            udp_service("dns", "round_robin", &[one.addr], "udp_replies = 1"),
            udp_service("pairs", "round_robin", &[two.addr], "udp_replies = 2"),
        ],
    ));
    let baseline = lb.fd_count();
    // One reply per request: each request is a flow of its own, closed as soon as answered.
    let s = client();
    let mut upstreams = HashSet::new();
    for _ in 0..5 {
        let (_, up) = whoami(&ask(&s, lb.addr("dns"), b"q"));
        upstreams.insert(up);
        assert!(
            wait_for(Duration::from_secs(2), || lb.fd_count() == baseline),
            "the answered flow's upstream socket was closed"
        );
    }
    assert_eq!(upstreams.len(), 5, "every answered request ended its flow");
    // Two queries back to back from one port (as a resolver sends A and AAAA): the first answer
    // must not end the flow before the second query is answered.
    s.send_to(b"a", lb.addr("dns")).unwrap();
    s.send_to(b"aaaa", lb.addr("dns")).unwrap();
    let mut buf = [0u8; 256];
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (n, _) = s.recv_from(&mut buf).expect("both queries answered");
        seen.push(whoami(&buf[..n]).1);
    }
    assert_eq!(seen[0], seen[1], "both answers came through one flow");
    // Two replies expected per request: both arrive, then the flow ends.
    let p = client();
    p.send_to(b"q", lb.addr("pairs")).unwrap();
    let mut replies = Vec::new();
    for _ in 0..2 {
        let (n, _) = p.recv_from(&mut buf).expect("both replies of the pair");
        replies.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert!(
        replies[0].ends_with(" 1") && replies[1].ends_with(" 2"),
        "{replies:?}"
    );
    assert!(
        wait_for(Duration::from_secs(2), || lb.fd_count() == baseline),
        "the pair's flow ended after its second reply"
    );
}

// ---- backend failures ----

#[test]
fn flows_on_a_backend_whose_port_closed_move_to_the_others() {
    const CLIENTS: usize = 12;
    let a = UdpBackend::start(Reply::Whoami("a"));
    let b = UdpBackend::start(Reply::Whoami("b"));
    let mut c = UdpBackend::start(Reply::Whoami("c"));
    let mut lb = Ringlb::start(&config(
        "",
        &[udp_service(
            "fo",
            "round_robin",
            &[a.addr, b.addr, c.addr],
            "",
        )],
    ));
    let addr = lb.addr("fo");
    let clients: Vec<_> = (0..CLIENTS).map(|_| client()).collect();
    let before: Vec<String> = clients
        .iter()
        .map(|s| whoami(&ask(s, addr, b"hello")).0)
        .collect();
    let on_c = before.iter().filter(|n| *n == "c").count();
    assert_eq!(
        on_c,
        CLIENTS / 3,
        "round robin put a third of the flows on c: {before:?}"
    );
    // c's port closes: the next datagram of each of its flows is refused (ICMP port unreachable).
    c.close();
    for (i, s) in clients.iter().enumerate() {
        let mut answer = None;
        let mut attempts = 0;
        while answer.is_none() && attempts < 5 {
            attempts += 1;
            answer = try_ask(s, addr, b"again", Duration::from_millis(300));
        }
        let (name, _) = whoami(&answer.unwrap_or_else(|| panic!("client {i} got no answer")));
        if before[i] == "c" {
            assert_ne!(name, "c");
            // The refused datagram is lost; the client's retry reaches another backend.
            assert!(attempts <= 2, "client {i} needed {attempts} attempts");
        } else {
            assert_eq!(
                (name.as_str(), attempts),
                (before[i].as_str(), 1),
                "client {i}"
            );
        }
        // From now on the flow stays where it moved.
        for _ in 0..3 {
            assert_eq!(whoami(&ask(s, addr, b"stay")).0, name, "client {i}");
        }
    }
    let totals = stop_and_read_totals(&mut lb, "fo");
    assert!(
        totals["backend_failures"] >= on_c as u64,
        "each moved flow counted its backend's failure: {totals:?}"
    );
    assert_eq!(
        totals["flows_opened"], CLIENTS as u64,
        "flows moved, not reopened"
    );
}

// ---- modes and algorithms ----

#[test]
fn per_packet_mode_spreads_datagrams_and_replies_reach_the_client() {
    let a = UdpBackend::start(Reply::Whoami("a"));
    let b = UdpBackend::start(Reply::Whoami("b"));
    let lb = Ringlb::start(&config(
        "",
        &[udp_service(
            "syslog",
            "round_robin",
            &[a.addr, b.addr],
            "udp_mode = \"per_packet\"",
        )],
    ));
    let baseline = lb.fd_count();
    let s = client();
    let mut names = Vec::new();
    let mut upstreams = HashSet::new();
    for _ in 0..20 {
        let (name, up) = whoami(&ask(&s, lb.addr("syslog"), b"log line"));
        names.push(name);
        upstreams.insert(up.port());
    }
    let a_count = names.iter().filter(|n| *n == "a").count();
    assert_eq!(a_count, 10, "round robin per datagram: {names:?}");
    assert!(
        names.windows(2).all(|w| w[0] != w[1]),
        "consecutive datagrams of one client went to different backends: {names:?}"
    );
    assert_eq!(
        upstreams.len(),
        1,
        "one upstream socket for the client's flow"
    );
    assert_eq!(lb.fd_count(), baseline + 1);
}

#[test]
fn every_algorithm_balances_udp_flows() {
    const FLOWS: usize = 24;
    let a = UdpBackend::start(Reply::Whoami("a"));
    let b = UdpBackend::start(Reply::Whoami("b"));
    for algorithm in [
        "round_robin",
        "weighted_round_robin",
        "random",
        "power_of_two",
        "least_conn",
        "source_hash",
    ] {
        let lb = Ringlb::start(&config(
            "",
            &[udp_service("alg", algorithm, &[a.addr, b.addr], "")],
        ));
        // Every flow stays open (and counted active) until the end of the round.
        let clients: Vec<_> = (0..FLOWS).map(|_| client()).collect();
        let mut per_backend: HashMap<String, usize> = HashMap::new();
        for s in &clients {
            let (name, up) = whoami(&ask(s, lb.addr("alg"), b"which"));
            // A flow stays on its backend, on one upstream socket.
            assert_eq!(
                whoami(&ask(s, lb.addr("alg"), b"again")),
                (name.clone(), up)
            );
            *per_backend.entry(name).or_default() += 1;
        }
        if algorithm == "source_hash" {
            // One client IP: every flow on the same backend.
            assert_eq!(per_backend.len(), 1, "{algorithm}: {per_backend:?}");
        } else {
            assert_eq!(per_backend.len(), 2, "{algorithm}: {per_backend:?}");
        }
        if matches!(
            algorithm,
            "round_robin" | "weighted_round_robin" | "least_conn"
        ) {
            assert_eq!(per_backend["a"], FLOWS / 2, "{algorithm}: {per_backend:?}");
        }
    }
}

#[test]
fn source_hash_keeps_each_client_ip_on_one_backend_across_flows() {
    let backends: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|n| UdpBackend::start(Reply::Whoami(n)))
        .collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let lb = Ringlb::start(&config(
        "",
        &[udp_service("sticky", "source_hash", &addrs, "")],
    ));
    let mut chosen = HashSet::new();
    for last in 1..=8u8 {
        let ip = Ipv4Addr::new(127, 0, 0, last);
        let names: HashSet<String> = (0..5)
            .map(|_| whoami(&ask(&client_on(ip), lb.addr("sticky"), b"x")).0)
            .collect();
        assert_eq!(names.len(), 1, "{ip}: five flows, one backend: {names:?}");
        chosen.extend(names);
    }
    assert!(
        chosen.len() >= 2,
        "eight client IPs all hashed to one backend"
    );
}

// ---- drain ----

#[test]
fn sigterm_closes_udp_sockets_at_once() {
    let backend = UdpBackend::start(Reply::Whoami("a"));
    let mut lb = Ringlb::start(&config(
        "drain_timeout = \"20s\"",
        &[udp_service("drain", "round_robin", &[backend.addr], "")],
    ));
    let addr = lb.addr("drain");
    let s = client();
    whoami(&ask(&s, addr, b"live flow"));
    let started = Instant::now();
    let totals = stop_and_read_totals(&mut lb, "drain");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "live UDP flows do not hold the drain: {:?}",
        started.elapsed()
    );
    assert_eq!(totals["flows_opened"], 1);
    // Nothing answers on the service's port any more.
    assert!(try_ask(&s, addr, b"late", Duration::from_millis(300)).is_none());
}

// ---- real DNS ----

#[test]
fn dns_queries_through_ringlb_get_dnsmasq_answers() {
    let first = Ipv4Addr::new(10, 1, 2, 3);
    let second = Ipv4Addr::new(10, 1, 2, 4);
    let d1 = Dnsmasq::start(first);
    let d2 = Dnsmasq::start(second);
    let mut lb = Ringlb::start(&config(
        "",
        &[udp_service(
            "dns",
            "round_robin",
            &[d1.addr, d2.addr],
            "udp_replies = 1",
        )],
    ));
    let addr = lb.addr("dns");
    let baseline = lb.fd_count();
    let mut seen = HashSet::new();
    for id in 100..120u16 {
        // A resolver's fresh socket per query: a flow each.
        let s = client();
        let (got_id, ips) = dns_answer(&ask(&s, addr, &dns_query(id, "test.ringlb.", false)));
        assert_eq!(got_id, id);
        assert_eq!(ips.len(), 1, "one A record");
        assert!(ips[0] == first || ips[0] == second, "{ips:?}");
        seen.insert(ips[0]);
    }
    assert_eq!(seen.len(), 2, "queries were spread over both servers");
    // A and AAAA back to back from one socket, as glibc's resolver does: both are answered.
    let s = client();
    s.send_to(&dns_query(7, "test.ringlb.", false), addr)
        .unwrap();
    s.send_to(&dns_query(8, "test.ringlb.", true), addr)
        .unwrap();
    let mut ids = HashSet::new();
    let mut buf = [0u8; 4096];
    for _ in 0..2 {
        let (n, _) = s
            .recv_from(&mut buf)
            .expect("an answer to each of A and AAAA");
        ids.insert(dns_answer(&buf[..n]).0);
    }
    assert_eq!(ids, HashSet::from([7, 8]));
    // udp_replies = 1: answered flows do not linger.
    assert!(
        wait_for(Duration::from_secs(2), || lb.fd_count() == baseline),
        "answered DNS flows closed their upstream sockets"
    );
    let totals = stop_and_read_totals(&mut lb, "dns");
    assert_eq!(
        totals["flows_answered"], totals["flows_opened"],
        "{totals:?}"
    );
}
