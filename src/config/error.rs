//! The config layer's one error type, its [`Location`] half, and turning byte offsets into lines
//! and columns. The [`Problem`] half is in `problem`.
//!
//! An error is either [`ConfigError::Read`] (the file could not be read at all) or
//! [`ConfigError::Invalid`]: one [`Location`] (file, line, column, key path) and one [`Problem`]
//! that says what is wrong and carries the bad value as written or as parsed, so a message can
//! be acted on without opening the file.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

pub use super::problem::Problem;

/// Where in a config file an error is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The file path as given to [`Config::load`](super::Config::load), or the source name given to
    /// [`Config::parse`](super::Config::parse).
    pub source: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub column: usize,
    /// Key path such as `service[1].listen`; empty for TOML syntax errors.
    pub key: String,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.source, self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        Ok(())
    }
}

/// Why a config could not be loaded. Displayed as `FILE:LINE:COLUMN: KEY: what is wrong`, or
/// `FILE: cannot read config file: ...` when the file could not be read at all.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable).
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        /// The path as given.
        path: PathBuf,
        /// The I/O error (shared so that the error stays `Clone`).
        source: Arc<std::io::Error>,
    },
    /// Something in the file is wrong: where, and what.
    #[error("{at}: {problem}")]
    Invalid {
        /// Where: file, line, column and key path.
        at: Box<Location>,
        /// What is wrong, with the value as written or as parsed.
        problem: Problem,
    },
}

impl ConfigError {
    /// An error at `at`.
    pub(crate) fn new(at: Box<Location>, problem: Problem) -> ConfigError {
        ConfigError::Invalid { at, problem }
    }

    /// Where in the file the error is; `None` for [`ConfigError::Read`].
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { at, .. } => Some(at),
        }
    }

    /// What is wrong; `None` for [`ConfigError::Read`].
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Invalid { problem, .. } => Some(problem),
        }
    }
}

/// The text being loaded and its name: turns byte offsets into [`Location`]s.
pub(crate) struct Doc<'a> {
    /// File path or other source name.
    pub(crate) source: &'a str,
    /// The whole file.
    pub(crate) text: &'a str,
    /// Whether backend host names are resolved (else refused as unresolvable).
    pub(crate) resolve: bool,
}

impl Doc<'_> {
    /// The location of byte `offset`, for key path `key`. Boxed to keep `ConfigError` small.
    pub(crate) fn at(&self, offset: usize, key: impl Into<String>) -> Box<Location> {
        let (line, column) = line_col(self.text, offset);
        Box::new(Location {
            source: self.source.to_owned(),
            line,
            column,
            key: key.into(),
        })
    }

    /// The 1-based line of byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        line_col(self.text, offset).0
    }

    /// A TOML syntax error (from parsing, before deserializing).
    pub(crate) fn syntax(&self, err: toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let mut message = err.message().to_owned();
        // "duplicate key" alone does not say which key; its span does.
        let snippet = self.text.get(span.clone()).unwrap_or("");
        if message == "duplicate key" && !snippet.is_empty() && !snippet.contains('\n') {
            message = format!("duplicate key `{snippet}`");
        }
        // The parser always reports a span; offset 0 is only a fallback.
        ConfigError::new(self.at(span.start, ""), Problem::Syntax { message })
    }

    /// An error from deserializing into the file structs, with its key path.
    pub(crate) fn schema(&self, err: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let key = key_path(err.path());
        let inner = err.into_inner();
        // The deserializer reports a span for every error it raises; 0 is only a fallback.
        let at = self.at(inner.span().map_or(0, |s| s.start), key);
        ConfigError::new(
            at,
            Problem::Schema {
                message: plain_words(inner.message()),
            },
        )
    }
}

/// The error for a file that is not UTF-8: where its first invalid byte is, and which bytes.
pub(crate) fn not_utf8(source: &str, bytes: &[u8], err: std::str::Utf8Error) -> ConfigError {
    let offset = err.valid_up_to();
    // The bytes before `offset` are valid UTF-8, so lines and columns count as for a text file.
    let valid = std::str::from_utf8(&bytes[..offset]).unwrap_or_default();
    let (line, column) = line_col(valid, offset);
    let sequence = match err.error_len() {
        Some(len) => bytes[offset..offset + len].to_vec(),
        None => Vec::new(),
    };
    ConfigError::new(
        Box::new(Location {
            source: source.to_owned(),
            line,
            column,
            key: String::new(),
        }),
        Problem::NotUtf8 { offset, sequence },
    )
}

/// Replaces Rust type names at the end of serde's messages ("expected u32") with words.
fn plain_words(message: &str) -> String {
    for (rust, words) in [
        ("usize", "a whole number (0 or more)"),
        ("u32", "a whole number from 0 to 4294967295"),
    ] {
        if let Some(head) = message.strip_suffix(rust)
            && head.ends_with("expected ")
        {
            return format!("{head}{words}");
        }
    }
    message.to_owned()
}

/// Renders a serde path as `service[1].backend[0].weight`, leaving out the internal field that
/// `toml::Spanned` deserializes through.
fn key_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if key.starts_with("$__serde_spanned") {
                    continue;
                }
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => out.push_str(".?"),
        }
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`. An offset past the end
/// means the end; one inside a character means that character.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_one_based_line_and_column() {
        let text = "ab\ncd\n\nxyz";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 1), (1, 2));
        assert_eq!(line_col(text, 2), (1, 3), "the newline ends line 1");
        assert_eq!(line_col(text, 3), (2, 1));
        assert_eq!(line_col(text, 6), (3, 1), "an empty line");
        assert_eq!(line_col(text, 7), (4, 1));
        assert_eq!(line_col(text, 9), (4, 3));
    }

    #[test]
    fn offsets_past_the_end_mean_the_end() {
        assert_eq!(line_col("ab\ncd", 5), (2, 3));
        assert_eq!(line_col("ab\ncd", 500), (2, 3));
        assert_eq!(line_col("", 0), (1, 1));
    }

    #[test]
    fn columns_count_characters_not_bytes() {
        // "é" is two bytes, "→" three.
        let text = "name = \"é→x\"\n";
        let x = text.find('x').unwrap();
        assert_eq!(x, 13);
        assert_eq!(line_col(text, x), (1, 11));
        // An offset inside a multi-byte character means that character.
        assert_eq!(line_col(text, 9), (1, 9));
    }

    #[test]
    fn crlf_lines_count_like_lf_lines() {
        let text = "a = 1\r\nb = 2\r\n";
        assert_eq!(line_col(text, text.find('b').unwrap()), (2, 1));
    }

    #[test]
    fn serde_type_names_become_words() {
        assert_eq!(
            plain_words("invalid type: string \"two\", expected usize"),
            "invalid type: string \"two\", expected a whole number (0 or more)"
        );
        assert_eq!(
            plain_words("invalid value: integer `-2`, expected u32"),
            "invalid value: integer `-2`, expected a whole number from 0 to 4294967295"
        );
        assert_eq!(plain_words("missing field `u32`"), "missing field `u32`");
    }

    #[test]
    fn location_leaves_out_an_empty_key_path() {
        let doc = Doc {
            source: "x.toml",
            text: "a\nbc",
            resolve: true,
        };
        assert_eq!(doc.at(3, "").to_string(), "x.toml:2:2");
        assert_eq!(
            doc.at(3, "service[0].name").to_string(),
            "x.toml:2:2: service[0].name"
        );
    }

    fn utf8_error(bytes: &[u8]) -> ConfigError {
        let err = std::str::from_utf8(bytes).expect_err("not UTF-8");
        not_utf8("x.toml", bytes, err)
    }

    #[test]
    fn text_that_is_not_utf8_is_located_at_its_first_invalid_byte() {
        // "é" is two bytes: the column counts characters, the offset bytes.
        let err = utf8_error(b"a = 1\nname = \"\xC3\xA9\xFF\"\n");
        assert_eq!(
            err.to_string(),
            "x.toml:2:10: the file is not UTF-8: invalid byte 0xFF at byte offset 16; save it as \
             UTF-8"
        );
        let at = err.location().expect("a location");
        assert_eq!((at.line, at.column, at.key.as_str()), (2, 10, ""));
        assert!(matches!(
            err.problem(),
            Some(Problem::NotUtf8 { offset: 16, sequence }) if sequence == &[0xFF]
        ));
    }

    #[test]
    fn a_broken_character_and_a_cut_one_are_told_apart() {
        // A three-byte lead followed by a byte that does not continue it.
        assert_eq!(
            utf8_error(b"\xE2\x28\xA1").to_string(),
            "x.toml:1:1: the file is not UTF-8: invalid byte 0xE2 at byte offset 0; save it as \
             UTF-8"
        );
        // Two valid bytes of a four-byte character, then a byte that breaks it.
        assert_eq!(
            utf8_error(b"x\r\n\xF0\x9F\x41").to_string(),
            "x.toml:2:1: the file is not UTF-8: invalid bytes 0xF0 0x9F at byte offset 3; save it \
             as UTF-8"
        );
        assert_eq!(
            utf8_error(b"# caf\xC3").to_string(),
            "x.toml:1:6: the file is not UTF-8: it ends inside a character at byte offset 5; save \
             it as UTF-8"
        );
    }

    #[test]
    fn a_located_message_is_the_location_then_the_problem() {
        let doc = Doc {
            source: "x.toml",
            text: "a\nbc",
            resolve: true,
        };
        let problem = Problem::BadServiceName {
            value: "my service".to_owned(),
        };
        let err = ConfigError::new(doc.at(3, "service[0].name"), problem.clone());
        assert_eq!(
            err.to_string(),
            format!("x.toml:2:2: service[0].name: {problem}")
        );
        assert!(
            problem
                .to_string()
                .starts_with("\"my service\" is not a valid service name")
        );
        assert_eq!(err.location().map(|l| l.line), Some(2));
    }

    #[test]
    fn read_errors_name_the_path() {
        let err = ConfigError::Read {
            path: PathBuf::from("/etc/ringlb/missing.toml"),
            source: Arc::new(std::io::Error::from(std::io::ErrorKind::NotFound)),
        };
        assert_eq!(
            err.to_string(),
            "/etc/ringlb/missing.toml: cannot read config file: entity not found"
        );
        assert!(err.location().is_none());
        assert!(err.problem().is_none());
    }
}
