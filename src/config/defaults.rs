//! Defaults and limits of every config option, each with the reason for its value.
//!
//! `config/ringlb.toml` repeats the defaults for operators; a unit test checks that its example
//! services equal services built from these constants, so the two cannot drift apart.

use std::time::Duration;

use super::{
    AlertKinds, HealthKind, HttpMethod, OnBackendDown, PersistenceKind, Protocol, UdpMode,
};
use crate::balancer::Algorithm;

// ---- [runtime] ----

/// `runtime.pin_workers`: off. Pinning a worker to its core pays only when ringlb owns the cores;
/// on a shared host it fights the scheduler.
pub const DEFAULT_PIN_WORKERS: bool = false;

/// `runtime.drain_timeout`: 30 s lets in-flight requests and short transactions finish after a stop,
/// and stays well below systemd's default stop timeout (90 s), so ringlb exits on its own first.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// `runtime.freebind`: off. A listen address that is not on this host is then a start-up
/// error, which catches a typo; hosts sharing a virtual address (keepalived) turn it on so the
/// backup's ringlb runs before the address moves to it.
pub const DEFAULT_FREEBIND: bool = false;

/// Upper bound of `runtime.workers` (one worker per core): more cores than ringlb's hosts have,
/// low enough to catch a typo such as `workers = 10000`.
pub const MAX_WORKERS: usize = 1024;

// ---- [admin] ----

/// `admin.max_connections`: 64. The admin API's clients are a Prometheus server or two and an
/// operator's commands; 64 leaves room for them many times over, and the cap's descriptors are
/// kept aside from the data plane's connection budget.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: u32 = 64;

/// `admin.require_backends`: off. `GET /health` then says whether ringlb itself serves
/// (listeners bound, workers turning); with it on, a service without a ready backend also makes
/// the host unhealthy, so a keepalived pair moves the virtual address to a host that can reach
/// its backends.
pub const DEFAULT_REQUIRE_BACKENDS: bool = false;

/// Largest `admin.max_connections`: each one is a descriptor taken from the data plane's
/// budget, and an admin API with more clients than this is a typo.
pub const MAX_ADMIN_MAX_CONNECTIONS: u32 = 4096;

/// `admin.header_timeout`: 5 s for a request's line and headers (and for an idle keep-alive
/// connection's next request). A scraper or `ringlb status` sends its request at once; a client
/// that trickles it is holding a slot.
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// `admin.body_timeout`: 5 s for a request's body once its headers are in. The API's bodies are
/// a few bytes of JSON.
pub const DEFAULT_ADMIN_BODY_TIMEOUT: Duration = Duration::from_secs(5);

// ---- [[service]] ----

/// Longest service name. Names end up in log lines and metric labels, so they stay short.
pub const MAX_SERVICE_NAME_LEN: usize = 64;

/// `protocol`: TCP, because ringlb mostly fronts databases (PostgreSQL, Redis, MySQL).
pub const DEFAULT_PROTOCOL: Protocol = Protocol::Tcp;

/// `algorithm`: round robin needs no weights, state or tuning and is what an operator expects when
/// they choose nothing.
pub const DEFAULT_ALGORITHM: Algorithm = Algorithm::RoundRobin;

/// `hash_table_size`: the selection core's Maglev default (65537, prime). It gives each of up to
/// 655 backends the [`MIN_HASH_SLOTS_PER_BACKEND`] slots that keep shares even.
pub const DEFAULT_HASH_TABLE_SIZE: usize = crate::balancer::DEFAULT_MAGLEV_SIZE;

/// Maglev needs about 100 table slots per backend to keep every backend's share of keys within
/// about 1% of its fair share (as the Maglev paper advises), so smaller tables are refused.
pub const MIN_HASH_SLOTS_PER_BACKEND: usize = 100;

/// Largest `hash_table_size`: the largest prime below 2^24. Every worker holds the table of each
/// source-hash service; 2^24 four-byte entries (64 MiB) is already far more than 100 slots for
/// each of the thousands of backends a service may have.
pub const MAX_HASH_TABLE_SIZE: usize = 16_777_213;

/// `connect_timeout`: 3 s. Linux retransmits a lost SYN after 1 s, so one loss is survived, and a
/// dead backend is given up soon enough for `retries` to reach another one while the client waits.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// `idle_timeout`: 10 min. Pooled database connections sit idle for minutes between bursts (10 min
/// is also HikariCP's default idle timeout); connections whose client vanished without a FIN are
/// still reclaimed within minutes.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// `max_connections` of a service: 10000 bounds memory to about 313 MiB of forwarding buffers
/// (2 × [`DEFAULT_BUFFER_SIZE`] each) and 20000 file descriptors, which a raised `ulimit -n` covers.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;

/// `retries`: 2, so three backends are tried. With [`DEFAULT_CONNECT_TIMEOUT`] a client waits at
/// most 9 s before ringlb gives up.
pub const DEFAULT_RETRIES: u32 = 2;

/// Largest `retries`. Retries beyond the number of backends are harmless (candidates run out
/// first), but a larger number is a typo: 100 connect timeouts is a client waiting for minutes.
pub const MAX_RETRIES: u32 = 100;

/// `buffer_size`: 16 KiB per direction per connection, the size of the largest TLS record, so
/// one read moves a whole record; larger buffers cost memory on every connection for little gain.
pub const DEFAULT_BUFFER_SIZE: usize = 16 * 1024;

/// Smallest `buffer_size`: below 1 KiB the per-read overhead dominates the bytes moved.
pub const MIN_BUFFER_SIZE: usize = 1024;

/// Largest `buffer_size`: 16 MiB is above any socket buffer Linux grants by default
/// (`tcp_rmem` max is 6 MiB), so a larger buffer could never fill.
pub const MAX_BUFFER_SIZE: usize = 16 * 1024 * 1024;

/// `backlog`: 1024 pending connections absorb a reconnect storm of a large client pool; the kernel
/// clamps it to `net.core.somaxconn` (4096 by default since Linux 5.4) anyway.
pub const DEFAULT_BACKLOG: u32 = 1024;

/// Largest `backlog`: the kernel clamps the backlog to `net.core.somaxconn` (4096 by default), so
/// a value above 65535 is a typo rather than tuning.
pub const MAX_BACKLOG: u32 = 65_535;

/// `splice`: on. A direction whose reads fill `buffer_size` (a bulk transfer) moves on through
/// a pipe with splice(2): the bytes stay in the kernel, and each call moves up to a pipe's
/// capacity (64 KiB) instead of a buffer.
pub const DEFAULT_SPLICE: bool = true;

/// `proxy_timeout`: 3 s for a trusted client's PROXY header to arrive whole; an upstream
/// balancer writes it at once, so only a stalled or hostile client takes longer.
pub const DEFAULT_PROXY_TIMEOUT: Duration = Duration::from_secs(3);

/// `access_log`: off, because one line per connection floods the log of a busy pool.
pub const DEFAULT_ACCESS_LOG: bool = false;

/// `udp_idle_timeout`: 30 s, the same as Linux conntrack's UDP timeout: a UDP flow quiet for that
/// long is over for every stateful middlebox on the path anyway.
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `udp_max_flows`: each flow holds an upstream socket (a file descriptor) and a table entry, so
/// 65536 flows stay within a raised `ulimit -n` and a few MiB of memory, while serving tens of
/// thousands of clients at once.
pub const DEFAULT_UDP_MAX_FLOWS: usize = 65_536;

/// `udp_mode`: whole flows stick to one backend, which stateful UDP protocols need; stateless ones
/// (syslog, statsd) can choose `per_packet`.
pub const DEFAULT_UDP_MODE: UdpMode = UdpMode::Flow;

/// `on_backend_down`: keep. A backend marked down by a check may still be serving its live
/// sessions (a failed probe port, a demoted primary that still answers reads); cutting them is
/// a choice the operator makes per service.
pub const DEFAULT_ON_BACKEND_DOWN: OnBackendDown = OnBackendDown::Keep;

/// `slow_start`: off (zero), as in HAProxy and nginx: a recovered backend takes its full share at
/// once unless the operator knows it needs to warm up (caches, JIT, connection pools).
pub const DEFAULT_SLOW_START: Duration = Duration::ZERO;

// ---- [service.health] ----
//
// Without a [service.health] table no check runs and every backend counts as healthy, as in
// HAProxy without `check`: a bare connect probe is not free for every backend (PostgreSQL logs
// "incomplete startup packet" for each one), so ringlb probes only when asked. With the table,
// `kind` defaults to a TCP connect.

/// `health.kind` when the table is present: a TCP connect, which every TCP backend answers.
pub const DEFAULT_HEALTH_KIND: HealthKind = HealthKind::Tcp;

/// `health.interval`: 2 s, HAProxy's `inter` default. With the default `fall` a dead backend is
/// out within about 7 s; the probe load is one connection per backend every 2 s.
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);

/// `health.timeout`: 1 s, or `interval` when that is shorter, so a probe ends before the next
/// starts. A loopback or LAN backend that needs more than 1 s to accept or answer PING is not
/// healthy in any useful sense.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

/// `health.rise`: 2 passes in a row, HAProxy's default: one lucky probe does not bring back a
/// flapping backend.
pub const DEFAULT_RISE: u32 = 2;

/// `health.fall`: 3 failures in a row, HAProxy's default: a single lost SYN or slow reply does
/// not take a backend out.
pub const DEFAULT_FALL: u32 = 3;

/// Largest `rise` and `fall`: beyond 100 consecutive probes the hysteresis is a typo, not a
/// policy (at the default interval it would take over three minutes to react).
pub const MAX_RISE_FALL: u32 = 100;

/// `health.passive_failures`: 3 connect failures in a row seen by the workers take a backend
/// down without waiting for the probes; the same count as `fall`, seen sooner under traffic.
pub const DEFAULT_PASSIVE_FAILURES: u32 = 3;

/// `health.user` for `kind = "postgres"`: the superuser name every cluster has by default.
pub const DEFAULT_POSTGRES_USER: &str = "postgres";

/// `health.method` for `kind = "http"`.
pub const DEFAULT_HTTP_METHOD: HttpMethod = HttpMethod::Get;

/// `health.path` for `kind = "http"`.
pub const DEFAULT_HTTP_PATH: &str = "/";

// ---- [service.agent] ----

/// `agent.interval`: 2 s, as `health.interval` (HAProxy's `agent-inter` defaults to `inter`).
/// `agent.timeout` defaults as `health.timeout` does.
pub const DEFAULT_AGENT_INTERVAL: Duration = Duration::from_secs(2);

// ---- [service.persistence] ----

/// `persistence.kind`: the client IP, the only key an L4 balancer sees without parsing.
pub const DEFAULT_PERSISTENCE_KIND: PersistenceKind = PersistenceKind::SourceIp;

/// `persistence.ttl`: 30 min, the usual stick-table expiry in HAProxy setups: longer than a
/// pooled client's pauses, short enough that a departed client's entry does not live on.
pub const DEFAULT_PERSISTENCE_TTL: Duration = Duration::from_secs(30 * 60);

/// `persistence.max_entries`: 100000 clients at roughly 100 bytes each (entry, index, map
/// slack) is about 10 MiB per service.
pub const DEFAULT_PERSISTENCE_MAX_ENTRIES: usize = 100_000;

/// Largest `persistence.max_entries`: 10 million entries is about 1 GiB, more than any single
/// service's distinct clients and small enough to catch a typo.
pub const MAX_PERSISTENCE_ENTRIES: usize = 10_000_000;

// ---- [[service.backend]] ----

/// `weight` of a backend: 1, so all backends are equal unless told otherwise.
pub const DEFAULT_WEIGHT: u32 = 1;

/// Largest `weight`. Weights are relative: 1000 gives 0.1% resolution while keeping weighted
/// round robin's sums and Maglev's per-weight work small.
pub const MAX_WEIGHT: u32 = 1000;

/// `backup`: false. A backup takes traffic only while no primary backend is up.
pub const DEFAULT_BACKUP: bool = false;

// ---- [service.discovery] ----

/// `max_backends` of a discovering service: 10,000. Far above any real service, low enough that
/// a runaway registry answer cannot make a snapshot (and its selectors) huge.
pub const DEFAULT_DISCOVERY_MAX_BACKENDS: usize = 10_000;

/// Largest `max_backends`.
pub const MAX_DISCOVERY_MAX_BACKENDS: usize = 100_000;

/// `wait` of a Consul blocking query: 5 minutes, Consul's own default.
pub const DEFAULT_CONSUL_WAIT: Duration = Duration::from_secs(300);

/// Shortest `wait`: 1 s; shorter turns a blocking query into polling.
pub const MIN_CONSUL_WAIT: Duration = Duration::from_secs(1);

/// Longest `wait`: 10 minutes, Consul's own cap.
pub const MAX_CONSUL_WAIT: Duration = Duration::from_secs(600);

/// `passing_only`: true, only instances whose checks all pass.
pub const DEFAULT_CONSUL_PASSING_ONLY: bool = true;

/// `min_ttl` of DNS discovery: 1 s, so a zero TTL does not make ringlb resolve in a loop.
pub const DEFAULT_DNS_MIN_TTL: Duration = Duration::from_secs(1);

/// `max_ttl` of DNS discovery: 60 s, so a long TTL still lets changes in within a minute.
pub const DEFAULT_DNS_MAX_TTL: Duration = Duration::from_secs(60);

/// Longest `max_ttl` (and `min_ttl`): 1 hour.
pub const MAX_DNS_TTL: Duration = Duration::from_secs(3600);

// ---- [[alert.webhook]] ----

/// `events` of a webhook: all of them. A webhook is usually one team's pager or chat channel,
/// which wants to hear about backends and services alike.
pub const DEFAULT_WEBHOOK_EVENTS: AlertKinds = AlertKinds::ALL;

/// `timeout` of one webhook attempt: 5 s. A receiver answers a small POST in well under a
/// second; 5 s rides out a slow TLS-terminating proxy or a garbage-collection pause, and a dead
/// receiver still costs little before the next attempt.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest `timeout`: a receiver that needs more than a minute to accept an alert is down, and a
/// longer wait holds up every later alert to it.
pub const MAX_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(60);

/// `retries` after a failed attempt: 3. With the default backoff the attempts span about 3.5 s
/// of waiting plus the attempts themselves, enough for a receiver restart or a lost connection.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 3;

/// Largest `retries`: at the backoff cap, 10 retries already hold an alert (and the ones queued
/// behind it for the same webhook) for about four minutes.
pub const MAX_WEBHOOK_RETRIES: u32 = 10;

/// `backoff`, the wait before the first retry: 500 ms; it doubles for each further retry
/// (0.5 s, 1 s, 2 s, ...), so a receiver that is briefly overloaded is not hammered.
pub const DEFAULT_WEBHOOK_BACKOFF: Duration = Duration::from_millis(500);

/// Longest wait between two attempts, and so the largest `backoff`: doubling stops at 30 s so a
/// receiver that is back is reached within half a minute.
pub const MAX_WEBHOOK_BACKOFF: Duration = Duration::from_secs(30);

// ---- [service.limits] ----

/// `limits.ipv6_prefix`: an IPv6 client is its /64, the subnet one host or one customer
/// usually gets; counting single addresses would let a host use 2^64 of them.
pub const DEFAULT_CLIENT_IPV6_PREFIX: u8 = 64;

/// `limits.max_clients`: 65,536 clients tracked at once, each about 64 bytes with its map
/// slot: about 4 MiB per service, allocated when the service is built.
pub const DEFAULT_MAX_CLIENTS: usize = 65_536;

/// Largest `limits.max_clients`: 16 million clients (about 1 GiB); beyond that a typo.
pub const MAX_MAX_CLIENTS: usize = 16 * 1024 * 1024;

/// Largest `limits.rate_burst` and rate count: a million connections at once.
pub const MAX_RATE_COUNT: u32 = 1_000_000;
