//! The agent check (`[service.agent]`): each backend's host runs a small TCP agent that tells
//! ringlb the backend's state in one line, as HAProxy's `agent-check` does.
//!
//! Owns: one task per backend on the health thread that connects to the agent every
//! `interval`, reads one line within `timeout`, parses it ([`parse_line`]) and hands the result
//! to [`ServiceState::set_agent`]. Does not own: what a state means for selection (the
//! [`AgentState`] in `balancer::health`, read by `BackendLive::up`), or the operator's state,
//! which wins over the agent's.
//!
//! [`ServiceState::set_agent`]: crate::control::ServiceState::set_agent
//! [`AgentState`]: crate::balancer::health::AgentState
//!
//! The line is words separated by spaces, tabs or commas, case-insensitive, as HAProxy
//! documents: `up`; `down`, `fail` or `stopped` (operationally down; a description may follow
//! a `#`); `ready`, `drain` or `maint` (the admin state); a weight as `75%` of the configured
//! one; `maxconn:N` is accepted and ignored. Each word changes only what it names, and only the
//! agent undoes what it did. A line with an unknown word, an empty line, a line longer than
//! [`MAX_LINE`], no line within the timeout or no connection at all changes nothing and is
//! counted (`backend_agent_errors_total`); as in HAProxy, an unreachable agent does not take the
//! backend down (the health check is there for that).

use std::fmt;
use std::net::SocketAddr;
use std::time::Instant;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::balancer::health::{Admin, AgentReport};
use crate::config::AgentCheck;

use super::{SharedSnapshot, locate};

/// Longest line read (HAProxy's agent lines are a few words).
pub const MAX_LINE: usize = 512;

/// Why an agent query changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentError {
    /// No connection to the agent.
    Connect(String),
    /// No complete line within the timeout.
    Timeout,
    /// More than [`MAX_LINE`] bytes without a line end.
    TooLong,
    /// The connection closed before anything was said.
    Empty,
    /// Not UTF-8, or a word the protocol does not have.
    Garbage(String),
}

impl fmt::Display for AgentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AgentError::Connect(e) => write!(f, "no connection to the agent: {e}"),
            AgentError::Timeout => f.write_str("no line within the timeout"),
            AgentError::TooLong => write!(f, "a line longer than {MAX_LINE} bytes"),
            AgentError::Empty => f.write_str("an empty answer"),
            AgentError::Garbage(e) => write!(f, "not an agent line: {e}"),
        }
    }
}

/// Parses one agent line (without its line end).
pub fn parse_line(line: &str) -> Result<AgentReport, AgentError> {
    // What follows a '#' is a description for people.
    let words = line.split('#').next().unwrap_or_default();
    let mut report = AgentReport::default();
    let mut any = false;
    for word in words
        .split([' ', '\t', ',', '\r'])
        .filter(|w| !w.is_empty())
    {
        any = true;
        let lower = word.to_ascii_lowercase();
        match lower.as_str() {
            "up" => report.up = Some(true),
            "down" | "fail" | "stopped" => report.up = Some(false),
            "ready" => report.admin = Some(Admin::Enabled),
            "drain" => report.admin = Some(Admin::Drain),
            "maint" => report.admin = Some(Admin::Disabled),
            w if w.starts_with("maxconn:") && w["maxconn:".len()..].parse::<u32>().is_ok() => {}
            w => match w.strip_suffix('%').map(str::parse::<u32>) {
                Some(Ok(p)) => report.percent = Some(p),
                _ => return Err(AgentError::Garbage(format!("unknown word {word:?}"))),
            },
        }
    }
    if !any {
        return Err(AgentError::Garbage("no word".to_owned()));
    }
    Ok(report)
}

/// Connects to the agent at `target` and reads its first line (or all it sent before closing,
/// when that has no line end). Unbounded in time: the caller's timeout bounds it.
async fn read_line(target: SocketAddr) -> Result<String, AgentError> {
    let mut stream = TcpStream::connect(target)
        .await
        .map_err(|e| AgentError::Connect(e.to_string()))?;
    let mut buf = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    let end = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break end;
        }
        if buf.len() > MAX_LINE {
            return Err(AgentError::TooLong);
        }
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| AgentError::Connect(e.to_string()))?;
        if n == 0 {
            if buf.is_empty() {
                return Err(AgentError::Empty);
            }
            break buf.len();
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if end > MAX_LINE {
        return Err(AgentError::TooLong);
    }
    // Close with a reset: no TIME_WAIT socket holds a local port (as the TCP probe does).
    let _ = stream.set_zero_linger();
    buf.truncate(end);
    String::from_utf8(buf).map_err(|_| AgentError::Garbage("not UTF-8".to_owned()))
}

/// One query: the line and what it says.
async fn query(
    target: SocketAddr,
    check: &AgentCheck,
) -> Result<(String, AgentReport), AgentError> {
    let line = tokio::time::timeout(check.timeout, read_line(target))
        .await
        .map_err(|_| AgentError::Timeout)??;
    let report = parse_line(&line)?;
    Ok((line.trim_end_matches('\r').to_owned(), report))
}

/// Queries one backend's agent every `interval` until the task is aborted (the backend or the
/// agent check left the config) or the runtime is dropped.
pub(super) async fn watch(
    snapshot: SharedSnapshot,
    name: String,
    address: SocketAddr,
    check: AgentCheck,
) {
    let target = SocketAddr::new(address.ip(), check.port);
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Whether the last query failed, so a run of failures is logged once.
    let mut failing = false;
    loop {
        ticks.tick().await;
        let result = query(target, &check).await;
        let Some((service, index)) = locate(&snapshot, &name, address) else {
            return;
        };
        match result {
            Ok((line, report)) => {
                if failing {
                    tracing::info!(service = %name, backend = %address, agent = %target,
                        "agent answers again");
                    failing = false;
                }
                let live = &service.backends[index].live;
                let next = live.agent().with(&report);
                service.set_agent(index, next, &line, Instant::now());
            }
            Err(error) => {
                service.backends[index].counters.agent_errors.inc();
                if !failing {
                    tracing::warn!(service = %name, backend = %address, agent = %target,
                        reason = %error, "agent query changed nothing");
                    failing = true;
                } else {
                    tracing::debug!(service = %name, backend = %address, agent = %target,
                        reason = %error, "agent query changed nothing");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::health::test_util::block_on;

    fn report(admin: Option<Admin>, up: Option<bool>, percent: Option<u32>) -> AgentReport {
        AgentReport { admin, up, percent }
    }

    #[test]
    fn each_word_sets_what_it_names() {
        assert_eq!(parse_line("up"), Ok(report(None, Some(true), None)));
        for down in ["down", "fail", "stopped", "DOWN"] {
            assert_eq!(
                parse_line(down),
                Ok(report(None, Some(false), None)),
                "{down}"
            );
        }
        assert_eq!(
            parse_line("ready"),
            Ok(report(Some(Admin::Enabled), None, None))
        );
        assert_eq!(
            parse_line("drain"),
            Ok(report(Some(Admin::Drain), None, None))
        );
        assert_eq!(
            parse_line("Maint"),
            Ok(report(Some(Admin::Disabled), None, None))
        );
        assert_eq!(parse_line("75%"), Ok(report(None, None, Some(75))));
        assert_eq!(parse_line("0%"), Ok(report(None, None, Some(0))));
    }

    #[test]
    fn several_words_separated_by_commas_spaces_or_tabs_combine() {
        assert_eq!(
            parse_line("up, ready 50%"),
            Ok(report(Some(Admin::Enabled), Some(true), Some(50)))
        );
        assert_eq!(
            parse_line("drain\t10%,maxconn:30"),
            Ok(report(Some(Admin::Drain), None, Some(10)))
        );
        // The last of two words about the same thing wins.
        assert_eq!(parse_line("down up"), Ok(report(None, Some(true), None)));
    }

    #[test]
    fn a_description_after_a_sharp_is_not_parsed() {
        assert_eq!(
            parse_line("down#replica, lag too high: 75% behind"),
            Ok(report(None, Some(false), None))
        );
        assert_eq!(
            parse_line("stopped # planned"),
            Ok(report(None, Some(false), None))
        );
    }

    #[test]
    fn garbage_is_refused_whole() {
        for line in [
            "",
            "   ",
            "#only a description",
            "upp",
            "up sideways",
            "75",
            "-5%",
            "x%",
            "maxconn:",
            "HTTP/1.1 200 OK",
        ] {
            assert!(
                matches!(parse_line(line), Err(AgentError::Garbage(_))),
                "{line:?}: {:?}",
                parse_line(line)
            );
        }
    }

    fn serve(answer: Vec<u8>, close: bool) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(&answer);
            if !close {
                // Hold the connection until the client gives up.
                let mut buf = [0u8; 16];
                let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(5)));
                let _ = s.read(&mut buf);
            }
        });
        (addr, server)
    }

    fn check() -> AgentCheck {
        AgentCheck {
            port: 1,
            interval: std::time::Duration::from_secs(1),
            timeout: std::time::Duration::from_millis(300),
        }
    }

    #[test]
    fn a_query_reads_one_line_or_what_came_before_the_close() {
        let (addr, server) = serve(b"drain 50%\r\nup\n".to_vec(), false);
        let (line, r) = block_on(query(addr, &check())).unwrap();
        assert_eq!(line, "drain 50%");
        assert_eq!(r, report(Some(Admin::Drain), None, Some(50)));
        server.join().unwrap();

        let (addr, server) = serve(b"maint".to_vec(), true);
        let (_, r) = block_on(query(addr, &check())).unwrap();
        assert_eq!(r, report(Some(Admin::Disabled), None, None));
        server.join().unwrap();
    }

    #[test]
    fn silence_a_long_line_and_an_empty_answer_are_errors() {
        let (addr, server) = serve(Vec::new(), false);
        assert_eq!(block_on(query(addr, &check())), Err(AgentError::Timeout));
        server.join().unwrap();

        let (addr, server) = serve(vec![b'u'; MAX_LINE + 10], false);
        assert_eq!(block_on(query(addr, &check())), Err(AgentError::TooLong));
        server.join().unwrap();

        let (addr, server) = serve(Vec::new(), true);
        assert_eq!(block_on(query(addr, &check())), Err(AgentError::Empty));
        server.join().unwrap();
    }
}
