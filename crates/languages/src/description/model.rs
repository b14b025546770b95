//! The unresolved model both readers produce.

use std::collections::HashMap;
use std::fmt;

use super::Pos;

/// One step of a SmartFrog reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefPart {
    /// `ROOT`: the top of the description.
    Root,
    /// `PARENT`: the enclosing component.
    Parent,
    /// `THIS`: the component itself.
    This,
    /// `ATTRIB x` (or a bare first word): `x` here or in an enclosing scope.
    Attrib(String),
    /// `HERE x` (or a later word): the attribute `x` of the current component.
    Here(String),
}

/// `[LAZY] part:part:...`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub lazy: bool,
    pub parts: Vec<RefPart>,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lazy {
            f.write_str("LAZY ")?;
        }
        for (i, p) in self.parts.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            match p {
                RefPart::Root => f.write_str("ROOT")?,
                RefPart::Parent => f.write_str("PARENT")?,
                RefPart::This => f.write_str("THIS")?,
                RefPart::Attrib(n) => write!(f, "ATTRIB {n}")?,
                RefPart::Here(n) if i == 0 => write!(f, "HERE {n}")?,
                RefPart::Here(n) => f.write_str(n)?,
            }
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Str(String),
    List(Vec<Attr>),
    Ref(Reference),
    /// A lazy reference after resolution: the reference and its target path.
    Link(Reference, Vec<String>),
    Component(Component),
}

impl Value {
    /// What a type error says it found: `the string "lots"`, `the integer 0`.
    pub(crate) fn describe(&self) -> String {
        match self {
            Value::Bool(b) => format!("the boolean {b}"),
            Value::Int(i) => format!("the integer {i}"),
            Value::Real(r) => format!("the real number {r}"),
            Value::Str(s) => format!("the string {s:?}"),
            other => other.type_name().to_string(),
        }
    }

    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Real(_) => "a real number",
            Value::Str(_) => "a string",
            Value::List(_) => "a list",
            Value::Ref(_) | Value::Link(..) => "a reference",
            Value::Component(_) => "a component",
        }
    }
}

/// A value and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Attr {
    pub value: Value,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Extends {
    pub reference: Reference,
    pub pos: Pos,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Component {
    pub extends: Option<Extends>,
    /// In the order written; changed only through `push` and `set`, which
    /// keep `index` in step.
    attrs: Vec<(String, Attr)>,
    /// Name -> place in `attrs`: lookups stay O(1), or a description with
    /// thousands of attributes takes seconds (quadratic) to read and resolve.
    index: HashMap<String, usize>,
    pub pos: Pos,
    /// After flattening: the `extends` chain's names, nearest first.
    pub types: Vec<String>,
}

impl Component {
    pub(crate) fn new(pos: Pos) -> Self {
        Component {
            extends: None,
            attrs: Vec::new(),
            index: HashMap::new(),
            pos,
            types: Vec::new(),
        }
    }

    pub(crate) fn attrs(&self) -> &[(String, Attr)] {
        &self.attrs
    }

    pub(crate) fn into_attrs(self) -> Vec<(String, Attr)> {
        self.attrs
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Attr> {
        self.index.get(name).map(|&i| &self.attrs[i].1)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Attr> {
        self.index.get(name).map(|&i| &mut self.attrs[i].1)
    }

    /// Appends `name`; if it is there already, lookups keep finding the first.
    pub(crate) fn push(&mut self, name: String, attr: Attr) {
        self.index.entry(name.clone()).or_insert(self.attrs.len());
        self.attrs.push((name, attr));
    }

    /// Sets `name`, in place if it exists (keeping its position in the
    /// order), else at the end.
    pub(crate) fn set(&mut self, name: &str, attr: Attr) {
        match self.get_mut(name) {
            Some(slot) => *slot = attr,
            None => self.push(name.to_string(), attr),
        }
    }
}
