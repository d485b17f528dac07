//! Hot reload against the real binary: under load (new connections and long-lived streams,
//! 20 reloads that add, remove and reweigh backends and add and remove a service) nothing fails
//! and no byte is corrupted; a broken config leaves the old one serving and says where it is
//! wrong; a removed service stops accepting while its live connection finishes; counters of
//! what stays are kept.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::admin::{Metrics, get, post};
use common::{Backend, Ringlb, reload, runtime, wait_for};

/// The config of the reload test's round `round`: service "main" over a subset of the
/// backends with changing weights, and service "extra" on even rounds only.
fn round_config(round: usize, backends: &[SocketAddr], extra_backend: SocketAddr) -> String {
    let main: Vec<(SocketAddr, usize)> = backends
        .iter()
        .enumerate()
        // Round 0 has them all; later rounds leave one out in turn and reweigh the rest.
        .filter(|&(i, _)| round == 0 || i != round % backends.len())
        .map(|(i, &b)| (b, 1 + (round + i) % 4))
        .collect();
    reload::round_config(round, "", &main, extra_backend)
}

/// One long-lived stream: sends numbered 1 KiB chunks and checks each echo until `stop`.
async fn stream(addr: SocketAddr, id: u64, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("stream {id} connect: {e}"))?;
    let mut rounds = 0u64;
    let mut back = vec![0u8; 1024];
    while !stop.load(Ordering::Relaxed) {
        let chunk: Vec<u8> = (0..1024u64)
            .map(|i| (id.wrapping_mul(31) ^ rounds ^ i) as u8)
            .collect();
        reload::echo_piece(&mut s, id, rounds, &chunk, &mut back).await?;
        rounds += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reload::finish_stream(s, id).await?;
    Ok(rounds)
}

/// New connections one after another until `stop`: each sends 256 bytes and checks the echo.
async fn churn(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    made: Arc<AtomicU64>,
) -> Result<(), String> {
    let data: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
    while !stop.load(Ordering::Relaxed) {
        reload::echo_once(addr, &data).await?;
        made.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

#[test]
fn twenty_reloads_under_load_fail_no_connect_and_corrupt_no_byte() {
    let rt = runtime();
    let (backends, extra) = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(Backend::echo(None).await);
        }
        (v, Backend::echo(None).await)
    });
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let ringlb = Ringlb::start(&round_config(0, &addrs, extra.addr));
    let admin = ringlb.admin.unwrap();
    let main = ringlb.addr("main");

    let stop = Arc::new(AtomicBool::new(false));
    let made = Arc::new(AtomicU64::new(0));
    let streams: Vec<_> = (0..200)
        .map(|id| rt.spawn(stream(main, id, stop.clone())))
        .collect();
    let churners: Vec<_> = (0..4)
        .map(|_| rt.spawn(churn(main, stop.clone(), made.clone())))
        .collect();
    // Every stream is up (each has a tracked connection) before the first reload.
    assert!(wait_for(Duration::from_secs(10), || {
        Metrics::scrape(admin).sum("ringlb_service_connections_active", &[("service", "main")])
            >= 200.0
    }));

    for round in 1..=20 {
        std::fs::write(&ringlb.config_path, round_config(round, &addrs, extra.addr)).unwrap();
        let before = made.load(Ordering::Relaxed);
        // Every fourth round by SIGHUP, which does the same as the API.
        reload::reload_round(&ringlb, &rt, round, round.is_multiple_of(4));
        // New connections keep being made between reloads.
        assert!(
            wait_for(Duration::from_secs(10), || made.load(Ordering::Relaxed)
                >= before + 20),
            "round {round}: new connections stalled"
        );
    }

    stop.store(true, Ordering::Relaxed);
    let mut rounds = 0;
    for s in streams {
        rounds += rt.block_on(s).unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    for c in churners {
        rt.block_on(c).unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    let made = made.load(Ordering::Relaxed);
    assert!(rounds >= 200, "streams exchanged too little: {rounds}");
    // Counters of the service survived every reload: nothing was reset to zero.
    let accepted =
        Metrics::scrape(admin).sum("ringlb_service_connections_total", &[("service", "main")]);
    assert!(
        accepted >= (200 + made) as f64,
        "main's counter was reset by a reload: {accepted} < {}",
        200 + made
    );
    let m = Metrics::scrape(admin);
    assert_eq!(m.sum("ringlb_config_reloads_total", &[]), 20.0);
    assert_eq!(m.sum("ringlb_service_no_backend_total", &[]), 0.0);
    assert_eq!(m.sum("ringlb_backend_connect_failures_total", &[]), 0.0);
    eprintln!("{made} new connections and {rounds} stream round trips across 20 reloads");
}

#[test]
fn a_broken_config_on_reload_keeps_the_old_one_serving_and_names_the_line() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let good = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"svc\"\nlisten = \"127.0.0.1:0\"\n\
         [[service.backend]]\naddress = \"{}\"\n",
        backend.addr
    );
    let ringlb = Ringlb::start(&good);
    let admin = ringlb.admin.unwrap();
    let broken = good.replace(
        "[[service.backend]]",
        "retries = \"many\"\n[[service.backend]]",
    );
    std::fs::write(&ringlb.config_path, &broken).unwrap();

    let answer = post(admin, "/reload");
    assert_eq!(answer.code, 422, "{}", answer.body);
    let error = answer.json();
    assert_eq!(error["line"], 8, "{error}");
    assert_eq!(error["key"], "service[0].retries");
    assert!(error["error"].as_str().unwrap().contains(":8:"), "{error}");
    ringlb.signal(libc::SIGHUP);
    assert!(
        ringlb
            .wait_log("reload refused", Duration::from_secs(5))
            .is_some(),
        "the refused reload was not logged"
    );

    // Still serving the old config.
    rt.block_on(async {
        let mut s = TcpStream::connect(ringlb.addr("svc")).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
    });
    assert!(wait_for(Duration::from_secs(5), || {
        Metrics::scrape(admin).sum("ringlb_config_reload_failures_total", &[]) == 2.0
    }));
    assert_eq!(get(admin, "/status").json()["config_version"], 1);
}

#[test]
fn a_removed_service_stops_accepting_while_its_live_connection_finishes() {
    let rt = runtime();
    let backend = rt.block_on(Backend::echo(None));
    let service = |name: &str| {
        format!(
            "[[service]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\n\
             [[service.backend]]\naddress = \"{}\"\n",
            backend.addr
        )
    };
    let head = "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let ringlb = Ringlb::start(&format!("{head}{}{}", service("stay"), service("go")));
    let admin = ringlb.admin.unwrap();
    let go = ringlb.addr("go");
    let mut live = rt.block_on(async {
        let mut s = TcpStream::connect(go).await.unwrap();
        s.write_all(b"before").await.unwrap();
        let mut back = [0u8; 6];
        s.read_exact(&mut back).await.unwrap();
        s
    });

    std::fs::write(&ringlb.config_path, format!("{head}{}", service("stay"))).unwrap();
    let answer = post(admin, "/reload");
    assert_eq!(answer.code, 200, "{}", answer.body);
    assert_eq!(answer.json()["services_removed"][0], "go");

    rt.block_on(async {
        // The listener is closed once every worker took the change.
        let mut closed = false;
        for _ in 0..100 {
            if TcpStream::connect(go).await.is_err() {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(closed, "the removed service still accepts");
        // The live connection still works to the end.
        let data = vec![42u8; 100_000];
        live.write_all(&data).await.unwrap();
        live.shutdown().await.unwrap();
        let mut back = Vec::new();
        live.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, data);
        // The service that stayed was never interrupted.
        let mut s = TcpStream::connect(ringlb.addr("stay")).await.unwrap();
        s.write_all(b"ok").await.unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).await.unwrap();
    });
    let status = get(admin, "/status").json();
    assert_eq!(status["services"].as_array().unwrap().len(), 1);
}
