//! The recursive-descent parser of JDL text into the syntax tree of
//! [`super::ast`].
//!
//! Recursion happens only at nesting (parentheses, lists, records,
//! arguments, subscripts, `?:` branches), bounded by `MAX_NESTING`; a run
//! of binary operators is read in a loop into one flat `Expr::Chain`.

use super::ast::*;
use super::error::{spanned, JdlError, Span, Spanned};
use super::lexer::{is_keyword, Lexer, Tok, Token};
use std::path::Path;

/// How deeply brackets, braces and parentheses may nest. Bounds the
/// parser's recursion so no input can overflow the stack (debug builds
/// use ~20 KiB of stack per level). Real JDLs nest a handful of levels.
const MAX_NESTING: u32 = 32;

/// How tall an expression tree may grow. Dropping, printing, comparing and
/// serializing a tree recurse. A run of binary operators of one level is a
/// single node, so this bounds prefix operators, selections, subscripts and
/// alternating precedence levels, not long `||` chains.
const MAX_HEIGHT: u32 = 200;

/// Operators in one flat chain. Generated `Requirements` listing every CE
/// of a grid run to a few thousand `||`; this leaves room for ten times that.
const MAX_CHAIN: usize = 50_000;

/// The operator a token stands for (the parser's reading of it).
trait FromTok: Sized {
    fn from_tok(tok: &Tok) -> Option<Self>;
}

impl FromTok for UnaryOp {
    fn from_tok(tok: &Tok) -> Option<Self> {
        Some(match tok {
            Tok::Bang => UnaryOp::Not,
            Tok::Minus => UnaryOp::Neg,
            Tok::Plus => UnaryOp::Plus,
            Tok::Tilde => UnaryOp::BitNot,
            _ => return None,
        })
    }
}

impl FromTok for BinaryOp {
    fn from_tok(tok: &Tok) -> Option<Self> {
        Some(match tok {
            Tok::OrOr => BinaryOp::Or,
            Tok::AndAnd => BinaryOp::And,
            Tok::Pipe => BinaryOp::BitOr,
            Tok::Caret => BinaryOp::BitXor,
            Tok::Amp => BinaryOp::BitAnd,
            Tok::EqEq => BinaryOp::Eq,
            Tok::NotEq => BinaryOp::NotEq,
            Tok::MetaEq => BinaryOp::Is,
            Tok::MetaNotEq => BinaryOp::Isnt,
            Tok::Ident(word) if word.eq_ignore_ascii_case("is") => BinaryOp::Is,
            Tok::Ident(word) if word.eq_ignore_ascii_case("isnt") => BinaryOp::Isnt,
            Tok::Lt => BinaryOp::Lt,
            Tok::Le => BinaryOp::Le,
            Tok::Gt => BinaryOp::Gt,
            Tok::Ge => BinaryOp::Ge,
            Tok::Shl => BinaryOp::Shl,
            Tok::Shr => BinaryOp::Shr,
            Tok::UShr => BinaryOp::UShr,
            Tok::Plus => BinaryOp::Add,
            Tok::Minus => BinaryOp::Sub,
            Tok::Star => BinaryOp::Mul,
            Tok::Slash => BinaryOp::Div,
            Tok::Percent => BinaryOp::Mod,
            _ => return None,
        })
    }
}

/// Parses JDL text into a record. `file` only labels error messages.
///
/// The outer `[ ... ]` is optional: a file may be a bare list of
/// `Name = value;` attributes.
pub fn parse_str(src: &str, file: &Path) -> Result<ClassAd, JdlError> {
    let mut parser = Parser::new(src, file)?;
    if parser.tok.tok == Tok::LBracket {
        let (ad, _) = parser.class_ad()?;
        // ClassAd allows `;` after the record (a WMS test JDL ends so).
        while parser.tok.tok == Tok::Semi {
            parser.advance()?;
        }
        if parser.tok.tok != Tok::Eof {
            return Err(parser.unexpected("end of input after ']'"));
        }
        Ok(ad)
    } else {
        let attributes = parser.attributes(None)?.0;
        Ok(ClassAd {
            span: Span::new(1, 1),
            attributes,
        })
    }
}

/// An expression under construction, with the height of its tree.
struct Built {
    expr: Expr,
    height: u32,
}

struct Parser<'a> {
    lexer: Lexer<'a>,
    /// The current (not yet consumed) token.
    tok: Token,
    /// Current recursion depth through `expr()`, bounded by `MAX_NESTING`.
    depth: u32,
    /// Where the token just consumed started, if it was a string over
    /// several lines: then a later error is most likely a missing '"'.
    multiline_string: Option<Span>,
}

impl<'a> Parser<'a> {
    fn new(src: &'a str, file: &'a Path) -> Result<Self, JdlError> {
        let mut lexer = Lexer::new(src, file);
        let tok = lexer.next_token()?;
        Ok(Parser {
            lexer,
            tok,
            depth: 0,
            multiline_string: None,
        })
    }

    /// Consumes the current token and returns it.
    fn advance(&mut self) -> Result<Token, JdlError> {
        let next = self.lexer.next_token()?;
        let token = std::mem::replace(&mut self.tok, next);
        self.multiline_string = match &token.tok {
            Tok::Str(text) if text.contains('\n') => Some(token.span),
            _ => None,
        };
        Ok(token)
    }

    fn error(&self, span: Span, message: impl Into<String>) -> JdlError {
        JdlError::new(self.lexer.file(), span, message)
    }

    /// "expected X, found <current token>", at the current token.
    fn unexpected(&self, expected: &str) -> JdlError {
        let hint = match self.multiline_string {
            Some(at) => format!(" (the string at {at} runs over a line end: is a '\"' missing?)"),
            None => String::new(),
        };
        self.error(
            self.tok.span,
            format!("expected {expected}, found {}{hint}", self.tok.tok),
        )
    }

    fn expect(&mut self, tok: Tok, expected: &str) -> Result<Token, JdlError> {
        if self.tok.tok == tok {
            self.advance()
        } else {
            Err(self.unexpected(expected))
        }
    }

    /// An identifier that is not a keyword, or a `'quoted name'`
    /// (attribute and field names).
    fn name(&mut self, expected: &str) -> Result<(String, Span), JdlError> {
        match &self.tok.tok {
            Tok::Ident(word) | Tok::QuotedName(word)
                if matches!(self.tok.tok, Tok::QuotedName(_)) || !is_keyword(word) =>
            {
                let word = word.clone();
                Ok((word, self.advance()?.span))
            }
            _ => Err(self.unexpected(expected)),
        }
    }

    /// Wraps a new node around children of the given heights.
    fn build(&self, span: Span, expr: Expr, children: &[u32]) -> Result<Built, JdlError> {
        let height = 1 + children.iter().copied().max().unwrap_or(0);
        if height > MAX_HEIGHT {
            return Err(self.error(
                span,
                format!("expression too complex (more than {MAX_HEIGHT} levels of operators)"),
            ));
        }
        Ok(Built { expr, height })
    }

    /// `[ attributes ]`, with the height of its tallest value.
    fn class_ad(&mut self) -> Result<(ClassAd, u32), JdlError> {
        let open = self.expect(Tok::LBracket, "'['")?;
        let (attributes, height) = self.attributes(Some(open.span))?;
        self.advance()?; // the `]` that attributes() stopped at
        Ok((
            ClassAd {
                span: open.span,
                attributes,
            },
            height,
        ))
    }

    /// A record as a value.
    fn record(&mut self) -> Result<Built, JdlError> {
        let span = self.tok.span;
        let (ad, height) = self.class_ad()?;
        self.build(span, Expr::Record(ad), &[height])
    }

    /// `Name = value; ...` up to (not including) the `]` that closes the
    /// `[` at `open`, or up to the end of input for a file without brackets.
    /// Returns the attributes and the tallest value's height.
    fn attributes(&mut self, open: Option<Span>) -> Result<(Vec<Attribute>, u32), JdlError> {
        let (end, closer) = match open {
            Some(_) => (Tok::RBracket, "']'"),
            None => (Tok::Eof, "end of input"),
        };
        let mut attributes: Vec<Attribute> = vec![];
        // Lower-cased name -> index in `attributes`: the duplicate check stays
        // linear (a 120k-attribute request must not take seconds of a prolog).
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        let mut height = 0;
        while self.tok.tok != end {
            // Empty statements (`;;`) are allowed, as in ClassAd.
            if self.tok.tok == Tok::Semi {
                self.advance()?;
                continue;
            }
            if let (Tok::Eof, Some(open)) = (&self.tok.tok, open) {
                return Err(self.unexpected(&format!("']' to close '[' at {open}")));
            }
            let (name, name_span) = self.name(&format!("attribute name or {closer}"))?;
            if let Some(first) = seen
                .get(&name.to_ascii_lowercase())
                .map(|&i| &attributes[i])
            {
                return Err(self.error(
                    name_span,
                    format!(
                        "duplicate attribute '{name}' (first defined at {})",
                        first.name_span
                    ),
                ));
            }
            self.expect(Tok::Assign, &format!("'=' after attribute name '{name}'"))?;
            let value_span = self.tok.span;
            let value = self.expr()?;
            height = height.max(value.height);
            seen.insert(name.to_ascii_lowercase(), attributes.len());
            attributes.push(Attribute {
                name,
                name_span,
                value: spanned(value_span, value.expr),
            });
            if self.tok.tok == Tok::Semi {
                self.advance()?;
            } else if self.tok.tok != end && self.tok.tok != Tok::Eof {
                // (An unclosed record at end of input is reported above.)
                return Err(self.unexpected(&format!("';' or {closer} after attribute value")));
            }
        }
        Ok((attributes, height))
    }

    /// A full expression, conditional included.
    fn expr(&mut self) -> Result<Built, JdlError> {
        if self.depth >= MAX_NESTING {
            return Err(self.error(
                self.tok.span,
                format!("expression nested too deeply (more than {MAX_NESTING} levels)"),
            ));
        }
        self.depth += 1;
        let result = self.conditional();
        self.depth -= 1;
        result
    }

    /// `cond ? then : otherwise`, right-associative.
    fn conditional(&mut self) -> Result<Built, JdlError> {
        let cond = self.binary(CONDITIONAL_PREC + 1)?;
        if self.tok.tok != Tok::Question {
            return Ok(cond);
        }
        let question = self.advance()?;
        if self.tok.tok == Tok::Colon {
            return Err(self.error(
                question.span,
                "'?:' (HTCondor's newer \"elvis\" operator) is not JDL, which the WMS \
                 and CREAM read with the older ClassAd library; write \
                 'a isnt undefined ? a : b'",
            ));
        }
        let then = self.expr()?;
        self.expect(Tok::Colon, "':' of conditional expression")?;
        let otherwise = self.expr()?;
        let heights = [cond.height, then.height, otherwise.height];
        let expr = Expr::Conditional {
            cond: Box::new(cond.expr),
            then: Box::new(then.expr),
            otherwise: Box::new(otherwise.expr),
        };
        self.build(question.span, expr, &heights)
    }

    /// Binary operators binding at least as tightly as `min_prec`, by
    /// precedence climbing: each level's run of operators is one flat chain,
    /// so recursion goes one call per precedence level, not per operator.
    fn binary(&mut self, min_prec: u8) -> Result<Built, JdlError> {
        let mut lhs = self.unary()?;
        while let Some(prec) = self.binary_op().map(BinaryOp::precedence) {
            if prec < min_prec {
                break;
            }
            let span = self.tok.span;
            let mut height = lhs.height;
            let mut rest = vec![];
            while let Some(op) = self.binary_op().filter(|op| op.precedence() == prec) {
                if rest.len() == MAX_CHAIN {
                    return Err(self.error(
                        self.tok.span,
                        format!("expression too long (more than {MAX_CHAIN} operators in a row)"),
                    ));
                }
                self.advance()?;
                let rhs = self.binary(prec + 1)?;
                height = height.max(rhs.height);
                rest.push((op, rhs.expr));
            }
            let expr = Expr::Chain {
                first: Box::new(lhs.expr),
                rest,
            };
            lhs = self.build(span, expr, &[height])?;
        }
        Ok(lhs)
    }

    fn binary_op(&self) -> Option<BinaryOp> {
        BinaryOp::from_tok(&self.tok.tok)
    }

    /// Prefix operators, collected in a loop so `!!!!x` does not recurse.
    /// A minus or plus on a number literal is folded into the literal, so
    /// `Memory = -5` reads as the integer -5.
    fn unary(&mut self) -> Result<Built, JdlError> {
        let mut ops = vec![];
        while let Some(op) = UnaryOp::from_tok(&self.tok.tok) {
            ops.push((op, self.advance()?.span));
        }
        // `-9223372036854775808`: the one integer whose magnitude is no i64.
        if let (Some((UnaryOp::Neg, _)), Tok::Int(n)) = (ops.last(), &self.tok.tok) {
            if *n == 1 << 63 {
                ops.pop();
                self.advance()?;
                let literal = Built {
                    expr: Expr::Literal(Value::Integer(i64::MIN)),
                    height: 1,
                };
                let operand = self.postfix_of(literal)?;
                return self.apply_prefix(ops, operand);
            }
        }
        let operand = self.postfix()?;
        self.apply_prefix(ops, operand)
    }

    /// Wraps prefix operators (collected in reading order) around `operand`.
    fn apply_prefix(
        &self,
        ops: Vec<(UnaryOp, Span)>,
        mut operand: Built,
    ) -> Result<Built, JdlError> {
        for (op, span) in ops.into_iter().rev() {
            operand = match (op, operand.expr) {
                (UnaryOp::Plus, literal @ Expr::Literal(Value::Integer(_) | Value::Real(_))) => {
                    Built {
                        expr: literal,
                        height: operand.height,
                    }
                }
                (UnaryOp::Neg, Expr::Literal(Value::Integer(n))) if n != i64::MIN => Built {
                    expr: Expr::Literal(Value::Integer(-n)),
                    height: operand.height,
                },
                (UnaryOp::Neg, Expr::Literal(Value::Real(r))) => Built {
                    expr: Expr::Literal(Value::Real(-r)),
                    height: operand.height,
                },
                (op, expr) => self.build(
                    span,
                    Expr::Unary {
                        op,
                        operand: Box::new(expr),
                    },
                    &[operand.height],
                )?,
            };
        }
        Ok(operand)
    }

    /// Selections `a.b` and subscripts `a[i]` after a primary.
    fn postfix(&mut self) -> Result<Built, JdlError> {
        let base = self.primary()?;
        self.postfix_of(base)
    }

    fn postfix_of(&mut self, mut base: Built) -> Result<Built, JdlError> {
        loop {
            match self.tok.tok {
                Tok::Dot => {
                    let dot = self.advance()?;
                    let (attr, _) = self.name("attribute name after '.'")?;
                    base = match base.expr {
                        Expr::AttrRef { scope: None, name }
                            if SCOPES.iter().any(|s| s.eq_ignore_ascii_case(&name)) =>
                        {
                            let expr = Expr::AttrRef {
                                scope: Some(name.to_ascii_lowercase()),
                                name: attr,
                            };
                            Built {
                                expr,
                                height: base.height,
                            }
                        }
                        expr => self.build(
                            dot.span,
                            Expr::Select {
                                base: Box::new(expr),
                                attr,
                            },
                            &[base.height],
                        )?,
                    };
                }
                Tok::LBracket => {
                    let open = self.advance()?;
                    let index = self.expr()?;
                    self.expect(
                        Tok::RBracket,
                        &format!("']' to close subscript '[' at {}", open.span),
                    )?;
                    let heights = [base.height, index.height];
                    let expr = Expr::Subscript {
                        base: Box::new(base.expr),
                        index: Box::new(index.expr),
                    };
                    base = self.build(open.span, expr, &heights)?;
                }
                _ => return Ok(base),
            }
        }
    }

    fn primary(&mut self) -> Result<Built, JdlError> {
        let span = self.tok.span;
        let literal = |value| {
            Ok(Built {
                expr: Expr::Literal(value),
                height: 1,
            })
        };
        match &self.tok.tok {
            Tok::Int(n) => {
                let Ok(n) = i64::try_from(*n) else {
                    return Err(self.error(span, format!("integer {n} is out of range")));
                };
                self.advance()?;
                literal(Value::Integer(n))
            }
            Tok::Real(r) => {
                let value = Value::Real(*r);
                self.advance()?;
                literal(value)
            }
            Tok::Str(text) => {
                let value = Value::String(text.clone());
                self.advance()?;
                literal(value)
            }
            Tok::Ident(word) if is_keyword(word) => {
                let value = match word.to_ascii_lowercase().as_str() {
                    "true" => Value::Boolean(true),
                    "false" => Value::Boolean(false),
                    "undefined" => Value::Undefined,
                    "error" => Value::Error,
                    _ => return Err(self.unexpected("an expression")), // `is`, `isnt`
                };
                self.advance()?;
                literal(value)
            }
            Tok::Dot => Err(self.error(
                span,
                "'.name' (HTCondor's newer reference to the outermost record) is not JDL, \
                 which the WMS and CREAM read with the older ClassAd library; write the name alone",
            )),
            Tok::QuotedName(_) => {
                let (name, _) = self.name("a name")?;
                Ok(Built {
                    expr: Expr::AttrRef { scope: None, name },
                    height: 1,
                })
            }
            Tok::Ident(_) => {
                let (name, _) = self.name("a name")?;
                if self.tok.tok == Tok::LParen {
                    self.call(name, span)
                } else {
                    Ok(Built {
                        expr: Expr::AttrRef { scope: None, name },
                        height: 1,
                    })
                }
            }
            Tok::LParen => {
                let open = self.advance()?;
                let inner = self.expr()?;
                self.expect(Tok::RParen, &format!("')' to close '(' at {}", open.span))?;
                Ok(inner)
            }
            Tok::LBrace => self.list(),
            Tok::LBracket => self.record(),
            _ => Err(self.unexpected("an expression")),
        }
    }

    /// `name(arg, ...)`, at the `(`.
    fn call(&mut self, function: String, span: Span) -> Result<Built, JdlError> {
        self.advance()?;
        let (args, heights) = self.comma_separated(
            Tok::RParen,
            &format!("',' or ')' in arguments of '{function}'"),
        )?;
        let args = args.into_iter().map(|a| a.node).collect();
        self.build(span, Expr::Call { function, args }, &heights)
    }

    /// `{ item, ... }`
    fn list(&mut self) -> Result<Built, JdlError> {
        let open = self.advance()?;
        let (items, heights) = self.comma_separated(Tok::RBrace, "',' or '}' in list")?;
        self.build(open.span, Expr::List(items), &heights)
    }

    /// Expressions separated by commas, up to and including `close`.
    fn comma_separated(
        &mut self,
        close: Tok,
        expected: &str,
    ) -> Result<(Vec<Spanned<Expr>>, Vec<u32>), JdlError> {
        let mut items = vec![];
        let mut heights = vec![];
        if self.tok.tok == close {
            self.advance()?;
            return Ok((items, heights));
        }
        loop {
            let span = self.tok.span;
            let item = self.expr()?;
            heights.push(item.height);
            items.push(spanned(span, item.expr));
            if self.tok.tok == Tok::Comma {
                self.advance()?;
            } else if self.tok.tok == close {
                self.advance()?;
                return Ok((items, heights));
            } else {
                return Err(self.unexpected(expected));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> ClassAd {
        parse_str(src, Path::new("t.jdl")).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_error(src: &str) -> String {
        parse_str(src, Path::new("t.jdl")).unwrap_err().to_string()
    }

    #[test]
    fn many_attributes_and_a_late_duplicate_with_any_case() {
        // 120k attributes (1.4 MB): the duplicate check must stay linear.
        let mut src: String = (0..120_000).map(|i| format!("Attr{i} = {i};\n")).collect();
        assert_eq!(parse(&src).attributes.len(), 120_000);
        src.push_str("ATTR7 = 1;\n");
        assert_eq!(
            parse_error(&src),
            "t.jdl:120001:1: duplicate attribute 'ATTR7' (first defined at 8:1)"
        );
    }

    /// The value of attribute `x` in `x = <src>`.
    fn expr(src: &str) -> Expr {
        parse(&format!("x = {src}")).get("x").unwrap().node.clone()
    }

    /// The tree as a fully parenthesised S-expression, to check grouping.
    fn tree(e: &Expr) -> String {
        match e {
            Expr::Literal(v) => v.to_string(),
            Expr::AttrRef { .. } => e.to_string(),
            Expr::List(items) => {
                format!(
                    "{{{}}}",
                    items
                        .iter()
                        .map(|i| tree(&i.node))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            }
            Expr::Record(ad) => ad.to_string(),
            Expr::Unary { op, operand } => format!("({} {})", op.symbol(), tree(operand)),
            // Folded left, as the chain means: `(- (- a b) c)`.
            Expr::Chain { first, rest } => rest.iter().fold(tree(first), |lhs, (op, rhs)| {
                format!("({} {lhs} {})", op.symbol(), tree(rhs))
            }),
            Expr::Conditional {
                cond,
                then,
                otherwise,
            } => {
                format!("(? {} {} {})", tree(cond), tree(then), tree(otherwise))
            }
            Expr::Call { function, args } => {
                format!(
                    "(call {function}{})",
                    args.iter()
                        .map(|a| format!(" {}", tree(a)))
                        .collect::<String>()
                )
            }
            Expr::Select { base, attr } => format!("(. {} {attr})", tree(base)),
            Expr::Subscript { base, index } => format!("([] {} {})", tree(base), tree(index)),
        }
    }

    fn grouping(src: &str) -> String {
        tree(&expr(src))
    }

    const REALISTIC: &str = include_str!("testdata/realistic.jdl");

    #[test]
    fn bracketed_and_bare_files_parse_alike() {
        let bracketed = parse("[ a = 1; b = \"x\"; ]");
        let bare = parse("a = 1; b = \"x\";");
        assert_eq!(bracketed.to_string(), "[a = 1; b = \"x\"]");
        assert_eq!(bare.to_string(), bracketed.to_string());
        assert_eq!(bracketed.span(), Span::new(1, 1));
    }

    #[test]
    fn last_semicolon_is_optional() {
        assert_eq!(parse("[ a = 1; b = 2 ]").len(), 2);
        assert_eq!(parse("a = 1; b = 2").len(), 2);
        assert_eq!(parse("a = 1").len(), 1);
    }

    #[test]
    fn empty_inputs() {
        assert!(parse("").is_empty());
        assert!(parse("  // nothing\n").is_empty());
        assert!(parse("[]").is_empty());
        assert!(parse("[ /* nothing */ ]").is_empty());
    }

    #[test]
    fn lookup_ignores_case_and_keeps_spelling_and_order() {
        let ad = parse("Executable = \"a\"; virtualorganisation = \"vo\"; Z = 1; A = 2;");
        assert_eq!(ad.get("EXECUTABLE").unwrap().node.as_str(), Some("a"));
        assert_eq!(
            ad.get("VirtualOrganisation").unwrap().span,
            Span::new(1, 41)
        );
        assert_eq!(ad.attribute("executable").unwrap().name, "Executable");
        let names: Vec<&str> = ad.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["Executable", "virtualorganisation", "Z", "A"]);
        assert!(ad.get("missing").is_none());
    }

    #[test]
    fn duplicate_attributes_are_errors_ignoring_case() {
        assert_eq!(
            parse_error("[\n  Executable = \"a\";\n  EXECUTABLE = \"b\";\n]"),
            "t.jdl:3:3: duplicate attribute 'EXECUTABLE' (first defined at 2:3)"
        );
        // Separate records have separate names.
        assert_eq!(parse("a = [x = 1]; b = [x = 2]").len(), 2);
    }

    #[test]
    fn literals() {
        assert_eq!(expr("42"), Expr::Literal(Value::Integer(42)));
        assert_eq!(expr("-42"), Expr::Literal(Value::Integer(-42)));
        assert_eq!(expr("+7"), Expr::Literal(Value::Integer(7)));
        assert_eq!(expr("- -3"), Expr::Literal(Value::Integer(3)));
        assert_eq!(
            expr("-9223372036854775807"),
            Expr::Literal(Value::Integer(-i64::MAX))
        );
        assert_eq!(expr("1.5"), Expr::Literal(Value::Real(1.5)));
        assert_eq!(expr("-2e3"), Expr::Literal(Value::Real(-2000.0)));
        assert_eq!(
            expr("\"a\\\"b\""),
            Expr::Literal(Value::String("a\"b".into()))
        );
        for (src, value) in [
            ("true", Value::Boolean(true)),
            ("TRUE", Value::Boolean(true)),
            ("False", Value::Boolean(false)),
            ("undefined", Value::Undefined),
            ("UNDEFINED", Value::Undefined),
            ("error", Value::Error),
            ("Error", Value::Error),
        ] {
            assert_eq!(expr(src), Expr::Literal(value), "{src}");
        }
    }

    #[test]
    fn lists() {
        assert_eq!(expr("{}"), Expr::List(vec![]));
        let Expr::List(items) = expr("{ 1, \"a\", [x = 1], {true} }") else {
            panic!("not a list")
        };
        let texts: Vec<String> = items.iter().map(|i| i.node.to_string()).collect();
        assert_eq!(texts, ["1", "\"a\"", "[x = 1]", "{true}"]);
        let cols: Vec<u32> = items.iter().map(|i| i.span.col).collect();
        assert_eq!(cols, [7, 10, 15, 24]);
        assert_eq!(
            parse_error("x = {1, 2,}"),
            "t.jdl:1:11: expected an expression, found '}'"
        );
        assert_eq!(
            parse_error("x = {1 2}"),
            "t.jdl:1:8: expected ',' or '}' in list, found integer 2"
        );
        assert_eq!(
            parse_error("x = {1, 2"),
            "t.jdl:1:10: expected ',' or '}' in list, found end of input"
        );
    }

    #[test]
    fn nested_records() {
        let ad = parse("[ Env = [ Image = \"deb\"; Inner = [ a = 1 ] ]; ]");
        let Expr::Record(env) = &ad.get("env").unwrap().node else {
            panic!("not a record")
        };
        assert_eq!(env.span(), Span::new(1, 9));
        assert_eq!(env.get("image").unwrap().node.as_str(), Some("deb"));
        let Expr::Record(inner) = &env.get("INNER").unwrap().node else {
            panic!("not a record")
        };
        assert_eq!(inner.get("a").unwrap().span, Span::new(1, 40));
    }

    #[test]
    fn precedence_from_loosest_to_tightest() {
        assert_eq!(grouping("a || b && c"), "(|| a (&& b c))");
        assert_eq!(grouping("a && b | c"), "(&& a (| b c))");
        assert_eq!(grouping("a | b ^ c"), "(| a (^ b c))");
        assert_eq!(grouping("a ^ b & c"), "(^ a (& b c))");
        assert_eq!(grouping("a & b == c"), "(& a (== b c))");
        assert_eq!(grouping("a == b < c"), "(== a (< b c))");
        assert_eq!(grouping("a < b << c"), "(< a (<< b c))");
        assert_eq!(grouping("a << b + c"), "(<< a (+ b c))");
        assert_eq!(grouping("a + b * c"), "(+ a (* b c))");
        assert_eq!(grouping("-a * b"), "(* (- a) b)");
        assert_eq!(grouping("!a.b"), "(! (. a b))");
        assert_eq!(grouping("-x[1]"), "(- ([] x 1))");
        assert_eq!(grouping("a ? b : c || d"), "(? a b (|| c d))");
        assert_eq!(grouping("a || b ? c : d"), "(? (|| a b) c d)");
    }

    #[test]
    fn each_operator_of_a_level() {
        for op in ["==", "!=", "=?=", "=!="] {
            assert_eq!(
                grouping(&format!("a {op} b {op} c")),
                format!("({op} ({op} a b) c)")
            );
        }
        for op in ["<", "<=", ">", ">="] {
            assert_eq!(grouping(&format!("a {op} b")), format!("({op} a b)"));
        }
        for op in ["<<", ">>", ">>>", "+", "-", "*", "/", "%"] {
            assert_eq!(grouping(&format!("a {op} b")), format!("({op} a b)"));
        }
        assert_eq!(grouping("a is undefined"), "(=?= a undefined)");
        assert_eq!(grouping("a ISNT Undefined"), "(=!= a undefined)");
        assert_eq!(grouping("!a && ~b && +c"), "(&& (&& (! a) (~ b)) (+ c))");
    }

    #[test]
    fn binary_operators_are_left_associative() {
        assert_eq!(grouping("a - b - c"), "(- (- a b) c)");
        assert_eq!(grouping("a / b * c % d"), "(% (* (/ a b) c) d)");
        assert_eq!(grouping("a && b && c"), "(&& (&& a b) c)");
        assert_eq!(grouping("a - (b - c)"), "(- a (- b c))");
    }

    #[test]
    fn conditional_is_right_associative() {
        assert_eq!(grouping("a ? b : c ? d : e"), "(? a b (? c d e))");
        assert_eq!(grouping("a ? b ? c : d : e"), "(? a (? b c d) e)");
        assert_eq!(
            parse_error("x = a ? b c"),
            "t.jdl:1:11: expected ':' of conditional expression, found identifier 'c'"
        );
    }

    #[test]
    fn attribute_references_keep_their_scope() {
        assert_eq!(
            expr("other.GlueCEStateFreeCPUs"),
            Expr::AttrRef {
                scope: Some("other".into()),
                name: "GlueCEStateFreeCPUs".into()
            }
        );
        assert_eq!(
            expr("SELF.X"),
            Expr::AttrRef {
                scope: Some("self".into()),
                name: "X".into()
            }
        );
        assert_eq!(
            expr("My.X"),
            Expr::AttrRef {
                scope: Some("my".into()),
                name: "X".into()
            }
        );
        assert_eq!(
            expr("target.X"),
            Expr::AttrRef {
                scope: Some("target".into()),
                name: "X".into()
            }
        );
        assert_eq!(
            expr("Memory"),
            Expr::AttrRef {
                scope: None,
                name: "Memory".into()
            }
        );
        assert_eq!(grouping("other.Ad.Attr"), "(. other.Ad Attr)");
        assert_eq!(grouping("Ad.Attr"), "(. Ad Attr)");
        assert_eq!(grouping("other.Tags[0]"), "([] other.Tags 0)");
        assert_eq!(grouping("a[1][2].b"), "(. ([] ([] a 1) 2) b)");
        assert_eq!(
            parse_error("x = other.;"),
            "t.jdl:1:11: expected attribute name after '.', found ';'"
        );
        assert_eq!(
            parse_error("x = a[1;"),
            "t.jdl:1:8: expected ']' to close subscript '[' at 1:6, found ';'"
        );
    }

    #[test]
    fn function_calls() {
        assert_eq!(
            grouping("member(\"x\", other.Tags)"),
            "(call member \"x\" other.Tags)"
        );
        assert_eq!(grouping("time()"), "(call time)");
        assert_eq!(
            grouping("size(split(a)) > 1"),
            "(> (call size (call split a)) 1)"
        );
        assert_eq!(
            parse_error("x = member(\"x\" other.Tags)"),
            "t.jdl:1:16: expected ',' or ')' in arguments of 'member', found identifier 'other'"
        );
    }

    #[test]
    fn parentheses() {
        assert_eq!(grouping("(a || b) && c"), "(&& (|| a b) c)");
        assert_eq!(grouping("((1))"), "1");
        assert_eq!(
            parse_error("x = (a || b;"),
            "t.jdl:1:12: expected ')' to close '(' at 1:5, found ';'"
        );
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(
            parse_error("= 1"),
            "t.jdl:1:1: expected attribute name or end of input, found '='"
        );
        assert_eq!(
            parse_error("[ a 1 ]"),
            "t.jdl:1:5: expected '=' after attribute name 'a', found integer 1"
        );
        assert_eq!(
            parse_error("[ true = 1 ]"),
            "t.jdl:1:3: expected attribute name or ']', found keyword 'true'"
        );
        assert_eq!(
            parse_error("[ a = 1; ] x"),
            "t.jdl:1:12: expected end of input after ']', found identifier 'x'"
        );
        assert_eq!(
            parse_error("a = 1 b = 2"),
            "t.jdl:1:7: expected ';' or end of input after attribute value, found identifier 'b'"
        );
        assert_eq!(
            parse_error("a = 1; ]"),
            "t.jdl:1:8: expected attribute name or end of input, found ']'"
        );
        assert_eq!(
            parse_error("[ a = ; ]"),
            "t.jdl:1:7: expected an expression, found ';'"
        );
        assert_eq!(
            parse_error("[ a = is ]"),
            "t.jdl:1:7: expected an expression, found keyword 'is'"
        );
        assert_eq!(
            parse_error("[ a = 1 + ]"),
            "t.jdl:1:11: expected an expression, found ']'"
        );
        assert_eq!(
            parse_error("[ a = 1;\n"),
            "t.jdl:2:1: expected ']' to close '[' at 1:1, found end of input"
        );
        assert_eq!(
            parse_error("[ a = [ b = 1 ]"),
            "t.jdl:1:16: expected ']' to close '[' at 1:1, found end of input"
        );
        assert_eq!(
            parse_error("[ a = [ b = 1"),
            "t.jdl:1:14: expected ']' to close '[' at 1:7, found end of input"
        );
    }

    #[test]
    fn display_round_trips() {
        for src in [
            "a - (b - c)",
            "(a - b) - c",
            "-(a + b) * -c",
            "!(a && b) || !c.d",
            "(a ? b : c) ? d : e",
            "a ? (b ? c : d) : e ? f : g",
            "(-1).x",
            "-x[-1]",
            "{1, -2.5, \"q\\\"\\n\", [a = {}; b = undefined], error}",
            "f(g(1, 2), (a || b))",
            "1e300 * 2.0 + 3",
        ] {
            let once = expr(src).to_string();
            assert_eq!(
                tree(&expr(&once)),
                tree(&expr(src)),
                "{src} printed as {once}"
            );
            assert_eq!(expr(&once).to_string(), once);
        }
        let ad = parse(REALISTIC);
        let printed = format!("{ad:#}");
        assert_eq!(format!("{:#}", parse(&printed)), printed);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let n = 100_000;
        let cases = [
            format!("x = {}1{}", "(".repeat(n), ")".repeat(n)),
            format!("x = {}", "{".repeat(n)),
            format!("x = {}", "[a = ".repeat(n)),
            format!("x = {}", "f(".repeat(n)),
            format!("x = {}", "a[".repeat(n)),
            format!("x = {}1", "a ? b : ".repeat(n)),
            // Every binary level between two parentheses: the most stack per level.
            format!(
                "x = {}",
                "a || b && c | d ^ e & f == g < h << i + j * -(".repeat(n)
            ),
        ];
        for src in &cases {
            let error = parse_str(src, Path::new("t.jdl")).unwrap_err();
            assert!(
                error
                    .message
                    .starts_with("expression nested too deeply (more than 32 levels)"),
                "{error}"
            );
        }
        let ok = format!("{}1{}", "(".repeat(31), ")".repeat(31));
        assert_eq!(expr(&ok), Expr::Literal(Value::Integer(1)));
    }

    #[test]
    fn long_operator_chains_are_bounded() {
        let n = 100_000;
        for src in [
            format!("x = {}a", "!".repeat(n)),
            format!("x = a{}", ".b".repeat(n)),
            format!("x = a{}", "[0]".repeat(n)),
        ] {
            let error = parse_str(&src, Path::new("t.jdl")).unwrap_err();
            assert_eq!(
                error.message,
                "expression too complex (more than 200 levels of operators)"
            );
        }
        let error =
            parse_str(&format!("x = 1{}", " + 1".repeat(n)), Path::new("t.jdl")).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "t.jdl:1:{}: expression too long (more than 50000 operators in a row)",
                5 + 1 + 50_000 * 4 + 1
            )
        );
        // `- - ... 1` folds into one literal.
        assert_eq!(
            expr(&format!("{}1", "- ".repeat(n))),
            Expr::Literal(Value::Integer(1))
        );
    }

    /// A generated Requirements over every CE of a grid: thousands of `||`
    /// of `&&` terms, one flat chain, printed, serialized and compared.
    #[test]
    fn long_generated_requirements() {
        let term = |i| {
            format!("(other.GlueCEUniqueID == \"ce{i}.example.org:8443/cream-pbs-atlas\" && other.GlueCEStateFreeCPUs > {i})")
        };
        let src = format!(
            "x = {}",
            (0..5000).map(term).collect::<Vec<_>>().join(" || ")
        );
        let ad = parse(&src);
        let Expr::Chain { rest, .. } = &ad.get("x").unwrap().node else {
            panic!("not a chain")
        };
        assert_eq!(rest.len(), 4999);
        assert!(rest.iter().all(|(op, _)| *op == BinaryOp::Or));
        let printed = ad.to_string();
        assert!(parse(&printed).to_string() == printed);
        assert!(serde_saphyr::to_string(&ad).is_ok());
        // Mixed operators of one level stay one chain, applied left to right.
        let sum = format!("x = 1{}", " + 2 - 1".repeat(20_000));
        assert_eq!(grouping("a - b + c"), "(+ (- a b) c)");
        assert!(
            matches!(&parse(&sum).get("x").unwrap().node, Expr::Chain { rest, .. } if rest.len() == 40_000)
        );
    }

    #[test]
    fn classad_forms_we_accept() {
        // Empty statements and a `;` after the record.
        assert_eq!(parse("[ ; a = 1;; b = 2; ; ];").len(), 2);
        assert_eq!(parse("[ a = 1 ];;").len(), 1);
        assert_eq!(parse(";; a = 1;;").len(), 1);
        // Quoted attribute names, as names and as references; printed back quoted.
        let ad = parse("[ 'weird name' = 1; 'true' = 2; b = 'weird name' + other.'x y' ]");
        assert_eq!(
            ad.get("WEIRD NAME").unwrap().node,
            Expr::Literal(Value::Integer(1))
        );
        assert_eq!(
            ad.get("true").unwrap().node,
            Expr::Literal(Value::Integer(2))
        );
        assert_eq!(
            ad.to_string(),
            "['weird name' = 1; 'true' = 2; b = 'weird name' + other.'x y']"
        );
        assert_eq!(parse(&ad.to_string()).to_string(), ad.to_string());
        // i64::MIN, a leading-dot real, joined and multi-line strings.
        assert_eq!(
            expr("-9223372036854775808"),
            Expr::Literal(Value::Integer(i64::MIN))
        );
        assert_eq!(
            expr("- 9223372036854775808"),
            Expr::Literal(Value::Integer(i64::MIN))
        );
        assert_eq!(
            grouping("- -9223372036854775808"),
            "(- -9223372036854775808)"
        );
        assert_eq!(expr(".5"), Expr::Literal(Value::Real(0.5)));
        assert_eq!(
            expr("\"ab\" \"cd\""),
            Expr::Literal(Value::String("abcd".into()))
        );
        assert_eq!(
            expr("\"other.X > 1 &&\n  other.Y < 2\""),
            Expr::Literal(Value::String("other.X > 1 &&\n  other.Y < 2".into()))
        );
        assert_eq!(
            expr("\"\\b\\f\\101\""),
            Expr::Literal(Value::String("\x08\x0cA".into()))
        );
        // Control characters print as octal and read back.
        let control = expr("\"\\a\\b\\v\"");
        assert_eq!(control.to_string(), "\"\\007\\010\\013\"");
        assert_eq!(expr(&control.to_string()), control);
    }

    #[test]
    fn classad_forms_we_refuse() {
        assert_eq!(
            parse_error("x = 9223372036854775808"),
            "t.jdl:1:5: integer 9223372036854775808 is out of range"
        );
        assert_eq!(
            parse_error("x = a ?: b"),
            "t.jdl:1:7: '?:' (HTCondor's newer \"elvis\" operator) is not JDL, which the WMS \
             and CREAM read with the older ClassAd library; write 'a isnt undefined ? a : b'"
        );
        assert_eq!(
            parse_error("x = .a"),
            "t.jdl:1:5: '.name' (HTCondor's newer reference to the outermost record) is not JDL, \
             which the WMS and CREAM read with the older ClassAd library; write the name alone"
        );
        assert_eq!(
            parse_error("[ a = 1 ]; b = 2"),
            "t.jdl:1:12: expected end of input after ']', found identifier 'b'"
        );
        // A missing '"' swallows a line; the error says so.
        assert_eq!(
            parse_error("[\n  a = \"x;\n  b = \"y\";\n]"),
            "t.jdl:3:8: expected ';' or ']' after attribute value, found identifier 'y' \
             (the string at 2:7 runs over a line end: is a '\"' missing?)"
        );
    }

    #[test]
    fn describe_names_the_kind() {
        assert_eq!(expr("\"lots\"").describe(), "string \"lots\"");
        assert_eq!(expr("-5").describe(), "integer -5");
        assert_eq!(expr("1.5").describe(), "real 1.5");
        assert_eq!(expr("TRUE").describe(), "boolean true");
        assert_eq!(expr("undefined").describe(), "undefined");
        assert_eq!(expr("{1}").describe(), "list {1}");
        assert_eq!(expr("[a=1]").describe(), "record [a = 1]");
        assert_eq!(expr("other.X").describe(), "attribute reference other.X");
        assert_eq!(expr("2 * 1024").describe(), "expression 2 * 1024");
        let long = expr(&format!("\"{}\"", "x".repeat(100))).describe();
        assert!(long.ends_with("...") && long.len() < 80, "{long}");
    }

    #[test]
    fn realistic_jdl_tree() {
        insta::assert_yaml_snapshot!("realistic_classad", parse(REALISTIC));
    }

    #[test]
    fn realistic_jdl_printed() {
        insta::assert_snapshot!("realistic_printed", format!("{:#}", parse(REALISTIC)));
    }
}
