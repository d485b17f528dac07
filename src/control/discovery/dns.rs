//! The DNS source: A/AAAA or SRV records of a name, resolved again when their TTL runs out.
//!
//! Not built yet in this tree: [`DnsWatch::new`] refuses, so a `kind = "dns"` service runs with
//! its static backends only and `/status` says why.

use super::{Answer, DiscoveryError, Source};
use crate::config::DnsDiscovery;

/// A watch on one DNS name.
#[derive(Debug)]
pub struct DnsWatch;

impl DnsWatch {
    /// A watch of `settings` that refuses answers of more than `max_backends` addresses.
    pub fn new(settings: &DnsDiscovery, max_backends: usize) -> Result<DnsWatch, DiscoveryError> {
        let _ = (settings, max_backends);
        Err(DiscoveryError::Resolver(
            "dns discovery is not built yet".to_owned(),
        ))
    }
}

impl Source for DnsWatch {
    async fn next(&mut self) -> Result<Answer, DiscoveryError> {
        Err(DiscoveryError::Resolver(
            "dns discovery is not built yet".to_owned(),
        ))
    }
}
