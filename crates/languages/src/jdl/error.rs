//! Positions in a JDL file and the one error type of the reader.

use serde::{Serialize, Serializer};
use std::fmt;
use std::path::{Path, PathBuf};

/// A 1-based line and column (columns count characters, not bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Span {
    pub line: u32,
    pub col: u32,
}

impl Span {
    pub fn new(line: u32, col: u32) -> Self {
        Span { line, col }
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// Serialized as `"LINE:COL"`, which keeps snapshots short.
impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A node and where it starts in the source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Spanned<T> {
    pub span: Span,
    pub node: T,
}

/// Pairs a node with its position.
pub fn spanned<T>(span: Span, node: T) -> Spanned<T> {
    Spanned { span, node }
}

/// A syntax or type error in a JDL file. Displays as `FILE:LINE:COL: MESSAGE`,
/// the form editors and compilers use, so a user can jump to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", file.display())]
pub struct JdlError {
    /// The path as the caller gave it (not canonicalised).
    pub file: PathBuf,
    pub line: u32,
    pub col: u32,
    /// What was expected and what was found, without the position.
    pub message: String,
}

impl JdlError {
    pub fn new(file: &Path, span: Span, message: impl Into<String>) -> Self {
        JdlError {
            file: file.to_path_buf(),
            line: span.line,
            col: span.col,
            message: message.into(),
        }
    }

    pub fn span(&self) -> Span {
        Span::new(self.line, self.col)
    }
}
