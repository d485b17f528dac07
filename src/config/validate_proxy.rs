//! Stage two for a service's PROXY protocol keys read from clients: `accept_proxy`, `trusted`
//! and `proxy_timeout` (TCP only). `trusted` must list at least one prefix when
//! `accept_proxy = true` (else no client could connect), and neither it nor `proxy_timeout` may
//! be written without it. `send_proxy` (of a service or a backend) needs no check beyond
//! "TCP only" and is read where the service and the backends are.

use toml::Spanned;

use super::AcceptProxy;
use super::defaults::DEFAULT_PROXY_TIMEOUT;
use super::error::{ConfigError, Problem};
use super::file::DurationText;
use super::validate::ServiceCheck;
use super::validate_access::parse_prefix;

impl ServiceCheck<'_, '_> {
    /// The service's `accept_proxy` settings; `None` unless `accept_proxy = true`.
    pub(super) fn accept_proxy(
        &self,
        accept: Option<Spanned<bool>>,
        trusted: Option<Spanned<Vec<Spanned<String>>>>,
        timeout: &Option<Spanned<DurationText>>,
    ) -> Result<Option<AcceptProxy>, ConfigError> {
        let doc = self.doc;
        self.only_for(super::Protocol::Tcp, &accept, || self.key("accept_proxy"))?;
        let on = accept.as_ref().is_some_and(|a| *a.get_ref());
        if !on {
            let stray = trusted
                .as_ref()
                .map(|t| (t.span().start, "trusted"))
                .or(timeout.as_ref().map(|t| (t.span().start, "proxy_timeout")));
            if let Some((offset, key)) = stray {
                return Err(ConfigError::new(
                    doc.at(offset, self.key(key)),
                    Problem::NeedsAcceptProxy,
                ));
            }
            return Ok(None);
        }
        let offset = accept.as_ref().map_or(self.header, |a| a.span().start);
        let Some(list) = trusted.filter(|t| !t.get_ref().is_empty()) else {
            return Err(ConfigError::new(
                doc.at(offset, self.key("trusted")),
                Problem::NoTrusted,
            ));
        };
        let mut nets = Vec::with_capacity(list.get_ref().len());
        for entry in list.into_inner() {
            let text = entry.get_ref();
            // The same prefix rules as `[service.access]`.
            let net = parse_prefix(text).map_err(|reason| {
                ConfigError::new(
                    doc.at(entry.span().start, self.key("trusted")),
                    Problem::NotPrefix {
                        value: text.clone(),
                        reason,
                    },
                )
            })?;
            nets.push(net);
        }
        let timeout = match timeout {
            Some(t) => super::validate::duration(doc, t, self.key("proxy_timeout"), false)?,
            None => DEFAULT_PROXY_TIMEOUT,
        };
        Ok(Some(AcceptProxy {
            trusted: nets,
            timeout,
        }))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    const SERVICE: &str = "[[service]]\nname = \"db\"\nlisten = \"127.0.0.1:7000\"\nKEYS\n\
                           [[service.backend]]\naddress = \"127.0.0.1:5432\"\nBACKEND\n";

    fn parse(keys: &str, backend: &str) -> Result<Config, String> {
        let text = SERVICE.replace("KEYS", keys).replace("BACKEND", backend);
        Config::parse(&text, "t.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn accept_proxy_reads_prefixes_and_timeout() {
        let config = parse(
            "accept_proxy = true\ntrusted = [\"10.0.0.0/8\", \"::1\"]\nproxy_timeout = \"500ms\"",
            "",
        )
        .unwrap();
        let accept = config.services[0].accept_proxy.as_ref().unwrap();
        assert_eq!(accept.timeout, std::time::Duration::from_millis(500));
        assert!(accept.trusts("10.9.9.9".parse().unwrap()));
        assert!(accept.trusts("::ffff:10.9.9.9".parse().unwrap()));
        assert!(accept.trusts("::1".parse().unwrap()));
        assert!(!accept.trusts("11.0.0.1".parse().unwrap()));
        let default = parse("accept_proxy = true\ntrusted = [\"127.0.0.1\"]", "").unwrap();
        assert_eq!(
            default.services[0].accept_proxy.as_ref().unwrap().timeout,
            crate::config::defaults::DEFAULT_PROXY_TIMEOUT
        );
        assert_eq!(parse("", "").unwrap().services[0].accept_proxy, None);
    }

    #[test]
    fn backend_send_proxy_overrides_the_service() {
        let config = parse("send_proxy = \"v1\"", "send_proxy = \"v2\"").unwrap();
        let s = &config.services[0];
        use crate::proxyproto::Version;
        assert_eq!(s.send_proxy, Some(Version::V1));
        assert_eq!(s.backends[0].send_proxy(s.send_proxy), Some(Version::V2));
        let config = parse("send_proxy = \"v2\"", "").unwrap();
        let s = &config.services[0];
        assert_eq!(s.backends[0].send_proxy(s.send_proxy), Some(Version::V2));
    }

    #[test]
    fn proxy_keys_refused_where_they_cannot_apply() {
        let err = parse("accept_proxy = true\ntrusted = [\"10.0.0.0/33\"]", "").unwrap_err();
        assert!(
            err.contains("service[0].trusted")
                && err.contains("\"10.0.0.0/33\" is not a CIDR prefix"),
            "{err}"
        );
        let err = parse("accept_proxy = true", "").unwrap_err();
        assert!(err.contains("needs a trusted list"), "{err}");
        let err = parse("trusted = [\"10.0.0.0/8\"]", "").unwrap_err();
        assert!(
            err.contains("applies only with accept_proxy = true"),
            "{err}"
        );
        let err = parse("protocol = \"udp\"\nsend_proxy = \"v1\"", "").unwrap_err();
        assert!(
            err.contains("service[0].send_proxy") && err.contains("protocol = \"tcp\""),
            "{err}"
        );
        let err = parse("protocol = \"udp\"", "send_proxy = \"v2\"").unwrap_err();
        assert!(err.contains("service[0].backend[0].send_proxy"), "{err}");
        let err = parse("send_proxy = \"v3\"", "").unwrap_err();
        assert!(err.contains("send_proxy"), "{err}");
    }
}
