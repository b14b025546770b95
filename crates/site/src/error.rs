//! Why a site.yaml was refused, worded for its admin: `FILE:LINE:COLUMN:`
//! and what was expected.

use std::path::{Path, PathBuf};

use serde_saphyr::{Location, MessageFormatter, UserMessageFormatter};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Why a site configuration could not be loaded. Every variant is a site
/// fault (the admin's file), never a job's.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: {source}", file.display())]
    Io {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not YAML, an unknown key, a value of the wrong type or an unknown
    /// enum value.
    #[error("{}: {message}", place(file, *at))]
    Parse {
        file: PathBuf,
        at: Option<(u32, u32)>,
        message: String,
    },
    /// Valid YAML that does not make sense as a site configuration.
    /// `yaml_path` names the key (`vos.demo.images[1]`), `at` its line and
    /// column when known (a default has none).
    #[error("{}: {yaml_path}: {message}", place(file, *at))]
    Invalid {
        file: PathBuf,
        at: Option<(u32, u32)>,
        yaml_path: String,
        message: String,
    },
}

impl ConfigError {
    /// Line and column (1-based) the error points at, if any.
    pub fn position(&self) -> Option<(u32, u32)> {
        match self {
            ConfigError::Io { .. } => None,
            ConfigError::Parse { at, .. } | ConfigError::Invalid { at, .. } => *at,
        }
    }
}

pub(crate) fn place(file: &Path, at: Option<(u32, u32)>) -> String {
    match at {
        Some((line, column)) => format!("{}:{line}:{column}", file.display()),
        None => file.display().to_string(),
    }
}

pub(crate) fn position(loc: Location) -> Option<(u32, u32)> {
    (loc.line() > 0).then(|| (loc.line() as u32, loc.column() as u32))
}

/// serde-saphyr's user-facing messages, with friendlier wording for the
/// errors a site admin is most likely to meet.
pub(crate) struct Messages;

impl MessageFormatter for Messages {
    fn format_message<'a>(&self, err: &'a serde_saphyr::Error) -> std::borrow::Cow<'a, str> {
        use serde_saphyr::Error as E;
        match err {
            E::AliasError { error, .. } | E::WithSnippet { error, .. } => {
                self.format_message(error)
            }
            E::InvalidScalar { ty, .. } => match *ty {
                "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => {
                    "expected a whole number (0 or more)".into()
                }
                "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "expected a whole number".into(),
                "bool" => "expected true or false".into(),
                other => format!("invalid {other}").into(),
            },
            E::Unexpected {
                expected: "mapping start",
                ..
            } => "expected a mapping (`key: value` entries)".into(),
            E::Unexpected {
                expected: "sequence start",
                ..
            } => "expected a list".into(),
            _ => UserMessageFormatter.format_message(err),
        }
    }
}

pub(crate) fn parse_error(file: &Path, err: &serde_saphyr::Error) -> ConfigError {
    let message: String = Messages
        .format_message(err)
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_debug().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
    ConfigError::Parse {
        file: file.to_path_buf(),
        at: err.location().and_then(position),
        message,
    }
}
