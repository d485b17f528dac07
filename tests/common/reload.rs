//! Reloads under load, shared by the tests that drive them: the config of each round (service
//! "main" over changing backends and weights, service "extra" on even rounds only), one reload
//! step by SIGHUP or `POST /reload` with the checks every round needs, and the client side of
//! the load (one echoed request per connection, echoed pieces of a long-lived stream, its end).
//!
//! What the load must show across the reloads (nothing failed, digests, counters) is for the
//! tests to assert.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::Ringlb;
use super::admin::{get, post};
use super::wait_for;

/// The config of round `round`: the admin API, service "main" (weighted_round_robin, plus
/// `main_keys`) over `backends` with their weights, and service "extra" over `extra` on even
/// rounds only.
pub fn round_config(
    round: usize,
    main_keys: &str,
    backends: &[(SocketAddr, usize)],
    extra: SocketAddr,
) -> String {
    let mut c = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"main\"\nlisten = \"127.0.0.1:0\"\n\
         algorithm = \"weighted_round_robin\"\n{main_keys}\n"
    );
    for (address, weight) in backends {
        c.push_str(&format!(
            "[[service.backend]]\naddress = \"{address}\"\nweight = {weight}\n"
        ));
    }
    if round.is_multiple_of(2) {
        c.push_str(&format!(
            "[[service]]\nname = \"extra\"\nlisten = \"127.0.0.1:0\"\n\
             [[service.backend]]\naddress = \"{extra}\"\n"
        ));
    }
    c
}

/// Reloads `lb` into round `round` of [`round_config`], already written to its config file:
/// by SIGHUP when `sighup` (then waits for config version `round + 1`), else by `POST /reload`,
/// whose report must give that version and name one service added ("extra", on even rounds)
/// or one removed (on odd rounds); an added service must echo at once at the address the
/// report gives. Rounds follow one another, so an even round always follows a config without
/// "extra" and an odd one a config with it.
pub fn reload_round(lb: &Ringlb, rt: &tokio::runtime::Runtime, round: usize, sighup: bool) {
    let admin = lb.admin.expect("an admin API");
    let version = (round + 1) as u64;
    if sighup {
        lb.signal(libc::SIGHUP);
        assert!(
            wait_for(Duration::from_secs(10), || {
                get(admin, "/status").json()["config_version"] == version
            }),
            "round {round}: SIGHUP reload not applied"
        );
        return;
    }
    let answer = post(admin, "/reload");
    assert_eq!(answer.code, 200, "round {round}: {}", answer.body);
    let report = answer.json();
    assert_eq!(report["version"], version);
    let has_extra = round.is_multiple_of(2);
    let count = |key: &str| report[key].as_array().unwrap().len();
    assert_eq!(count("services_added"), usize::from(has_extra), "{report}");
    assert_eq!(
        count("services_removed"),
        usize::from(!has_extra),
        "{report}"
    );
    if has_extra {
        // The added service serves at once, at the address the reload reports.
        let address: SocketAddr = report["listening"][0]["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        rt.block_on(async {
            let mut s = TcpStream::connect(address).await.unwrap();
            s.write_all(b"extra").await.unwrap();
            let mut back = [0u8; 5];
            s.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"extra");
        });
    }
}

/// One request on a new connection to an echo service: sends `data`, half-closes, and reads
/// the echo to EOF (10 s at most), which must equal `data`.
pub async fn echo_once(addr: SocketAddr, data: &[u8]) -> Result<(), String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    s.write_all(data).await.map_err(|e| format!("write: {e}"))?;
    s.shutdown().await.map_err(|e| format!("shutdown: {e}"))?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .map_err(|_| "no echo within 10 s".to_owned())?
        .map_err(|e| format!("read: {e}"))?;
    if back != data {
        return Err(format!("corrupted echo: {} bytes back", back.len()));
    }
    Ok(())
}

/// One round of long-lived stream `id` through an echo service: writes `piece` and reads its
/// echo into `back` (as long as `piece`; 10 s at most), which must equal it.
pub async fn echo_piece(
    s: &mut TcpStream,
    id: u64,
    round: u64,
    piece: &[u8],
    back: &mut [u8],
) -> Result<(), String> {
    s.write_all(piece)
        .await
        .map_err(|e| format!("stream {id} write: {e}"))?;
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(back))
        .await
        .map_err(|_| format!("stream {id}: no echo within 10 s"))?
        .map_err(|e| format!("stream {id} read: {e}"))?;
    if back != piece {
        return Err(format!("stream {id}: corrupted echo in round {round}"));
    }
    Ok(())
}

/// Ends long-lived stream `id`: half-closes and reads to EOF (20 s at most), which must come
/// with no byte before it (every echo was read).
pub async fn finish_stream(mut s: TcpStream, id: u64) -> Result<(), String> {
    s.shutdown().await.map_err(|e| e.to_string())?;
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest))
        .await
        .map_err(|_| format!("stream {id}: no EOF within 20 s"))?
        .map_err(|e| format!("stream {id} read: {e}"))?;
    if !rest.is_empty() {
        return Err(format!(
            "stream {id}: {} unexpected bytes at the end",
            rest.len()
        ));
    }
    Ok(())
}
