//! Failover to backups and session persistence through a real ringlb process.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::health::{Switchable, events, expect_event, greeting, greetings, health, wait_event};
use common::{Ringlb, config, runtime, service_config};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn names(results: &[Result<String, String>]) -> Vec<String> {
    results
        .iter()
        .map(|r| r.clone().unwrap_or_else(|e| panic!("client error: {e}")))
        .collect()
}

#[test]
fn backups_serve_only_while_no_primary_is_up() {
    let rt = runtime();
    let p1 = rt.block_on(Switchable::start("p1", LOCAL));
    let p2 = rt.block_on(Switchable::start("p2", LOCAL));
    let b = rt.block_on(Switchable::start("b", LOCAL));
    let mut svc = service_config(
        "svc",
        "round_robin",
        &[p1.addr, p2.addr],
        &health("interval = \"100ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1"),
    );
    svc.push_str(&format!(
        "\n[[service.backend]]\naddress = \"{}\"\nbackup = true\n",
        b.addr
    ));
    let lb = Ringlb::start(&config("", &[svc]));
    let addr = lb.addr("svc");

    let seen = names(&rt.block_on(greetings(addr, 30)));
    assert!(!seen.contains(&"b".into()), "a backup served: {seen:?}");
    assert!(seen.contains(&"p1".into()) && seen.contains(&"p2".into()));

    rt.block_on(p1.stop());
    expect_event(
        &lb,
        "backend down",
        Some(p1.addr),
        1,
        Duration::from_secs(2),
    );
    let seen = names(&rt.block_on(greetings(addr, 20)));
    assert!(seen.iter().all(|n| n == "p2"), "one primary left: {seen:?}");

    rt.block_on(p2.stop());
    assert!(
        wait_event(
            &lb,
            "no primary backend is up: backups take new connections",
            None,
            1,
            Duration::from_secs(2)
        )
        .is_some(),
        "{}",
        lb.log_text()
    );
    let seen = names(&rt.block_on(greetings(addr, 30)));
    assert!(
        seen.iter().all(|n| n == "b"),
        "all primaries down: {seen:?}"
    );

    rt.block_on(p1.restart());
    assert!(
        wait_event(
            &lb,
            "a primary backend is up: new connections go to primaries again",
            None,
            1,
            Duration::from_secs(2)
        )
        .is_some(),
        "{}",
        lb.log_text()
    );
    let seen = names(&rt.block_on(greetings(addr, 30)));
    assert!(
        seen.iter().all(|n| n == "p1"),
        "a primary is back: {seen:?}"
    );
}

#[test]
fn a_client_ip_sticks_to_one_backend_under_round_robin_until_ttl() {
    const TTL: Duration = Duration::from_millis(300);
    let rt = runtime();
    let backends: Vec<Switchable> = ["x", "y", "z"]
        .iter()
        .map(|n| rt.block_on(Switchable::start(n, LOCAL)))
        .collect();
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let svc = service_config(
        "svc",
        "round_robin",
        &addrs,
        "\n[service.persistence]\nttl = \"300ms\"\nmax_entries = 1000\n",
    );
    let lb = Ringlb::start(&config("", &[svc]));
    let addr = lb.addr("svc");

    // 100 connections from 127.0.0.1, each from its own source port, one right after another
    // (each refreshes the entry, so the ttl never runs out in between).
    let seen: HashSet<String> = names(&rt.block_on(greetings(addr, 100)))
        .into_iter()
        .collect();
    assert_eq!(seen.len(), 1, "round robin alone would rotate: {seen:?}");
    let stuck = seen.into_iter().next().unwrap();

    // Other client IPs get entries of their own: their first connections, one after another,
    // are spread by round robin; later ones stick.
    let others: Vec<(IpAddr, String)> = rt.block_on(async {
        let mut firsts = Vec::new();
        for last in 2..=7u8 {
            let from = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
            firsts.push((from, greeting(addr, Some(from)).await.unwrap()));
        }
        for (from, first) in &firsts {
            for _ in 0..5 {
                assert_eq!(&greeting(addr, Some(*from)).await.unwrap(), first, "{from}");
            }
        }
        firsts
    });
    let distinct: HashSet<&String> = others.iter().map(|(_, n)| n).collect();
    assert_eq!(distinct.len(), 3, "{others:?}");

    // Past the ttl, an entry is gone: with a pause longer than the ttl before each
    // connection, round robin chooses afresh every time. (The wait is what is being tested:
    // an entry expires only by not being used.)
    let spread: Vec<String> = rt.block_on(async {
        let mut v = Vec::new();
        for _ in 0..4 {
            tokio::time::sleep(TTL + Duration::from_millis(100)).await;
            v.push(greeting(addr, None).await.unwrap());
        }
        v
    });
    let distinct: HashSet<&String> = spread.iter().collect();
    assert!(
        distinct.len() >= 2,
        "after the ttl the client should spread again: {spread:?} (stuck to {stuck})"
    );
}

#[test]
fn a_sticky_client_moves_when_its_backend_goes_down_and_stays_moved() {
    let rt = runtime();
    let a = rt.block_on(Switchable::start("a", LOCAL));
    let b = rt.block_on(Switchable::start("b", LOCAL));
    let svc = service_config(
        "svc",
        "round_robin",
        &[a.addr, b.addr],
        &format!(
            "{}\n[service.persistence]\nttl = \"1h\"\n",
            health("interval = \"100ms\"\ntimeout = \"50ms\"\nrise = 1\nfall = 1")
        ),
    );
    let lb = Ringlb::start(&config("", &[svc]));
    let addr = lb.addr("svc");
    let first = names(&rt.block_on(greetings(addr, 5)));
    assert!(first.iter().all(|n| *n == first[0]), "{first:?}");
    let (gone, other) = if first[0] == "a" { (&a, &b) } else { (&b, &a) };

    rt.block_on(gone.stop());
    expect_event(
        &lb,
        "backend down",
        Some(gone.addr),
        1,
        Duration::from_secs(2),
    );
    let moved = names(&rt.block_on(greetings(addr, 5)));
    assert!(moved.iter().all(|n| *n == other.name), "{moved:?}");

    // Back up: the entry now names the other backend, so the client stays there.
    rt.block_on(gone.restart());
    expect_event(
        &lb,
        "backend up",
        Some(gone.addr),
        1,
        Duration::from_secs(2),
    );
    let stayed = names(&rt.block_on(greetings(addr, 10)));
    assert!(stayed.iter().all(|n| *n == other.name), "{stayed:?}");
    assert_eq!(events(&lb, "backend down", None).len(), 1);
}
