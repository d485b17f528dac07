//! What a webhook's POST carries: the body of an alert in the webhook's format, named with the
//! ringlb instance that sends it.
//!
//! Owns: the four body formats (see [`BodyFormat`]) and the one-line summary the chat formats
//! send. Does not own: sending it (`deliver`) or the template's grammar
//! ([`crate::config::Template`]).

use reqwest::header::HeaderValue;

use crate::config::{BodyFormat, TemplateField};

use super::AlertEvent;

/// The `json` body: the event's fields and the instance's name.
#[derive(serde::Serialize)]
struct Payload<'a> {
    #[serde(flatten)]
    event: &'a AlertEvent,
    instance: &'a str,
}

/// A body ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Body {
    pub(super) bytes: Vec<u8>,
    /// `Content-Type`, unless the webhook's headers set their own.
    pub(super) content_type: HeaderValue,
}

/// One line that says it all:
/// `[lb-1] backend_down: service redis, backend 10.0.0.7:6379: refused (2026-11-24T17:43:09.353366Z)`.
pub fn summary(event: &AlertEvent, instance: &str) -> String {
    let backend = event
        .backend
        .map(|b| format!(", backend {b}"))
        .unwrap_or_default();
    format!(
        "[{instance}] {}: service {}{backend}: {} ({})",
        event.event,
        event.service,
        event.reason,
        humantime::format_rfc3339_micros(event.time)
    )
}

/// The value of `field` for `event`.
fn field(event: &AlertEvent, instance: &str, field: TemplateField) -> String {
    match field {
        TemplateField::Event => event.event.name().to_owned(),
        TemplateField::Service => event.service.clone(),
        TemplateField::Backend => event.backend.map(|b| b.to_string()).unwrap_or_default(),
        TemplateField::Reason => event.reason.clone(),
        TemplateField::Time => humantime::format_rfc3339_micros(event.time).to_string(),
        TemplateField::Instance => instance.to_owned(),
        TemplateField::Summary => summary(event, instance),
    }
}

/// A JSON body.
fn json(value: &impl serde::Serialize) -> Body {
    Body {
        // Maps with string keys and plain values: serializing cannot fail.
        bytes: serde_json::to_vec(value).unwrap_or_default(),
        content_type: HeaderValue::from_static("application/json"),
    }
}

/// The body of `event` in `format`, sent by `instance`.
pub(super) fn render(format: &BodyFormat, event: &AlertEvent, instance: &str) -> Body {
    match format {
        BodyFormat::Json => json(&Payload { event, instance }),
        BodyFormat::Slack => json(&serde_json::json!({ "text": summary(event, instance) })),
        BodyFormat::Dingtalk => json(&serde_json::json!({
            "msgtype": "text",
            "text": { "content": summary(event, instance) },
        })),
        // Checked to render JSON when loaded (unless the webhook sets its own Content-Type,
        // which its headers then send).
        BodyFormat::Template(template) => Body {
            bytes: template.render(|f| field(event, instance, f)).into_bytes(),
            content_type: HeaderValue::from_static("application/json"),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::{Value, json};

    use super::*;
    use crate::config::{AlertKind, Template};

    fn event() -> AlertEvent {
        let mut e = AlertEvent::new(
            AlertKind::BackendDown,
            "redis",
            Some("10.0.0.7:6379".parse().unwrap()),
            &"refused",
        );
        e.time = UNIX_EPOCH + Duration::from_micros(1_795_542_189_353_366);
        e
    }

    fn parsed(body: &Body) -> Value {
        assert_eq!(body.content_type, "application/json");
        serde_json::from_slice(&body.bytes).unwrap()
    }

    const LINE: &str = "[lb-1] backend_down: service redis, backend 10.0.0.7:6379: refused (2026-11-24T17:43:09.353366Z)";

    #[test]
    fn each_format_has_the_shape_its_receiver_expects() {
        let e = event();
        assert_eq!(
            parsed(&render(&BodyFormat::Json, &e, "lb-1")),
            json!({"event": "backend_down", "service": "redis", "backend": "10.0.0.7:6379",
                   "reason": "refused", "time": "2026-11-24T17:43:09.353366Z",
                   "instance": "lb-1"})
        );
        assert_eq!(
            parsed(&render(&BodyFormat::Slack, &e, "lb-1")),
            json!({ "text": LINE })
        );
        assert_eq!(
            parsed(&render(&BodyFormat::Dingtalk, &e, "lb-1")),
            json!({"msgtype": "text", "text": {"content": LINE}})
        );
        let template = Template::parse(
            r#"{{"alert":"{event}","svc":"{service}","b":"{backend}","i":"{instance}"}}"#,
        )
        .unwrap();
        assert_eq!(
            parsed(&render(&BodyFormat::Template(template), &e, "lb-1")),
            json!({"alert": "backend_down", "svc": "redis", "b": "10.0.0.7:6379", "i": "lb-1"})
        );
    }

    #[test]
    fn service_events_name_no_backend() {
        let mut e = event();
        e.backend = None;
        e.event = AlertKind::ServiceDown;
        e.reason = "0 of 2 backends up".to_owned();
        assert_eq!(
            summary(&e, "h"),
            "[h] service_down: service redis: 0 of 2 backends up (2026-11-24T17:43:09.353366Z)"
        );
        let json = parsed(&render(&BodyFormat::Json, &e, "h"));
        assert!(json.get("backend").is_none(), "{json}");
        let t = Template::parse("{backend}|{summary}").unwrap();
        assert!(field(&e, "h", TemplateField::Backend).is_empty());
        assert!(
            String::from_utf8(render(&BodyFormat::Template(t), &e, "h").bytes)
                .unwrap()
                .starts_with("|[h] service_down")
        );
    }
}
