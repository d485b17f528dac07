//! Admission limits: at a service's `max_connections`, and at the process's fd budget, accepting
//! pauses (connections wait in the kernel's queue, never accept-then-close), admitted
//! connections keep working, nothing spins, and accepting resumes when connections close.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{Backend, Ringlb, config, field, runtime, service_config, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// Opens `n` connections; each sends one byte and, once echoed, counts itself as admitted, then
/// holds its connection until it takes a permit from `release`, sends a second byte, checks its
/// echo and closes. Returns the tasks (each yields whether both echoes matched).
async fn clients(
    addr: SocketAddr,
    n: usize,
    admitted: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
) -> Vec<tokio::task::JoinHandle<bool>> {
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        // The TCP handshake completes in the kernel even while ringlb does not accept.
        let mut s = TcpStream::connect(addr).await.unwrap();
        let admitted = admitted.clone();
        let release = release.clone();
        tasks.push(tokio::spawn(async move {
            let b = [i as u8, (i >> 8) as u8];
            let mut got = [0u8; 1];
            if s.write_all(&b[..1]).await.is_err()
                || s.read_exact(&mut got).await.is_err()
                || got[0] != b[0]
            {
                return false;
            }
            admitted.fetch_add(1, Ordering::SeqCst);
            release.acquire().await.unwrap().forget();
            if s.write_all(&b[1..]).await.is_err() || s.read_exact(&mut got).await.is_err() {
                return false;
            }
            got[0] == b[1]
        }));
    }
    tasks
}

#[test]
fn max_connections_pauses_accepting_and_resumes_when_one_closes() {
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let lb = Ringlb::start(&config(
        "",
        &[service_config(
            "cap",
            "round_robin",
            &[echo.addr],
            "max_connections = 5",
        )],
    ));
    let addr = lb.addr("cap");
    let admitted = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Semaphore::new(0));
    let tasks = rt.block_on(clients(addr, 8, admitted.clone(), release.clone()));
    assert!(wait_for(Duration::from_secs(5), || admitted
        .load(Ordering::SeqCst)
        == 5));
    // The other three wait in the accept queue: not admitted, and not closed either.
    assert!(!wait_for(Duration::from_millis(300), || admitted
        .load(Ordering::SeqCst)
        > 5));
    assert_eq!(echo.accepted(), 5);
    // Each permit lets one admitted client finish; waiting ones take the freed slots.
    rt.block_on(async {
        for _ in 0..8 {
            release.add_permits(1);
        }
        for t in tasks {
            let done = tokio::time::timeout(Duration::from_secs(10), t).await;
            assert!(
                done.expect("client finished").unwrap(),
                "a client's echo failed"
            );
        }
    });
    assert_eq!(admitted.load(Ordering::SeqCst), 8);
    assert_eq!(echo.accepted(), 8);
}

#[test]
fn fd_exhaustion_pauses_accepting_without_spinning_and_resumes() {
    const CLIENTS: usize = 1000;
    let rt = runtime();
    let echo = rt.block_on(Backend::echo(None));
    let lb = Ringlb::start_with_nofile(
        &config(
            "",
            &[service_config("fds", "round_robin", &[echo.addr], "")],
        ),
        Some(1024),
    );
    let line = lb
        .wait_log("connection budget", Duration::from_secs(5))
        .expect("ringlb logs its connection budget");
    let budget: usize = field(&line, "budget=").unwrap().parse().unwrap();
    assert!(
        budget > 100 && budget < CLIENTS / 2,
        "budget {budget} under a 1024 fd limit"
    );
    let baseline_fds = lb.fd_count();

    let admitted = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Semaphore::new(0));
    let tasks = rt.block_on(clients(
        lb.addr("fds"),
        CLIENTS,
        admitted.clone(),
        release.clone(),
    ));
    assert!(
        wait_for(Duration::from_secs(10), || admitted.load(Ordering::SeqCst)
            == budget),
        "admitted {} of budget {budget}",
        admitted.load(Ordering::SeqCst)
    );
    // Saturated: no more admissions, no crash, and no busy loop (under 10% of a core).
    let cpu_before = lb.cpu_time();
    let window = Instant::now();
    assert!(!wait_for(Duration::from_secs(1), || admitted
        .load(Ordering::SeqCst)
        > budget));
    let cpu = lb.cpu_time() - cpu_before;
    assert!(
        cpu < window.elapsed() / 10,
        "ringlb used {cpu:?} of CPU while saturated"
    );
    assert!(lb.fd_count() <= 1024);

    // Free every connection: the waiting ones are accepted within a second.
    rt.block_on(async {
        let freed = Instant::now();
        release.add_permits(CLIENTS);
        let deadline = freed + Duration::from_secs(1);
        while admitted.load(Ordering::SeqCst) == budget && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(
            admitted.load(Ordering::SeqCst) > budget,
            "accepting did not resume within 1 s"
        );
        let mut ok = 0;
        for t in tasks {
            if let Ok(Ok(true)) = tokio::time::timeout(Duration::from_secs(20), t).await {
                ok += 1;
            }
        }
        assert_eq!(ok, CLIENTS, "clients served byte-exact");
    });
    lb.assert_fds_back_to(baseline_fds, Duration::from_secs(5));
}
