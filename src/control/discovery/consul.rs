//! The Consul source: a blocking query on the local agent's health API for one service.
//!
//! Owns: the request (`GET /v1/health/service/<name>?index=I&wait=W`, with `passing`, one `tag`
//! per tag and `dc`; the ACL token in `X-Consul-Token`, never logged), the index rules, and
//! reading the answer into [`Discovered`] instances. Does not own: retrying after an error
//! (the runner's backoff) or applying the answer.
//!
//! Index rules (Consul's "blocking queries" documentation): the next query sends the
//! `X-Consul-Index` of the last answer; an index that went backwards, or is 0, is reset to 0 so
//! the next query returns at once with the full state (the watch restarts). The wait is jittered
//! by up to `wait / 16`, as Consul itself does, so many ringlb processes do not return in step;
//! the request's timeout is `wait + wait / 16` and a few seconds more.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;

use super::{Answer, Discovered, DiscoveryError, Source, Version};
use crate::config::ConsulDiscovery;
use crate::config::defaults::MAX_WEIGHT;

/// How long past the wait (and its jitter) a blocking query may take before it is a timeout.
const GRACE: Duration = Duration::from_secs(3);

/// A watch on one Consul service.
#[derive(Debug)]
pub struct ConsulWatch {
    settings: ConsulDiscovery,
    client: reqwest::Client,
    /// The index sent with the next query; 0 asks for the current state at once.
    index: u64,
    max_backends: usize,
    rng: fastrand::Rng,
}

impl ConsulWatch {
    /// A watch of `settings` that refuses answers of more than `max_backends` instances.
    pub fn new(
        settings: &ConsulDiscovery,
        max_backends: usize,
    ) -> Result<ConsulWatch, DiscoveryError> {
        let client = crate::tls::client_builder()
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| DiscoveryError::Unreachable(e.without_url().to_string()))?;
        Ok(ConsulWatch {
            settings: settings.clone(),
            client,
            index: 0,
            max_backends,
            rng: fastrand::Rng::new(),
        })
    }

    /// The index the next query sends.
    pub fn index(&self) -> u64 {
        self.index
    }

    fn url(&self, wait: Duration) -> url::Url {
        let s = &self.settings;
        let mut url = s.address.clone();
        url.path_segments_mut()
            .expect("an http URL has a path")
            .clear()
            .extend(["v1", "health", "service", &s.service]);
        {
            let mut q = url.query_pairs_mut();
            if self.index > 0 {
                q.append_pair("index", &self.index.to_string());
                q.append_pair("wait", &format!("{}ms", wait.as_millis()));
            }
            if s.passing_only {
                q.append_pair("passing", "true");
            }
            for tag in &s.tags {
                q.append_pair("tag", tag);
            }
            if let Some(dc) = &s.datacenter {
                q.append_pair("dc", dc);
            }
        }
        url
    }

    async fn query(&mut self) -> Result<Answer, DiscoveryError> {
        let wait = self.settings.wait;
        let sent = jittered(wait, &mut self.rng);
        let url = self.url(sent);
        let timeout = wait + wait / 16 + GRACE;
        let mut request = self.client.get(url).timeout(timeout);
        if let Some(token) = &self.settings.token {
            request = request.header("X-Consul-Token", token.expose());
        }
        let response = request.send().await.map_err(|e| fault(&e, timeout))?;
        let status = response.status().as_u16();
        if status == 403 {
            let body = response.text().await.unwrap_or_default();
            return Err(DiscoveryError::Unauthorized(short(&body)));
        }
        if status != 200 {
            return Err(DiscoveryError::Status(status));
        }
        let header = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(|e| fault(&e, timeout))?;
        let index = header
            .as_deref()
            .ok_or_else(|| DiscoveryError::Malformed("no X-Consul-Index header".to_owned()))?
            .parse::<u64>()
            .map_err(|_| DiscoveryError::Malformed("X-Consul-Index is not a number".to_owned()))?;
        let instances = parse(&body, self.settings.backup_tag.as_deref())?;
        self.index = next_index(self.index, index);
        if instances.len() > self.max_backends {
            return Err(DiscoveryError::TooMany {
                got: instances.len(),
                max: self.max_backends,
            });
        }
        Ok(Answer {
            instances,
            version: Version::ConsulIndex(index),
        })
    }
}

impl Source for ConsulWatch {
    fn next(&mut self) -> impl Future<Output = Result<Answer, DiscoveryError>> + Send {
        self.query()
    }
}

/// The index the next query sends after an answer with `got`, the previous one being `had`:
/// `got`, unless it went backwards or is 0: then 0, so the next query restarts the watch.
pub fn next_index(had: u64, got: u64) -> u64 {
    if got == 0 || got < had { 0 } else { got }
}

/// A wait shortened by a random part of up to `wait / 16`, as Consul adds that much itself.
pub fn jittered(wait: Duration, rng: &mut fastrand::Rng) -> Duration {
    let spread = (wait / 16).as_millis() as u64;
    wait.saturating_sub(Duration::from_millis(rng.u64(0..=spread)))
}

fn fault(e: &reqwest::Error, timeout: Duration) -> DiscoveryError {
    if e.is_timeout() {
        DiscoveryError::Timeout(timeout)
    } else if e.is_decode() || e.is_body() {
        DiscoveryError::Malformed(e.to_string())
    } else {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text = format!("{text}: {s}");
            source = s.source();
        }
        DiscoveryError::Unreachable(text)
    }
}

fn short(body: &str) -> String {
    let body = body.trim();
    if body.is_empty() {
        return "HTTP 403".to_owned();
    }
    body.chars().take(200).collect()
}

/// One entry of `/v1/health/service/<name>`: only the fields ringlb reads. Strings borrow
/// from the answer where they have no escapes, and `Meta` keeps only `weight`, so an answer
/// of thousands of instances is read with few allocations.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry<'a> {
    #[serde(borrow)]
    node: Node<'a>,
    #[serde(borrow)]
    service: ServiceEntry<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Node<'a> {
    #[serde(default, borrow)]
    address: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry<'a> {
    #[serde(default, borrow)]
    address: Cow<'a, str>,
    port: u16,
    #[serde(default, borrow)]
    tags: Option<Vec<Cow<'a, str>>>,
    #[serde(default, borrow)]
    meta: Option<Meta<'a>>,
    #[serde(default)]
    weights: Option<Weights>,
}

/// `Service.Meta`: only its `weight` key.
#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(default, borrow)]
    weight: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    passing: Option<u64>,
}

/// Reads a health API answer into instances, sorted by address; one per address (the first
/// listed wins). An instance with no usable address or port 0 makes the answer malformed.
pub fn parse(body: &[u8], backup_tag: Option<&str>) -> Result<Vec<Discovered>, DiscoveryError> {
    let entries: Vec<Entry> =
        serde_json::from_slice(body).map_err(|e| DiscoveryError::Malformed(e.to_string()))?;
    let mut out: Vec<Discovered> = Vec::with_capacity(entries.len());
    // A set, not a scan of `out`: answers run to tens of thousands of instances.
    let mut seen: HashSet<SocketAddr> = HashSet::with_capacity(entries.len());
    for e in entries {
        let host = if e.service.address.is_empty() {
            &e.node.address
        } else {
            &e.service.address
        };
        let ip: IpAddr = host.parse().map_err(|_| {
            DiscoveryError::Malformed(format!("instance address {host:?} is not an IP address"))
        })?;
        if e.service.port == 0 {
            return Err(DiscoveryError::Malformed(format!(
                "instance at {ip} has port 0"
            )));
        }
        let meta_weight = e
            .service
            .meta
            .as_ref()
            .and_then(|m| m.weight.as_deref())
            .and_then(|w| w.parse::<u64>().ok());
        let weight = e
            .service
            .weights
            .and_then(|w| w.passing)
            .or(meta_weight)
            .unwrap_or(1)
            .clamp(1, u64::from(MAX_WEIGHT)) as u32;
        let backup = backup_tag.is_some_and(|t| {
            e.service
                .tags
                .as_ref()
                .is_some_and(|tags| tags.iter().any(|x| x == t))
        });
        let address = SocketAddr::new(ip, e.service.port);
        if seen.insert(address) {
            out.push(Discovered {
                address,
                weight,
                backup,
            });
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_take_the_service_address_else_the_node_address() {
        let body = br#"[
          {"Node":{"Node":"n1","Address":"10.0.0.1"},
           "Service":{"ID":"a","Service":"db","Address":"","Port":5432,"Tags":null,
                      "Weights":{"Passing":3,"Warning":1}},
           "Checks":[]},
          {"Node":{"Node":"n2","Address":"10.0.0.2"},
           "Service":{"ID":"b","Service":"db","Address":"10.9.0.2","Port":5433,
                      "Tags":["backup"],"Meta":{"weight":"7"}},
           "Checks":[]}
        ]"#;
        let got = parse(body, Some("backup")).unwrap();
        assert_eq!(
            got,
            vec![
                Discovered {
                    address: "10.0.0.1:5432".parse().unwrap(),
                    weight: 3,
                    backup: false
                },
                Discovered {
                    address: "10.9.0.2:5433".parse().unwrap(),
                    weight: 7,
                    backup: true
                },
            ]
        );
    }

    #[test]
    fn weights_are_clamped_and_duplicates_dropped() {
        let body = br#"[
          {"Node":{"Address":"10.0.0.1"},"Service":{"Port":1,"Weights":{"Passing":0}}},
          {"Node":{"Address":"10.0.0.2"},"Service":{"Port":1,"Weights":{"Passing":99999}}},
          {"Node":{"Address":"10.0.0.2"},"Service":{"Port":1}}
        ]"#;
        let got = parse(body, None).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].weight, got[1].weight), (1, MAX_WEIGHT));
    }

    #[test]
    fn garbage_and_bad_instances_are_malformed() {
        for body in [
            &b"not json"[..],
            br#"{"a":1}"#,
            br#"[{"Node":{"Address":"x.y"},"Service":{"Port":1}}]"#,
            br#"[{"Node":{"Address":"10.0.0.1"},"Service":{"Port":0}}]"#,
            br#"[{"Node":{"Address":"10.0.0.1"},"Service":{}}]"#,
        ] {
            assert!(
                matches!(parse(body, None), Err(DiscoveryError::Malformed(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(parse(b"[]", None).unwrap(), vec![]);
    }

    #[test]
    fn an_index_that_goes_back_or_is_zero_restarts_the_watch() {
        assert_eq!(next_index(0, 5), 5);
        assert_eq!(next_index(5, 5), 5);
        assert_eq!(next_index(5, 9), 9);
        assert_eq!(next_index(9, 4), 0);
        assert_eq!(next_index(9, 0), 0);
    }

    #[test]
    fn the_wait_is_jittered_down_by_at_most_a_sixteenth() {
        let mut rng = fastrand::Rng::with_seed(7);
        let wait = Duration::from_secs(160);
        let all: Vec<Duration> = (0..200).map(|_| jittered(wait, &mut rng)).collect();
        assert!(all.iter().all(|&d| d <= wait && d >= wait - wait / 16));
        assert!(all.iter().any(|&d| d != wait));
    }
}
