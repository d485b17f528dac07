//! TLS for ringlb's HTTP clients (alert webhooks, the Consul watch, `ringlb status`): rustls
//! with the `ring` crypto provider.
//!
//! Owns: installing the process's rustls crypto provider before any client is built, through
//! [`client_builder`], the one way ringlb makes a `reqwest` client. Does not own: what a client
//! trusts beyond the platform's certificate store (the alert webhooks add their CA files) nor
//! any server-side TLS (ringlb forwards TCP as bytes and terminates no TLS).
//!
//! reqwest is built without a provider of its own (its default, aws-lc-rs, needs cmake and a
//! long C build); rustls needs one installed process-wide before the first client is built.

/// Installs `ring` as the process's rustls crypto provider; later calls (and a provider
/// already installed) leave it as it is.
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A `reqwest` client builder, with the crypto provider installed: every client ringlb builds
/// starts here.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_provider();
    reqwest::Client::builder()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_client_with_https_support_can_be_built() {
        let client = super::client_builder().build();
        assert!(client.is_ok(), "{client:?}");
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
