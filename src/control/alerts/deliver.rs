//! Delivering one webhook's queue: the HTTP client (plain http, or https with rustls), the
//! POST, what counts as success, and the retry schedule.
//!
//! An attempt is the POST and the reading of the answer, bounded as a whole by the webhook's
//! `timeout`. A 2xx answer is success. A connect error (a TLS handshake or certificate error
//! among them), a timeout, a 5xx, 408 (Request Timeout) or 429 (Too Many Requests) is retried;
//! other answers (redirects, client errors) fail at once, as asking again would get the same
//! answer. Redirects are not followed: they would turn the POST into a GET, and the webhook's
//! URL is what the operator wrote.
//!
//! The wait before a retry is [`retry_delay`] plus a random 0 to 25 % of it (so that several
//! ringlb instances alerting about one outage do not retry in step), except after a 429 or 503
//! with a `Retry-After` header (seconds, or an HTTP date): then that wait, at most
//! [`MAX_RETRY_AFTER`], plus a random 0 to 10 %.
//!
//! So one event holds its webhook for at most `(retries + 1) × timeout` plus the waits, e.g.
//! 4 × 5 s + about 4 s with the defaults.
//!
//! TLS: rustls with the `ring` crypto provider, verifying servers against the platform's
//! certificate store (rustls-platform-verifier: on Linux, the system's CA bundle) plus the
//! webhook's extra CA file, if any. The custom headers are marked sensitive, and neither they
//! nor the URL are logged.

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER};
use tokio::sync::mpsc;

use crate::config::defaults::MAX_WEBHOOK_BACKOFF;
use crate::config::{CaFile, Webhook};

use super::body::{Body, render};
use super::{AlertEvent, HookCounters};

/// The longest `Retry-After` honoured: a receiver asking for more gets its retry after this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Bytes of a webhook's answer read (and ignored) so the connection can be reused; a longer
/// answer is cut off and its connection closed.
const MAX_ANSWER: usize = 64 * 1024;

/// An HTTP client for webhooks: `ca`'s certificates trusted besides the platform's. Every
/// webhook without a CA file shares one.
pub(super) fn client(ca: Option<&CaFile>) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = crate::tls::client_builder()
        .user_agent(concat!("ringlb/", env!("CARGO_PKG_VERSION")))
        // The URL is where alerts go, not wherever the environment's HTTP_PROXY points.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none());
    if let Some(ca) = ca {
        builder = builder.tls_certs_merge(reqwest::Certificate::from_pem_bundle(&ca.pem)?);
    }
    builder.build()
}

/// `wait` plus a random part of up to `wait / divisor`.
fn jittered(wait: Duration, divisor: u32) -> Duration {
    let spread = wait / divisor;
    wait + spread.mul_f64(fastrand::f64())
}

/// The wait a `Retry-After` value asks for, from `now`: whole seconds or an HTTP date (a date
/// in the past: no wait). `None` when it is neither.
fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait before retry `n` (0 for the first): `first` doubled `n` times, at most `cap`.
pub fn retry_delay(first: Duration, cap: Duration, n: u32) -> Duration {
    1u32.checked_shl(n)
        .and_then(|factor| first.checked_mul(factor))
        .map_or(cap, |d| d.min(cap))
}

/// Why an attempt failed.
#[derive(Debug, PartialEq, Eq)]
enum Failure {
    /// The answer had this non-2xx status (and, for 429 and 503, the wait its `Retry-After`
    /// asked for).
    Status(StatusCode, Option<Duration>),
    /// No answer within the timeout.
    Timeout(Duration),
    /// Connecting, sending or reading failed (the error and its causes).
    Request(String),
}

impl Failure {
    /// Whether another attempt may succeed.
    fn retryable(&self) -> bool {
        match self {
            Failure::Status(s, _) => {
                s.is_server_error()
                    || *s == StatusCode::REQUEST_TIMEOUT
                    || *s == StatusCode::TOO_MANY_REQUESTS
            }
            Failure::Timeout(_) | Failure::Request(_) => true,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s, None) => write!(f, "answered {s}"),
            Failure::Status(s, Some(after)) => {
                write!(f, "answered {s}, asking to retry after {after:?}")
            }
            Failure::Timeout(d) => write!(f, "no answer within {d:?}"),
            Failure::Request(e) => f.write_str(e),
        }
    }
}

/// A reqwest error and its causes, without the URL (it may hold a secret).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// One POST of `body` and the reading of its answer.
async fn attempt(client: &reqwest::Client, webhook: &Webhook, body: &Body) -> Result<(), Failure> {
    let exchange = async {
        let mut request = client.post(webhook.url.clone());
        if !webhook.headers.iter().any(|(n, _)| *n == CONTENT_TYPE) {
            request = request.header(CONTENT_TYPE, body.content_type.clone());
        }
        for (name, value) in &webhook.headers {
            request = request.header(name.clone(), value.clone());
        }
        let mut answer = request
            .body(body.bytes.clone())
            .send()
            .await
            .map_err(|e| Failure::Request(describe(e)))?;
        let status = answer.status();
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => answer
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now())),
            _ => None,
        };
        // Read the (ignored) body so the connection goes back to the pool.
        let mut read = 0;
        while read <= MAX_ANSWER {
            match answer.chunk().await {
                Ok(Some(chunk)) => read += chunk.len(),
                Ok(None) | Err(_) => break,
            }
        }
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Status(status, retry_after))
        }
    };
    tokio::time::timeout(webhook.timeout, exchange)
        .await
        .unwrap_or(Err(Failure::Timeout(webhook.timeout)))
}

/// Delivers `event` with retries; counts and logs the outcome.
async fn deliver(
    client: &reqwest::Client,
    webhook: &Webhook,
    event: &AlertEvent,
    instance: &str,
    counters: &HookCounters,
) {
    let body = render(&webhook.format, event, instance);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let failure = match attempt(client, webhook, &body).await {
            Ok(()) => {
                counters.delivered.inc();
                tracing::debug!(webhook = %webhook.name, event = %event.event,
                    service = %event.service, attempts, "alert delivered");
                return;
            }
            Err(failure) => failure,
        };
        let retry = attempts - 1;
        if retry >= webhook.retries || !failure.retryable() {
            let failed = counters.failed.inc();
            tracing::warn!(webhook = %webhook.name, event = %event.event,
                service = %event.service, attempts, reason = %failure, failed,
                "alert delivery failed");
            return;
        }
        let wait = match &failure {
            Failure::Status(_, Some(after)) => jittered((*after).min(MAX_RETRY_AFTER), 10),
            _ => jittered(retry_delay(webhook.backoff, MAX_WEBHOOK_BACKOFF, retry), 4),
        };
        tracing::debug!(webhook = %webhook.name, event = %event.event, attempts,
            reason = %failure, retry_in = ?wait, "alert delivery attempt failed");
        counters.retries.inc();
        tokio::time::sleep(wait).await;
    }
}

/// A webhook's task: delivers its queue in order until the queue is closed (a stop) or the
/// task is cancelled (the webhook was removed or changed).
pub(super) async fn run(
    client: reqwest::Client,
    webhook: Arc<Webhook>,
    instance: Arc<str>,
    mut queue: mpsc::Receiver<Arc<AlertEvent>>,
    counters: Arc<HookCounters>,
) {
    while let Some(event) = queue.recv().await {
        deliver(&client, &webhook, &event, &instance, &counters).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn retry_waits_double_from_the_first_up_to_the_cap() {
        let waits: Vec<Duration> = (0..8)
            .map(|n| retry_delay(500 * MS, 30_000 * MS, n))
            .collect();
        assert_eq!(
            waits,
            [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000].map(|ms| ms * MS)
        );
    }

    #[test]
    fn retry_waits_never_overflow() {
        let cap = Duration::from_secs(30);
        assert_eq!(retry_delay(Duration::from_secs(20), cap, 31), cap);
        assert_eq!(retry_delay(Duration::from_secs(20), cap, 32), cap);
        assert_eq!(retry_delay(Duration::from_secs(20), cap, u32::MAX), cap);
        assert_eq!(retry_delay(Duration::MAX, cap, 1), cap);
        assert_eq!(retry_delay(MS, cap, 0), MS);
    }

    #[test]
    fn server_errors_and_throttling_are_retried_and_other_answers_are_not() {
        use reqwest::StatusCode as S;
        for retried in [
            S::INTERNAL_SERVER_ERROR,
            S::BAD_GATEWAY,
            S::SERVICE_UNAVAILABLE,
            S::REQUEST_TIMEOUT,
            S::TOO_MANY_REQUESTS,
        ] {
            assert!(Failure::Status(retried, None).retryable(), "{retried}");
        }
        for final_answer in [
            S::BAD_REQUEST,
            S::UNAUTHORIZED,
            S::NOT_FOUND,
            S::MOVED_PERMANENTLY,
            S::TEMPORARY_REDIRECT,
        ] {
            assert!(
                !Failure::Status(final_answer, None).retryable(),
                "{final_answer}"
            );
        }
        assert!(Failure::Timeout(MS).retryable());
        assert!(Failure::Request("refused".to_owned()).retryable());
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:40 GMT", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: retry at once"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
    }

    #[test]
    fn jitter_only_lengthens_a_wait_and_by_at_most_its_share() {
        let wait = Duration::from_millis(800);
        for _ in 0..200 {
            let got = jittered(wait, 4);
            assert!(got >= wait && got <= wait + wait / 4, "{got:?}");
        }
        assert_eq!(jittered(Duration::ZERO, 4), Duration::ZERO);
    }
}
