//! Health checks, persistence and failover in the config: parsing into the typed config,
//! defaults, and errors that name their key.

use std::time::Duration;

use super::super::*;
use super::{MINIMAL, error, parse};

const HEALTH: &str = r#"
[[service]]
name = "db"
listen = "127.0.0.1:7000"
on_backend_down = "shutdown"
slow_start = "30s"

[service.health]
kind = "postgres"
interval = "500ms"
timeout = "200ms"
rise = 4
fall = 5
port = 6432
passive_failures = 0
role = "primary"
user = "probe"
password = "s3cret"
database = "app"

[service.persistence]
ttl = "5m"
max_entries = 10

[[service.backend]]
address = "127.0.0.1:5432"

[[service.backend]]
address = "127.0.0.1:5433"
backup = true
"#;

#[test]
fn health_persistence_and_failover_parse_into_the_typed_config() {
    let config = parse(HEALTH);
    let s = &config.services[0];
    assert_eq!(s.on_backend_down, OnBackendDown::Shutdown);
    assert_eq!(s.slow_start, Duration::from_secs(30));
    assert_eq!(
        s.health,
        Some(HealthCheck {
            probe: Probe::Postgres {
                role: PostgresRole::Primary,
                user: "probe".to_owned(),
                password: Some(Secret::new("s3cret")),
                database: "app".to_owned(),
            },
            interval: Duration::from_millis(500),
            fast_interval: Duration::from_millis(500),
            timeout: Duration::from_millis(200),
            rise: 4,
            fall: 5,
            port: Some(6432),
            passive_failures: 0,
        })
    );
    assert_eq!(
        s.persistence,
        Some(Persistence {
            kind: PersistenceKind::SourceIp,
            ttl: Duration::from_secs(300),
            max_entries: 10,
        })
    );
    assert_eq!(
        s.backends.iter().map(|b| b.backup).collect::<Vec<_>>(),
        [false, true]
    );
    let summary = config.summary();
    assert!(
        summary.contains(
            "  health postgres (role primary) as \"probe\" on \"app\" on port 6432, every \
             500ms, timeout 200ms, rise 4, fall 5\n  on backend down: shutdown, slow start \
             30s\n  persistence source_ip, ttl 5m, max 10 entries\n"
        ),
        "{summary}"
    );
    assert!(
        summary.contains("127.0.0.1:5433 weight 1, backup\n"),
        "{summary}"
    );
    assert!(!summary.contains("s3cret"), "the password is not printed");
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "nor debug-printed"
    );
}

#[test]
fn an_empty_health_table_is_a_tcp_check_with_every_default() {
    let config = parse(&format!("{MINIMAL}\n[service.health]\n"));
    assert_eq!(
        config.services[0].health,
        Some(HealthCheck {
            probe: Probe::Tcp,
            interval: Duration::from_secs(2),
            fast_interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            port: None,
            passive_failures: 3,
        })
    );
}

#[test]
fn a_short_interval_shortens_the_default_timeout() {
    let config = parse(&format!(
        "{MINIMAL}\n[service.health]\ninterval = \"100ms\"\n"
    ));
    let h = config.services[0].health.as_ref().unwrap();
    assert_eq!(
        (h.interval, h.timeout),
        (Duration::from_millis(100), Duration::from_millis(100))
    );
}

#[test]
fn health_kind_none_means_no_checks() {
    let config = parse(&format!("{MINIMAL}\n[service.health]\nkind = \"none\"\n"));
    assert_eq!(config.services[0].health, None);
}

#[test]
fn redis_checks_take_roles_and_credentials_and_postgres_defaults_follow_libpq() {
    let redis = parse(&format!(
        "{MINIMAL}\n[service.health]\nkind = \"redis\"\nrole = \"master\"\npassword = \"pw\"\n"
    ));
    assert_eq!(
        redis.services[0].health.as_ref().unwrap().probe,
        Probe::Redis {
            role: RedisRole::Master,
            user: None,
            password: Some(Secret::new("pw")),
        }
    );
    let pg = parse(&format!(
        "{MINIMAL}\n[service.health]\nkind = \"postgres\"\n"
    ));
    assert_eq!(
        pg.services[0].health.as_ref().unwrap().probe,
        Probe::Postgres {
            role: PostgresRole::Any,
            user: "postgres".to_owned(),
            password: None,
            database: "postgres".to_owned(),
        }
    );
    let pg = parse(&format!(
        "{MINIMAL}\n[service.health]\nkind = \"postgres\"\nuser = \"app\"\n"
    ));
    assert!(matches!(
        &pg.services[0].health.as_ref().unwrap().probe,
        Probe::Postgres { database, .. } if database == "app"
    ));
}

#[test]
fn health_and_persistence_errors_name_the_key() {
    let with = |table: &str| format!("{MINIMAL}\n{table}\n");
    assert_eq!(
        error(&with("[service.health]\nkind = \"none\"\nfall = 2")),
        "x.toml:11:8: service[0].health.fall: applies only to kind = \"tcp\", \"redis\", \
         \"postgres\" or \"http\", and this check's kind is \"none\""
    );
    assert_eq!(
        error(&with("[service.health]\nuser = \"x\"")),
        "x.toml:10:8: service[0].health.user: applies only to kind = \"redis\" or \"postgres\", \
         and this check's kind is \"tcp\""
    );
    assert_eq!(
        error(&with(
            "[service.health]\nkind = \"redis\"\ndatabase = \"x\""
        )),
        "x.toml:11:12: service[0].health.database: applies only to kind = \"postgres\", and \
         this check's kind is \"redis\""
    );
    assert_eq!(
        error(&with(
            "[service.health]\nkind = \"postgres\"\nrole = \"master\""
        )),
        "x.toml:11:8: service[0].health.role: role \"master\" does not apply to kind = \
         \"postgres\" (use \"primary\", \"standby\" or \"any\")"
    );
    assert_eq!(
        error(&with(
            "[service.health]\ninterval = \"1s\"\ntimeout = \"2s\""
        )),
        "x.toml:11:11: service[0].health.timeout: \"2s\" is longer than the interval (1s): a \
         probe must end before the next one starts"
    );
    assert_eq!(
        error(&with("[service.health]\nport = 70000")),
        "x.toml:10:8: service[0].health.port: 70000 is out of range: must be between 1 and 65535"
    );
    assert_eq!(
        error(&with("[service.health]\nkind = \"postgres\"\nuser = \"\"")),
        "x.toml:11:8: service[0].health.user: must not be empty"
    );
    assert_eq!(
        error(&with("[service.persistence]\nmax_entries = 0")),
        "x.toml:10:15: service[0].persistence.max_entries: 0 is out of range: must be between 1 \
         and 10000000"
    );
    assert_eq!(
        error(&MINIMAL.replace("6379\"", "6379\"\nbackup = true")),
        "x.toml:8:10: service[0].backend[0].backup: every backend of this service is a backup; \
         at least one must be a primary (backup = false)"
    );
}

const PATRONI: &str = r#"
[[service]]
name = "rw"
listen = "127.0.0.1:5000"

[service.health]
kind = "http"
port = 8008
method = "OPTIONS"
path = "/primary"
expect_status = [200]
expect_body = "running"
host = "db.internal"
interval = "1s"
fast_interval = "100ms"
timeout = "500ms"

[service.agent]
port = 5555
interval = "2s"
timeout = "300ms"

[[service.backend]]
address = "127.0.0.1:5432"
health_port = 8009

[[service.backend]]
address = "127.0.0.2:5432"
"#;

#[test]
fn an_http_check_an_agent_and_a_backends_health_port_parse() {
    let config = parse(PATRONI);
    let s = &config.services[0];
    let h = s.health.as_ref().unwrap();
    assert_eq!(
        h.probe,
        Probe::Http(HttpProbe {
            method: HttpMethod::Options,
            path: "/primary".to_owned(),
            expect_status: vec![200],
            expect_body: Some("running".to_owned()),
            host: Some("db.internal".to_owned()),
        })
    );
    assert_eq!(h.port, Some(8008));
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.fast_interval, Duration::from_millis(100));
    assert_eq!(s.backends[0].health_port, Some(8009));
    assert_eq!(s.backends[1].health_port, None);
    assert_eq!(
        s.agent,
        Some(AgentCheck {
            port: 5555,
            interval: Duration::from_secs(2),
            timeout: Duration::from_millis(300),
        })
    );
    let summary = config.summary();
    assert!(
        summary.contains("health http OPTIONS /primary expecting [200]"),
        "{summary}"
    );
    assert!(
        summary.contains("every 100ms while between states"),
        "{summary}"
    );
}

#[test]
fn an_http_check_defaults_to_get_slash_and_any_2xx() {
    let config = parse(&format!("{MINIMAL}\n[service.health]\nkind = \"http\"\n"));
    let h = config.services[0].health.as_ref().unwrap();
    assert_eq!(
        h.probe,
        Probe::Http(HttpProbe {
            method: HttpMethod::Get,
            path: "/".to_owned(),
            expect_status: Vec::new(),
            expect_body: None,
            host: None,
        })
    );
    assert_eq!(h.fast_interval, h.interval, "no fast pace unless asked");
}

#[test]
fn http_and_agent_errors_name_the_key() {
    let with = |table: &str| format!("{MINIMAL}\n{table}\n");
    assert_eq!(
        error(&with("[service.health]\npath = \"/primary\"")),
        "x.toml:10:8: service[0].health.path: applies only to kind = \"http\", and this \
         check's kind is \"tcp\""
    );
    assert_eq!(
        error(&with(
            "[service.health]\nkind = \"http\"\npath = \"primary\""
        )),
        "x.toml:11:8: service[0].health.path: \"primary\" is not a path: it must start with \
         \"/\" (e.g. \"/primary\")"
    );
    assert_eq!(
        error(&with(
            "[service.health]\nkind = \"http\"\nexpect_status = [200, 700]"
        )),
        "x.toml:11:23: service[0].health.expect_status: 700 is out of range: must be between \
         100 and 599"
    );
    assert_eq!(
        error(&with(
            "[service.health]\nkind = \"http\"\nmethod = \"HEAD\"\nexpect_body = \"x\""
        )),
        "x.toml:12:15: service[0].health.expect_body: applies only to method = \"GET\" or \
         \"OPTIONS\" (a HEAD answer has no body), and this check's kind is \"http\""
    );
    assert_eq!(
        error(&with(
            "[service.health]\ninterval = \"1s\"\nfast_interval = \"2s\""
        )),
        "x.toml:11:17: service[0].health.fast_interval: \"2s\" is out of range: must be \
         between 1ms and interval (1s)"
    );
    assert_eq!(
        error(&with("[service.health]\nkind = \"http\"\nuser = \"x\"")),
        "x.toml:11:8: service[0].health.user: applies only to kind = \"redis\" or \
         \"postgres\", and this check's kind is \"http\""
    );
    assert_eq!(
        error(&with("[service.agent]\nport = 0")),
        "x.toml:10:8: service[0].agent.port: 0 is out of range: must be between 1 and 65535"
    );
    assert_eq!(
        error(&MINIMAL.replace("6379\"", "6379\"\nhealth_port = 70000")),
        "x.toml:8:15: service[0].backend[0].health_port: 70000 is out of range: must be \
         between 1 and 65535"
    );
}
