//! The per-backend administrative state (enabled / drain / disabled), set through the library
//! API on a [`Server`] running in this process (`admin_api` drives the same over HTTP).

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use common::health::{Switchable, greeting};
use common::runtime;
use ringlb::Server;
use ringlb::balancer::health::Admin;
use ringlb::config::Config;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A session through `addr` that reached the backend named `want` (others are closed).
async fn session_to(addr: std::net::SocketAddr, want: &str) -> BufReader<TcpStream> {
    for _ in 0..20 {
        let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
        let mut name = String::new();
        s.read_line(&mut name).await.unwrap();
        if name.trim_end() == want {
            return s;
        }
    }
    panic!("no session reached {want}");
}

/// Whether the session still echoes, or how it ended.
async fn echoes(s: &mut BufReader<TcpStream>) -> Result<(), String> {
    s.get_mut()
        .write_all(b"ping")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut b = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b)).await {
        Err(_) => Err("no echo".into()),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(_)) if &b == b"ping" => Ok(()),
        Ok(Ok(_)) => Err(format!("echoed {b:?}")),
    }
}

#[test]
fn drain_keeps_live_sessions_disabled_closes_them_and_both_stop_new_ones() {
    let rt = runtime();
    let a = rt.block_on(Switchable::start("a", LOCAL));
    let b = rt.block_on(Switchable::start("b", LOCAL));
    let text = format!(
        "[runtime]\nworkers = 2\n[[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\n\
         retries = 0\n[[service.backend]]\naddress = \"{}\"\n[[service.backend]]\naddress = \"{}\"\n",
        a.addr, b.addr
    );
    let config = Config::parse(&text, "test").unwrap();
    let mut server = Server::start(config, None).unwrap();
    let addr = server.listening()[0].address;
    let svc = server.snapshot().load().service("svc").unwrap().clone();
    let names = |n: usize| -> Vec<String> {
        rt.block_on(async {
            let mut v = Vec::new();
            for _ in 0..n {
                v.push(greeting(addr, None).await.unwrap());
            }
            v
        })
    };

    let mut first = rt.block_on(session_to(addr, "a"));
    assert_eq!(
        svc.set_admin(0, Admin::Drain, Instant::now()),
        Some(Admin::Enabled)
    );
    assert!(
        names(10).iter().all(|n| n == "b"),
        "a drained backend got new connections"
    );
    rt.block_on(async { assert_eq!(echoes(&mut first).await, Ok(()), "drain keeps sessions") });

    assert_eq!(
        svc.set_admin(0, Admin::Disabled, Instant::now()),
        Some(Admin::Drain)
    );
    rt.block_on(async {
        assert!(
            echoes(&mut first).await.is_err(),
            "disabled closes sessions"
        );
    });
    assert!(names(10).iter().all(|n| n == "b"));
    assert_eq!(svc.backends[0].counters.sessions_closed.get(), 1);

    assert_eq!(
        svc.set_admin(0, Admin::Enabled, Instant::now()),
        Some(Admin::Disabled)
    );
    assert!(names(10).contains(&"a".to_owned()), "enabled again");

    // Every backend drained: the service is down and new clients are closed at once.
    svc.set_admin(0, Admin::Drain, Instant::now());
    svc.set_admin(1, Admin::Drain, Instant::now());
    assert!(!svc.available());
    let r = rt.block_on(greeting(addr, None));
    assert!(r.is_err(), "{r:?}");
    server.drain_until(Instant::now());
    server.stop();
}
