//! The typed alert settings: the `[alert]` table and its `[[alert.webhook]]` entries.
//!
//! Only what the operator asked for; sending alerts belongs to `control::alerts`.

use std::fmt;
use std::time::Duration;

use reqwest::header::{HeaderName, HeaderValue};

pub use super::alert_template::{Template, TemplateField};
use crate::names::serde_name;

/// The `[alert]` table. Empty (no webhook) when the table is absent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlertSettings {
    /// The webhooks, in file order; their names are distinct.
    pub webhooks: Vec<Webhook>,
}

/// What an alert is about: a backend or a whole service going down or coming back up, ringlb
/// itself running short of local resources and recovering, or a service's registry failing and
/// answering again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// A backend was marked down (by its probes or by passive detection).
    BackendDown,
    /// A backend was marked up again by its probes.
    BackendUp,
    /// No backend of a service (primary or backup) is up: new connections are closed at once.
    ServiceDown,
    /// Some backend of a service that was down is up again.
    ServiceUp,
    /// Health probes could not run because ringlb is out of its own local ports, file
    /// descriptors or memory; backends keep their health meanwhile. Sent once when the shortage
    /// begins, with the service and backend whose probe met it first.
    LocalExhaustion,
    /// The probes stopped by a local shortage run again.
    LocalRecovery,
    /// A service's registry (Consul, DNS) stopped answering usefully: its last good backend
    /// set stays in place. Sent once when the failure begins.
    DiscoveryDown,
    /// A service's registry answers again.
    DiscoveryUp,
}

impl AlertKind {
    /// Every kind, in the order the config reference lists them.
    pub const ALL: [AlertKind; 8] = [
        AlertKind::BackendDown,
        AlertKind::BackendUp,
        AlertKind::ServiceDown,
        AlertKind::ServiceUp,
        AlertKind::LocalExhaustion,
        AlertKind::LocalRecovery,
        AlertKind::DiscoveryDown,
        AlertKind::DiscoveryUp,
    ];

    /// The name used in config files and in the alert's JSON `event` field (its serde name).
    pub fn name(self) -> &'static str {
        serde_name(&self)
    }

    /// This kind's bit in an [`AlertKinds`] set.
    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`AlertKind`]s (the events a webhook subscribes to). Copy, one byte.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AlertKinds(u8);

impl AlertKinds {
    /// No kind.
    pub const NONE: AlertKinds = AlertKinds(0);
    /// Every kind.
    pub const ALL: AlertKinds = AlertKinds(
        AlertKind::BackendDown.bit()
            | AlertKind::BackendUp.bit()
            | AlertKind::ServiceDown.bit()
            | AlertKind::ServiceUp.bit()
            | AlertKind::LocalExhaustion.bit()
            | AlertKind::LocalRecovery.bit()
            | AlertKind::DiscoveryDown.bit()
            | AlertKind::DiscoveryUp.bit(),
    );

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: AlertKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// The set with `kind` added.
    #[must_use]
    pub fn with(self, kind: AlertKind) -> AlertKinds {
        AlertKinds(self.0 | kind.bit())
    }

    /// Both sets together.
    #[must_use]
    pub fn union(self, other: AlertKinds) -> AlertKinds {
        AlertKinds(self.0 | other.0)
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The kinds in the set, in [`AlertKind::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = AlertKind> {
        AlertKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }

    /// The raw bits (for an atomic copy of the set).
    pub fn bits(self) -> u8 {
        self.0
    }

    /// The set of `bits` as returned by [`AlertKinds::bits`]; unknown bits are dropped.
    pub fn from_bits(bits: u8) -> AlertKinds {
        AlertKinds(bits & AlertKinds::ALL.0)
    }
}

impl FromIterator<AlertKind> for AlertKinds {
    fn from_iter<I: IntoIterator<Item = AlertKind>>(iter: I) -> AlertKinds {
        iter.into_iter().fold(AlertKinds::NONE, AlertKinds::with)
    }
}

impl fmt::Debug for AlertKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// The `format` key as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatName {
    /// [`BodyFormat::Json`].
    Json,
    /// [`BodyFormat::Slack`].
    Slack,
    /// [`BodyFormat::Dingtalk`].
    Dingtalk,
    /// [`BodyFormat::Template`].
    Template,
}

/// What a webhook's POST body looks like.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum BodyFormat {
    /// The alert as a JSON object with its fields (the default).
    #[default]
    Json,
    /// Slack's (and Mattermost's, Teams' workflow) incoming webhooks: `{"text": SUMMARY}`.
    Slack,
    /// DingTalk's robots: `{"msgtype": "text", "text": {"content": SUMMARY}}`.
    Dingtalk,
    /// The operator's template with the alert's fields.
    Template(Template),
}

impl BodyFormat {
    /// The name used in config files.
    pub fn name(&self) -> &'static str {
        let name = match self {
            BodyFormat::Json => FormatName::Json,
            BodyFormat::Slack => FormatName::Slack,
            BodyFormat::Dingtalk => FormatName::Dingtalk,
            BodyFormat::Template(_) => FormatName::Template,
        };
        serde_name(&name)
    }
}

/// Extra CA certificates an https webhook trusts besides the platform's: the file as it was
/// when the config was loaded (a reload reads it again).
#[derive(Clone, PartialEq, Eq)]
pub struct CaFile {
    /// The path as written.
    pub path: String,
    /// Its PEM text (one or more certificates).
    pub pem: Vec<u8>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CaFile").field(&self.path).finish()
    }
}

/// One `[[alert.webhook]]`: where alerts are POSTed, which ones, in what form, and how hard to
/// try.
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// Names the webhook in logs and statistics (the URL may hold a secret, so it is never
    /// logged). Given, or the URL's origin (`http://host:port`); distinct among webhooks.
    pub name: String,
    /// Where alerts are POSTed: an absolute `http://` or `https://` URL. Never printed in full.
    pub url: url::Url,
    /// The body's form. Default [`BodyFormat::Json`].
    pub format: BodyFormat,
    /// Headers sent with every POST, in name order (marked sensitive: their values are never
    /// logged or printed).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// CA certificates trusted besides the platform's (the webhook's `ca_file`, else
    /// `[alert] ca_file`); `None`: the platform's only.
    pub ca: Option<CaFile>,
    /// The events sent to it; never empty. Default: all of them.
    pub events: AlertKinds,
    /// How long one attempt may take (connect, request and response). Default
    /// [`super::defaults::DEFAULT_WEBHOOK_TIMEOUT`].
    pub timeout: Duration,
    /// Further attempts after a failed one, at most [`super::defaults::MAX_WEBHOOK_RETRIES`].
    /// Default [`super::defaults::DEFAULT_WEBHOOK_RETRIES`].
    pub retries: u32,
    /// The wait before the first retry; it doubles for each further one, up to
    /// [`super::defaults::MAX_WEBHOOK_BACKOFF`]. Default
    /// [`super::defaults::DEFAULT_WEBHOOK_BACKOFF`].
    pub backoff: Duration,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL's path, query and credentials may be secrets (chat webhooks carry their token
        // in the path): only the origin is shown.
        f.debug_struct("Webhook")
            .field("name", &self.name)
            .field("url", &self.url.origin().ascii_serialization())
            .field("format", &self.format.name())
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("ca", &self.ca)
            .field("events", &self.events)
            .field("timeout", &self.timeout)
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_sets_hold_what_was_added_and_list_it_in_reference_order() {
        let set: AlertKinds = [AlertKind::ServiceUp, AlertKind::BackendDown]
            .into_iter()
            .collect();
        assert!(set.contains(AlertKind::BackendDown));
        assert!(set.contains(AlertKind::ServiceUp));
        assert!(!set.contains(AlertKind::BackendUp));
        assert!(!set.contains(AlertKind::ServiceDown));
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            [AlertKind::BackendDown, AlertKind::ServiceUp]
        );
        assert_eq!(AlertKinds::from_bits(set.bits()), set);
        assert_eq!(AlertKinds::from_bits(0xff), AlertKinds::ALL);
        assert_eq!(AlertKinds::ALL.iter().collect::<Vec<_>>(), AlertKind::ALL);
        assert!(AlertKinds::NONE.is_empty() && !set.is_empty());
        assert_eq!(
            set.union(AlertKinds::NONE.with(AlertKind::BackendUp)),
            set.with(AlertKind::BackendUp)
        );
    }

    #[test]
    fn the_webhook_debug_form_shows_only_the_origin_of_its_url() {
        let hook = Webhook {
            name: "chat".to_owned(),
            url: "http://user:pw@127.0.0.1:9999/hooks/T0/SECRET?token=x"
                .parse()
                .unwrap(),
            format: BodyFormat::Slack,
            headers: vec![(
                HeaderName::from_static("authorization"),
                HeaderValue::from_static("Bearer HIDDEN"),
            )],
            ca: None,
            events: AlertKinds::ALL,
            timeout: Duration::from_secs(5),
            retries: 3,
            backoff: Duration::from_millis(500),
        };
        let debug = format!("{hook:?}");
        assert!(debug.contains("http://127.0.0.1:9999"), "{debug}");
        assert!(debug.contains("authorization"), "{debug}");
        for secret in ["SECRET", "token", "pw", "user", "HIDDEN", "Bearer"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}
