//! The YAML reader: the same model as the `.sf` reader.
//!
//! A mapping is a component (`extends:` names its base, in SmartFrog's
//! reference syntax); a mapping whose only key is `$ref` is a reference
//! (`{ $ref: "PARENT:db:memory" }`, `{ $ref: "LAZY ATTRIB loop" }`); a list
//! is a list; scalars are strings, integers, reals, booleans and `null`.

use std::fmt;
use std::sync::Arc;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_saphyr::{Location, MessageFormatter, Spanned};

use super::model::{Attr, Component, Extends, Value};
use super::sf::parse_reference;
use super::{DescriptionError, Pos};

enum Node {
    Null,
    Bool(bool),
    Int(i64),
    Real(f64),
    Str(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis;
        impl<'de> Visitor<'de> for Vis {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a YAML value")
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, v: bool) -> Result<Node, E> {
                Ok(Node::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Node, E> {
                i64::try_from(v)
                    .map(Node::Int)
                    .map_err(|_| E::custom("integer out of range"))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Node, E> {
                Ok(Node::Real(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Node, E> {
                Ok(Node::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    let value = map.next_value()?;
                    entries.push((key, value));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(Vis)
    }
}

fn pos(file: &Arc<str>, loc: &Location) -> Pos {
    Pos {
        file: file.clone(),
        line: loc.line().max(1) as u32,
        column: loc.column().max(1) as u32,
    }
}

fn syntax(at: Pos, message: impl Into<String>) -> DescriptionError {
    DescriptionError::Syntax {
        at,
        message: message.into(),
    }
}

fn component(
    file: &Arc<str>,
    at: Pos,
    entries: Vec<(Spanned<String>, Spanned<Node>)>,
) -> Result<Component, DescriptionError> {
    let mut comp = Component::new(at);
    for (key, value) in entries {
        let key_at = pos(file, &key.referenced);
        let value_at = pos(file, &value.referenced);
        if key.value == "extends" {
            let Node::Str(base) = value.value else {
                return Err(syntax(
                    value_at,
                    "`extends` takes the name of a component, as a string",
                ));
            };
            let reference = parse_reference(&base, &value_at)?;
            if reference.lazy {
                return Err(syntax(value_at, "`extends` cannot be LAZY"));
            }
            comp.extends = Some(Extends {
                reference,
                pos: value_at,
            });
            continue;
        }
        if key.value == "$ref" {
            return Err(syntax(key_at, "`$ref` must be the only key of its mapping"));
        }
        let value = convert(file, value_at, value.value)?;
        comp.push(key.value, Attr { value, pos: key_at });
    }
    Ok(comp)
}

fn convert(file: &Arc<str>, at: Pos, node: Node) -> Result<Value, DescriptionError> {
    Ok(match node {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::Int(i),
        Node::Real(r) => Value::Real(r),
        Node::Str(s) => Value::Str(s),
        Node::Seq(items) => {
            let mut list = Vec::new();
            for item in items {
                let item_at = pos(file, &item.referenced);
                if matches!(&item.value, Node::Map(m) if !is_ref(m)) {
                    return Err(syntax(
                        item_at,
                        "a list cannot hold components; give each a name instead",
                    ));
                }
                let value = convert(file, item_at.clone(), item.value)?;
                list.push(Attr {
                    value,
                    pos: item_at,
                });
            }
            Value::List(list)
        }
        Node::Map(entries) if is_ref(&entries) => {
            let (_, value) = entries.into_iter().next().expect("one entry");
            let value_at = pos(file, &value.referenced);
            let Node::Str(text) = value.value else {
                return Err(syntax(
                    value_at,
                    "`$ref` takes a reference as a string, e.g. \"PARENT:memory\"",
                ));
            };
            Value::Ref(parse_reference(&text, &value_at)?)
        }
        Node::Map(entries) => Value::Component(component(file, at, entries)?),
    })
}

fn is_ref(entries: &[(Spanned<String>, Spanned<Node>)]) -> bool {
    entries.len() == 1 && entries[0].0.value == "$ref"
}

/// Parses a whole YAML description: its top-level mapping, as a root component.
pub(crate) fn parse_file(file: Arc<str>, src: &str) -> Result<Component, DescriptionError> {
    let start = Pos {
        file: file.clone(),
        line: 1,
        column: 1,
    };
    if src.trim().is_empty() {
        return Ok(Component::new(start));
    }
    let doc: Spanned<Node> = serde_saphyr::from_str(src).map_err(|e| {
        let at = e
            .location()
            .filter(|l| l.line() > 0)
            .map_or(start.clone(), |l| pos(&file, &l));
        let message: String = serde_saphyr::UserMessageFormatter
            .format_message(&e)
            .lines()
            .next()
            .unwrap_or("invalid YAML")
            .to_string();
        syntax(at, message)
    })?;
    match doc.value {
        Node::Map(entries) => component(&file, start, entries),
        Node::Null => Ok(Component::new(start)),
        _ => Err(syntax(
            pos(&file, &doc.referenced),
            "a description is a mapping of names to components",
        )),
    }
}
