//! The probes: one check of one backend, answering pass or fail with a reason.
//!
//! Owns: the sockets of a probe, from connect to close, and talking the backend's protocol
//! through well-kept clients (`redis` with tokio, `tokio-postgres`). Does not own: when probes
//! run, rise/fall, or what a result changes (`super` and `balancer::health`).
//!
//! Guarantee: a probe leaves nothing behind. It connects its own tokio socket and hands it to
//! the client library; the library's connection driver is polled inside the probe's own future
//! (no task is spawned), so when the probe ends or its timeout drops it, every socket it opened
//! is closed. A connect still waiting for a SYN-ACK is cancelled by dropping it.
//!
//! Sources: a backend with source addresses (the `source` key) is probed from the first of
//! them, bound as the data plane binds its connections (`dataplane::bind_no_port`), and from
//! the next when one has no local port left.
//!
//! A socket or connect that fails for a reason of ringlb's own ([`LocalShortage`]: out of local
//! ports, descriptors or memory) is [`ProbeFailure::Local`], which the caller must not count
//! against the backend.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::pin;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

use crate::config::{PostgresRole, Probe, RedisRole};
use crate::control::local::LocalShortage;

/// Why a probe failed. Shown in the "backend down" log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeFailure {
    /// The connect was refused (nothing listens).
    Refused,
    /// No complete answer within the probe timeout (connect included).
    Timeout(Duration),
    /// The connect failed otherwise (unreachable, reset, ...).
    Connect(String),
    /// The probe could not open its socket or connect for a reason of ringlb's own (out of
    /// local ports, descriptors or memory): it says nothing about the backend.
    Local(LocalShortage),
    /// The backend answered something the check does not accept.
    BadReply(String),
    /// The backend refused the check itself (login failed, still loading, too many clients).
    Rejected(String),
    /// The backend answered but has the wrong replication role.
    RoleMismatch(String),
    /// An HTTP check's answer had a status the check does not accept.
    HttpStatus(String),
    /// An HTTP check's answer lacked the expected text in its body.
    HttpBody(String),
}

impl fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeFailure::Refused => f.write_str("refused"),
            ProbeFailure::Timeout(d) => write!(f, "timeout: no answer within {d:?}"),
            ProbeFailure::Connect(e) => write!(f, "connect failed: {e}"),
            ProbeFailure::Local(what) => write!(f, "not checked: ringlb is {what}"),
            ProbeFailure::BadReply(e) => write!(f, "bad reply: {e}"),
            ProbeFailure::Rejected(e) => write!(f, "rejected: {e}"),
            ProbeFailure::RoleMismatch(e) => write!(f, "role mismatch: {e}"),
            ProbeFailure::HttpStatus(e) => write!(f, "status: {e}"),
            ProbeFailure::HttpBody(e) => write!(f, "body: {e}"),
        }
    }
}

/// Runs `probe` against `target`, within `timeout` for the whole exchange, from the address
/// the kernel picks.
pub async fn run(probe: &Probe, target: SocketAddr, timeout: Duration) -> Result<(), ProbeFailure> {
    run_from(probe, target, &[], timeout).await
}

/// Runs `probe` against `target` from the first of `sources` (the backend's source addresses;
/// empty: the kernel picks), within `timeout` for the whole exchange. An address with no local
/// port left toward `target` gives way to the next; only when none is left is the probe
/// [`ProbeFailure::Local`].
pub async fn run_from(
    probe: &Probe,
    target: SocketAddr,
    sources: &[IpAddr],
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    let to = Target { target, sources };
    let check = async {
        match probe {
            Probe::Tcp => tcp(to).await,
            Probe::Redis {
                role,
                user,
                password,
            } => {
                redis(
                    to,
                    *role,
                    user.as_deref(),
                    password.as_ref().map(|p| p.expose()),
                )
                .await
            }
            Probe::Postgres {
                role,
                user,
                password,
                database,
            } => {
                postgres(
                    to,
                    *role,
                    user,
                    password.as_ref().map(|p| p.expose()),
                    database,
                )
                .await
            }
            Probe::Http(http) => super::probe_http::run(http, target, sources).await,
        }
    };
    // Dropping `check` on timeout cancels the connect or the exchange and closes its sockets.
    match tokio::time::timeout(timeout, check).await {
        Ok(result) => result,
        Err(_) => Err(ProbeFailure::Timeout(timeout)),
    }
}

/// Where a probe connects, and from which local addresses.
#[derive(Clone, Copy)]
struct Target<'a> {
    target: SocketAddr,
    sources: &'a [IpAddr],
}

async fn connect(to: Target<'_>) -> Result<TcpStream, ProbeFailure> {
    let stream = open(to)
        .await
        .map_err(|e| match (e.kind(), LocalShortage::of(&e)) {
            (_, Some(what)) => ProbeFailure::Local(what),
            (io::ErrorKind::ConnectionRefused, None) => ProbeFailure::Refused,
            _ => ProbeFailure::Connect(e.to_string()),
        })?;
    // Probes are tiny request/response exchanges.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// The probe's socket, connected: from the kernel's choice of address without sources, else
/// from the first source address that has a local port left toward the target. A bound socket
/// takes its port at connect time (`IP_BIND_ADDRESS_NO_PORT`), as the data plane's do.
async fn open(to: Target<'_>) -> io::Result<TcpStream> {
    if to.sources.is_empty() {
        return TcpStream::connect(to.target).await;
    }
    let mut last = io::Error::from_raw_os_error(libc::EADDRNOTAVAIL);
    for &source in to.sources {
        match open_from(source, to.target).await {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => last = e,
            done => return done,
        }
    }
    Err(last)
}

async fn open_from(source: IpAddr, target: SocketAddr) -> io::Result<TcpStream> {
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    crate::dataplane::bind_no_port(&socket, source)?;
    socket.connect(target).await
}

/// Connect, then close with a reset: a bare connect probe says nothing more, and a reset leaves
/// no TIME_WAIT socket holding a local port (as HAProxy does for its checks), so frequent
/// probes cannot exhaust the ephemeral ports.
async fn tcp(to: Target<'_>) -> Result<(), ProbeFailure> {
    let stream = connect(to).await?;
    let _ = stream.set_zero_linger();
    drop(stream);
    Ok(())
}

/// Runs `work` while also driving a client library's connection future, which must be polled
/// for `work` to make progress. Both are dropped when this returns.
async fn with_driver<T>(
    work: impl Future<Output = Result<T, ProbeFailure>>,
    driver: impl Future<Output = ()>,
) -> Result<T, ProbeFailure> {
    let work = pin!(work);
    let driver = pin!(driver);
    match futures_util::future::select(work, driver).await {
        futures_util::future::Either::Left((result, _)) => result,
        futures_util::future::Either::Right(((), _)) => Err(ProbeFailure::BadReply(
            "the connection closed during the check".to_owned(),
        )),
    }
}

fn redis_failure(e: redis::RedisError) -> ProbeFailure {
    // An error reply from the server (NOAUTH, WRONGPASS, LOADING, ...) has a code.
    if e.code().is_some() || e.kind() == redis::ErrorKind::AuthenticationFailed {
        ProbeFailure::Rejected(e.to_string())
    } else {
        ProbeFailure::BadReply(e.to_string())
    }
}

/// `PING` must be answered `PONG`; with a role, `INFO replication` must report it.
async fn redis(
    to: Target<'_>,
    role: RedisRole,
    user: Option<&str>,
    password: Option<&str>,
) -> Result<(), ProbeFailure> {
    let stream = connect(to).await?;
    let mut info = redis::RedisConnectionInfo::default().set_skip_set_lib_name();
    if let Some(user) = user {
        info = info.set_username(user);
    }
    if let Some(password) = password {
        info = info.set_password(password);
    }
    // The probe's own timeout bounds every reply.
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let (mut conn, driver) =
        redis::aio::MultiplexedConnection::new_with_config(&info, stream, config)
            .await
            .map_err(redis_failure)?;
    let work = async {
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(redis_failure)?;
        if pong != "PONG" {
            return Err(ProbeFailure::BadReply(format!(
                "PING answered {pong:?}, not PONG"
            )));
        }
        let wanted = match role {
            RedisRole::Any => return Ok(()),
            RedisRole::Master => "master",
            RedisRole::Replica => "slave",
        };
        let replication: String = redis::cmd("INFO")
            .arg("replication")
            .query_async(&mut conn)
            .await
            .map_err(redis_failure)?;
        match redis_role(&replication) {
            Some(r) if r == wanted => Ok(()),
            Some(r) => Err(ProbeFailure::RoleMismatch(format!(
                "role:{r}, expected role:{wanted}"
            ))),
            None => Err(ProbeFailure::BadReply(
                "INFO replication has no role line".to_owned(),
            )),
        }
    };
    with_driver(work, driver).await
}

/// The value of the `role:` line of an `INFO replication` reply.
fn redis_role(info: &str) -> Option<&str> {
    info.lines()
        .find_map(|l| l.strip_prefix("role:"))
        .map(str::trim)
}

fn postgres_failure(e: tokio_postgres::Error) -> ProbeFailure {
    match e.as_db_error() {
        Some(db) => ProbeFailure::Rejected(format!(
            "{} {}: {}",
            db.severity(),
            db.code().code(),
            db.message()
        )),
        None => ProbeFailure::BadReply(e.to_string()),
    }
}

/// Log in and run `SELECT pg_is_in_recovery()`; with a role, its answer must match.
async fn postgres(
    to: Target<'_>,
    role: PostgresRole,
    user: &str,
    password: Option<&str>,
    database: &str,
) -> Result<(), ProbeFailure> {
    let stream = connect(to).await?;
    let mut config = tokio_postgres::Config::new();
    config
        .user(user)
        .dbname(database)
        .application_name("ringlb-health");
    if let Some(password) = password {
        config.password(password);
    }
    let (client, connection) = config
        .connect_raw(stream, tokio_postgres::NoTls)
        .await
        .map_err(postgres_failure)?;
    let mut connection = pin!(connection);
    let work = async {
        let messages = client
            .simple_query("SELECT pg_is_in_recovery()")
            .await
            .map_err(postgres_failure)?;
        let answer = messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0)),
                _ => None,
            })
            .flatten();
        let in_recovery = match answer {
            Some("t") => true,
            Some("f") => false,
            other => {
                return Err(ProbeFailure::BadReply(format!(
                    "pg_is_in_recovery() answered {other:?}"
                )));
            }
        };
        match (role, in_recovery) {
            (PostgresRole::Primary, true) => Err(ProbeFailure::RoleMismatch(
                "in recovery (a standby), expected a primary".to_owned(),
            )),
            (PostgresRole::Standby, false) => Err(ProbeFailure::RoleMismatch(
                "not in recovery (a primary), expected a standby".to_owned(),
            )),
            _ => Ok(()),
        }
    };
    let result = with_driver(work, async {
        let _ = (&mut connection).await;
    })
    .await;
    // Dropping the client makes the connection send Terminate and finish, so the server logs a
    // clean disconnect; the probe's timeout still bounds this.
    drop(client);
    let _ = connection.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::health::test_util::block_on;

    #[test]
    fn the_role_line_is_found_in_info_replication() {
        let info = "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\n";
        assert_eq!(redis_role(info), Some("slave"));
        assert_eq!(
            redis_role("# Replication\r\nrole:master\r\n"),
            Some("master")
        );
        assert_eq!(redis_role("connected_slaves:0\r\n"), None);
    }

    #[test]
    fn failures_read_as_reasons() {
        assert_eq!(ProbeFailure::Refused.to_string(), "refused");
        assert_eq!(
            ProbeFailure::Timeout(Duration::from_millis(200)).to_string(),
            "timeout: no answer within 200ms"
        );
        assert_eq!(
            ProbeFailure::RoleMismatch("role:slave, expected role:master".into()).to_string(),
            "role mismatch: role:slave, expected role:master"
        );
        assert_eq!(
            ProbeFailure::Local(LocalShortage::Ports).to_string(),
            "not checked: ringlb is out of local ports (EADDRNOTAVAIL)"
        );
    }

    #[test]
    fn a_tcp_probe_passes_on_a_listener_and_is_refused_without_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = Duration::from_secs(2);
        assert_eq!(block_on(run(&Probe::Tcp, addr, timeout)), Ok(()));
        drop(listener);
        assert_eq!(
            block_on(run(&Probe::Tcp, addr, timeout)),
            Err(ProbeFailure::Refused)
        );
    }

    /// A probe comes from the first source address it can: one not of this host gives way to
    /// the next; with none left the probe is not run for a local shortage, never failed.
    #[test]
    fn a_probe_connects_from_the_first_usable_source_address() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let timeout = Duration::from_secs(2);
        // TEST-NET-2: never an address of this host.
        let foreign: IpAddr = "198.51.100.7".parse().unwrap();
        let local: IpAddr = "127.0.0.3".parse().unwrap();
        for sources in [vec![local], vec![foreign, local]] {
            assert_eq!(
                block_on(run_from(&Probe::Tcp, addr, &sources, timeout)),
                Ok(())
            );
            let (_, peer) = listener.accept().unwrap();
            assert_eq!(peer.ip(), local, "{sources:?}");
        }
        assert_eq!(
            block_on(run_from(&Probe::Tcp, addr, &[foreign], timeout)),
            Err(ProbeFailure::Local(LocalShortage::Ports))
        );
    }

    #[test]
    fn a_redis_probe_against_a_non_redis_server_is_a_bad_reply_or_timeout() {
        // A server that answers garbage and closes.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 64];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        let probe = Probe::Redis {
            role: RedisRole::Any,
            user: None,
            password: None,
        };
        let result = block_on(run(&probe, addr, Duration::from_secs(2)));
        assert!(
            matches!(result, Err(ProbeFailure::BadReply(_))),
            "{result:?}"
        );
        server.join().unwrap();
    }
}
