//! What a change keeps and drops, item by item, as [`Change::next`] states it: each kind of
//! change in turn, from live state set the way the health checker, the workers and the operator
//! set it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use crate::balancer::health::Admin;
use crate::control::alerts::AlertPublisher;
use crate::control::{ConnectionBudget, ProcessWide, ServiceState};

const SLOW_START: Duration = Duration::from_secs(30);
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7));

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Service "db" (persistence with `ttl`, 30 s slow start) over 127.0.0.1:9001..=9003, and
/// service "other" when `other`; `runtime` is the body of `[runtime]`.
fn config(runtime: &str, ttl: &str, other: bool) -> Config {
    let mut text = format!(
        "[runtime]\n{runtime}\n[[service]]\nname = \"db\"\nlisten = \"127.0.0.1:7001\"\n\
         slow_start = \"30s\"\n[service.persistence]\nkind = \"source_ip\"\nttl = \"{ttl}\"\n\
         max_entries = 1000\n"
    );
    for port in 9001..=9003 {
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"{}\"\n",
            addr(port)
        ));
    }
    if other {
        text.push_str(
            "[[service]]\nname = \"other\"\nlisten = \"127.0.0.1:7002\"\n\
             [[service.backend]]\naddress = \"127.0.0.1:9101\"\n",
        );
    }
    Config::parse(&text, "test").unwrap_or_else(|e| panic!("{e}"))
}

fn backend(port: u16, weight: u32) -> Backend {
    Backend {
        address: addr(port),
        spec: addr(port).to_string(),
        weight,
        max_connections: None,
        backup: false,
        health_port: None,
        source: Vec::new(),
        origin: crate::config::Origin::Static,
        send_proxy: None,
    }
}

fn service<'a>(snapshot: &'a Snapshot, name: &str) -> &'a ServiceState {
    snapshot
        .service(name)
        .unwrap_or_else(|| panic!("no {name}"))
}

/// Whether `after`'s backend at `port` carries the state of `before`'s (the same counters and
/// live state, not copies).
fn same_backend(before: &ServiceState, after: &ServiceState, port: u16) -> bool {
    match (before.backend_at(addr(port)), after.backend_at(addr(port))) {
        (Some(b), Some(a)) => {
            Arc::ptr_eq(&b.counters, &a.counters) && Arc::ptr_eq(&b.live, &a.live)
        }
        _ => false,
    }
}

/// Whether `after` is the same service as `before`: identity, counters, closing signal.
fn same_service(before: &ServiceState, after: &ServiceState) -> bool {
    before.id == after.id
        && Arc::ptr_eq(&before.counters, &after.counters)
        && before.closing_generation() == after.closing_generation()
}

/// The state `a_change_keeps_what_stays_and_drops_what_goes` sets on "db" and expects kept:
/// 9001 ramping up after a flap with 5 connections, 9002 down, 9003 drained, a client stuck
/// to 9001, 7 connections accepted.
fn assert_live_state_kept(db: &ServiceState, now: Instant) {
    assert_eq!(db.counters.accepted.get(), 7, "service counters");
    let b1 = db.backend_at(addr(9001)).unwrap();
    assert_eq!(b1.counters.connections.get(), 5, "backend counters");
    assert!(b1.live.healthy(), "health (up)");
    let ramp = b1
        .live
        .ramp_permille(now + Duration::from_secs(3), SLOW_START);
    assert!(ramp < 1000, "slow-start ramp: {ramp}");
    assert_eq!(
        db.backend_at(addr(9003)).unwrap().live.admin(),
        Admin::Drain,
        "admin state"
    );
    let stick = db.stick_table().expect("persistence");
    assert_eq!(stick.lookup(CLIENT, now), Some(addr(9001)), "stick entry");
}

#[test]
fn a_change_keeps_what_stays_and_drops_what_goes() {
    let process = ProcessWide {
        budget: Arc::new(ConnectionBudget::new(100)),
        alerts: AlertPublisher::disabled(),
    };
    let c1 = config("", "30m", true);
    let s1 = Snapshot::from_config(&c1, &process);
    assert_eq!(s1.version, 1);
    let now = Instant::now();
    let db1 = service(&s1, "db");
    db1.counters.accepted.add(7);
    db1.backends[0].counters.connections.add(5);
    assert!(db1.mark_down(0, &"refused"));
    assert!(db1.mark_up(0, &"2 probes passed in a row", now));
    assert!(db1.mark_down(1, &"timeout after 1s"));
    // Disabled closes 9003's live sessions (a closing generation), then drained.
    assert_eq!(db1.set_admin(2, Admin::Disabled, now), Some(Admin::Enabled));
    assert_eq!(db1.set_admin(2, Admin::Drain, now), Some(Admin::Disabled));
    assert_eq!(db1.closing_generation(), 1);
    db1.stick_table().unwrap().stick(CLIENT, addr(9001), now);
    assert_live_state_kept(db1, now);
    assert!(!db1.backend_at(addr(9002)).unwrap().live.healthy());

    // An admin API weight: the weight changes, nothing else.
    let Next {
        config: c2,
        snapshot: s2,
        needs_restart,
    } = Change::SetWeight {
        service: "db".into(),
        backend: "127.0.0.1:9001".into(),
        weight: 5,
    }
    .next(&c1, &s1)
    .unwrap();
    assert_eq!(s2.version, 2);
    assert!(needs_restart.is_empty());
    let db2 = service(&s2, "db");
    assert_eq!(c2.services[0].backends[0].weight, 5);
    assert_eq!(db2.backend_at(addr(9001)).unwrap().config.weight, 5);
    assert!(same_service(db1, db2));
    assert!(std::ptr::eq(
        db1.stick_table().unwrap(),
        db2.stick_table().unwrap()
    ));
    for port in 9001..=9003 {
        assert!(same_backend(db1, db2, port), "backend {port}");
    }
    assert_live_state_kept(db2, now);
    assert!(
        !db2.backend_at(addr(9002)).unwrap().live.healthy(),
        "health (down)"
    );
    assert!(same_service(service(&s1, "other"), service(&s2, "other")));

    // A discovery answer: 9002 goes, 9004 comes; what stays keeps its state.
    let backends = vec![backend(9001, 1), backend(9003, 1), backend(9004, 2)];
    let Next {
        config: c3,
        snapshot: s3,
        ..
    } = Change::SetBackends {
        service: "db".into(),
        backends,
    }
    .next(&c2, &s2)
    .unwrap();
    let db3 = service(&s3, "db");
    assert!(same_service(db1, db3));
    assert!(same_backend(db1, db3, 9001) && same_backend(db1, db3, 9003));
    assert_live_state_kept(db3, now);
    assert_eq!(
        db3.backend_at(addr(9001)).unwrap().config.weight,
        1,
        "weights as given"
    );
    assert!(
        db3.backend_at(addr(9002)).is_none(),
        "a removed backend is gone"
    );
    let b4 = db3.backend_at(addr(9004)).unwrap();
    assert!(b4.live.healthy() && b4.live.admin() == Admin::Enabled);
    assert_eq!(
        b4.live.ramp_permille(now, SLOW_START),
        1000,
        "a new backend has no ramp"
    );
    assert_eq!(b4.counters.connections.get(), 0);

    // 9002 back: a new backend, its former state (down, counters) dropped.
    let backends = vec![backend(9001, 1), backend(9002, 1), backend(9003, 1)];
    let Next {
        config: c4,
        snapshot: s4,
        ..
    } = Change::SetBackends {
        service: "db".into(),
        backends,
    }
    .next(&c3, &s3)
    .unwrap();
    let db4 = service(&s4, "db");
    assert!(!same_backend(db1, db4, 9002));
    assert!(db4.backend_at(addr(9002)).unwrap().live.healthy());
    assert!(same_backend(db1, db4, 9001) && same_backend(db1, db4, 9003));

    // A reload that changes the persistence settings: the stick table (every entry) is
    // dropped; the service and its backends stay.
    let Next {
        config: c5,
        snapshot: s5,
        ..
    } = Change::Replace(config("", "10m", true))
        .next(&c4, &s4)
        .unwrap();
    let db5 = service(&s5, "db");
    assert!(same_service(db1, db5));
    assert!(same_backend(db1, db5, 9001) && same_backend(db4, db5, 9002));
    assert!(!std::ptr::eq(
        db1.stick_table().unwrap(),
        db5.stick_table().unwrap()
    ));
    assert_eq!(
        db5.stick_table().unwrap().lookup(CLIENT, now),
        None,
        "stick entries"
    );
    assert_eq!(db5.stick_table().unwrap().ttl(), Duration::from_secs(600));

    // A service removed, then added again: a new service (identity and counters dropped).
    let other = service(&s5, "other");
    other.counters.accepted.add(3);
    let Next {
        config: c6,
        snapshot: s6,
        ..
    } = Change::Replace(config("", "10m", false))
        .next(&c5, &s5)
        .unwrap();
    assert!(s6.service("other").is_none());
    let Next {
        config: c7,
        snapshot: s7,
        ..
    } = Change::Replace(config("", "10m", true))
        .next(&c6, &s6)
        .unwrap();
    let again = service(&s7, "other");
    assert_ne!(again.id, other.id);
    assert_eq!(again.counters.accepted.get(), 0);
    assert!(same_service(db1, service(&s7, "db")));

    // `[runtime]` and `[admin]` changes wait for a restart: the running values stay.
    let mut wanted = config("workers = 3", "10m", true);
    wanted.admin = Some(crate::config::AdminSettings {
        listen: addr(9090),
        token: None,
        max_connections: crate::config::defaults::DEFAULT_ADMIN_MAX_CONNECTIONS,
        header_timeout: crate::config::defaults::DEFAULT_ADMIN_HEADER_TIMEOUT,
        body_timeout: crate::config::defaults::DEFAULT_ADMIN_BODY_TIMEOUT,
        require_backends: false,
        protect_reads: false,
        allow_open: false,
    });
    let next = Change::Replace(wanted).next(&c7, &s7).unwrap();
    assert_eq!(next.needs_restart, ["[runtime]", "[admin]"]);
    assert_eq!(next.config.runtime, c7.runtime);
    assert_eq!(next.config.admin, None);
    assert_eq!(next.snapshot.version, 8);
}

#[test]
fn an_invalid_change_is_refused() {
    let process = ProcessWide {
        budget: Arc::new(ConnectionBudget::new(100)),
        alerts: AlertPublisher::disabled(),
    };
    let c = config("", "30m", false);
    let s = Snapshot::from_config(&c, &process);
    let weight = |service: &str, backend: &str, weight| Change::SetWeight {
        service: service.into(),
        backend: backend.into(),
        weight,
    };
    let backends = |backends: Vec<Backend>| Change::SetBackends {
        service: "db".into(),
        backends,
    };
    let refused = |change: Change| change.next(&c, &s).unwrap_err();
    assert!(matches!(
        refused(weight("nope", "127.0.0.1:9001", 2)),
        ChangeError::NoService(n) if n == "nope"
    ));
    assert!(matches!(
        refused(weight("db", "127.0.0.1:9009", 2)),
        ChangeError::NoBackend { backend, .. } if backend == "127.0.0.1:9009"
    ));
    assert!(matches!(
        refused(weight("db", "127.0.0.1:9001", 0)),
        ChangeError::Invalid(_)
    ));
    let mut backup = backend(9001, 1);
    backup.backup = true;
    for list in [
        vec![],
        vec![backend(9001, 1), backend(9001, 2)],
        vec![backup],
        vec![backend(9001, 0)],
        vec![backend(0, 1)],
    ] {
        let text = format!("{list:?}");
        assert!(
            matches!(refused(backends(list)), ChangeError::Invalid(_)),
            "{text}"
        );
    }
    assert!(matches!(
        Change::SetBackends {
            service: "nope".into(),
            backends: vec![backend(9001, 1)],
        }
        .next(&c, &s)
        .unwrap_err(),
        ChangeError::NoService(_)
    ));
}

/// Service "db" discovering Consul service `consul_service`, with one static backup at 9001.
fn discovering(consul_service: &str) -> Config {
    let text = format!(
        "[[service]]\nname = \"db\"\nlisten = \"127.0.0.1:7001\"\n\
         [service.discovery]\nkind = \"consul\"\naddress = \"http://127.0.0.1:8500\"\n\
         service = \"{consul_service}\"\n\
         [[service.backend]]\naddress = \"127.0.0.1:9001\"\nbackup = true\n"
    );
    Config::parse(&text, "test").unwrap_or_else(|e| panic!("{e}"))
}

fn consul_backend(port: u16) -> Backend {
    Backend {
        origin: crate::config::Origin::Consul,
        ..backend(port, 1)
    }
}

#[test]
fn a_reload_keeps_the_discovered_backends_while_discovery_is_unchanged() {
    let process = ProcessWide {
        budget: Arc::new(ConnectionBudget::new(100)),
        alerts: AlertPublisher::disabled(),
    };
    let c1 = discovering("orders");
    let s1 = Snapshot::from_config(&c1, &process);
    assert_eq!(
        service(&s1, "db").backends.len(),
        1,
        "only the static backup"
    );
    let mut static_backup = c1.services[0].backends[0].clone();
    static_backup.backup = true;
    let listed = vec![
        static_backup.clone(),
        consul_backend(9002),
        consul_backend(9003),
    ];
    let n2 = Change::SetBackends {
        service: "db".into(),
        backends: listed.clone(),
    }
    .next(&c1, &s1)
    .unwrap();
    assert_eq!(n2.config.services[0].backends, listed);
    assert!(service(&n2.snapshot, "db").available());

    // The same file again: the discovered backends stay, with their state.
    let n3 = Change::Replace(discovering("orders"))
        .next(&n2.config, &n2.snapshot)
        .unwrap();
    assert_eq!(n3.config.services[0].backends, listed);
    assert!(same_backend(
        service(&n2.snapshot, "db"),
        service(&n3.snapshot, "db"),
        9002
    ));

    // Another Consul service: the discovered ones go (the new watch brings its own).
    let n4 = Change::Replace(discovering("billing"))
        .next(&n3.config, &n3.snapshot)
        .unwrap();
    assert_eq!(n4.config.services[0].backends, vec![static_backup.clone()]);

    // The registry lists nothing: the file's static backup is all that is left, and serves.
    let empty = Change::SetBackends {
        service: "db".into(),
        backends: Vec::new(),
    }
    .next(&n4.config, &n4.snapshot)
    .unwrap();
    assert_eq!(empty.config.services[0].backends, vec![static_backup]);
    assert!(
        service(&empty.snapshot, "db").available(),
        "the backup serves"
    );

    // Without a static backend, a discovering service may have no backend at all.
    let mut alone = discovering("orders");
    alone.services[0].backends.clear();
    let s = Snapshot::from_config(&alone, &process);
    let empty = Change::SetBackends {
        service: "db".into(),
        backends: Vec::new(),
    }
    .next(&alone, &s)
    .unwrap();
    let db = service(&empty.snapshot, "db");
    assert!(db.backends.is_empty());
    assert!(!db.available(), "no candidate: the service is down");
}

#[test]
fn a_discovery_answer_keeps_the_static_backends_of_the_running_file() {
    let process = ProcessWide {
        budget: Arc::new(ConnectionBudget::new(100)),
        alerts: AlertPublisher::disabled(),
    };
    let c1 = discovering("orders");
    let s1 = Snapshot::from_config(&c1, &process);
    // An answer computed from c1: its static backup (9001) and two discovered backends.
    let stale = vec![
        c1.services[0].backends[0].clone(),
        consul_backend(9002),
        consul_backend(9003),
    ];
    // Meanwhile a reload moved the static backup to 9005 (same discovery settings).
    let mut reloaded = discovering("orders");
    reloaded.services[0].backends[0].address = addr(9005);
    reloaded.services[0].backends[0].spec = addr(9005).to_string();
    let n2 = Change::Replace(reloaded).next(&c1, &s1).unwrap();
    let n3 = Change::SetBackends {
        service: "db".into(),
        backends: stale,
    }
    .next(&n2.config, &n2.snapshot)
    .unwrap();
    let listed: Vec<(SocketAddr, bool)> = n3.config.services[0]
        .backends
        .iter()
        .map(|b| (b.address, b.backup))
        .collect();
    assert_eq!(
        listed,
        vec![(addr(9005), true), (addr(9002), false), (addr(9003), false)],
        "the file's static backend, then the discovered ones"
    );
    // A discovered backend at a static backend's address is left out.
    let n4 = Change::SetBackends {
        service: "db".into(),
        backends: vec![consul_backend(9005)],
    }
    .next(&n3.config, &n3.snapshot)
    .unwrap();
    assert_eq!(n4.config.services[0].backends.len(), 1);
    assert_eq!(
        n4.config.services[0].backends[0].origin,
        crate::config::Origin::Static
    );
}
