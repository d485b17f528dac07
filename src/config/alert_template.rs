//! A webhook's body template (`format = "template"`): its grammar, checked when the config is
//! loaded, and its rendering.
//!
//! Owns: parsing the template text into literal parts and field references, and substituting
//! values into it. Does not own: where the values come from (`control::alerts` renders an
//! event through [`Template::render`]).
//!
//! Grammar: the text is sent as written, except that `{name}` is replaced by the event's field
//! `name` (one of [`TemplateField::ALL`]), and `{{` and `}}` stand for a literal `{` and `}`.
//! An unknown name, an empty `{}`, an unclosed `{` or a lone `}` is a config error. Each value
//! is JSON-string escaped without its quotes (`"` as `\"`, `\` as `\\`, control characters as
//! `\n`, `\t` or `\u00XX`), so a template writes the quotes around it:
//! `{"text": "{event} on {service}"}` is always JSON, whatever the reason says.

use std::fmt;

/// A field of an alert a template may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TemplateField {
    /// The event's kind (`backend_down`, ...).
    Event,
    /// The service's name.
    Service,
    /// The backend's address (`ip:port`); empty for service events.
    Backend,
    /// Why, in words.
    Reason,
    /// When, RFC 3339 in UTC.
    Time,
    /// The ringlb instance's name (`[runtime] instance_name`, else the host name).
    Instance,
    /// One line that says it all (what the `slack` and `dingtalk` formats send).
    Summary,
}

impl TemplateField {
    /// Every field, as named in templates.
    pub const ALL: [(&'static str, TemplateField); 7] = [
        ("event", TemplateField::Event),
        ("service", TemplateField::Service),
        ("backend", TemplateField::Backend),
        ("reason", TemplateField::Reason),
        ("time", TemplateField::Time),
        ("instance", TemplateField::Instance),
        ("summary", TemplateField::Summary),
    ];

    fn named(name: &str) -> Option<TemplateField> {
        TemplateField::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, f)| *f)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Text(String),
    Field(TemplateField),
}

/// A parsed template: see the module docs for its grammar.
#[derive(Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template")
            .field("parts", &self.parts.len())
            .finish()
    }
}

impl Template {
    /// Parses `text`; the error says what is wrong and where (a character offset).
    pub fn parse(text: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut literal = String::new();
        let mut chars = text.char_indices().peekable();
        while let Some((byte, c)) = chars.next() {
            // Where, for the error messages: in characters from the start.
            let at = text[..byte].chars().count();
            match c {
                '{' if chars.peek().map(|(_, c)| *c) == Some('{') => {
                    chars.next();
                    literal.push('{');
                }
                '}' if chars.peek().map(|(_, c)| *c) == Some('}') => {
                    chars.next();
                    literal.push('}');
                }
                '}' => {
                    return Err(format!(
                        "a lone '}}' at character {at}: write '}}}}' for a literal one"
                    ));
                }
                '{' => {
                    let rest = &text[byte + 1..];
                    let Some(end) = rest.find('}') else {
                        return Err(format!(
                            "the '{{' at character {at} is not closed: write '{{{{' for a \
                             literal one"
                        ));
                    };
                    let name = &rest[..end];
                    let field = TemplateField::named(name).ok_or_else(|| {
                        let known: Vec<&str> = TemplateField::ALL.iter().map(|(n, _)| *n).collect();
                        format!(
                            "unknown field {{{name}}} at character {at}; the fields are {}",
                            known.join(", ")
                        )
                    })?;
                    if !literal.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut literal)));
                    }
                    parts.push(Part::Field(field));
                    // Skip the name and its closing brace.
                    for _ in 0..name.chars().count() + 1 {
                        chars.next();
                    }
                }
                other => literal.push(other),
            }
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal));
        }
        Ok(Template { parts })
    }

    /// The text with each field replaced by `value(field)`, JSON-string escaped.
    pub fn render(&self, value: impl Fn(TemplateField) -> String) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Field(f) => escape_into(&value(*f), &mut out),
            }
        }
        out
    }
}

/// Appends `value` escaped as the inside of a JSON string.
fn escape_into(value: &str, out: &mut String) {
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(f: TemplateField) -> String {
        match f {
            TemplateField::Event => "backend_down".to_owned(),
            TemplateField::Service => "redis".to_owned(),
            TemplateField::Backend => "10.0.0.7:6379".to_owned(),
            TemplateField::Reason => "said \"no\"\\\n\u{1}".to_owned(),
            TemplateField::Time => "1970-01-01T00:00:00.000000Z".to_owned(),
            TemplateField::Instance => "lb-1".to_owned(),
            TemplateField::Summary => "all".to_owned(),
        }
    }

    #[test]
    fn fields_are_substituted_escaped_and_doubled_braces_are_literal() {
        let t =
            Template::parse(r#"{{"text": "{instance}: {event} {service}/{backend}: {reason}"}}"#)
                .unwrap();
        let body = t.render(values);
        assert_eq!(
            body,
            r#"{"text": "lb-1: backend_down redis/10.0.0.7:6379: said \"no\"\\\n\u0001"}"#
        );
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            parsed["text"],
            "lb-1: backend_down redis/10.0.0.7:6379: said \"no\"\\\n\u{1}"
        );
        assert_eq!(
            Template::parse("{time}|{summary}").unwrap().render(values),
            "1970-01-01T00:00:00.000000Z|all"
        );
        assert_eq!(
            Template::parse("plain é").unwrap().render(values),
            "plain é"
        );
    }

    #[test]
    fn unknown_fields_and_unbalanced_braces_are_refused_with_where() {
        for (text, expected) in [
            (
                "{event} {host}",
                "unknown field {host} at character 8; the fields are event,",
            ),
            ("{}", "unknown field {} at character 0"),
            ("x {event", "the '{' at character 2 is not closed"),
            ("a } b", "a lone '}' at character 2"),
        ] {
            let error = Template::parse(text).unwrap_err();
            assert!(error.starts_with(expected), "{text}: {error}");
        }
    }
}
