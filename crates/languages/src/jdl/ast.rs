//! The ClassAd syntax tree of a JDL file: values, expressions, attributes.
//!
//! Expressions are kept as trees: `other.GlueCEStateFreeCPUs >= 2` stays a
//! comparison of an attribute reference with a literal, to be evaluated (or
//! passed on) by whoever understands the other side of the match.

use super::error::{Span, Spanned};
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::fmt;

/// A literal value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Value {
    String(String),
    Integer(i64),
    Real(f64),
    Boolean(bool),
    Undefined,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnaryOp {
    Not,
    Neg,
    Plus,
    BitNot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Or,
    And,
    BitOr,
    BitXor,
    BitAnd,
    Eq,
    NotEq,
    /// `=?=`: identical, also when undefined.
    Is,
    /// `=!=`: not identical.
    Isnt,
    Lt,
    Le,
    Gt,
    Ge,
    Shl,
    Shr,
    UShr,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

/// Binding strength of the conditional, unary and postfix levels; binary
/// operators sit between (see [`BinaryOp::precedence`]).
pub(super) const CONDITIONAL_PREC: u8 = 1;
const UNARY_PREC: u8 = 12;
const POSTFIX_PREC: u8 = 13;

impl UnaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            UnaryOp::Not => "!",
            UnaryOp::Neg => "-",
            UnaryOp::Plus => "+",
            UnaryOp::BitNot => "~",
        }
    }
}

impl BinaryOp {
    /// The operator as written (`is`/`isnt` print as `=?=`/`=!=`).
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Or => "||",
            BinaryOp::And => "&&",
            BinaryOp::BitOr => "|",
            BinaryOp::BitXor => "^",
            BinaryOp::BitAnd => "&",
            BinaryOp::Eq => "==",
            BinaryOp::NotEq => "!=",
            BinaryOp::Is => "=?=",
            BinaryOp::Isnt => "=!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Shl => "<<",
            BinaryOp::Shr => ">>",
            BinaryOp::UShr => ">>>",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Mod => "%",
        }
    }

    /// Higher binds tighter; all binary operators are left-associative.
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => 2,
            BinaryOp::And => 3,
            BinaryOp::BitOr => 4,
            BinaryOp::BitXor => 5,
            BinaryOp::BitAnd => 6,
            BinaryOp::Eq | BinaryOp::NotEq | BinaryOp::Is | BinaryOp::Isnt => 7,
            BinaryOp::Lt | BinaryOp::Le | BinaryOp::Gt | BinaryOp::Ge => 8,
            BinaryOp::Shl | BinaryOp::Shr | BinaryOp::UShr => 9,
            BinaryOp::Add | BinaryOp::Sub => 10,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => 11,
        }
    }
}

/// Operators serialize as their symbol: snapshots read like the source.
impl Serialize for UnaryOp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.symbol())
    }
}

impl Serialize for BinaryOp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.symbol())
    }
}

/// A ClassAd expression. Attribute values are expressions too: a plain
/// value is a `Literal`, a list, or a record.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Expr {
    Literal(Value),
    /// `{ a, b }`; elements keep their positions for error messages.
    List(Vec<Spanned<Expr>>),
    /// `[ a = 1; b = 2 ]`
    Record(ClassAd),
    /// `Name`, or `other.Name` / `self.Name` / `my.Name` / `target.Name` /
    /// `parent.Name` with the scope in lower case.
    AttrRef {
        scope: Option<String>,
        name: String,
    },
    Unary {
        op: UnaryOp,
        operand: Box<Expr>,
    },
    /// `first op1 e1 op2 e2 ...`: operators of one precedence level,
    /// applied left to right. Flat, so a generated `Requirements` with
    /// thousands of `||` is one level deep: dropping, printing and
    /// comparing a tree recurse, one stack frame per level.
    Chain {
        first: Box<Expr>,
        rest: Vec<(BinaryOp, Expr)>,
    },
    /// `cond ? then : otherwise`
    Conditional {
        cond: Box<Expr>,
        then: Box<Expr>,
        otherwise: Box<Expr>,
    },
    /// `member("x", other.Tags)`; the name as written (ClassAd function
    /// names are case-insensitive).
    Call {
        function: String,
        args: Vec<Expr>,
    },
    /// `base.attr` where `base` is not a scope name (e.g. `other.Ad.Attr`).
    Select {
        base: Box<Expr>,
        attr: String,
    },
    /// `base[index]`
    Subscript {
        base: Box<Expr>,
        index: Box<Expr>,
    },
}

/// The words that turn `word.Name` into a scoped attribute reference.
pub(super) const SCOPES: [&str; 5] = ["self", "other", "my", "target", "parent"];

impl Expr {
    /// The string, if this is a string literal.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Expr::Literal(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// What kind of thing this is, with its text, for "found ..." in error
    /// messages: `string "lots"`, `integer -5`, `expression a + b`.
    pub fn describe(&self) -> String {
        let kind = match self {
            Expr::Literal(Value::String(_)) => "string",
            Expr::Literal(Value::Integer(_)) => "integer",
            Expr::Literal(Value::Real(_)) => "real",
            Expr::Literal(Value::Boolean(_)) => "boolean",
            Expr::Literal(Value::Undefined | Value::Error) => return self.to_string(),
            Expr::List(_) => "list",
            Expr::Record(_) => "record",
            Expr::AttrRef { .. } => "attribute reference",
            _ => "expression",
        };
        const LIMIT: usize = 60;
        let text = self.to_string();
        if text.chars().count() > LIMIT {
            format!("{kind} {}...", text.chars().take(LIMIT).collect::<String>())
        } else {
            format!("{kind} {text}")
        }
    }

    fn precedence(&self) -> u8 {
        match self {
            Expr::Conditional { .. } => CONDITIONAL_PREC,
            Expr::Chain { rest, .. } => {
                rest.first().map_or(POSTFIX_PREC, |(op, _)| op.precedence())
            }
            Expr::Unary { .. } => UNARY_PREC,
            // A negative number prints with its sign, like a unary minus.
            Expr::Literal(Value::Integer(n)) if *n < 0 => UNARY_PREC,
            Expr::Literal(Value::Real(r)) if r.is_sign_negative() => UNARY_PREC,
            _ => POSTFIX_PREC,
        }
    }

    /// Writes `self` as an operand that needs at least `min` precedence,
    /// with parentheses if it binds more loosely.
    fn fmt_operand(&self, f: &mut fmt::Formatter<'_>, min: u8) -> fmt::Result {
        if self.precedence() < min {
            write!(f, "({self})")
        } else {
            write!(f, "{self}")
        }
    }
}

/// ClassAd source text, with only the parentheses the precedence needs.
/// Parsing the output gives the same tree.
impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::Literal(value) => write!(f, "{value}"),
            Expr::List(items) => {
                f.write_str("{")?;
                for (i, item) in items.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{}", item.node)?;
                }
                f.write_str("}")
            }
            Expr::Record(ad) => write!(f, "{ad}"),
            Expr::AttrRef {
                scope: Some(scope),
                name,
            } => write!(f, "{scope}.{}", Name(name)),
            Expr::AttrRef { scope: None, name } => write!(f, "{}", Name(name)),
            Expr::Unary { op, operand } => {
                f.write_str(op.symbol())?;
                operand.fmt_operand(f, UNARY_PREC)
            }
            Expr::Chain { first, rest } => {
                let prec = self.precedence();
                first.fmt_operand(f, prec)?;
                for (op, operand) in rest {
                    write!(f, " {} ", op.symbol())?;
                    // Left-associative: an equal-precedence right operand needs parentheses.
                    operand.fmt_operand(f, prec + 1)?;
                }
                Ok(())
            }
            Expr::Conditional {
                cond,
                then,
                otherwise,
            } => {
                cond.fmt_operand(f, CONDITIONAL_PREC + 1)?;
                write!(f, " ? {then} : ")?;
                otherwise.fmt_operand(f, CONDITIONAL_PREC)
            }
            Expr::Call { function, args } => {
                write!(f, "{function}(")?;
                for (i, arg) in args.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{arg}")?;
                }
                f.write_str(")")
            }
            Expr::Select { base, attr } => {
                base.fmt_operand(f, POSTFIX_PREC)?;
                write!(f, ".{}", Name(attr))
            }
            Expr::Subscript { base, index } => {
                base.fmt_operand(f, POSTFIX_PREC)?;
                write!(f, "[{index}]")
            }
        }
    }
}

/// An attribute name as source text: `'weird name'` when it is not an
/// identifier (or is a keyword).
struct Name<'a>(&'a str);

impl fmt::Display for Name<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plain = self
            .0
            .starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && self
                .0
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !super::lexer::is_keyword(self.0);
        if plain {
            f.write_str(self.0)
        } else {
            write_quoted(f, self.0, '\'')
        }
    }
}

/// `text` between `quote`s, escaped so the lexer reads it back.
fn write_quoted(f: &mut fmt::Formatter<'_>, text: &str, quote: char) -> fmt::Result {
    write!(f, "{quote}")?;
    for c in text.chars() {
        match c {
            '\\' => f.write_str("\\\\")?,
            '\n' => f.write_str("\\n")?,
            '\t' => f.write_str("\\t")?,
            '\r' => f.write_str("\\r")?,
            c if c == quote => write!(f, "\\{c}")?,
            // Other control characters as octal, which any ClassAd reads.
            c if c.is_ascii_control() => write!(f, "\\{:03o}", c as u32)?,
            c => write!(f, "{c}")?,
        }
    }
    write!(f, "{quote}")
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::String(s) => write_quoted(f, s, '"'),
            Value::Integer(n) => write!(f, "{n}"),
            // Debug always has a '.' or an exponent, so the text stays a real.
            Value::Real(r) => write!(f, "{r:?}"),
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Undefined => f.write_str("undefined"),
            Value::Error => f.write_str("error"),
        }
    }
}

/// One `Name = value` of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Attribute {
    /// As written; compare with `eq_ignore_ascii_case`.
    pub name: String,
    pub name_span: Span,
    pub value: Spanned<Expr>,
}

/// A record: attributes in source order, names unique ignoring case.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassAd {
    pub(super) span: Span,
    pub(super) attributes: Vec<Attribute>,
}

impl ClassAd {
    /// The value of `name`, ignoring case.
    pub fn get(&self, name: &str) -> Option<&Spanned<Expr>> {
        self.attribute(name).map(|a| &a.value)
    }

    /// The attribute `name` (ignoring case), with its spelling and position.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// All attributes, in source order.
    pub fn attributes(&self) -> &[Attribute] {
        &self.attributes
    }

    pub fn iter(&self) -> impl Iterator<Item = &Attribute> {
        self.attributes.iter()
    }

    pub fn len(&self) -> usize {
        self.attributes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.attributes.is_empty()
    }

    /// Where the record starts: its `[`, or the start of a file without one.
    pub fn span(&self) -> Span {
        self.span
    }
}

/// `[ a = 1; b = "x" ]` on one line; `{:#}` puts each attribute on its own
/// line (nested values stay on one line).
impl fmt::Display for ClassAd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.write_str("[\n")?;
            for a in &self.attributes {
                writeln!(f, "    {} = {};", Name(&a.name), a.value.node)?;
            }
            f.write_str("]")
        } else {
            f.write_str("[")?;
            for (i, a) in self.attributes.iter().enumerate() {
                let sep = if i == 0 { "" } else { "; " };
                write!(f, "{sep}{} = {}", Name(&a.name), a.value.node)?;
            }
            f.write_str("]")
        }
    }
}

/// A map from names to positioned values, in source order.
impl Serialize for ClassAd {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.attributes.len()))?;
        for a in &self.attributes {
            map.serialize_entry(&a.name, &a.value)?;
        }
        map.end()
    }
}
