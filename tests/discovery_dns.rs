//! DNS discovery against a real DNS server (dnsmasq on loopback): A records and SRV records
//! turned into instances, re-resolution when the TTL runs out (and the clamps on it), live
//! record changes, NXDOMAIN, the bound on instances, and a resolver that goes away and comes
//! back.

mod common;
#[path = "common/dns.rs"]
mod dns;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ringlb::control::discovery::dns::{DnsDiscovery, DnsWatch};
use ringlb::control::discovery::{Answer, Discovered, DiscoveryError, Source, Version};

use dns::DnsServer;

fn rt() -> tokio::runtime::Runtime {
    // The discovery thread's kind of runtime.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn settings(server: &DnsServer, name: &str, min_ttl: u64, max_ttl: u64) -> DnsDiscovery {
    DnsDiscovery {
        name: name.to_string(),
        resolver: Some(server.addr),
        min_ttl: Duration::from_secs(min_ttl),
        max_ttl: Duration::from_secs(max_ttl),
        port: None,
    }
}

fn addresses(answer: &Answer) -> Vec<SocketAddr> {
    answer.instances.iter().map(|i| i.address).collect()
}

fn primary(address: &str) -> Discovered {
    Discovered {
        address: address.parse().unwrap(),
        weight: 1,
        backup: false,
    }
}

/// Calls `next()` and returns its result with how long it took.
fn timed_next(
    rt: &tokio::runtime::Runtime,
    watch: &mut DnsWatch,
) -> (Result<Answer, DiscoveryError>, Duration) {
    let start = Instant::now();
    let got = rt.block_on(watch.next());
    (got, start.elapsed())
}

#[test]
fn a_records_become_instances_and_follow_live_changes() {
    let rt = rt();
    // A TTL far above max_ttl: the answer must not come from a resolver cache.
    let server = DnsServer::start(&["--local-ttl=3600".to_string()]);
    server.write_hosts(
        "web",
        "127.0.0.12 web.test.ringlb\n127.0.0.11 web.test.ringlb\n",
    );
    let mut watch = DnsWatch::new(&settings(&server, "web.test.ringlb:8080", 1, 1), 16).unwrap();

    let (first, took) = timed_next(&rt, &mut watch);
    let first = first.unwrap();
    assert!(
        took < Duration::from_secs(1),
        "the first answer comes at once ({took:?})"
    );
    assert_eq!(
        first.instances,
        vec![primary("127.0.0.11:8080"), primary("127.0.0.12:8080")],
        "every address on the port, sorted, weight 1, no backup"
    );
    assert_eq!(first.version, Version::DnsTtl(Duration::from_secs(1)));

    // The set changes in DNS: one address goes, another comes.
    server.write_hosts(
        "web",
        "127.0.0.12 web.test.ringlb\n127.0.0.13 web.test.ringlb\n",
    );
    let want: Vec<SocketAddr> = vec![
        "127.0.0.12:8080".parse().unwrap(),
        "127.0.0.13:8080".parse().unwrap(),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = addresses(&first);
    while last != want && Instant::now() < deadline {
        let (got, took) = timed_next(&rt, &mut watch);
        assert!(
            took >= Duration::from_millis(900),
            "asked again only after the TTL ({took:?})"
        );
        last = addresses(&got.unwrap());
    }
    assert_eq!(last, want, "a later answer has the new set");
}

#[test]
fn host_name_with_port_setting_and_both_families() {
    let rt = rt();
    let server = DnsServer::start(&["--host-record=both.test.ringlb,127.0.0.31,::1,7".to_string()]);
    let mut s = settings(&server, "both.test.ringlb", 1, 60);
    s.port = Some(9000);
    let mut watch = DnsWatch::new(&s, 16).unwrap();
    let answer = rt.block_on(watch.next()).unwrap();
    assert_eq!(
        answer.instances,
        vec![primary("127.0.0.31:9000"), primary("[::1]:9000")],
        "A and AAAA, every address on the port"
    );
    assert_eq!(
        answer.version,
        Version::DnsTtl(Duration::from_secs(7)),
        "the record's TTL"
    );
}

#[test]
fn srv_records_give_ports_weights_and_backups() {
    let rt = rt();
    let server = DnsServer::start(&[
        "--host-record=db1.test.ringlb,127.0.0.21".to_string(),
        "--host-record=db2.test.ringlb,127.0.0.22".to_string(),
        "--host-record=db3.test.ringlb,127.0.0.23".to_string(),
        // target, port, priority, weight
        "--srv-host=_pg._tcp.test.ringlb,db1.test.ringlb,5432,10,30".to_string(),
        "--srv-host=_pg._tcp.test.ringlb,db2.test.ringlb,5433,10,0".to_string(),
        "--srv-host=_pg._tcp.test.ringlb,db3.test.ringlb,6000,20,60000".to_string(),
        // A target with no address (not in the additional section, NXDOMAIN when looked up):
        // it adds no instance and fails nothing.
        "--srv-host=_pg._tcp.test.ringlb,gone.test.ringlb,5434,10,5".to_string(),
        "--local-ttl=3".to_string(),
    ]);
    let mut watch = DnsWatch::new(&settings(&server, "_pg._tcp.test.ringlb", 1, 60), 16).unwrap();
    let answer = rt.block_on(watch.next()).unwrap();
    let max = ringlb::config::defaults::MAX_WEIGHT;
    assert_eq!(
        answer.instances,
        vec![
            Discovered {
                address: "127.0.0.21:5432".parse().unwrap(),
                weight: 30,
                backup: false
            },
            Discovered {
                address: "127.0.0.22:5433".parse().unwrap(),
                weight: 1,
                backup: false
            },
            Discovered {
                address: "127.0.0.23:6000".parse().unwrap(),
                weight: max,
                backup: true
            },
        ],
        "ports from the records; weight 0 -> 1, above the bound -> the bound; a higher priority is a backup"
    );
    assert_eq!(answer.version, Version::DnsTtl(Duration::from_secs(3)));
}

#[test]
fn ttl_is_clamped_and_sets_when_to_ask_again() {
    let rt = rt();
    // TTL 0 is clamped up to min_ttl.
    let server = DnsServer::start(&[
        "--host-record=zero.test.ringlb,127.0.0.41,0".to_string(),
        "--host-record=long.test.ringlb,127.0.0.42,3600".to_string(),
        "--host-record=mid.test.ringlb,127.0.0.43,2".to_string(),
    ]);
    for (name, want) in [("zero", 1), ("long", 3), ("mid", 2)] {
        let mut watch = DnsWatch::new(
            &settings(&server, &format!("{name}.test.ringlb:80"), 1, 3),
            4,
        )
        .unwrap();
        let (first, _) = timed_next(&rt, &mut watch);
        let want = Duration::from_secs(want);
        assert_eq!(
            first.unwrap().version,
            Version::DnsTtl(want),
            "{name}: clamped TTL"
        );
        let (second, took) = timed_next(&rt, &mut watch);
        assert_eq!(
            second.unwrap().instances.len(),
            1,
            "{name}: answered again, unchanged"
        );
        assert!(
            took >= want,
            "{name}: not before the TTL ran out ({took:?} < {want:?})"
        );
        assert!(
            took < want + Duration::from_millis(1500),
            "{name}: soon after the TTL ran out ({took:?})"
        );
    }
}

#[test]
fn nxdomain_and_nodata_are_empty_answers() {
    let rt = rt();
    let server = DnsServer::start(&["--host-record=v6only.test.ringlb,::1".to_string()]);
    for name in ["missing.test.ringlb:80", "_none._tcp.test.ringlb"] {
        let mut watch = DnsWatch::new(&settings(&server, name, 2, 60), 4).unwrap();
        let answer = rt.block_on(watch.next()).unwrap();
        assert_eq!(answer.instances, vec![], "{name}: no instance");
        assert_eq!(
            answer.version,
            Version::DnsTtl(Duration::from_secs(2)),
            "{name}: asked again after min_ttl"
        );
    }
    // NODATA for A, one AAAA.
    let mut watch = DnsWatch::new(&settings(&server, "v6only.test.ringlb:80", 1, 60), 4).unwrap();
    let answer = rt.block_on(watch.next()).unwrap();
    assert_eq!(answer.instances, vec![primary("[::1]:80")]);
}

#[test]
fn more_instances_than_the_bound_is_refused() {
    let rt = rt();
    let server = DnsServer::start(&[]);
    server.write_hosts(
        "many",
        "127.0.0.51 many.test.ringlb\n127.0.0.52 many.test.ringlb\n127.0.0.53 many.test.ringlb\n",
    );
    let mut watch = DnsWatch::new(&settings(&server, "many.test.ringlb:80", 1, 60), 2).unwrap();
    assert_eq!(
        rt.block_on(watch.next()),
        Err(DiscoveryError::TooMany { got: 3, max: 2 })
    );
    let mut watch = DnsWatch::new(&settings(&server, "many.test.ringlb:80", 1, 60), 3).unwrap();
    assert_eq!(
        rt.block_on(watch.next()).unwrap().instances.len(),
        3,
        "at the bound is fine"
    );
}

#[test]
fn resolver_down_is_an_error_and_recovers() {
    let rt = rt();
    let mut server = DnsServer::start(&["--host-record=up.test.ringlb,127.0.0.61,1".to_string()]);
    let mut watch = DnsWatch::new(&settings(&server, "up.test.ringlb:80", 1, 60), 4).unwrap();
    assert_eq!(
        addresses(&rt.block_on(watch.next()).unwrap()),
        vec!["127.0.0.61:80".parse::<SocketAddr>().unwrap()]
    );

    server.stop();
    let (got, took) = timed_next(&rt, &mut watch);
    match got {
        Err(DiscoveryError::Resolver(_) | DiscoveryError::Timeout(_)) => {}
        other => panic!("a resolver that does not answer is an error, got {other:?}"),
    }
    assert!(
        took <= ringlb::control::discovery::dns::RESOLVE_BOUND + Duration::from_secs(2),
        "bounded ({took:?})"
    );

    server.restart();
    let (got, took) = timed_next(&rt, &mut watch);
    assert_eq!(
        addresses(&got.unwrap()),
        vec!["127.0.0.61:80".parse::<SocketAddr>().unwrap()],
        "back once the server is"
    );
    assert!(
        took < Duration::from_secs(1),
        "after an error the next call asks at once ({took:?})"
    );
}

/// End to end: a ringlb service whose backends are the A records of a name, served by dnsmasq
/// from a hosts directory the test rewrites. New connections follow each change within the TTL
/// (1 s) plus the watch's margin; a name that disappears (NXDOMAIN) leaves the service with no
/// backend, and it says so in `/status`.
#[test]
fn a_service_follows_its_a_records_through_ringlb() {
    use common::admin::get;
    use common::health::greeting;
    use common::{Backend, Ringlb, runtime, wait_for};
    use std::collections::BTreeSet;

    let rt = runtime();
    let a = rt.block_on(Backend::echo_at("127.0.0.2:0", Some("a\n")));
    let port = a.addr.port();
    let b = rt.block_on(Backend::echo_at(&format!("127.0.0.3:{port}"), Some("b\n")));
    let server = DnsServer::start(&["--local-ttl=1".to_owned()]);
    server.write_hosts("web", "127.0.0.2 web.test.ringlb\n");
    let config = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nconnect_timeout = \"1s\"\n\
         [service.discovery]\nkind = \"dns\"\nname = \"web.test.ringlb:{port}\"\n\
         resolver = \"{}\"\nmin_ttl = \"1s\"\nmax_ttl = \"1s\"\n",
        server.addr
    );
    let lb = Ringlb::start(&config);
    let status = || get(lb.admin.unwrap(), "/status").json()["services"][0].clone();
    let listed = || -> BTreeSet<SocketAddr> {
        status()["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["address"].as_str().unwrap().parse().unwrap())
            .collect()
    };
    let greeted = |n: usize| -> BTreeSet<String> {
        rt.block_on(async {
            let mut seen = BTreeSet::new();
            for _ in 0..n {
                if let Ok(name) = greeting(lb.addr("web"), None).await {
                    seen.insert(name);
                }
            }
            seen
        })
    };
    let names = |v: &[&str]| -> BTreeSet<String> { v.iter().map(|s| (*s).to_owned()).collect() };

    assert!(
        wait_for(Duration::from_secs(5), || listed()
            == BTreeSet::from([a.addr])),
        "{}",
        status()
    );
    assert_eq!(greeted(10), names(&["a"]));
    assert_eq!(status()["discovery"]["kind"], "dns", "{}", status());

    // A second address: both serve within the TTL and the watch's margin.
    server.write_hosts(
        "web",
        "127.0.0.2 web.test.ringlb\n127.0.0.3 web.test.ringlb\n",
    );
    assert!(
        wait_for(Duration::from_secs(5), || listed()
            == BTreeSet::from([a.addr, b.addr])),
        "{}",
        status()
    );
    assert_eq!(greeted(20), names(&["a", "b"]));

    // The first goes: only the second gets new connections.
    server.write_hosts("web", "127.0.0.3 web.test.ringlb\n");
    assert!(
        wait_for(Duration::from_secs(5), || listed()
            == BTreeSet::from([b.addr])),
        "{}",
        status()
    );
    assert_eq!(greeted(10), names(&["b"]));

    // The name is gone (NXDOMAIN): the registry is truth, so no backend is left.
    server.write_hosts("web", "");
    assert!(
        wait_for(Duration::from_secs(5), || listed().is_empty()),
        "{}",
        status()
    );
    assert!(
        greeted(5).is_empty(),
        "a connection was served with no backend"
    );
}

#[test]
fn a_service_follows_its_srv_records_through_ringlb() {
    use common::admin::get;
    use common::health::greeting;
    use common::{Backend, Ringlb, runtime, wait_for};
    use std::collections::BTreeMap;

    let rt = runtime();
    // Each on its own address and port: the ports come from the SRV records.
    let a = rt.block_on(Backend::echo_at("127.0.0.2:0", Some("a\n")));
    let b = rt.block_on(Backend::echo_at("127.0.0.3:0", Some("b\n")));
    let c = rt.block_on(Backend::echo_at("127.0.0.4:0", Some("c\n")));
    let srv = |host: &str, port: u16, priority: u16, weight: u16| {
        format!("--srv-host=_db._tcp.test.ringlb,{host}.test.ringlb,{port},{priority},{weight}")
    };
    let server = DnsServer::start(&[
        "--host-record=a.test.ringlb,127.0.0.2".to_owned(),
        "--host-record=b.test.ringlb,127.0.0.3".to_owned(),
        "--host-record=c.test.ringlb,127.0.0.4".to_owned(),
        srv("a", a.addr.port(), 10, 1),
        srv("b", b.addr.port(), 10, 3),
        // A higher priority: a backup.
        srv("c", c.addr.port(), 20, 1),
        "--local-ttl=1".to_owned(),
    ]);
    let config = format!(
        "[runtime]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\n\
         [[service]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nconnect_timeout = \"1s\"\n\
         algorithm = \"weighted_round_robin\"\n\
         [service.health]\nkind = \"tcp\"\ninterval = \"200ms\"\nrise = 1\nfall = 1\n\
         passive_failures = 1\n\
         [service.discovery]\nkind = \"dns\"\nname = \"_db._tcp.test.ringlb\"\n\
         resolver = \"{}\"\nmin_ttl = \"1s\"\nmax_ttl = \"1s\"\n",
        server.addr
    );
    let lb = Ringlb::start(&config);
    let status = || get(lb.admin.unwrap(), "/status").json()["services"][0].clone();
    // address -> (weight, backup), as ringlb lists them.
    let listed = || -> BTreeMap<SocketAddr, (u64, bool)> {
        status()["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                (
                    b["address"].as_str().unwrap().parse().unwrap(),
                    (
                        b["weight"].as_u64().unwrap(),
                        b["backup"].as_bool().unwrap(),
                    ),
                )
            })
            .collect()
    };
    let want = BTreeMap::from([
        (a.addr, (1, false)),
        (b.addr, (3, false)),
        (c.addr, (1, true)),
    ]);
    assert!(
        wait_for(Duration::from_secs(5), || listed() == want),
        "ports, weights and the backup from SRV: {}",
        status()
    );
    assert_eq!(status()["backends"][0]["origin"], "dns", "{}", status());
    // Discovered backends are checked like static ones: the first probe decides.
    assert!(
        wait_for(Duration::from_secs(5), || status()["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["last_check"]["passed"] == true)),
        "{}",
        status()
    );
    let greeted = |n: usize| -> BTreeMap<String, usize> {
        rt.block_on(async {
            let mut seen = BTreeMap::new();
            for _ in 0..n {
                if let Ok(name) = greeting(lb.addr("db"), None).await {
                    *seen.entry(name).or_insert(0) += 1;
                }
            }
            seen
        })
    };
    // Smooth weighted round robin over the primaries only, 1:3; the backup gets nothing.
    let shares = greeted(40);
    assert_eq!(
        shares,
        BTreeMap::from([("a".to_owned(), 10), ("b".to_owned(), 30)]),
        "weights from SRV, the backup idle while primaries are up"
    );

    // Both primaries go away: after their failed connects mark them down, the backup serves.
    drop(a);
    drop(b);
    assert!(
        wait_for(Duration::from_secs(5), || greeted(4).contains_key("c")),
        "the SRV backup took over: {}",
        status()
    );
    drop(c);
}
