//! The unresolved model both readers produce.

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
    pub attrs: Vec<(String, Attr)>,
    pub pos: Pos,
    /// After flattening: the `extends` chain's names, nearest first.
    pub types: Vec<String>,
}

impl Component {
    pub(crate) fn new(pos: Pos) -> Self {
        Component {
            extends: None,
            attrs: Vec::new(),
            pos,
            types: Vec::new(),
        }
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Attr> {
        self.attrs.iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Attr> {
        self.attrs
            .iter_mut()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
    }

    /// Sets `name`, in place if it exists (keeping its position in the
    /// order), else at the end.
    pub(crate) fn set(&mut self, name: &str, attr: Attr) {
        match self.get_mut(name) {
            Some(slot) => *slot = attr,
            None => self.attrs.push((name.to_string(), attr)),
        }
    }
}
