//! Datagrams the kernel drops at a UDP service's socket, counted in `/metrics` as
//! `ringlb_udp_kernel_drops_total`.
//!
//! To make the kernel drop for sure, ringlb is stopped (SIGSTOP) while one client sends more
//! than the socket's receive buffer can hold (at most 8 MiB: ringlb asks for 4 MiB and Linux
//! doubles it), then continued: everything sent is then either queued, and forwarded once ringlb
//! runs again, or dropped by the kernel, and the counts must add up.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::admin::Metrics;
use common::{Ringlb, wait_for};

/// Datagrams of the flood and their size: 400 × 60,000 bytes = 24 MB, three times the largest
/// receive buffer ringlb's socket can have.
const FLOOD: u64 = 400;
const SIZE: usize = 60_000;

fn config(backend: SocketAddr) -> String {
    format!(
        "[runtime]\nworkers = 2\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[service]]\nname = \"u\"\nlisten = \"127.0.0.1:0\"\nprotocol = \"udp\"\n\
         algorithm = \"round_robin\"\n\n[[service.backend]]\naddress = \"{backend}\"\n"
    )
}

/// The service's sample of `metric` (one direction for the datagram counts).
fn value(m: &Metrics, metric: &str, extra: &[(&str, &str)]) -> u64 {
    let mut labels = vec![("service", "u")];
    labels.extend_from_slice(extra);
    m.sum(metric, &labels) as u64
}

#[test]
fn datagrams_the_kernel_drops_at_a_udp_services_socket_are_counted() {
    // A backend that never answers (and never reads).
    let backend = UdpSocket::bind("127.0.0.1:0").unwrap();
    let lb = Ringlb::start(&config(backend.local_addr().unwrap()));
    let admin = lb.admin.expect("admin API");
    let service = lb.addr("u");

    let before = Metrics::scrape(admin);
    assert!(
        before.has("ringlb_udp_kernel_drops_total"),
        "the metric is there before any drop"
    );
    assert_eq!(value(&before, "ringlb_udp_kernel_drops_total", &[]), 0);

    // Nobody reads the service's sockets while ringlb is stopped: once the one this client's
    // address hashes to is full, the kernel drops the rest.
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let datagram = vec![7u8; SIZE];
    lb.signal(libc::SIGSTOP);
    for _ in 0..FLOOD {
        client.send_to(&datagram, service).unwrap();
    }
    lb.signal(libc::SIGCONT);

    // Each worker samples its socket once a second; what was queued is forwarded meanwhile.
    let mut last = (0, 0, 0);
    let added_up = wait_for(Duration::from_secs(10), || {
        let m = Metrics::scrape(admin);
        last = (
            value(&m, "ringlb_udp_kernel_drops_total", &[]),
            value(&m, "ringlb_udp_datagrams_total", &[("direction", "up")]),
            value(&m, "ringlb_udp_datagrams_dropped_total", &[]),
        );
        last.0 + last.1 + last.2 == FLOOD
    });
    let (kernel, up, dropped) = last;
    assert!(
        added_up,
        "of {FLOOD} datagrams: kernel drops {kernel}, forwarded {up}, dropped by ringlb \
         {dropped}; log:\n{}",
        lb.log_text()
    );
    assert!(kernel > 0, "the kernel dropped none of {FLOOD}");
    assert!(up > 0, "ringlb forwarded none of the queued datagrams");
}
