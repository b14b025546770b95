//! Splits JDL text into tokens, skipping whitespace and the three comment
//! forms (`# ...`, `// ...`, `/* ... */`).
//!
//! Tokens are produced on demand, so an error is always reported at the
//! first problem in reading order, whether lexical or syntactic.

use super::error::{JdlError, Span};
use std::fmt;
use std::path::Path;

/// Words with a fixed meaning; they cannot name attributes.
const KEYWORDS: [&str; 6] = ["true", "false", "undefined", "error", "is", "isnt"];

pub(crate) fn is_keyword(word: &str) -> bool {
    KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(word))
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// An identifier or a keyword (keywords are case-insensitive, so the
    /// parser recognises them rather than the lexer).
    Ident(String),
    Int(i64),
    Real(f64),
    Str(String),
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    LParen,
    RParen,
    Semi,
    Comma,
    Assign,
    Dot,
    Question,
    Colon,
    OrOr,
    AndAnd,
    Pipe,
    Caret,
    Amp,
    EqEq,
    NotEq,
    MetaEq,
    MetaNotEq,
    Lt,
    Le,
    Gt,
    Ge,
    Shl,
    Shr,
    UShr,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Bang,
    Tilde,
    Eof,
}

impl Tok {
    /// The source text of a punctuation token.
    fn symbol(&self) -> &'static str {
        match self {
            Tok::LBracket => "[",
            Tok::RBracket => "]",
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Semi => ";",
            Tok::Comma => ",",
            Tok::Assign => "=",
            Tok::Dot => ".",
            Tok::Question => "?",
            Tok::Colon => ":",
            Tok::OrOr => "||",
            Tok::AndAnd => "&&",
            Tok::Pipe => "|",
            Tok::Caret => "^",
            Tok::Amp => "&",
            Tok::EqEq => "==",
            Tok::NotEq => "!=",
            Tok::MetaEq => "=?=",
            Tok::MetaNotEq => "=!=",
            Tok::Lt => "<",
            Tok::Le => "<=",
            Tok::Gt => ">",
            Tok::Ge => ">=",
            Tok::Shl => "<<",
            Tok::Shr => ">>",
            Tok::UShr => ">>>",
            Tok::Plus => "+",
            Tok::Minus => "-",
            Tok::Star => "*",
            Tok::Slash => "/",
            Tok::Percent => "%",
            Tok::Bang => "!",
            Tok::Tilde => "~",
            Tok::Ident(_) | Tok::Int(_) | Tok::Real(_) | Tok::Str(_) | Tok::Eof => "",
        }
    }
}

/// How a token is named after "found" in error messages.
impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(word) if is_keyword(word) => write!(f, "keyword '{word}'"),
            Tok::Ident(word) => write!(f, "identifier '{word}'"),
            Tok::Int(n) => write!(f, "integer {n}"),
            Tok::Real(r) => write!(f, "real {r:?}"),
            Tok::Str(s) => write!(f, "string {s:?}"),
            Tok::Eof => f.write_str("end of input"),
            punct => write!(f, "'{}'", punct.symbol()),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub span: Span,
}

pub(crate) struct Lexer<'a> {
    /// The input, borrowed: a copy as `Vec<char>` would cost 4 bytes per byte.
    src: &'a str,
    /// Byte offset of the next character in `src`.
    pos: usize,
    line: u32,
    col: u32,
    file: &'a Path,
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str, file: &'a Path) -> Self {
        Lexer {
            src,
            pos: 0,
            line: 1,
            col: 1,
            file,
        }
    }

    pub fn file(&self) -> &'a Path {
        self.file
    }

    /// The next token; `Eof` (again and again) at the end.
    pub fn next_token(&mut self) -> Result<Token, JdlError> {
        self.skip_trivia()?;
        let span = self.here();
        let Some(c) = self.peek(0) else {
            return Ok(Token {
                tok: Tok::Eof,
                span,
            });
        };
        let tok = match c {
            '"' => self.string()?,
            '0'..='9' => self.number()?,
            c if c.is_ascii_alphabetic() || c == '_' => Tok::Ident(self.take_while(is_ident_char)),
            _ => self.punct(span)?,
        };
        Ok(Token { tok, span })
    }

    fn peek(&self, ahead: usize) -> Option<char> {
        self.src[self.pos..].chars().nth(ahead)
    }

    fn here(&self) -> Span {
        Span::new(self.line, self.col)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek(0)?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    fn take_while(&mut self, keep: impl Fn(char) -> bool) -> String {
        let mut text = String::new();
        while let Some(c) = self.peek(0).filter(|&c| keep(c)) {
            text.push(c);
            self.bump();
        }
        text
    }

    fn error(&self, span: Span, message: impl Into<String>) -> JdlError {
        JdlError::new(self.file, span, message)
    }

    fn skip_trivia(&mut self) -> Result<(), JdlError> {
        loop {
            match (self.peek(0), self.peek(1)) {
                (Some(c), _) if c.is_whitespace() => {
                    self.bump();
                }
                (Some('#'), _) | (Some('/'), Some('/')) => {
                    self.take_while(|c| c != '\n');
                }
                (Some('/'), Some('*')) => {
                    let start = self.here();
                    self.bump();
                    self.bump();
                    loop {
                        match (self.peek(0), self.peek(1)) {
                            (Some('*'), Some('/')) => break,
                            (Some(_), _) => {
                                self.bump();
                            }
                            (None, _) => {
                                return Err(self.error(
                                    start,
                                    "unterminated comment: '/*' has no matching '*/'",
                                ));
                            }
                        }
                    }
                    self.bump();
                    self.bump();
                }
                _ => return Ok(()),
            }
        }
    }

    /// A double-quoted string. Strings end on their line: a missing quote is
    /// reported where the string starts, not at some later quote.
    fn string(&mut self) -> Result<Tok, JdlError> {
        let start = self.here();
        self.bump();
        let mut value = String::new();
        loop {
            let escape_at = self.here();
            match self.bump() {
                Some('"') => return Ok(Tok::Str(value)),
                Some('\\') => match self.bump() {
                    Some('"') => value.push('"'),
                    Some('\\') => value.push('\\'),
                    Some('n') => value.push('\n'),
                    Some('t') => value.push('\t'),
                    Some('r') => value.push('\r'),
                    Some('\n') => return Err(self.unterminated(start, "end of line")),
                    None => return Err(self.unterminated(start, "end of input")),
                    Some(other) => {
                        return Err(self.error(
                            escape_at,
                            format!(
                                "unknown escape sequence '\\{other}' in string \
                                 (known: \\\" \\\\ \\n \\t \\r)"
                            ),
                        ));
                    }
                },
                Some('\n') => return Err(self.unterminated(start, "end of line")),
                None => return Err(self.unterminated(start, "end of input")),
                Some(c) => value.push(c),
            }
        }
    }

    fn unterminated(&self, start: Span, before: &str) -> JdlError {
        self.error(
            start,
            format!("unterminated string: no closing '\"' before {before}"),
        )
    }

    /// A decimal integer or a real (`1.5`, `2e3`, `1.5E-3`).
    fn number(&mut self) -> Result<Tok, JdlError> {
        let start = self.here();
        let mut text = self.take_while(|c| c.is_ascii_digit());
        let mut real = false;
        if self.peek(0) == Some('.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            real = true;
            text.push('.');
            self.bump();
            text += &self.take_while(|c| c.is_ascii_digit());
        }
        if matches!(self.peek(0), Some('e' | 'E')) {
            let digits_at = if matches!(self.peek(1), Some('+' | '-')) {
                2
            } else {
                1
            };
            if self.peek(digits_at).is_some_and(|c| c.is_ascii_digit()) {
                real = true;
                for _ in 0..digits_at {
                    text.extend(self.bump());
                }
                text += &self.take_while(|c| c.is_ascii_digit());
            }
        }
        // `12abc` or `2e` is a typo, not the number 12 then a name.
        if self.peek(0).is_some_and(is_ident_char) {
            let rest = self.take_while(is_ident_char);
            return Err(self.error(start, format!("invalid number '{text}{rest}'")));
        }
        if real {
            match text.parse::<f64>() {
                Ok(r) if r.is_finite() => Ok(Tok::Real(r)),
                _ => Err(self.error(start, format!("real {text} is out of range"))),
            }
        } else {
            text.parse::<i64>()
                .map(Tok::Int)
                .map_err(|_| self.error(start, format!("integer {text} is out of range")))
        }
    }

    /// Operators and punctuation, longest match first (`>>>` before `>>`).
    fn punct(&mut self, span: Span) -> Result<Tok, JdlError> {
        let c = self.peek(0).unwrap_or_default();
        let next = self.peek(1);
        let (tok, len) = match (c, next, self.peek(2)) {
            ('=', Some('='), _) => (Tok::EqEq, 2),
            ('=', Some('?'), Some('=')) => (Tok::MetaEq, 3),
            ('=', Some('!'), Some('=')) => (Tok::MetaNotEq, 3),
            ('=', _, _) => (Tok::Assign, 1),
            ('!', Some('='), _) => (Tok::NotEq, 2),
            ('!', _, _) => (Tok::Bang, 1),
            ('<', Some('<'), _) => (Tok::Shl, 2),
            ('<', Some('='), _) => (Tok::Le, 2),
            ('<', _, _) => (Tok::Lt, 1),
            ('>', Some('>'), Some('>')) => (Tok::UShr, 3),
            ('>', Some('>'), _) => (Tok::Shr, 2),
            ('>', Some('='), _) => (Tok::Ge, 2),
            ('>', _, _) => (Tok::Gt, 1),
            ('|', Some('|'), _) => (Tok::OrOr, 2),
            ('|', _, _) => (Tok::Pipe, 1),
            ('&', Some('&'), _) => (Tok::AndAnd, 2),
            ('&', _, _) => (Tok::Amp, 1),
            ('[', _, _) => (Tok::LBracket, 1),
            (']', _, _) => (Tok::RBracket, 1),
            ('{', _, _) => (Tok::LBrace, 1),
            ('}', _, _) => (Tok::RBrace, 1),
            ('(', _, _) => (Tok::LParen, 1),
            (')', _, _) => (Tok::RParen, 1),
            (';', _, _) => (Tok::Semi, 1),
            (',', _, _) => (Tok::Comma, 1),
            ('.', _, _) => (Tok::Dot, 1),
            ('?', _, _) => (Tok::Question, 1),
            (':', _, _) => (Tok::Colon, 1),
            ('^', _, _) => (Tok::Caret, 1),
            ('~', _, _) => (Tok::Tilde, 1),
            ('+', _, _) => (Tok::Plus, 1),
            ('-', _, _) => (Tok::Minus, 1),
            ('*', _, _) => (Tok::Star, 1),
            ('/', _, _) => (Tok::Slash, 1),
            ('%', _, _) => (Tok::Percent, 1),
            ('\'', _, _) => {
                return Err(self.error(
                    span,
                    "unexpected single quote (strings are written in double quotes)",
                ));
            }
            (other, _, _) => {
                return Err(self.error(span, format!("unexpected character {other:?}")))
            }
        };
        for _ in 0..len {
            self.bump();
        }
        Ok(tok)
    }
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(src: &str) -> Result<Vec<Token>, JdlError> {
        let mut lexer = Lexer::new(src, Path::new("t.jdl"));
        let mut tokens = vec![];
        loop {
            let token = lexer.next_token()?;
            if token.tok == Tok::Eof {
                return Ok(tokens);
            }
            tokens.push(token);
        }
    }

    fn toks(src: &str) -> Vec<Tok> {
        lex(src).unwrap().into_iter().map(|t| t.tok).collect()
    }

    fn lex_error(src: &str) -> String {
        lex(src).unwrap_err().to_string()
    }

    #[test]
    fn operators_take_the_longest_match() {
        use Tok::*;
        assert_eq!(
            toks("== != =?= =!= = < <= << > >= >> >>> || | && & ^ ~ ! + - * / % ? : . , ; [ ] { } ( )"),
            vec![
                EqEq, NotEq, MetaEq, MetaNotEq, Assign, Lt, Le, Shl, Gt, Ge, Shr, UShr, OrOr, Pipe, AndAnd, Amp,
                Caret, Tilde, Bang, Plus, Minus, Star, Slash, Percent, Question, Colon, Dot, Comma, Semi, LBracket,
                RBracket, LBrace, RBrace, LParen, RParen,
            ]
        );
    }

    #[test]
    fn assignment_followed_by_not_is_two_tokens() {
        use Tok::*;
        assert_eq!(
            toks("x=!y"),
            vec![Ident("x".into()), Assign, Bang, Ident("y".into())]
        );
        assert_eq!(
            toks("x=?y"),
            vec![Ident("x".into()), Assign, Question, Ident("y".into())]
        );
    }

    #[test]
    fn identifiers_and_keywords_keep_their_spelling() {
        assert_eq!(
            toks("Executable other_1 TRUE isnt"),
            ["Executable", "other_1", "TRUE", "isnt"].map(|w| Tok::Ident(w.into()))
        );
        assert!(is_keyword("Undefined") && is_keyword("IS") && !is_keyword("other"));
    }

    #[test]
    fn strings_and_escapes() {
        assert_eq!(
            toks(r#""plain" "a\"b\\c\nd\te\rf" """#),
            vec![
                Tok::Str("plain".into()),
                Tok::Str("a\"b\\c\nd\te\rf".into()),
                Tok::Str(String::new())
            ]
        );
        assert_eq!(
            toks("\"héllo wörld\""),
            vec![Tok::Str("héllo wörld".into())]
        );
    }

    #[test]
    fn unknown_escape_is_reported_at_the_backslash() {
        assert_eq!(
            lex_error(r#"a = "x\qy";"#),
            r#"t.jdl:1:7: unknown escape sequence '\q' in string (known: \" \\ \n \t \r)"#
        );
    }

    #[test]
    fn unterminated_string_is_reported_at_its_start() {
        assert_eq!(
            lex_error("a = 1;\n  b = \"abc;\n c = \"d\";"),
            "t.jdl:2:7: unterminated string: no closing '\"' before end of line"
        );
        assert_eq!(
            lex_error("b = \"abc"),
            "t.jdl:1:5: unterminated string: no closing '\"' before end of input"
        );
        assert_eq!(
            lex_error("b = \"abc\\"),
            "t.jdl:1:5: unterminated string: no closing '\"' before end of input"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            toks("0 42 007 1.5 2e3 1.5E-3 4e+2"),
            vec![
                Tok::Int(0),
                Tok::Int(42),
                Tok::Int(7),
                Tok::Real(1.5),
                Tok::Real(2000.0),
                Tok::Real(0.0015),
                Tok::Real(400.0)
            ]
        );
        // A dot not followed by a digit is a selection, not a fraction.
        assert_eq!(
            toks("1.x"),
            vec![Tok::Int(1), Tok::Dot, Tok::Ident("x".into())]
        );
        assert_eq!(toks("9223372036854775807"), vec![Tok::Int(i64::MAX)]);
    }

    #[test]
    fn bad_numbers() {
        assert_eq!(
            lex_error("a = 9223372036854775808;"),
            "t.jdl:1:5: integer 9223372036854775808 is out of range"
        );
        assert_eq!(
            lex_error("a = 1e999;"),
            "t.jdl:1:5: real 1e999 is out of range"
        );
        assert_eq!(lex_error("a = 12abc;"), "t.jdl:1:5: invalid number '12abc'");
        assert_eq!(lex_error("a = 2e;"), "t.jdl:1:5: invalid number '2e'");
    }

    #[test]
    fn comments_are_skipped() {
        let src = "# hash\na = 1; // slashes\n/* block\n spanning */ b /**/ = 2 # end";
        assert_eq!(
            toks(src),
            vec![
                Tok::Ident("a".into()),
                Tok::Assign,
                Tok::Int(1),
                Tok::Semi,
                Tok::Ident("b".into()),
                Tok::Assign,
                Tok::Int(2),
            ]
        );
        // Comment markers inside strings are text.
        assert_eq!(
            toks(r##""# not // a /* comment""##),
            vec![Tok::Str("# not // a /* comment".into())]
        );
    }

    #[test]
    fn unterminated_block_comment_is_reported_at_its_start() {
        assert_eq!(
            lex_error("a = 1;\n   /* never\n closed *"),
            "t.jdl:2:4: unterminated comment: '/*' has no matching '*/'"
        );
    }

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let tokens = lex("[\n  Exe = \"ü\"; # c\n\tb=1 ]").unwrap();
        let spans: Vec<String> = tokens.iter().map(|t| t.span.to_string()).collect();
        assert_eq!(
            spans,
            ["1:1", "2:3", "2:7", "2:9", "2:12", "3:2", "3:3", "3:4", "3:6"]
        );
    }

    #[test]
    fn unexpected_characters() {
        assert_eq!(lex_error("a = @;"), "t.jdl:1:5: unexpected character '@'");
        assert_eq!(
            lex_error("a = 'x';"),
            "t.jdl:1:5: unexpected single quote (strings are written in double quotes)"
        );
    }

    #[test]
    fn end_of_input_repeats() {
        let mut lexer = Lexer::new("  # only a comment", Path::new("t.jdl"));
        for _ in 0..3 {
            let token = lexer.next_token().unwrap();
            assert_eq!(token.tok, Tok::Eof);
            assert_eq!(token.span, Span::new(1, 19));
        }
    }

    #[test]
    fn tokens_describe_themselves_for_messages() {
        let described: Vec<String> = toks(r#"Memory true 3 1.5 "x" ; >>>"#)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            described,
            [
                "identifier 'Memory'",
                "keyword 'true'",
                "integer 3",
                "real 1.5",
                "string \"x\"",
                "';'",
                "'>>>'"
            ]
        );
        assert_eq!(Tok::Eof.to_string(), "end of input");
    }
}
