//! Talking to ringlb's admin API from tests: plain HTTP requests (reqwest, the client ringlb
//! itself uses) and `/metrics` parsed with a Prometheus text parser (prometheus-parse), as a
//! Prometheus server would read it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

/// An HTTP answer: status code and body.
#[derive(Debug)]
pub struct Answer {
    pub code: u16,
    pub body: String,
}

impl Answer {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `method path` to the admin API at `admin`, with `body` and a bearer `token`.
///
/// Blocks on a current-thread runtime of its own, so it is called from synchronous test code
/// (including `wait_for` conditions), not from inside another runtime.
pub fn http(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
    token: Option<&str>,
) -> Answer {
    let method = match method {
        "GET" | "POST" | "PUT" => reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        other => panic!("method {other}"),
    };
    let url = format!("http://{admin}{path}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = ringlb::tls::client_builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let mut request = client.request(method.clone(), &url);
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        if method != reqwest::Method::GET {
            request = request.body(body.unwrap_or("").to_owned());
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let code = response.status().as_u16();
        let body = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: reading the answer: {e}"));
        Answer { code, body }
    })
}

/// `GET path`, expecting 200.
pub fn get(admin: SocketAddr, path: &str) -> Answer {
    let a = http(admin, "GET", path, None, None);
    assert_eq!(a.code, 200, "GET {path}: {}", a.body);
    a
}

/// `POST path` without a body or token.
pub fn post(admin: SocketAddr, path: &str) -> Answer {
    http(admin, "POST", path, None, None)
}

/// `/metrics`, parsed.
pub struct Metrics(pub prometheus_parse::Scrape);

impl Metrics {
    pub fn scrape(admin: SocketAddr) -> Metrics {
        let a = get(admin, "/metrics");
        let lines = a.body.lines().map(|l| Ok(l.to_owned()));
        Metrics(prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text"))
    }

    /// Sum of the samples of `metric` whose labels include every pair of `labels`.
    pub fn sum(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        self.0
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match &s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => *v,
                other => panic!("{metric} is not a number: {other:?}"),
            })
            .sum()
    }

    /// Whether any sample of `metric` exists.
    pub fn has(&self, metric: &str) -> bool {
        self.0.samples.iter().any(|s| s.metric == metric)
    }
}
