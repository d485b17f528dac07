//! Loads every example under `config/` and every broken fixture under `tests/fixtures/broken/`
//! through [`Config::load`], and pins exact messages and defaults.
//!
//! A broken fixture starts with three comment lines: `# expect: <part of the message>`,
//! `# line: <N>` and `# column: <N>`, where the error must point.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::defaults::*;
use super::*;

mod health;

fn dir(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn toml_files(rel: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir(rel))
        .unwrap_or_else(|e| panic!("reading {rel}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

/// The error `text` (a config) produces, displayed, with source name "x.toml".
fn error(text: &str) -> String {
    match Config::parse(text, "x.toml") {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn parse(text: &str) -> Config {
    Config::parse(text, "x.toml").unwrap_or_else(|e| panic!("{e}"))
}

const MINIMAL: &str = r#"
[[service]]
name = "redis"
listen = "127.0.0.1:7000"

[[service.backend]]
address = "127.0.0.1:6379"
"#;

#[test]
fn every_example_config_loads_and_its_summary_names_each_service() {
    let files = toml_files("config");
    assert!(files.len() >= 3, "examples: {files:?}");
    for path in files {
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.source, path.display().to_string());
        let summary = config.summary();
        let raw: toml::Table = toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let names: Vec<&str> = raw["service"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), config.services.len());
        for name in names {
            assert!(
                summary.contains(&format!("service {name:?}")),
                "{name} in\n{summary}"
            );
        }
    }
}

#[test]
fn every_broken_fixture_fails_at_its_line_and_column_with_its_message() {
    let files = toml_files("tests/fixtures/broken");
    assert!(files.len() >= 15, "only {} broken fixtures", files.len());
    let mut failures = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let header = |key: &str| -> String {
            let prefix = format!("# {key}: ");
            text.lines()
                .take(3)
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("{}: no `{prefix}` header", path.display()))
                .to_owned()
        };
        let (expect, line, column) = (header("expect"), header("line"), header("column"));
        let err = match Config::load(&path) {
            Ok(_) => {
                failures.push(format!("{} loaded without error", path.display()));
                continue;
            }
            Err(e) => e,
        };
        let message = err.to_string();
        let at = format!("{}:{line}:{column}: ", path.display());
        let location = err.location().expect("a location");
        if !message.starts_with(&at)
            || !message.contains(&expect)
            || (location.line.to_string(), location.column.to_string()) != (line, column)
        {
            failures.push(format!("{message}\n  expected {at}...{expect}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn annotated_example_states_the_defaults() {
    let config = Config::load(&dir("config/ringlb.toml")).unwrap();
    let tcp = &config.services[0];
    let defaults = &parse(MINIMAL).services[0];
    assert_eq!(
        Service {
            name: defaults.name.clone(),
            listen: defaults.listen,
            backends: defaults.backends.clone(),
            health: None,
            persistence: None,
            discovery: None,
            access: None,
            limits: None,
            ..tcp.clone()
        },
        *defaults,
        "every option of the TCP example is at its default"
    );
    // The example writes out both tables (their presence is not the default) with every key at
    // its default.
    assert_eq!(
        tcp.health,
        Some(HealthCheck {
            probe: Probe::Tcp,
            interval: DEFAULT_HEALTH_INTERVAL,
            fast_interval: DEFAULT_HEALTH_INTERVAL,
            timeout: DEFAULT_HEALTH_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            port: None,
            passive_failures: DEFAULT_PASSIVE_FAILURES,
        })
    );
    assert_eq!(
        tcp.persistence,
        Some(Persistence {
            kind: DEFAULT_PERSISTENCE_KIND,
            ttl: DEFAULT_PERSISTENCE_TTL,
            max_entries: DEFAULT_PERSISTENCE_MAX_ENTRIES,
        })
    );
    let udp = &config.services[1];
    assert_eq!(udp.protocol, Protocol::Udp);
    assert_eq!(udp.hash_table_size, DEFAULT_HASH_TABLE_SIZE);
    assert_eq!(udp.access_log, DEFAULT_ACCESS_LOG);
    assert_eq!(
        udp.udp, defaults.udp,
        "every udp_* option is at its default"
    );
    assert_eq!(config.runtime.pin_workers, DEFAULT_PIN_WORKERS);
    assert_eq!(config.runtime.drain_timeout, DEFAULT_DRAIN_TIMEOUT);
    for b in config.services.iter().flat_map(|s| &s.backends) {
        assert_eq!(
            (b.weight, b.max_connections, b.backup),
            (DEFAULT_WEIGHT, None, DEFAULT_BACKUP)
        );
    }
    let [hook] = config.alerts.webhooks.as_slice() else {
        panic!("one example webhook: {:?}", config.alerts);
    };
    assert_eq!(
        (hook.events, hook.timeout, hook.retries, hook.backoff),
        (
            DEFAULT_WEBHOOK_EVENTS,
            DEFAULT_WEBHOOK_TIMEOUT,
            DEFAULT_WEBHOOK_RETRIES,
            DEFAULT_WEBHOOK_BACKOFF
        ),
        "the example webhook states the defaults"
    );
}

#[test]
fn a_minimal_service_gets_every_default() {
    let config = parse(MINIMAL);
    assert_eq!(config.source, "x.toml");
    assert!(config.runtime.workers >= 1);
    assert_eq!(config.runtime.pin_workers, DEFAULT_PIN_WORKERS);
    assert_eq!(config.runtime.drain_timeout, Duration::from_secs(30));
    let s = &config.services[0];
    assert_eq!(s.name, "redis");
    assert_eq!(s.listen, "127.0.0.1:7000".parse().unwrap());
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.algorithm, DEFAULT_ALGORITHM);
    assert_eq!(s.hash_table_size, 65537);
    assert_eq!(s.connect_timeout, Duration::from_secs(3));
    assert_eq!(s.idle_timeout, Duration::from_secs(600));
    assert_eq!(s.max_connections, 10_000);
    assert_eq!(s.retries, 2);
    assert_eq!(s.buffer_size, 16384);
    assert_eq!(s.backlog, 1024);
    assert!(!s.access_log);
    assert_eq!(
        s.udp,
        UdpSettings {
            idle_timeout: Duration::from_secs(30),
            max_flows: 65536,
            replies: None,
            mode: UdpMode::Flow,
        }
    );
    assert_eq!(
        s.backends,
        vec![Backend {
            address: "127.0.0.1:6379".parse().unwrap(),
            spec: "127.0.0.1:6379".to_owned(),
            weight: 1,
            max_connections: None,
            backup: false,
            health_port: None,
            source: Vec::new(),
            origin: Origin::Static,
            send_proxy: None,
        }]
    );
    assert_eq!(s.health, None, "no [service.health]: no checks");
    assert_eq!(s.on_backend_down, OnBackendDown::Keep);
    assert_eq!(s.slow_start, Duration::ZERO);
    assert_eq!(s.persistence, None);
}

#[test]
fn the_contract_layout_parses_into_the_typed_config() {
    let config = parse(
        r#"
[runtime]
workers = 2
pin_workers = true
drain_timeout = "250ms"

[[service]]
name = "redis"
listen = "127.0.0.1:7000"
protocol = "tcp"
algorithm = "least_conn"
connect_timeout = "3s"
idle_timeout = "1h"
max_connections = 10000
retries = 2
buffer_size = 65536
backlog = 128
access_log = true

[[service.backend]]
address = "localhost:6379"
weight = 3
max_connections = 500

[[service]]
name = "dns"
listen = "[::1]:5353"
protocol = "udp"
algorithm = "source_hash"
hash_table_size = 251
udp_idle_timeout = "5s"
udp_max_flows = 10
udp_replies = 1
udp_mode = "per_packet"
backend = [{ address = "[::1]:5354" }, { address = "127.0.0.1:5355", weight = 1000 }]
"#,
    );
    assert_eq!(
        config.runtime,
        Runtime {
            workers: 2,
            pin_workers: true,
            drain_timeout: Duration::from_millis(250),
            freebind: false,
            log_format: None,
            instance_name: None,
        }
    );
    let redis = &config.services[0];
    assert_eq!(redis.algorithm, Algorithm::LeastConn);
    assert_eq!(redis.idle_timeout, Duration::from_secs(3600));
    assert_eq!(
        (redis.buffer_size, redis.backlog, redis.access_log),
        (65536, 128, true)
    );
    let b = &redis.backends[0];
    assert!(
        b.address.ip().is_loopback(),
        "localhost resolves to loopback"
    );
    assert_eq!(
        (b.address.port(), b.spec.as_str()),
        (6379, "localhost:6379")
    );
    assert_eq!((b.weight, b.max_connections), (3, Some(500)));
    let dns = &config.services[1];
    assert_eq!(dns.protocol, Protocol::Udp);
    assert_eq!(dns.hash_table_size, 251);
    assert_eq!(
        dns.udp,
        UdpSettings {
            idle_timeout: Duration::from_secs(5),
            max_flows: 10,
            replies: Some(1),
            mode: UdpMode::PerPacket,
        }
    );
    assert_eq!(dns.backends[1].weight, 1000);
}

#[test]
fn retries_beyond_the_number_of_backends_are_fine() {
    let config = parse(&MINIMAL.replace("listen", "retries = 5\nlisten"));
    assert_eq!(config.services[0].retries, 5);
    assert_eq!(config.services[0].backends.len(), 1);
}

#[test]
fn buffer_size_takes_bytes_or_the_units_of_the_shared_grammar() {
    for (written, bytes) in [
        ("16384", 16384),
        ("\"16KiB\"", 16384),
        ("\"1MiB\"", 1 << 20),
        ("\"16MiB\"", 16 << 20),
        ("1024", 1024),
        ("\"64k\"", 64 << 10),
        ("\"64KB\"", 64_000),
        ("\"2M\"", 2 << 20),
    ] {
        let config = parse(&MINIMAL.replace("listen", &format!("buffer_size = {written}\nlisten")));
        assert_eq!(config.services[0].buffer_size, bytes, "{written}");
    }
}

#[test]
fn tcp_and_udp_services_may_share_an_address_and_port_zero_may_repeat() {
    let text = r#"
[[service]]
name = "dns-tcp"
listen = "127.0.0.1:5353"
backend = [{ address = "127.0.0.1:5354" }]
[[service]]
name = "dns-udp"
listen = "127.0.0.1:5353"
protocol = "udp"
backend = [{ address = "127.0.0.1:5354" }]
[[service]]
name = "a"
listen = "127.0.0.1:0"
backend = [{ address = "127.0.0.1:5354" }]
[[service]]
name = "b"
listen = "127.0.0.1:0"
backend = [{ address = "127.0.0.1:5354" }]
"#;
    assert_eq!(parse(text).services.len(), 4);
}

#[test]
fn drain_timeout_may_be_zero() {
    let config = parse(&format!("[runtime]\ndrain_timeout = \"0s\"\n{MINIMAL}"));
    assert_eq!(config.runtime.drain_timeout, Duration::ZERO);
}

#[test]
fn embedded_configs_are_named_by_their_source() {
    let err = Config::parse("[[service]]\nname = 1\n", "<embedded>").unwrap_err();
    assert_eq!(
        err.to_string(),
        "<embedded>:2:8: service[0].name: invalid type: integer `1`, expected a string"
    );
    assert_eq!(
        Config::parse(MINIMAL, "<embedded>").unwrap().source,
        "<embedded>"
    );
}

#[test]
fn messages_name_file_line_column_key_and_value() {
    let two = format!(
        "{MINIMAL}\n[[service]]\nname = \"pg\"\nlisten = \"127.0.0.1:99999\"\n\
         backend = [{{ address = \"127.0.0.1:5432\" }}]\n"
    );
    assert_eq!(
        error(&two),
        "x.toml:11:10: service[1].listen: \"127.0.0.1:99999\" is not a socket address (IP:port)"
    );
    assert_eq!(
        error(&two.replace("127.0.0.1:99999", "127.0.0.1:7000")),
        "x.toml:11:10: service[1].listen: 127.0.0.1:7000 is already the listen address of \
         service \"redis\" (line 4)"
    );
    assert_eq!(
        error(&two.replace("\"pg\"", "\"redis\"")),
        "x.toml:10:8: service[1].name: \"redis\" is already the name of service[0] (line 3)"
    );
    assert_eq!(
        error("[[service]]\nname = \"redis\"\nlisten = \"127.0.0.1:7000\"\n"),
        "x.toml:1:1: service[0].backend: a service needs at least one backend"
    );
    assert_eq!(
        error(&MINIMAL.replace("6379\"", "6379\"\nweight = 0")),
        "x.toml:8:10: service[0].backend[0].weight: 0 is out of range: must be between 1 and 1000"
    );
    assert_eq!(
        error(&MINIMAL.replace("listen", "connect_timeout = \"3 seconds\"\nlisten")),
        "x.toml:4:19: service[0].connect_timeout: \"3 seconds\" is not a duration: write a number \
         and a unit (ns, us, ms, s, m or h) with no space, e.g. \"250ms\", \"1.5s\", \"10m\""
    );
    assert_eq!(
        error(&MINIMAL.replace("listen", "udp_mode = \"flow\"\nlisten")),
        "x.toml:4:12: service[0].udp_mode: applies only to protocol = \"udp\" services, and this \
         service's protocol is \"tcp\""
    );
    assert_eq!(
        error(&MINIMAL.replace("listen", "bogus = 1\nlisten")),
        "x.toml:4:1: service[0].bogus: unknown field `bogus`, expected one of `name`, `listen`, \
         `protocol`, `algorithm`, `hash_table_size`, `connect_timeout`, `idle_timeout`, \
         `max_connections`, `retries`, `buffer_size`, `backlog`, `splice`, \
         `access_log`, \
         `udp_idle_timeout`, `udp_max_flows`, `udp_replies`, `udp_mode`, `on_backend_down`, \
         `slow_start`, `health`, `agent`, `persistence`, `source`, `discovery`, `access`, \
         `limits`, `send_proxy`, `accept_proxy`, `trusted`, `proxy_timeout`, `backend`"
    );
    assert_eq!(
        error("[runtime\nworkers = 2\n"),
        "x.toml:1:9: TOML syntax error: unclosed table, expected `]`"
    );
    assert_eq!(
        error("[runtime]\nworkers = 2\n"),
        "x.toml:1:1: service: the config defines no service (add a [[service]] table)"
    );
}

#[test]
fn a_default_hash_table_too_small_for_the_backends_points_at_the_algorithm() {
    let mut text = String::from(
        "[[service]]\nname = \"big\"\nlisten = \"127.0.0.1:7000\"\nalgorithm = \"source_hash\"\n",
    );
    for port in 1..=700 {
        text.push_str(&format!(
            "[[service.backend]]\naddress = \"127.0.0.1:{port}\"\n"
        ));
    }
    assert_eq!(
        error(&text),
        "x.toml:4:13: service[0].hash_table_size: 65537 is too small for 700 backends: Maglev \
         needs 100 slots per backend, so set hash_table_size to a prime of at least 70000"
    );
    let bigger = text.replace("algorithm", "hash_table_size = 70001\nalgorithm");
    assert_eq!(parse(&bigger).services[0].hash_table_size, 70001);
}

#[test]
fn missing_and_unreadable_files_are_read_errors() {
    let path = dir("config/does-not-exist.toml");
    let err = Config::load(&path).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read config file: ", path.display()))
    );
}

#[test]
fn summary_shows_workers_services_timeouts_and_backends() {
    let text = format!("[runtime]\nworkers = 3\n{MINIMAL}weight = 5\nmax_connections = 7\n");
    assert_eq!(
        parse(&text).summary(),
        "x.toml: 3 workers, drain timeout 30s, 1 service\n\
         service \"redis\": tcp 127.0.0.1:7000, round_robin, connect timeout 3s, idle timeout \
         10m, max 10000 connections, 2 retries, buffer 16KiB, backlog 1024\n  \
         backend 127.0.0.1:6379 weight 5, max 7 connections\n"
    );
}

#[test]
fn admin_limits_default_and_refuse_zero() {
    let example = Config::load(&dir("config/ringlb.toml")).unwrap();
    let admin = example.admin.expect("the example has [admin]");
    assert_eq!(
        (
            admin.max_connections,
            admin.header_timeout,
            admin.body_timeout
        ),
        (
            DEFAULT_ADMIN_MAX_CONNECTIONS,
            DEFAULT_ADMIN_HEADER_TIMEOUT,
            DEFAULT_ADMIN_BODY_TIMEOUT
        ),
        "the example states the [admin] defaults"
    );
    let with = |keys: &str| format!("[admin]\nlisten = \"127.0.0.1:9090\"\n{keys}\n{MINIMAL}");
    let set = parse(&with(
        "max_connections = 3\nheader_timeout = \"1500ms\"\nbody_timeout = \"2s\"",
    ))
    .admin
    .unwrap();
    assert_eq!(set.max_connections, 3);
    assert_eq!(set.header_timeout, Duration::from_millis(1500));
    assert_eq!(set.body_timeout, Duration::from_secs(2));
    for (keys, key, allowed) in [
        (
            "max_connections = 0",
            "admin.max_connections",
            "between 1 and 4096",
        ),
        (
            "max_connections = 5000",
            "admin.max_connections",
            "between 1 and 4096",
        ),
        (
            "header_timeout = \"0s\"",
            "admin.header_timeout",
            "longer than zero",
        ),
        (
            "body_timeout = \"0s\"",
            "admin.body_timeout",
            "longer than zero",
        ),
    ] {
        let message = error(&with(keys));
        assert!(
            message.contains(key) && message.contains(allowed),
            "{keys}: {message}"
        );
    }
}

#[test]
fn durations_take_decimals_and_the_summary_prints_them_exactly() {
    let text = MINIMAL.replace(
        "listen",
        "connect_timeout = \"1.5s\"\nidle_timeout = \"0.5m\"\nlisten",
    );
    let config = parse(&text);
    assert_eq!(
        config.services[0].connect_timeout,
        Duration::from_millis(1500)
    );
    assert_eq!(config.services[0].idle_timeout, Duration::from_secs(30));
    let summary = config.summary();
    assert!(
        summary.contains("connect timeout 1500ms, idle timeout 30s"),
        "{summary}"
    );
    let text = MINIMAL.replace("listen", "connect_timeout = \"250us\"\nlisten");
    assert_eq!(
        parse(&text).services[0].connect_timeout,
        Duration::from_micros(250)
    );
}
