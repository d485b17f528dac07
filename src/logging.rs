//! The process's log output: which events are written (the filter) and how (text or JSON
//! lines), on stderr.
//!
//! Owns: the [`LogFormat`] choice and installing the one `tracing` subscriber of the process.
//! Does not own: what is logged (each module logs its own events; the access log is the
//! `ringlb::access` target of the data plane), nor where stderr goes (a terminal, a pipe,
//! journald under systemd).
//!
//! The format is `--log-format`, else `[runtime] log_format`, else text. Text stays the default
//! whether or not stderr is a terminal: journald and `2>file` keep the lines as written, and a
//! format that changed with where stderr points would surprise whoever reads them. JSON is for
//! log shippers (Vector, Fluent Bit, Loki, journald with a JSON parser): one object per line,
//! with `timestamp` (RFC 3339, UTC), `level`, `target`, the event's fields at the top level
//! (`message` among them when the event has one) and no span fields (ringlb logs none). An
//! access-log object therefore looks like
//!
//! ```json
//! {"timestamp":"2026-11-27T18:40:01.123456Z","level":"INFO","target":"ringlb::access",
//!  "service":"web","client":"10.0.0.3:51234","backend":"10.0.1.7:80","bytes_up":512,
//!  "bytes_down":20480,"duration_ms":35,"end":"closed"}
//! ```

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines: time, level, target, message and `key=value` fields; colored on a
    /// terminal.
    #[default]
    Text,
    /// One JSON object per line (see the module docs).
    Json,
}

impl LogFormat {
    /// The format to use: the command line's, else the config's, else text.
    pub fn choose(command_line: Option<LogFormat>, config: Option<LogFormat>) -> LogFormat {
        command_line.or(config).unwrap_or_default()
    }

    /// The name used on the command line and in config files.
    pub fn name(self) -> &'static str {
        crate::names::serde_name(&self)
    }
}

/// The filter: `level` (a level or a filter such as `"ringlb::access=info"`), else `RUST_LOG`,
/// else `info`.
fn filter(level: Option<&str>) -> EnvFilter {
    match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    }
}

/// Installs the process's subscriber: events passing `level`'s filter, written to stderr in
/// `format`. Call once, before anything logs; a second call leaves the first subscriber in
/// place.
pub fn init(format: LogFormat, level: Option<&str>) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(level))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_wins_over_the_config_and_text_is_the_default() {
        use LogFormat::*;
        assert_eq!(LogFormat::choose(Some(Json), Some(Text)), Json);
        assert_eq!(LogFormat::choose(Some(Text), Some(Json)), Text);
        assert_eq!(LogFormat::choose(None, Some(Json)), Json);
        assert_eq!(LogFormat::choose(None, None), Text);
        assert_eq!((Text.name(), Json.name()), ("text", "json"));
    }
}
