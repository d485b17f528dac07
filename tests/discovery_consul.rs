//! Service discovery from Consul, end to end: a real ringlb process watching the stand-in
//! Consul of `common::consul` (real blocking queries, ACL tokens, fault modes), with echo
//! backends that greet with their name.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::admin::{Metrics, get};
use common::consul::{Consul, Fault};
use common::health::greeting;
use common::webhook::webhook;
use common::{Backend, Ringlb, runtime, wait_for};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One TCP service discovering `orders` from `consul`, with an admin API.
fn config(consul: &Consul, extra: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"orders\"\nlisten = \"127.0.0.1:0\"\nconnect_timeout = \"1s\"\n\
         [service.discovery]\nkind = \"consul\"\naddress = \"{}\"\nservice = \"orders\"\n\
         wait = \"5s\"\n{extra}\n",
        consul.url()
    )
}

/// The service's `/status` entry.
fn status(lb: &Ringlb) -> serde_json::Value {
    get(lb.admin.unwrap(), "/status").json()["services"][0].clone()
}

/// The backend addresses `/status` lists.
fn backends(lb: &Ringlb) -> BTreeSet<SocketAddr> {
    status(lb)["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["address"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The names greeting `n` new connections.
fn names(rt: &tokio::runtime::Runtime, addr: SocketAddr, n: usize) -> BTreeSet<String> {
    rt.block_on(async {
        let mut seen = BTreeSet::new();
        for _ in 0..n {
            seen.insert(greeting(addr, None).await.unwrap_or_else(|e| panic!("{e}")));
        }
        seen
    })
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| (*n).to_owned()).collect()
}

#[test]
fn new_connections_follow_the_registry_within_a_second_and_live_ones_stay() {
    let rt = runtime();
    let consul = rt.block_on(Consul::start(None));
    let mut echo = std::collections::HashMap::new();
    for name in ["a", "b", "c", "d"] {
        echo.insert(name, rt.block_on(Backend::echo(Some(&format!("{name}\n")))));
    }
    for name in ["a", "b", "c"] {
        consul.register(name, "orders", echo[name].addr, &[], 1);
    }
    // An instance of another service is not taken.
    consul.register("x", "billing", echo["d"].addr, &[], 1);
    let lb = Ringlb::start(&config(&consul, ""));
    let addr = lb.addr("orders");
    assert!(
        wait_for(Duration::from_secs(5), || backends(&lb).len() == 3),
        "{}",
        status(&lb)
    );
    assert_eq!(
        names(&rt, addr, 30),
        set(&["a", "b", "c"]),
        "traffic spreads over all three"
    );
    let s = status(&lb);
    assert_eq!(s["discovery"]["kind"], "consul");
    assert!(s["discovery"]["consul_index"].as_u64().unwrap() > 0, "{s}");
    assert!(
        s["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["origin"] == "consul")
    );

    // A live session to "a", which is about to be removed.
    let mut live = rt.block_on(async {
        for _ in 0..50 {
            let mut s = BufReader::new(TcpStream::connect(addr).await.unwrap());
            let mut name = String::new();
            s.read_line(&mut name).await.unwrap();
            if name == "a\n" {
                return s;
            }
        }
        panic!("no session reached a");
    });

    consul.deregister("a");
    consul.set_passing("b", false);
    consul.register("d", "orders", echo["d"].addr, &[], 1);
    let changed = Instant::now();
    assert!(
        wait_for(Duration::from_secs(1), || names(&rt, addr, 8)
            == set(&["c", "d"])),
        "new connections did not follow within 1 s: {}",
        status(&lb)
    );
    assert!(changed.elapsed() < Duration::from_secs(2));
    assert_eq!(names(&rt, addr, 20), set(&["c", "d"]));

    // The session to the removed instance still works.
    rt.block_on(async {
        live.get_mut().write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        live.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
    });
    let m = Metrics::scrape(lb.admin.unwrap());
    assert!(m.sum("ringlb_discovery_updates_total", &[("service", "orders")]) >= 2.0);
    assert_eq!(
        m.sum(
            "ringlb_discovery_backends",
            &[("service", "orders"), ("origin", "consul")]
        ),
        2.0
    );
    assert!(m.has("ringlb_discovery_set_age_seconds"));
}

#[test]
fn a_refused_token_is_a_clear_error_and_no_backend() {
    let rt = runtime();
    let consul = rt.block_on(Consul::start(Some("right-token")));
    let echo = rt.block_on(Backend::echo(Some("a\n")));
    consul.register("a", "orders", echo.addr, &[], 1);
    let lb = Ringlb::start(&config(&consul, "token = \"wrong-token\""));
    assert!(
        wait_for(Duration::from_secs(5), || {
            status(&lb)["discovery"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused the token"))
        }),
        "{}",
        status(&lb)
    );
    let s = status(&lb);
    assert_eq!(s["backends"].as_array().unwrap().len(), 0, "{s}");
    assert_eq!(s["up"], false, "{s}");
    let m = Metrics::scrape(lb.admin.unwrap());
    assert!(m.sum("ringlb_discovery_failures_total", &[("service", "orders")]) >= 1.0);
    assert!(
        !lb.log_text().contains("wrong-token"),
        "the token is never logged"
    );
    // No backend: a client is closed at once, without a greeting.
    assert!(rt.block_on(greeting(lb.addr("orders"), None)).is_err());
}

#[test]
fn a_registry_outage_keeps_the_last_set_and_recovery_is_seen() {
    let rt = runtime();
    let consul = rt.block_on(Consul::start(None));
    let a = rt.block_on(Backend::echo(Some("a\n")));
    let b = rt.block_on(Backend::echo(Some("b\n")));
    let c = rt.block_on(Backend::echo(Some("c\n")));
    consul.register("a", "orders", a.addr, &[], 1);
    consul.register("b", "orders", b.addr, &[], 1);
    let (hook, events) = rt.block_on(webhook("127.0.0.1:0"));
    let alerts = format!(
        "[[alert.webhook]]\nurl = \"http://{hook}/hook\"\n\
         events = [\"discovery_down\", \"discovery_up\"]\n"
    );
    // The webhook table goes after the service's tables.
    let lb = Ringlb::start(&format!("{}{alerts}", config(&consul, "")));
    let addr = lb.addr("orders");
    assert!(wait_for(Duration::from_secs(5), || backends(&lb).len() == 2));

    consul.refuse();
    assert!(
        lb.wait_log("discovery failed", Duration::from_secs(5))
            .is_some(),
        "{}",
        status(&lb)
    );
    let failures = || {
        Metrics::scrape(lb.admin.unwrap())
            .sum("ringlb_discovery_failures_total", &[("service", "orders")])
    };
    let first = failures();
    assert!(first >= 1.0);
    // Down for 10 s: retries keep failing, traffic goes on to the last set.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        assert_eq!(names(&rt, addr, 10), set(&["a", "b"]));
    }
    assert!(failures() > first, "retried while down");
    assert_eq!(
        lb.log_text().matches("discovery failed").count(),
        1,
        "logged once per transition"
    );

    consul.register("c", "orders", c.addr, &[], 1);
    consul.resume();
    assert!(
        wait_for(Duration::from_secs(12), || backends(&lb).len() == 3),
        "{}",
        status(&lb)
    );
    assert!(
        lb.wait_log("discovery recovered", Duration::from_secs(2))
            .is_some()
    );
    assert!(status(&lb)["discovery"]["last_error"].is_null());
    // The outage and the recovery reached the webhook, once each.
    assert!(
        wait_for(Duration::from_secs(5), || events.lock().unwrap().len() >= 2),
        "{:?}",
        events.lock().unwrap()
    );
    assert_eq!(
        *events.lock().unwrap(),
        ["discovery_down", "discovery_up"],
        "one alert per transition"
    );
    assert!(wait_for(Duration::from_secs(2), || names(&rt, addr, 30)
        == set(&["a", "b", "c"])));

    // A 500, garbage, and a registry that takes the query and never answers (the query's
    // bound, wait + wait/16 + 3 s, ends it) keep the set too.
    for (k, fault) in [Fault::ServerError, Fault::Garbage, Fault::Hang]
        .into_iter()
        .enumerate()
    {
        let hangs = matches!(fault, Fault::Hang);
        consul.set_fault(fault);
        consul.set_weight("a", 5 + k as u32);
        assert!(wait_for(Duration::from_secs(12), || {
            status(&lb)["discovery"]["last_error"].is_string()
        }));
        if hangs {
            let error = status(&lb)["discovery"]["last_error"].to_string();
            assert!(error.contains("did not answer within"), "{error}");
        }
        assert_eq!(backends(&lb).len(), 3);
        assert_eq!(names(&rt, addr, 30), set(&["a", "b", "c"]));
        consul.set_fault(Fault::None);
        assert!(wait_for(Duration::from_secs(12), || {
            status(&lb)["discovery"]["last_error"].is_null()
        }));
    }
}

#[test]
fn an_index_reset_restarts_the_watch_with_the_right_set() {
    let rt = runtime();
    let consul = rt.block_on(Consul::start(None));
    let a = rt.block_on(Backend::echo(Some("a\n")));
    let b = rt.block_on(Backend::echo(Some("b\n")));
    for i in 0..5 {
        consul.register("a", "orders", a.addr, &[], 1 + i);
    }
    let lb = Ringlb::start(&config(&consul, ""));
    assert!(wait_for(Duration::from_secs(5), || backends(&lb)
        == BTreeSet::from([a.addr])));
    let before = status(&lb)["discovery"]["consul_index"].as_u64().unwrap();
    assert!(before > 2);
    // The registry comes back with a lower index and another set (a restored snapshot).
    consul.reset_index(2, |instances| {
        instances.clear();
    });
    consul.register("b", "orders", b.addr, &[], 1);
    assert!(
        wait_for(Duration::from_secs(5), || backends(&lb)
            == BTreeSet::from([b.addr])),
        "{}",
        status(&lb)
    );
    assert_eq!(names(&rt, lb.addr("orders"), 5), set(&["b"]));
}

#[test]
fn churn_under_load_loses_no_connection_and_no_byte() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const STREAMS: usize = 200;
    const CHANGES: u64 = 100;
    let rt = runtime();
    let consul = rt.block_on(Consul::start(None));
    let echo: Vec<Backend> = (0..6).map(|_| rt.block_on(Backend::echo(None))).collect();
    for (i, b) in echo.iter().enumerate().take(3) {
        consul.register(&format!("i{i}"), "orders", b.addr, &[], 1);
    }
    let lb = Ringlb::start(&config(&consul, ""));
    let addr = lb.addr("orders");
    let admin = lb.admin.unwrap();
    let applied = |index: u64| {
        wait_for(Duration::from_secs(5), || {
            get(admin, "/status").json()["services"][0]["discovery"]["consul_index"]
                .as_u64()
                .is_some_and(|i| i >= index)
        })
    };
    assert!(applied(consul.index()));
    // Measured while the watch's blocking query holds its one connection, as at the end.
    let one_query = || {
        wait_for(Duration::from_secs(5), || {
            consul.open.load(Ordering::SeqCst) == 1
        })
    };
    assert!(one_query());
    let baseline = lb.fd_count();

    let stop = Arc::new(AtomicBool::new(false));
    let connects = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    // Long-lived streams: 1 KiB chunks echoed back until the churn ends, hashed both ways.
    let streams: Vec<_> = (0..STREAMS as u64)
        .map(|seed| {
            let stop = stop.clone();
            rt.spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let (mut sent, mut got) = (Vec::new(), Vec::new());
                for chunk in 0..2000u64 {
                    let data = common::pattern(seed * 10_000 + chunk, 1024);
                    s.write_all(&data).await.unwrap();
                    let mut back = vec![0u8; data.len()];
                    s.read_exact(&mut back).await.unwrap();
                    sent.extend_from_slice(&data);
                    got.extend_from_slice(&back);
                    if stop.load(Ordering::SeqCst) && chunk >= 2 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                assert_eq!(common::sha(&got), common::sha(&sent), "stream {seed}");
            })
        })
        .collect();
    // New connections all along, each a short echo exchange.
    let newcomer = {
        let (stop, connects, failed) = (stop.clone(), connects.clone(), failed.clone());
        rt.spawn(async move {
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let ok = async {
                    let mut s = TcpStream::connect(addr).await.ok()?;
                    s.write_all(b"ping1234").await.ok()?;
                    let mut b = [0u8; 8];
                    tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut b))
                        .await
                        .ok()?
                        .ok()?;
                    (&b == b"ping1234").then_some(())
                }
                .await;
                connects.fetch_add(1, Ordering::SeqCst);
                if ok.is_none() {
                    failed.fetch_add(1, Ordering::SeqCst);
                }
            }
        })
    };
    // 100 changes: instances added, removed and reweighted; i0 always stays.
    for k in 0..CHANGES {
        let i = 1 + (k % 5) as usize;
        let id = format!("i{i}");
        match k % 3 {
            0 => consul.deregister(&id),
            1 => consul.register(&id, "orders", echo[i].addr, &[], 1 + (k % 7) as u32),
            _ => consul.set_weight("i0", 1 + (k % 9) as u32),
        }
        assert!(applied(consul.index()), "change {k} not applied");
    }
    stop.store(true, Ordering::SeqCst);
    rt.block_on(async {
        for s in streams {
            s.await.unwrap();
        }
        newcomer.await.unwrap();
    });
    let (n, bad) = (
        connects.load(Ordering::SeqCst),
        failed.load(Ordering::SeqCst),
    );
    assert!(n > 0, "new connections were made");
    assert_eq!(bad, 0, "{bad} of {n} new connections failed");
    let m = Metrics::scrape(admin);
    assert!(
        m.sum("ringlb_discovery_updates_total", &[("service", "orders")]) >= CHANGES as f64 / 2.0
    );
    assert!(one_query());
    lb.assert_fds_back_to(baseline, Duration::from_secs(10));
}
