//! The HTTP probe (`kind = "http"`): one request, its status and optionally its body judged.
//!
//! Owns: sending the request with ringlb's HTTP client (reqwest), reading at most
//! [`MAX_BODY`] bytes of the answer, and telling apart why a probe failed (refused, wrong
//! status, wrong body, an answer that is not HTTP). Does not own: the timeout (the caller,
//! `probe::run_from`, bounds the whole exchange and drops it when it runs out) or the rise/fall
//! decision.
//!
//! Connections: the request asks for `Connection: close` and the client keeps no idle
//! connection, so every probe opens and closes its own connection. The closing side is the
//! server (it answers `close`), so the TIME_WAIT sockets of frequent probes stay on the backend
//! host, not among ringlb's local ports. A kept-alive connection would save one handshake per
//! probe, but would also hide a restarted or unreachable check endpoint behind a connection
//! that still answers, and Patroni's REST server serves each connection on its own thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::error::Error as _;
use std::io;
use std::net::{IpAddr, SocketAddr};

use crate::config::{HttpMethod, HttpProbe};
use crate::control::local::LocalShortage;

use super::probe::ProbeFailure;

/// Bytes of the body read at most: enough for any status page (Patroni's JSON is ~1 KiB).
pub const MAX_BODY: usize = 64 * 1024;

thread_local! {
    /// One client per local source address (`None`: the kernel picks), built on first use. The
    /// probes all run on the health thread.
    static CLIENTS: RefCell<HashMap<Option<IpAddr>, reqwest::Client>> = RefCell::default();
}

fn client(source: Option<IpAddr>) -> Result<reqwest::Client, ProbeFailure> {
    CLIENTS.with(|clients| {
        if let Some(c) = clients.borrow().get(&source) {
            return Ok(c.clone());
        }
        let c = crate::tls::client_builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .local_address(source)
            .build()
            .map_err(|e| ProbeFailure::Connect(format!("cannot build the HTTP client: {e}")))?;
        clients.borrow_mut().insert(source, c.clone());
        Ok(c)
    })
}

/// Sends `http`'s request to `target` from the first of `sources` that has a local port left
/// (empty: the kernel picks) and judges the answer. Unbounded in time: the caller's timeout
/// bounds it.
pub(super) async fn run(
    http: &HttpProbe,
    target: SocketAddr,
    sources: &[IpAddr],
) -> Result<(), ProbeFailure> {
    if sources.is_empty() {
        return once(http, target, None).await;
    }
    let mut last = ProbeFailure::Local(LocalShortage::Ports);
    for &source in sources {
        match once(http, target, Some(source)).await {
            Err(ProbeFailure::Local(LocalShortage::Ports)) => {
                last = ProbeFailure::Local(LocalShortage::Ports);
            }
            done => return done,
        }
    }
    Err(last)
}

async fn once(
    http: &HttpProbe,
    target: SocketAddr,
    source: Option<IpAddr>,
) -> Result<(), ProbeFailure> {
    let client = client(source)?;
    let method = match http.method {
        HttpMethod::Get => reqwest::Method::GET,
        HttpMethod::Head => reqwest::Method::HEAD,
        HttpMethod::Options => reqwest::Method::OPTIONS,
    };
    let url = format!("http://{target}{}", http.path);
    let mut request = client
        .request(method, &url)
        .header(reqwest::header::CONNECTION, "close")
        .header(reqwest::header::USER_AGENT, "ringlb-health");
    if let Some(host) = &http.host {
        request = request.header(reqwest::header::HOST, host);
    }
    let mut response = request.send().await.map_err(failure)?;
    let status = response.status().as_u16();
    let mut body = Vec::new();
    if http.expect_body.is_some() {
        while body.len() < MAX_BODY {
            match response.chunk().await.map_err(failure)? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        body.truncate(MAX_BODY);
    }
    judge(http, status, &body)
}

/// Whether an answer with `status` and (the start of) `body` passes `http`.
pub fn judge(http: &HttpProbe, status: u16, body: &[u8]) -> Result<(), ProbeFailure> {
    let status_ok = if http.expect_status.is_empty() {
        (200..300).contains(&status)
    } else {
        http.expect_status.contains(&status)
    };
    if !status_ok {
        let wanted = if http.expect_status.is_empty() {
            "2xx".to_owned()
        } else {
            format!("{:?}", http.expect_status)
        };
        return Err(ProbeFailure::HttpStatus(format!(
            "{} {} answered {status}, expected {wanted}",
            http.method.name(),
            http.path
        )));
    }
    if let Some(wanted) = &http.expect_body
        && !contains(body, wanted.as_bytes())
    {
        return Err(ProbeFailure::HttpBody(format!(
            "{} {} answered {status} without {wanted:?} in the body",
            http.method.name(),
            http.path
        )));
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The failure a client error stands for: a local shortage or a refused connect from the I/O
/// error under it, else a connect failure or an answer that is not HTTP.
fn failure(e: reqwest::Error) -> ProbeFailure {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if let Some(what) = LocalShortage::of(io) {
                return ProbeFailure::Local(what);
            }
            if io.kind() == io::ErrorKind::ConnectionRefused {
                return ProbeFailure::Refused;
            }
        }
        cause = c.source();
    }
    if e.is_connect() {
        return ProbeFailure::Connect(chain(&e));
    }
    ProbeFailure::BadReply(format!("not an HTTP answer: {}", chain(&e)))
}

/// An error and its causes on one line.
fn chain(e: &reqwest::Error) -> String {
    let mut text = e.without_url_ref();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// `Display` of a client error without its URL (the log line names the backend already).
trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let text = self.to_string();
        match self.url() {
            Some(url) => text.replace(&format!(" ({url})"), ""),
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::Duration;

    use super::*;
    use crate::control::health::test_util::block_on;

    fn probe(method: HttpMethod, status: &[u16], body: Option<&str>) -> HttpProbe {
        HttpProbe {
            method,
            path: "/primary".to_owned(),
            expect_status: status.to_vec(),
            expect_body: body.map(str::to_owned),
            host: None,
        }
    }

    #[test]
    fn without_expected_statuses_any_2xx_passes() {
        let p = probe(HttpMethod::Get, &[], None);
        for s in [200, 204, 299] {
            assert_eq!(judge(&p, s, b""), Ok(()), "{s}");
        }
        for s in [199, 301, 404, 503] {
            assert!(
                matches!(judge(&p, s, b""), Err(ProbeFailure::HttpStatus(_))),
                "{s}"
            );
        }
    }

    #[test]
    fn expected_statuses_are_the_only_ones_that_pass() {
        let p = probe(HttpMethod::Options, &[200], None);
        assert_eq!(judge(&p, 200, b""), Ok(()));
        let e = judge(&p, 503, b"").unwrap_err();
        assert_eq!(
            e.to_string(),
            "status: OPTIONS /primary answered 503, expected [200]"
        );
        let p = probe(HttpMethod::Get, &[503], None);
        assert_eq!(judge(&p, 503, b""), Ok(()));
        assert!(judge(&p, 200, b"").is_err());
    }

    #[test]
    fn the_body_must_contain_the_expected_text() {
        let p = probe(HttpMethod::Get, &[200], Some("running"));
        assert_eq!(judge(&p, 200, br#"{"state": "running"}"#), Ok(()));
        let e = judge(&p, 200, br#"{"state": "starting"}"#).unwrap_err();
        assert!(matches!(e, ProbeFailure::HttpBody(_)), "{e:?}");
        assert!(e.to_string().starts_with("body: "), "{e}");
        // The status is judged first.
        assert!(matches!(
            judge(&p, 503, b"running"),
            Err(ProbeFailure::HttpStatus(_))
        ));
    }

    /// A server that answers one connection with `answer` after reading the request head, and
    /// returns that head.
    fn serve_once(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(answer);
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, server)
    }

    #[test]
    fn a_probe_sends_the_method_path_and_host_and_reads_the_status() {
        let (addr, server) = serve_once(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        );
        let mut p = probe(HttpMethod::Options, &[200], None);
        p.host = Some("db1.internal".to_owned());
        let result = block_on(run(&p, addr, &[]));
        assert!(
            matches!(result, Err(ProbeFailure::HttpStatus(_))),
            "{result:?}"
        );
        let head = server.join().unwrap().to_ascii_lowercase();
        assert!(head.starts_with("options /primary http/1.1\r\n"), "{head}");
        assert!(head.contains("\r\nhost: db1.internal\r\n"), "{head}");
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    }

    #[test]
    fn a_probe_passes_on_a_matching_answer() {
        let (addr, server) = serve_once(
            b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\nConnection: close\r\n\r\n{\"role\": \"primary\"}",
        );
        let p = probe(HttpMethod::Get, &[200], Some("primary"));
        assert_eq!(block_on(run(&p, addr, &[])), Ok(()));
        server.join().unwrap();
    }

    #[test]
    fn refused_and_not_http_are_their_own_reasons() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let p = probe(HttpMethod::Get, &[], None);
        assert_eq!(block_on(run(&p, addr, &[])), Err(ProbeFailure::Refused));

        let (addr, server) = serve_once(b"-ERR unknown command\r\n");
        let result = block_on(run(&p, addr, &[]));
        assert!(
            matches!(result, Err(ProbeFailure::BadReply(_))),
            "{result:?}"
        );
        server.join().unwrap();
    }
}
