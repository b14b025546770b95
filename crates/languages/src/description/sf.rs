//! SmartFrog's text syntax (the subset of `DefaultParser.jj` that pool
//! descriptions use): a lexer and a recursive-descent parser.
//!
//! ```text
//! file      := attrList EOF
//! attrList  := ( attribute | ";" )*
//! attribute := name value                  name := WORD | STRING
//! value     := "extends" ["LAZY"|"DATA"] base | "{" attrList "}" | simple | ";"
//! base      := "NULL" | reference [ "{" attrList "}" ] | "{" attrList "}"
//! simple    := reference | STRING | number | "true" | "false" | "NULL"
//!            | "[" [ simple ("," simple)* ] "]" | "[|" [ simple ("," simple)* ] "|]"
//! reference := ["LAZY"] part (":" part)*
//! part      := "ROOT" | "PARENT" | "THIS" | "ATTRIB" name | "HERE" name | WORD
//! ```
//!
//! `//` and `/* */` comments. `#include` is refused with a clear error (give
//! the site's template files as the library instead). Operators, `APPLY`,
//! `ASSERT`, tags and the other SmartFrog extras are syntax errors.

use std::sync::Arc;

use super::model::{Attr, Component, Extends, RefPart, Reference, Value};
use super::{DescriptionError, Pos};

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    Int(i64),
    Real(f64),
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    VecStart,
    VecEnd,
    Semi,
    Colon,
    Comma,
    Include,
    Eof,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("`{w}`"),
            Tok::Str(s) => format!("the string {s:?}"),
            Tok::Int(i) => format!("the number {i}"),
            Tok::Real(r) => format!("the number {r}"),
            Tok::LBrace => "`{`".into(),
            Tok::RBrace => "`}`".into(),
            Tok::LBracket => "`[`".into(),
            Tok::RBracket => "`]`".into(),
            Tok::VecStart => "`[|`".into(),
            Tok::VecEnd => "`|]`".into(),
            Tok::Semi => "`;`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Include => "`#include`".into(),
            Tok::Eof => "the end of the file".into(),
        }
    }
}

struct Lexer<'a> {
    file: Arc<str>,
    chars: Vec<char>,
    i: usize,
    line: u32,
    col: u32,
    line_offset: u32,
    col_offset: u32,
    _src: &'a str,
}

fn is_letter(c: char) -> bool {
    c == '$'
        || c == '_'
        || c.is_ascii_alphabetic()
        || ('\u{A2}'..='\u{A5}').contains(&c)
        || ('\u{C0}'..='\u{FF}').contains(&c) && c != '\u{D7}' && c != '\u{F7}'
}

fn is_word_char(c: char) -> bool {
    is_letter(c) || c.is_ascii_digit() || ".-_+@#~$%^&".contains(c)
}

impl<'a> Lexer<'a> {
    fn new(file: Arc<str>, src: &'a str, at: Option<&Pos>) -> Self {
        Lexer {
            file,
            chars: src.chars().collect(),
            i: 0,
            line: 1,
            col: 1,
            line_offset: at.map_or(0, |p| p.line - 1),
            col_offset: at.map_or(0, |p| p.column - 1),
            _src: src,
        }
    }

    fn pos(&self) -> Pos {
        Pos {
            file: self.file.clone(),
            line: self.line + self.line_offset,
            column: if self.line == 1 {
                self.col + self.col_offset
            } else {
                self.col
            },
        }
    }

    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.i += 1;
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn err(at: Pos, message: impl Into<String>) -> DescriptionError {
        DescriptionError::Syntax {
            at,
            message: message.into(),
        }
    }

    fn skip_space(&mut self) -> Result<(), DescriptionError> {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(c), _) if c.is_whitespace() => {
                    self.bump();
                }
                (Some('/'), Some('/')) => {
                    while let Some(c) = self.peek(0) {
                        if c == '\n' {
                            break;
                        }
                        self.bump();
                    }
                }
                (Some('/'), Some('*')) => {
                    let start = self.pos();
                    self.bump();
                    self.bump();
                    loop {
                        match (self.peek(0), self.peek(1)) {
                            (Some('*'), Some('/')) => {
                                self.bump();
                                self.bump();
                                break;
                            }
                            (Some(_), _) => {
                                self.bump();
                            }
                            (None, _) => return Err(Self::err(start, "unterminated `/*` comment")),
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn next(&mut self) -> Result<(Tok, Pos), DescriptionError> {
        self.skip_space()?;
        let at = self.pos();
        let Some(c) = self.peek(0) else {
            return Ok((Tok::Eof, at));
        };
        let single = match c {
            '{' => Some(Tok::LBrace),
            '}' => Some(Tok::RBrace),
            ']' => Some(Tok::RBracket),
            ';' => Some(Tok::Semi),
            ':' => Some(Tok::Colon),
            ',' => Some(Tok::Comma),
            _ => None,
        };
        if let Some(t) = single {
            self.bump();
            return Ok((t, at));
        }
        if c == '[' {
            self.bump();
            if self.peek(0) == Some('|') {
                self.bump();
                return Ok((Tok::VecStart, at));
            }
            return Ok((Tok::LBracket, at));
        }
        if c == '|' && self.peek(1) == Some(']') {
            self.bump();
            self.bump();
            return Ok((Tok::VecEnd, at));
        }
        if c == '"' {
            return self.string(at);
        }
        if c == '#' {
            let rest: String = self.chars[self.i..].iter().take(8).collect();
            if rest.starts_with("#include") {
                for _ in 0..8 {
                    self.bump();
                }
                if self.peek(0) == Some('?') {
                    self.bump();
                }
                return Ok((Tok::Include, at));
            }
            return Err(Self::err(
                at,
                "`#` starts a multi-line string, byte array or directive, which descriptions do not support",
            ));
        }
        if c.is_ascii_digit()
            || (c == '-' || c == '.') && self.peek(1).is_some_and(|d| d.is_ascii_digit())
        {
            return self.number(at);
        }
        if is_letter(c) {
            let mut w = String::new();
            while let Some(c) = self.peek(0) {
                if !is_word_char(c) {
                    break;
                }
                w.push(c);
                self.bump();
            }
            return Ok((Tok::Word(w), at));
        }
        Err(Self::err(
            at,
            format!(
                "unexpected character {c:?} (SmartFrog operators and functions are not supported)"
            ),
        ))
    }

    fn string(&mut self, at: Pos) -> Result<(Tok, Pos), DescriptionError> {
        self.bump();
        let mut s = String::new();
        loop {
            let here = self.pos();
            match self.bump() {
                None | Some('\n') | Some('\r') => {
                    return Err(Self::err(
                        at,
                        "unterminated string (strings end on the same line)",
                    ));
                }
                Some('"') => return Ok((Tok::Str(s), at)),
                Some('\\') => match self.bump() {
                    Some('n') => s.push('\n'),
                    Some('t') => s.push('\t'),
                    Some('b') => s.push('\u{8}'),
                    Some('r') => s.push('\r'),
                    Some('f') => s.push('\u{c}'),
                    Some(c @ ('\\' | '\'' | '"')) => s.push(c),
                    Some(d @ '0'..='3') => {
                        let (Some(e @ '0'..='7'), Some(g @ '0'..='7')) =
                            (self.peek(0), self.peek(1))
                        else {
                            return Err(Self::err(
                                here,
                                "an octal escape needs three digits, as in \\101",
                            ));
                        };
                        self.bump();
                        self.bump();
                        let v = (d as u32 - 48) * 64 + (e as u32 - 48) * 8 + (g as u32 - 48);
                        s.push(char::from_u32(v).unwrap_or('\u{FFFD}'));
                    }
                    other => {
                        return Err(Self::err(
                            here,
                            format!(
                                "unknown escape `\\{}` in a string",
                                other.map(String::from).unwrap_or_default()
                            ),
                        ));
                    }
                },
                Some(c) => s.push(c),
            }
        }
    }

    fn number(&mut self, at: Pos) -> Result<(Tok, Pos), DescriptionError> {
        let mut t = String::new();
        if self.peek(0) == Some('-') {
            t.push('-');
            self.bump();
        }
        let mut real = false;
        while let Some(c) = self.peek(0) {
            if c.is_ascii_digit() {
                t.push(c);
            } else if c == '.' && !real {
                real = true;
                t.push(c);
            } else if (c == 'e' || c == 'E')
                && (self.peek(1).is_some_and(|d| d.is_ascii_digit())
                    || matches!(self.peek(1), Some('+' | '-'))
                        && self.peek(2).is_some_and(|d| d.is_ascii_digit()))
            {
                real = true;
                t.push(c);
                self.bump();
                t.push(self.peek(0).unwrap_or('0'));
            } else {
                break;
            }
            self.bump();
        }
        // SmartFrog's type suffixes: L (long), D / F (double / float).
        let suffix = self.peek(0);
        match suffix {
            Some('l' | 'L') if !real => {
                self.bump();
            }
            Some('d' | 'D' | 'f' | 'F') => {
                self.bump();
                real = true;
            }
            _ => {}
        }
        if self.peek(0).is_some_and(is_word_char) {
            return Err(Self::err(at, format!("malformed number starting `{t}`")));
        }
        if real {
            t.parse::<f64>()
                .map(|r| (Tok::Real(r), at.clone()))
                .map_err(|_| Self::err(at, format!("malformed number `{t}`")))
        } else {
            t.parse::<i64>()
                .map(|i| (Tok::Int(i), at.clone()))
                .map_err(|_| Self::err(at, format!("number `{t}` is out of range")))
        }
    }
}

struct Parser<'a> {
    lex: Lexer<'a>,
    tok: Tok,
    at: Pos,
    /// Components and lists open around the current token, bounded by
    /// `MAX_NESTING`: the parser recurses, and a description is untrusted.
    depth: u32,
}

/// Deeper than any real description (Figure 1 nests 4), far below what
/// overflows the stack.
const MAX_NESTING: u32 = 64;

const RESERVED: &[&str] = &[
    "APPLY",
    "ASSERT",
    "ATTRIB",
    "DATA",
    "extends",
    "false",
    "HERE",
    "HOST",
    "PROPERTY",
    "IPROPERTY",
    "ENVPROPERTY",
    "IENVPROPERTY",
    "CONSTANT",
    "LAZY",
    "NULL",
    "OPTIONAL",
    "PARENT",
    "PROCESS",
    "ROOT",
    "TBD",
    "THIS",
    "true",
    "IF",
    "THEN",
    "ELSE",
    "FI",
    "SWITCH",
    "ENDSWITCH",
    "VAR",
];

impl<'a> Parser<'a> {
    fn new(file: Arc<str>, src: &'a str, at: Option<&Pos>) -> Result<Self, DescriptionError> {
        let mut lex = Lexer::new(file, src, at);
        let (tok, at) = lex.next()?;
        Ok(Parser {
            lex,
            tok,
            at,
            depth: 0,
        })
    }

    fn advance(&mut self) -> Result<(Tok, Pos), DescriptionError> {
        let (tok, at) = self.lex.next()?;
        let old_tok = std::mem::replace(&mut self.tok, tok);
        let old_at = std::mem::replace(&mut self.at, at);
        Ok((old_tok, old_at))
    }

    fn error<T>(&self, expected: &str) -> Result<T, DescriptionError> {
        Err(DescriptionError::Syntax {
            at: self.at.clone(),
            message: format!("expected {expected}, found {}", self.tok.describe()),
        })
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(&self.tok, Tok::Word(x) if x == w)
    }

    fn attr_list(&mut self, comp: &mut Component, top: bool) -> Result<(), DescriptionError> {
        loop {
            match &self.tok {
                Tok::Semi => {
                    self.advance()?;
                }
                Tok::Eof if top => return Ok(()),
                Tok::RBrace if !top => return Ok(()),
                Tok::Include => {
                    return Err(DescriptionError::Syntax {
                        at: self.at.clone(),
                        message: "`#include` is not supported: pass the included file as a template library file instead"
                            .into(),
                    });
                }
                Tok::Word(w) if !RESERVED.contains(&w.as_str()) => {
                    let name = w.clone();
                    self.attribute(comp, name)?;
                }
                Tok::Str(s) => {
                    let name = s.clone();
                    self.attribute(comp, name)?;
                }
                Tok::LBracket => {
                    return Err(DescriptionError::Syntax {
                        at: self.at.clone(),
                        message: "attribute tags (`[tag] name value`) are not supported".into(),
                    });
                }
                _ if top => return self.error("an attribute name"),
                _ => return self.error("an attribute name or `}`"),
            }
        }
    }

    fn attribute(&mut self, comp: &mut Component, name: String) -> Result<(), DescriptionError> {
        let (_, at) = self.advance()?;
        if self.tok == Tok::Colon {
            return Err(DescriptionError::Syntax {
                at: self.at.clone(),
                message: format!("attribute names with a path (`{name}:...`) are not supported"),
            });
        }
        let value = if self.is_word("extends") {
            self.advance()?;
            Value::Component(self.component(at.clone())?)
        } else if self.tok == Tok::LBrace {
            // `name { ... }`, shorthand for SmartFrog's `name extends { ... }`.
            Value::Component(self.component(at.clone())?)
        } else if self.tok == Tok::Semi || self.tok == Tok::RBrace {
            // `name;` is SmartFrog's NULL.
            Value::Null
        } else {
            self.simple()?
        };
        if comp.get(&name).is_some() {
            return Err(DescriptionError::Syntax {
                at,
                message: format!("attribute `{name}` is defined twice in the same component"),
            });
        }
        comp.push(name, Attr { value, pos: at });
        Ok(())
    }

    /// Runs `f` one nesting level deeper, or refuses past `MAX_NESTING`.
    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, DescriptionError>,
    ) -> Result<T, DescriptionError> {
        if self.depth >= MAX_NESTING {
            return Err(DescriptionError::Syntax {
                at: self.at.clone(),
                message: format!(
                    "components and lists nested too deeply (more than {MAX_NESTING} levels)"
                ),
            });
        }
        self.depth += 1;
        let result = f(self);
        self.depth -= 1;
        result
    }

    fn component(&mut self, at: Pos) -> Result<Component, DescriptionError> {
        self.nested(|p| p.component_body(at))
    }

    fn component_body(&mut self, at: Pos) -> Result<Component, DescriptionError> {
        let mut comp = Component::new(at);
        if self.is_word("LAZY") || self.is_word("DATA") {
            self.advance()?;
        }
        if self.is_word("NULL") {
            self.advance()?;
        } else if self.tok != Tok::LBrace {
            let pos = self.at.clone();
            let reference = self.link_reference(false)?;
            comp.extends = Some(Extends { reference, pos });
        }
        if self.tok == Tok::Comma {
            return Err(DescriptionError::Syntax {
                at: self.at.clone(),
                message: "extending several components (`extends A, B`) is not supported".into(),
            });
        }
        if self.tok == Tok::LBrace {
            self.advance()?;
            self.attr_list(&mut comp, false)?;
            self.advance()?; // `}`
        }
        Ok(comp)
    }

    fn simple(&mut self) -> Result<Value, DescriptionError> {
        let (tok, at) = (self.tok.clone(), self.at.clone());
        match tok {
            Tok::Str(s) => {
                self.advance()?;
                Ok(Value::Str(s))
            }
            Tok::Int(i) => {
                self.advance()?;
                Ok(Value::Int(i))
            }
            Tok::Real(r) => {
                self.advance()?;
                Ok(Value::Real(r))
            }
            Tok::LBracket | Tok::VecStart => {
                let close = if tok == Tok::LBracket {
                    Tok::RBracket
                } else {
                    Tok::VecEnd
                };
                self.advance()?;
                let mut items = Vec::new();
                if self.tok != close {
                    loop {
                        let pos = self.at.clone();
                        let value = self.nested(|p| p.simple())?;
                        items.push(Attr { value, pos });
                        if self.tok == Tok::Comma {
                            self.advance()?;
                        } else {
                            break;
                        }
                    }
                }
                if self.tok != close {
                    return self.error(&format!("`,` or {}", close.describe()));
                }
                self.advance()?;
                let _ = at;
                Ok(Value::List(items))
            }
            Tok::Word(w) => match w.as_str() {
                "true" => {
                    self.advance()?;
                    Ok(Value::Bool(true))
                }
                "false" => {
                    self.advance()?;
                    Ok(Value::Bool(false))
                }
                "NULL" => {
                    self.advance()?;
                    Ok(Value::Null)
                }
                "LAZY" => {
                    self.advance()?;
                    Ok(Value::Ref(self.link_reference(true)?))
                }
                _ => Ok(Value::Ref(self.link_reference(false)?)),
            },
            _ => self.error(
                "a value (string, number, true, false, NULL, [list], reference or `extends`)",
            ),
        }
    }

    fn name(&mut self) -> Result<String, DescriptionError> {
        match self.tok.clone() {
            Tok::Word(w) | Tok::Str(w) => {
                self.advance()?;
                Ok(w)
            }
            _ => self.error("a name"),
        }
    }

    fn link_reference(&mut self, lazy: bool) -> Result<Reference, DescriptionError> {
        let mut parts = Vec::new();
        loop {
            let Tok::Word(w) = self.tok.clone() else {
                return self.error("a reference (a name, ATTRIB, PARENT, ROOT, THIS or HERE)");
            };
            let part = match w.as_str() {
                "ROOT" => {
                    self.advance()?;
                    RefPart::Root
                }
                "PARENT" => {
                    self.advance()?;
                    RefPart::Parent
                }
                "THIS" => {
                    self.advance()?;
                    RefPart::This
                }
                "ATTRIB" => {
                    self.advance()?;
                    RefPart::Attrib(self.name()?)
                }
                "HERE" => {
                    self.advance()?;
                    RefPart::Here(self.name()?)
                }
                w if RESERVED.contains(&w) => {
                    return Err(DescriptionError::Syntax {
                        at: self.at.clone(),
                        message: format!("`{w}` is not supported in a reference"),
                    });
                }
                _ => {
                    self.advance()?;
                    if parts.is_empty() {
                        RefPart::Attrib(w)
                    } else {
                        RefPart::Here(w)
                    }
                }
            };
            parts.push(part);
            if self.tok == Tok::Colon {
                self.advance()?;
            } else {
                return Ok(Reference { lazy, parts });
            }
        }
    }
}

/// Parses a whole `.sf` file: its top-level attributes, as a root component.
pub(crate) fn parse_file(file: Arc<str>, src: &str) -> Result<Component, DescriptionError> {
    let mut p = Parser::new(file.clone(), src, None)?;
    let mut root = Component::new(Pos {
        file,
        line: 1,
        column: 1,
    });
    p.attr_list(&mut root, true)?;
    Ok(root)
}

/// Parses `[LAZY] a:b:c` written at `at` (a YAML `$ref` or `extends`).
pub(crate) fn parse_reference(src: &str, at: &Pos) -> Result<Reference, DescriptionError> {
    let mut p = Parser::new(at.file.clone(), src, Some(at))?;
    let lazy = p.is_word("LAZY");
    if lazy {
        p.advance()?;
    }
    let r = p.link_reference(lazy)?;
    if p.tok != Tok::Eof {
        return p.error("the end of the reference");
    }
    Ok(r)
}
