//! Pool descriptions: SmartFrog's description language, read from YAML or
//! from SmartFrog's own `.sf` text, into one model, resolved before anything
//! is deployed.
//!
//! A description is a tree of named components. Each has attributes (string,
//! integer, real, boolean, `NULL`, list, reference, nested component) and may
//! `extends` another component, found by name in the enclosing scopes: the
//! user's file, the site's template library files, and the built-in
//! [`PRELUDE`] (`Compound`, `Sequence`, `DefaultXenDomain`, storage
//! backends, `BashShell`). The component to deploy is the top-level
//! `sfConfig`, as in SmartFrog.
//!
//! Resolution, as SmartFrog does it:
//! 1. **extends**: a child starts from a copy of its base (itself resolved),
//!    its own attributes override the base's in place and new ones are
//!    appended. A nested component *without* its own `extends` merges into
//!    the base's nested component of the same name; one *with* `extends`
//!    replaces it. Cycles are errors.
//! 2. **references** (`a:b:c`, `ATTRIB x`, `PARENT:x`, `ROOT:x`, `THIS:x`,
//!    `HERE x`), relative to the component holding the attribute: a first
//!    bare word (or `ATTRIB x`) looks `x` up in that component, then in each
//!    enclosing one; `PARENT` steps up; later words step down. An eager
//!    reference is replaced by (a copy of) its target; a `LAZY` one is kept as
//!    a link, resolved at deploy time, but it must point at something now.
//!    Cycles and dangling references are errors.
//! 3. **checking** of the known component types under `sfConfig`: every
//!    attribute must be one the type knows, of the right type.
//!
//! Every error names the attribute path (`sfConfig:pool:worker2:memory`) and
//! the `file:line:column` where it was written.
//!
//! # YAML
//!
//! ```yaml
//! Worker:                      # a template: any top-level component
//!   extends: DefaultXenDomain
//!   memory: 384
//! sfConfig:
//!   extends: Sequence
//!   db: { extends: DefaultXenDomain, memory: 512 }
//!   worker1:
//!     extends: Worker
//!     memory: { $ref: "PARENT:db:memory" }        # copied now
//!     storageBackend: { $ref: "LAZY ATTRIB loop" } # kept as a link
//! ```
//!
//! A mapping is a component; `extends:` names its base. A mapping whose only
//! key is `$ref` is a reference, written in SmartFrog's reference syntax. A
//! YAML list is a list; YAML scalars are strings, integers, reals, booleans
//! and `null`.

mod model;
mod resolve;
mod sf;
mod yaml;

#[cfg(test)]
mod tests;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

pub use model::{RefPart, Reference};

/// The site's built-in template library, in SmartFrog syntax. Library files
/// and the user's file may override any of it.
pub const PRELUDE: &str = include_str!("prelude.sf");

/// Where something was written: file, 1-based line and column (characters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pos {
    pub file: Arc<str>,
    pub line: u32,
    pub column: u32,
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

impl Serialize for Pos {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Every way a description can be wrong. Each names where (`at`) and, past
/// the syntax, which attribute (`path`, SmartFrog's `a:b:c`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum DescriptionError {
    #[error("{file}: cannot read the description: {message}")]
    Read { file: PathBuf, message: String },
    #[error("{at}: syntax error: {message}")]
    Syntax { at: Pos, message: String },
    #[error("{at}: {path}: extends cycle: {chain}")]
    ExtendsCycle {
        at: Pos,
        path: String,
        chain: String,
    },
    #[error("{at}: {path}: reference cycle: {chain}")]
    ReferenceCycle {
        at: Pos,
        path: String,
        chain: String,
    },
    #[error("{at}: {path}: dangling reference `{reference}`: {message}")]
    DanglingReference {
        at: Pos,
        path: String,
        reference: String,
        message: String,
    },
    #[error("{at}: {path}: type error: {message}")]
    Type {
        at: Pos,
        path: String,
        message: String,
    },
    #[error("{at}: {path}: unknown attribute for a {kind}{hint}")]
    UnknownAttribute {
        at: Pos,
        path: String,
        kind: &'static str,
        hint: String,
    },
    #[error("{at}: {path}: description too large: resolving it makes more than {limit} components and values (`extends` and references copy what they name)")]
    TooLarge { at: Pos, path: String, limit: usize },
    #[error("{at}: {path}: {what} deeper than {limit} levels")]
    TooDeep {
        at: Pos,
        path: String,
        what: &'static str,
        limit: usize,
    },
    #[error("{file}: no `sfConfig`: the component to deploy must be called sfConfig")]
    NoSfConfig { file: String },
}

/// The kind of a resolved component, from its `extends` chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Kind {
    /// Deploys all members, then starts them; one dies, all terminate.
    Compound,
    /// Starts members in order, stops them in reverse order.
    Sequence,
    /// A virtual machine (`DefaultXenDomain`).
    Domain,
    /// `LoopbackStorageBackend`, `LVMStorageBackend`, `OverlayStorageBackend`.
    StorageBackend,
    /// `BashShell`.
    Shell,
    /// Anything else: attributes are not checked.
    Component,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Compound => "Compound",
            Kind::Sequence => "Sequence",
            Kind::Domain => "domain (DefaultXenDomain)",
            Kind::StorageBackend => "storage backend",
            Kind::Shell => "shell (BashShell)",
            Kind::Component => "component",
        }
    }

    /// Pools hold members; their order is the deployment order.
    pub fn is_pool(self) -> bool {
        matches!(self, Kind::Compound | Kind::Sequence)
    }
}

/// A resolved attribute value. Eager references are gone (replaced by their
/// targets); lazy ones remain as links with their resolved target path.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum ResolvedValue {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Str(String),
    List(Vec<ResolvedValue>),
    Lazy {
        /// As written, e.g. `LAZY ATTRIB loop`.
        lazy: String,
        /// What it points at now, e.g. `sfConfig:computer1:loop`.
        target: String,
    },
    Component(Box<ResolvedComponent>),
}

/// A value as a user writes it in SmartFrog: `LAZY ATTRIB loop`, `"x"`,
/// `[1, 2]`, `extends LoopBackend` (a component, by what it extends).
/// What user messages show; never the Debug form.
impl fmt::Display for ResolvedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolvedValue::Null => f.write_str("NULL"),
            ResolvedValue::Bool(b) => write!(f, "{b}"),
            ResolvedValue::Int(i) => write!(f, "{i}"),
            ResolvedValue::Real(r) => write!(f, "{r:?}"),
            ResolvedValue::Str(s) => write!(f, "{s:?}"),
            ResolvedValue::List(items) => {
                f.write_str("[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str("]")
            }
            ResolvedValue::Lazy { lazy, .. } => f.write_str(lazy),
            ResolvedValue::Component(c) => match c.extends.first() {
                Some(parent) => write!(f, "extends {parent}"),
                None => write!(f, "the component {}", c.path),
            },
        }
    }
}

/// One resolved component: its non-component attributes, then its nested
/// components (a pool's members) in the order written.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolvedComponent {
    pub name: String,
    /// SmartFrog path from the root, e.g. `sfConfig:computer1:domain1`.
    pub path: String,
    pub kind: Kind,
    /// The `extends` chain, nearest first: `[PhysicalHost, Compound]`.
    pub extends: Vec<String>,
    /// Every attribute, defaults filled in. Domains, pools and storage
    /// backends always carry `sfProcessHost` (their own, else the nearest
    /// enclosing component's, else `localhost`).
    pub attributes: Attributes,
    /// Nested components in the order written: a pool's members.
    pub members: Vec<ResolvedComponent>,
}

/// Attributes in the order written (serialised as a mapping).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes(pub Vec<(String, ResolvedValue)>);

impl Attributes {
    pub fn get(&self, name: &str) -> Option<&ResolvedValue> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl ResolvedComponent {
    pub fn get(&self, name: &str) -> Option<&ResolvedValue> {
        self.attributes.get(name)
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.get(name) {
            Some(ResolvedValue::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn get_int(&self, name: &str) -> Option<i64> {
        match self.get(name) {
            Some(ResolvedValue::Int(i)) => Some(*i),
            _ => None,
        }
    }

    pub fn get_bool(&self, name: &str) -> Option<bool> {
        match self.get(name) {
            Some(ResolvedValue::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    /// A domain's `network` and `ip` as the interfaces it asks for: one per
    /// network named, in order; a static `ip` (not "dhcp" or "") on the
    /// first. Resolution checked both; admission checks them against the site.
    pub fn network_requests(&self) -> Vec<sd_request::NetworkRequest> {
        let names: Vec<&str> = match self.get("network") {
            Some(ResolvedValue::Str(s)) => vec![s.as_str()],
            Some(ResolvedValue::List(items)) => items
                .iter()
                .filter_map(|i| match i {
                    ResolvedValue::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => vec![],
        };
        let ip = self.get_str("ip").and_then(|s| s.parse().ok());
        names
            .into_iter()
            .enumerate()
            .map(|(i, name)| sd_request::NetworkRequest {
                name: name.to_string(),
                ip: if i == 0 { ip } else { None },
            })
            .collect()
    }

    /// Every domain in this subtree, in deployment (depth-first) order.
    pub fn domains(&self) -> Vec<&ResolvedComponent> {
        let mut out = Vec::new();
        self.collect_domains(&mut out);
        out
    }

    fn collect_domains<'a>(&'a self, out: &mut Vec<&'a ResolvedComponent>) {
        if self.kind == Kind::Domain {
            out.push(self);
        }
        for m in &self.members {
            m.collect_domains(out);
        }
    }
}

/// A fully resolved description: the `sfConfig` tree.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ResolvedDescription {
    /// The file it was read from.
    pub source: String,
    pub root: ResolvedComponent,
}

/// The two readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// SmartFrog text (`.sf`).
    SmartFrog,
    /// YAML (`.yaml`, `.yml`).
    Yaml,
}

impl Format {
    /// By extension: `.yaml`/`.yml` are YAML, anything else SmartFrog text.
    pub fn of(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Format::Yaml,
            _ => Format::SmartFrog,
        }
    }
}

fn read(path: &Path) -> Result<String, DescriptionError> {
    std::fs::read_to_string(path).map_err(|e| DescriptionError::Read {
        file: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Parses one source (no resolution): its top-level attributes.
fn parse(name: &str, text: &str, format: Format) -> Result<model::Component, DescriptionError> {
    let file: Arc<str> = Arc::from(name);
    match format {
        Format::SmartFrog => sf::parse_file(file, text),
        Format::Yaml => yaml::parse_file(file, text),
    }
}

/// Reads `path` (YAML or SmartFrog text, by extension), with the site's
/// template `library` files (each YAML or `.sf`, later ones overriding
/// earlier ones, all overriding [`PRELUDE`]), and resolves its `sfConfig`.
pub fn resolve_file(
    path: &Path,
    library: &[PathBuf],
) -> Result<ResolvedDescription, DescriptionError> {
    let mut sources = Vec::new();
    for lib in library {
        sources.push((lib.display().to_string(), read(lib)?, Format::of(lib)));
    }
    let text = read(path)?;
    sources.push((path.display().to_string(), text, Format::of(path)));
    resolve_sources(&sources)
}

/// Like [`resolve_file`], from text: `(file name, text, format)` for each
/// library source, the user's description last.
pub fn resolve_sources(
    sources: &[(String, String, Format)],
) -> Result<ResolvedDescription, DescriptionError> {
    let mut parsed = vec![parse("<prelude>", PRELUDE, Format::SmartFrog)?];
    for (name, text, format) in sources {
        parsed.push(parse(name, text, *format)?);
    }
    let source = sources
        .last()
        .map(|s| s.0.clone())
        .unwrap_or_else(|| "<prelude>".into());
    let root = resolve::resolve(parsed, &source)?;
    Ok(ResolvedDescription { source, root })
}

/// Resolves one description given as text, with only the prelude.
pub fn resolve_str(
    name: &str,
    text: &str,
    format: Format,
) -> Result<ResolvedDescription, DescriptionError> {
    resolve_sources(&[(name.to_string(), text.to_string(), format)])
}
