//! PROXY protocol with real peers: a real HAProxy in front of ringlb (`send-proxy`,
//! `send-proxy-v2`), a real NGINX behind it (`listen ... proxy_protocol`); headers that are
//! broken, truncated, too long or from an untrusted source, each closed and counted; a v2
//! `LOCAL` command; data in the same segment as the header; and the config errors.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::admin::{Metrics, get};
use common::haproxy::Haproxy;
use common::nginx::Nginx;
use common::{Backend, Ringlb, pattern, runtime, temp_dir, wait_for};

/// A client connection to `to` from `from` (a loopback address of its own).
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
    socket.connect(&to.into()).unwrap();
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Writes `data` and reads as many bytes back (from an echo backend); asserts they are equal.
fn echo_round(stream: &mut TcpStream, data: &[u8]) {
    stream.write_all(data).unwrap();
    let mut back = vec![0; data.len()];
    stream.read_exact(&mut back).unwrap();
    assert!(back == data, "the echo differs from what was sent");
}

/// Whether the peer closed (EOF or reset) within the stream's read timeout, having sent nothing.
fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
    }
}

/// A ringlb with an admin API, one service `svc` to `backend` with the given extra keys and
/// access log on.
fn ringlb(backend: SocketAddr, keys: &str) -> Ringlb {
    Ringlb::start(&format!(
        "[runtime]\nworkers = 1\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\naccess_log = true\n{keys}\n\
         [[service.backend]]\naddress = \"{backend}\"\n"
    ))
}

/// Whether `/connections` lists a connection of `client`.
fn lists_client(lb: &Ringlb, client: SocketAddr) -> bool {
    let all = get(lb.admin.unwrap(), "/connections").json();
    all.as_array()
        .unwrap()
        .iter()
        .any(|c| c["client"] == client.to_string())
}

fn rejected(lb: &Ringlb, reason: &str) -> f64 {
    Metrics::scrape(lb.admin.unwrap()).sum(
        "ringlb_service_proxy_rejected_total",
        &[("service", "svc"), ("reason", reason)],
    )
}

#[test]
fn haproxy_in_front_gives_ringlb_the_real_client_v1_and_v2() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let lb = ringlb(
        backend.addr,
        "accept_proxy = true\ntrusted = [\"127.0.0.1/32\"]",
    );
    for (option, client_ip) in [
        ("send-proxy-v2", [127, 0, 0, 7]),
        ("send-proxy", [127, 0, 0, 8]),
    ] {
        let haproxy = Haproxy::start(lb.addr("svc"), option);
        let mut client = connect_from(IpAddr::from(client_ip), haproxy.addr);
        let me = client.local_addr().unwrap();
        echo_round(&mut client, &pattern(1, 100_000));
        assert!(
            wait_for(Duration::from_secs(5), || lists_client(&lb, me)),
            "{option}: /connections does not show {me}: {}",
            get(lb.admin.unwrap(), "/connections").body
        );
        echo_round(&mut client, b"second round");
        drop(client);
        let line = lb.wait_log(&format!("client={me}"), Duration::from_secs(5));
        assert!(
            line.is_some(),
            "{option}: no access-log line for {me}:\n{}",
            lb.log_text()
        );
    }
    assert_eq!(rejected(&lb, "malformed") + rejected(&lb, "untrusted"), 0.0);
}

#[test]
fn nginx_behind_ringlb_logs_the_real_client_v1_and_v2() {
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let nginx = Nginx::start(echo.addr);
    // The service writes v1; its second service's backend writes v2 of its own.
    let lb = Ringlb::start(&format!(
        "[runtime]\nworkers = 1\n\
         [[service]]\nname = \"v1\"\nlisten = \"127.0.0.1:0\"\nsend_proxy = \"v1\"\n\
         [[service.backend]]\naddress = \"{n}\"\n\
         [[service]]\nname = \"v2\"\nlisten = \"127.0.0.1:0\"\nsend_proxy = \"v1\"\n\
         [[service.backend]]\naddress = \"{n}\"\nsend_proxy = \"v2\"\n",
        n = nginx.addr
    ));
    for (service, client_ip) in [("v1", [127, 0, 0, 11]), ("v2", [127, 0, 0, 12])] {
        let mut client = connect_from(IpAddr::from(client_ip), lb.addr(service));
        let me = client.local_addr().unwrap();
        let data = pattern(7, 50_000);
        echo_round(&mut client, &data);
        drop(client);
        let want = format!(
            "pp={}:{} to={} bytes={}",
            me.ip(),
            me.port(),
            lb.addr(service),
            data.len()
        );
        let logged = wait_for(Duration::from_secs(5), || {
            nginx.log_lines().iter().any(|l| l.starts_with(&want))
        });
        assert!(
            logged,
            "{service}: nginx did not log {want:?}: {:?}",
            nginx.log_lines()
        );
    }
}

#[test]
fn broken_slow_long_and_untrusted_headers_are_closed_and_counted() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let lb = ringlb(
        backend.addr,
        "accept_proxy = true\ntrusted = [\"127.0.0.1/32\"]\nproxy_timeout = \"400ms\"",
    );
    let addr = lb.addr("svc");
    let trusted = IpAddr::from([127, 0, 0, 1]);

    let mut c = connect_from(trusted, addr);
    c.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(closed_by_peer(&mut c), "a malformed header is closed");
    assert!(wait_for(Duration::from_secs(5), || rejected(
        &lb,
        "malformed"
    ) == 1.0));

    // Truncated: never completes, closed once proxy_timeout has passed.
    let mut c = connect_from(trusted, addr);
    let started = Instant::now();
    c.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
    assert!(closed_by_peer(&mut c), "a truncated header is closed");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(5),
        "closed after {waited:?}, proxy_timeout is 400ms"
    );
    assert!(wait_for(Duration::from_secs(5), || rejected(
        &lb, "timeout"
    ) == 1.0));

    // Oversized: a v1 line past 107 bytes, a v2 header announcing 64 KiB.
    let mut c = connect_from(trusted, addr);
    c.write_all(format!("PROXY TCP4 {}", "1".repeat(150)).as_bytes())
        .unwrap();
    assert!(closed_by_peer(&mut c), "an oversized v1 header is closed");
    let mut c = connect_from(trusted, addr);
    c.write_all(b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff")
        .unwrap();
    assert!(closed_by_peer(&mut c), "an oversized v2 header is closed");
    assert!(wait_for(Duration::from_secs(5), || rejected(
        &lb,
        "oversized"
    ) == 2.0));

    // An untrusted source, even with a well-formed header.
    let mut c = connect_from(IpAddr::from([127, 0, 0, 5]), addr);
    let _ = c.write_all(b"PROXY TCP4 192.0.2.1 10.0.0.1 1000 80\r\n");
    assert!(closed_by_peer(&mut c), "an untrusted source is closed");
    assert!(wait_for(Duration::from_secs(5), || rejected(
        &lb,
        "untrusted"
    ) == 1.0));

    assert_eq!(
        backend.accepted(),
        0,
        "no refused connection reached the backend"
    );
    let metrics = Metrics::scrape(lb.admin.unwrap());
    assert_eq!(
        metrics.sum("ringlb_service_connections_total", &[("service", "svc")]),
        0.0
    );
}

#[test]
fn local_command_and_data_in_the_header_segment_pass() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let lb = ringlb(
        backend.addr,
        "accept_proxy = true\ntrusted = [\"127.0.0.0/24\"]",
    );
    let addr = lb.addr("svc");

    // v2 LOCAL (an upstream's health check): the connection's own addresses, and the bytes
    // written in the same segment as the header reach the backend.
    let mut c = connect_from(IpAddr::from([127, 0, 0, 3]), addr);
    let me = c.local_addr().unwrap();
    let mut first = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00".to_vec();
    first.extend_from_slice(b"hello after LOCAL");
    c.write_all(&first).unwrap();
    let mut back = [0u8; 17];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello after LOCAL");
    assert!(wait_for(Duration::from_secs(5), || lists_client(&lb, me)));
    drop(c);

    // v1 with data in the same write: the header's source is the client.
    let mut c = connect_from(IpAddr::from([127, 0, 0, 4]), addr);
    c.write_all(b"PROXY TCP4 192.0.2.1 10.0.0.1 5555 80\r\nhello after v1")
        .unwrap();
    let mut back = [0u8; 14];
    c.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"hello after v1");
    let shown: SocketAddr = "192.0.2.1:5555".parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(5), || lists_client(&lb, shown)),
        "{}",
        get(lb.admin.unwrap(), "/connections").body
    );
    drop(c);
    assert!(
        lb.wait_log("client=192.0.2.1:5555", Duration::from_secs(5))
            .is_some()
    );
    assert_eq!(backend.accepted(), 2);
}

#[test]
fn send_proxy_on_udp_and_bad_trusted_prefixes_are_config_errors() {
    let dir = temp_dir();
    for (keys, expected) in [
        (
            "protocol = \"udp\"\nsend_proxy = \"v2\"",
            "service[0].send_proxy: applies only to protocol = \"tcp\" services",
        ),
        (
            "accept_proxy = true\ntrusted = [\"10.0.0.0/8\", \"10.0.0/8\"]",
            "service[0].trusted: \"10.0.0/8\" is not a CIDR prefix",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!(
                "[[service]]\nname = \"s\"\nlisten = \"127.0.0.1:7000\"\n{keys}\n\
                 [[service.backend]]\naddress = \"127.0.0.1:7001\"\n"
            ),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_ringlb"))
            .args(["check", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{keys}: accepted");
        assert!(stderr.contains(expected), "{keys}: {stderr}");
    }
}

#[test]
fn bench_serve_skips_the_header_ringlb_sends() {
    // The benchmark's backend (tools/proxy-ab.sh): `ringlb bench serve --proxy-protocol`.
    let serve = common::BenchServe::start(&["--proxy-protocol"]);
    for version in ["v1", "v2"] {
        let lb = Ringlb::start(&format!(
            "[runtime]\nworkers = 1\n\
             [[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\nsend_proxy = \"{version}\"\n\
             [[service.backend]]\naddress = \"{}\"\n",
            serve.addr
        ));
        let mut client = connect_from(IpAddr::from([127, 0, 0, 1]), lb.addr("svc"));
        echo_round(&mut client, b"x");
        echo_round(&mut client, &pattern(3, 20_000));
    }
    // Without a header, bench serve with --proxy-protocol closes the connection.
    let mut plain = connect_from(IpAddr::from([127, 0, 0, 1]), serve.addr);
    plain.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(closed_by_peer(&mut plain));
}

#[test]
fn send_proxy_reaches_a_backend_that_speaks_first_and_one_whose_client_does() {
    // A PROXY-aware server that speaks first (as MySQL or SMTP do): it reads the v1 header
    // line, greets with the client address the header gave, then echoes.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        for _ in 0..2 {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut line = Vec::new();
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                s.read_exact(&mut byte).unwrap();
                line.push(byte[0]);
            }
            let line = String::from_utf8(line).unwrap();
            let source = line.split(' ').nth(2).unwrap_or("?").to_owned();
            s.write_all(format!("hello {source}\n").as_bytes()).unwrap();
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => s.write_all(&buf[..n]).unwrap(),
                }
            }
        }
    });
    let lb = ringlb(backend, "send_proxy = \"v1\"");
    let greeting = |s: &mut TcpStream| {
        let mut got = Vec::new();
        let mut byte = [0u8; 1];
        while !got.ends_with(b"\n") {
            s.read_exact(&mut byte).unwrap();
            got.push(byte[0]);
        }
        String::from_utf8(got).unwrap()
    };
    // The client waits for the server: the header goes out alone, at once.
    let mut silent = connect_from("127.0.0.9".parse().unwrap(), lb.addr("svc"));
    assert_eq!(greeting(&mut silent), "hello 127.0.0.9\n");
    echo_round(&mut silent, b"after the greeting");
    drop(silent);
    // The client speaks at once: its bytes follow the header, in order.
    let mut eager = connect_from("127.0.0.10".parse().unwrap(), lb.addr("svc"));
    eager.write_all(b"first").unwrap();
    assert_eq!(greeting(&mut eager), "hello 127.0.0.10\n");
    let mut back = [0u8; 5];
    eager.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"first");
    drop(eager);
    server.join().unwrap();
}
