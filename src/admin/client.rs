//! `ringlb status` and `ringlb connections`: read the admin API of a running ringlb and print
//! it as tables; `ringlb status --check` asks `/health` and answers with its exit code. One GET
//! per command, with reqwest (the HTTP client the alert webhooks use).
//!
//! This module owns the CLI side of the admin API (the request, its errors, the tables); the
//! API itself is in `super::api`.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};

use super::api::{ConnectionStatus, Status};
use super::health::Health;

/// How long a command waits for the API.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Where the admin API is, and how to ask it.
#[derive(Debug)]
pub struct Target {
    /// `http://IP:port`.
    pub base: String,
    /// Sent as `Authorization: Bearer <token>` when set (`[admin] token`).
    pub token: Option<String>,
}

impl Target {
    /// The API at `address`.
    pub fn new(address: SocketAddr) -> Target {
        Target {
            base: format!("http://{address}"),
            token: None,
        }
    }

    /// The same target, sending `token` with each request.
    pub fn with_token(mut self, token: Option<String>) -> Target {
        self.token = token;
        self
    }

    /// GETs `path_and_query` and returns the body of a 2xx answer; any other answer is an error
    /// carrying the API's `error` message.
    fn get(&self, path_and_query: &str) -> anyhow::Result<String> {
        let (url, code, body) = self.fetch(path_and_query)?;
        if !code.is_success() {
            let message = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            bail!("{url}: {code}: {message}");
        }
        Ok(body)
    }

    /// GETs `path_and_query`: the URL, the status and the body, whatever the status.
    ///
    /// The request runs on a current-thread tokio runtime made for it, rather than through
    /// reqwest's `blocking` feature: that feature runs its own runtime on a background thread
    /// per client (and is one more feature to build), where a command that makes one request
    /// only needs to block on it here.
    fn fetch(&self, path_and_query: &str) -> anyhow::Result<(String, reqwest::StatusCode, String)> {
        let url = format!("{}{path_and_query}", self.base);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the HTTP client's runtime")?;
        let (code, body) = runtime.block_on(async {
            let client = crate::tls::client_builder()
                .user_agent(concat!("ringlb/", env!("CARGO_PKG_VERSION")))
                // The admin API is at the address given, not behind the environment's HTTP_PROXY.
                .no_proxy()
                // Covers connecting, sending and reading the whole answer.
                .timeout(TIMEOUT)
                .build()
                .context("cannot set up the HTTP client")?;
            let mut request = client.get(&url);
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            let response = request
                .send()
                .await
                // The context names the URL already.
                .map_err(reqwest::Error::without_url)
                .with_context(|| format!("cannot reach the admin API at {url}"))?;
            let code = response.status();
            let body = response
                .text()
                .await
                .map_err(reqwest::Error::without_url)
                .with_context(|| format!("cannot read the answer of {url}"))?;
            anyhow::Ok((code, body))
        })?;
        Ok((url, code, body))
    }
}

/// `ringlb status --check`: whether the ringlb at `target` serves (`GET /health`), and the line
/// to print. An API that cannot be reached or answers something else is unhealthy too, so a
/// keepalived `track_script` gives the address up when ringlb is gone.
pub fn check(target: &Target) -> (bool, String) {
    let (url, code, body) = match target.fetch("/health") {
        Ok(answer) => answer,
        Err(e) => return (false, format!("unhealthy: {e:#}")),
    };
    match serde_json::from_str::<Health>(&body) {
        Ok(h) if h.healthy && code.is_success() => (true, "healthy".to_owned()),
        Ok(h) => (
            false,
            format!(
                "unhealthy: {}",
                h.reason.unwrap_or_else(|| format!("{url} answered {code}"))
            ),
        ),
        Err(_) => (false, format!("unhealthy: {url} answered {code}: {body}")),
    }
}

/// `ringlb status`: services and backends as a table.
pub fn status(target: &Target) -> anyhow::Result<String> {
    let body = target.get("/status")?;
    let status: Status = serde_json::from_str(&body)
        .context("the admin API's /status is not what this ringlb expects")?;
    Ok(render_status(&status))
}

/// `ringlb connections`: live connections as a table.
pub fn connections(target: &Target, service: Option<&str>, limit: usize) -> anyhow::Result<String> {
    let mut query = format!("/connections?limit={limit}");
    if let Some(s) = service {
        query.push_str("&service=");
        // Service names are plain ([A-Za-z0-9_.-]), so they need no escaping in a query.
        query.push_str(s);
    }
    let body = target.get(&query)?;
    let list: Vec<ConnectionStatus> = serde_json::from_str(&body)
        .context("the admin API's /connections is not what this ringlb expects")?;
    Ok(render_connections(&list))
}

/// Lays out rows under a header, each column as wide as its widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &mut dyn Iterator<Item = &str>| {
        let mut first = true;
        for (cell, w) in cells.zip(&widths) {
            if !first {
                out.push_str("  ");
            }
            first = false;
            let _ = write!(out, "{cell:<w$}");
        }
        let trimmed = out.trim_end().len();
        out.truncate(trimmed);
        out.push('\n');
    };
    line(&mut out, &mut header.iter().copied());
    for row in rows {
        line(&mut out, &mut row.iter().map(String::as_str));
    }
    out
}

fn render_status(s: &Status) -> String {
    let mut out = format!(
        "ringlb {}: {} (config version {}), up {}s, {} worker{}\n\n",
        s.version,
        s.config_file,
        s.config_version,
        s.uptime_seconds,
        s.workers,
        if s.workers == 1 { "" } else { "s" }
    );
    let mut rows = Vec::new();
    for svc in &s.services {
        for b in &svc.backends {
            let check = match &b.last_check {
                Some(c) if c.passed => format!("passed ({} ms)", c.took_ms),
                Some(c) => format!("failed: {}", c.reason),
                None => "-".to_owned(),
            };
            rows.push(vec![
                svc.name.clone(),
                format!("{} {}", svc.protocol, svc.listen),
                if svc.up { "up" } else { "DOWN" }.to_owned(),
                b.address.clone(),
                format!("{}{}", b.state, if b.backup { " (backup)" } else { "" }),
                b.weight.to_string(),
                b.active.to_string(),
                b.connections.to_string(),
                b.connect_failures.to_string(),
                check,
            ]);
        }
    }
    out.push_str(&table(
        &[
            "SERVICE",
            "LISTEN",
            "SERVICE STATE",
            "BACKEND",
            "STATE",
            "WEIGHT",
            "ACTIVE",
            "TOTAL",
            "FAILED",
            "LAST CHECK",
        ],
        &rows,
    ));
    out
}

fn render_connections(list: &[ConnectionStatus]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.service.clone(),
                c.client.clone(),
                c.backend.clone().unwrap_or_else(|| "-".to_owned()),
                c.state.clone(),
                format!("{:.1}s", c.age_ms as f64 / 1000.0),
                format!("{:.1}s", c.idle_ms as f64 / 1000.0),
                c.bytes_up.to_string(),
                c.bytes_down.to_string(),
                c.worker.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SERVICE",
            "CLIENT",
            "BACKEND",
            "STATE",
            "AGE",
            "IDLE",
            "BYTES UP",
            "BYTES DOWN",
            "WORKER",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "{} connection{}",
        list.len(),
        if list.len() == 1 { "" } else { "s" }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_trailing_space_is_trimmed() {
        let t = table(
            &["A", "LONG HEADER", "C"],
            &[
                vec!["wide cell".into(), "x".into(), "".into()],
                vec!["y".into(), "z".into(), "last".into()],
            ],
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "A          LONG HEADER  C");
        assert_eq!(lines[1], "wide cell  x");
        assert_eq!(lines[2], "y          z            last");
    }
}
