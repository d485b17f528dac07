//! Delivering one webhook's queue: the HTTP POST, what counts as success, and the retry
//! schedule.
//!
//! An attempt is the POST and the reading of the answer, bounded as a whole by the webhook's
//! `timeout`. A 2xx answer is success. A connect error, a timeout, a 5xx, 408 (Request Timeout)
//! or 429 (Too Many Requests) is retried after [`retry_delay`]; other answers (redirects, client
//! errors) fail at once, as asking again would get the same answer. Redirects are not followed:
//! they would turn the POST into a GET, and the webhook's URL is what the operator wrote.
//!
//! So one event holds its webhook for at most `(retries + 1) × timeout` plus the waits, e.g.
//! 4 × 5 s + 3.5 s with the defaults.

use std::error::Error as _;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::Webhook;
use crate::config::defaults::MAX_WEBHOOK_BACKOFF;

use super::{AlertEvent, HookCounters};

/// Bytes of a webhook's answer read (and ignored) so the connection can be reused; a longer
/// answer is cut off and its connection closed.
const MAX_ANSWER: usize = 64 * 1024;

/// The HTTP client every webhook shares.
pub(super) fn client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("ringlb/", env!("CARGO_PKG_VERSION")))
        // The URL is where alerts go, not wherever the environment's HTTP_PROXY points.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
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
    /// The answer had this non-2xx status.
    Status(reqwest::StatusCode),
    /// No answer within the timeout.
    Timeout(Duration),
    /// Connecting, sending or reading failed (the error and its causes).
    Request(String),
}

impl Failure {
    /// Whether another attempt may succeed.
    fn retryable(&self) -> bool {
        match self {
            Failure::Status(s) => {
                s.is_server_error()
                    || *s == reqwest::StatusCode::REQUEST_TIMEOUT
                    || *s == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            Failure::Timeout(_) | Failure::Request(_) => true,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(s) => write!(f, "answered {s}"),
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

/// One POST of `event` and the reading of its answer.
async fn attempt(
    client: &reqwest::Client,
    webhook: &Webhook,
    event: &AlertEvent,
) -> Result<(), Failure> {
    let exchange = async {
        let mut answer = client
            .post(webhook.url.clone())
            .json(event)
            .send()
            .await
            .map_err(|e| Failure::Request(describe(e)))?;
        let status = answer.status();
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
            Err(Failure::Status(status))
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
    counters: &HookCounters,
) {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let failure = match attempt(client, webhook, event).await {
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
        let wait = retry_delay(webhook.backoff, MAX_WEBHOOK_BACKOFF, retry);
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
    mut queue: mpsc::Receiver<Arc<AlertEvent>>,
    counters: Arc<HookCounters>,
) {
    while let Some(event) = queue.recv().await {
        deliver(&client, &webhook, &event, &counters).await;
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
            assert!(Failure::Status(retried).retryable(), "{retried}");
        }
        for final_answer in [
            S::BAD_REQUEST,
            S::UNAUTHORIZED,
            S::NOT_FOUND,
            S::MOVED_PERMANENTLY,
            S::TEMPORARY_REDIRECT,
        ] {
            assert!(!Failure::Status(final_answer).retryable(), "{final_answer}");
        }
        assert!(Failure::Timeout(MS).retryable());
        assert!(Failure::Request("refused".to_owned()).retryable());
    }
}
