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
    /// `'weird name'`: an attribute name that is not an identifier.
    QuotedName(String),
    /// The magnitude: `-9223372036854775808` is a minus and 2^63, which
    /// only the parser (seeing the minus) can accept.
    Int(u64),
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
            Tok::Ident(_)
            | Tok::QuotedName(_)
            | Tok::Int(_)
            | Tok::Real(_)
            | Tok::Str(_)
            | Tok::Eof => "",
        }
    }
}

/// How a token is named after "found" in error messages.
impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::Ident(word) if is_keyword(word) => write!(f, "keyword '{word}'"),
            Tok::Ident(word) => write!(f, "identifier '{word}'"),
            Tok::QuotedName(name) => write!(f, "quoted name {name:?}"),
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
            '\'' => self.quoted_name()?,
            '0'..='9' => self.number()?,
            '.' if self.peek(1).is_some_and(|c| c.is_ascii_digit()) => self.number()?,
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
                (Some(c), _) if is_space(c) => {
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

    /// A double-quoted string, with C's escapes. Like ClassAd, a string
    /// may span lines, and literals separated only by white space are one
    /// string (`"ab" "cd"` is `"abcd"`), which lets long values be split.
    fn string(&mut self) -> Result<Tok, JdlError> {
        let start = self.here();
        let mut bytes = vec![];
        loop {
            self.quoted('"', start, &mut bytes)?;
            let rest = &self.src[self.pos..];
            if !rest.trim_start_matches(is_space).starts_with('"') {
                break;
            }
            while self.peek(0).is_some_and(is_space) {
                self.bump();
            }
        }
        self.utf8(start, bytes).map(Tok::Str)
    }

    /// `'weird name'`: ClassAd's quoted attribute name, same escapes.
    fn quoted_name(&mut self) -> Result<Tok, JdlError> {
        let start = self.here();
        let mut bytes = vec![];
        self.quoted('\'', start, &mut bytes)?;
        if bytes.is_empty() {
            return Err(self.error(start, "empty quoted attribute name ''"));
        }
        self.utf8(start, bytes).map(Tok::QuotedName)
    }

    /// Octal escapes can spell any byte, so the text is checked at the end.
    fn utf8(&self, start: Span, bytes: Vec<u8>) -> Result<String, JdlError> {
        String::from_utf8(bytes)
            .map_err(|_| self.error(start, "string is not UTF-8 (after its octal escapes)"))
    }

    /// From an opening `quote` to its closing one, appending the text.
    fn quoted(&mut self, quote: char, start: Span, out: &mut Vec<u8>) -> Result<(), JdlError> {
        self.bump();
        let mut buf = [0; 4];
        loop {
            let at = self.here();
            match self.bump() {
                None => return Err(self.unterminated(start, quote)),
                Some(c) if c == quote => return Ok(()),
                // The C++ library reads C strings: a NUL would cut the text.
                Some('\0') => return Err(self.error(at, "NUL character in string")),
                Some('\\') => out.push(self.escape(at, start, quote)?),
                Some(c) => out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
            }
        }
    }

    /// The byte a backslash sequence stands for (an octal escape is a byte,
    /// not a character: `\303\251` is é).
    fn escape(&mut self, at: Span, start: Span, quote: char) -> Result<u8, JdlError> {
        let c = match self.bump() {
            None => return Err(self.unterminated(start, quote)),
            Some(c) => c,
        };
        Ok(match c {
            '"' => b'"',
            '\'' => b'\'',
            '\\' => b'\\',
            '?' => b'?',
            'a' => 0x07,
            'b' => 0x08,
            'f' => 0x0c,
            'n' => b'\n',
            'r' => b'\r',
            't' => b'\t',
            'v' => 0x0b,
            // Up to three digits from 0-3, two from 4-7: one byte, as in C.
            '0'..='7' => {
                let max = if c <= '3' { 3 } else { 2 };
                let mut value = c.to_digit(8).unwrap_or_default();
                for _ in 1..max {
                    match self.peek(0).and_then(|d| d.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            self.bump();
                        }
                        None => break,
                    }
                }
                if value == 0 {
                    return Err(self.error(at, "NUL character in string"));
                }
                value as u8 // at most 0o377
            }
            other => {
                // ClassAd drops the backslash; a `C:\data` path is more often
                // a mistake than a wish for `C:data`.
                return Err(self.error(
                    at,
                    format!(
                        "unknown escape sequence '\\{other}' in string \
                         (known: \\\" \\' \\\\ \\? \\a \\b \\f \\n \\r \\t \\v \\NNN)"
                    ),
                ));
            }
        })
    }

    fn unterminated(&self, start: Span, quote: char) -> JdlError {
        let what = if quote == '"' {
            "string"
        } else {
            "quoted name"
        };
        self.error(
            start,
            format!("unterminated {what}: no closing {quote:?} before end of input"),
        )
    }

    /// A decimal integer or a real (`1.5`, `.5`, `2e3`, `1.5E-3`).
    fn number(&mut self) -> Result<Tok, JdlError> {
        let start = self.here();
        let mut text = self.take_while(|c| c.is_ascii_digit());
        let mut real = false;
        if self.peek(0) == Some('.') {
            // ClassAd refuses `1.`, `1.e5` and `1.x`: a '.' after digits
            // starts a fraction, never a selection.
            if !self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.error(
                    start,
                    format!("invalid number '{text}.': a digit must follow the '.'"),
                ));
            }
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
        } else if text.len() > 1 && text.starts_with('0') {
            Err(self.error(
                start,
                format!(
                    "integer {text} has a leading zero (ClassAd would read it as octal); \
                     write it without"
                ),
            ))
        } else {
            // Up to 2^63, the magnitude of i64::MIN; the parser checks the sign.
            text.parse::<u64>()
                .ok()
                .filter(|&n| n <= 1 << 63)
                .map(Tok::Int)
                .ok_or_else(|| self.error(start, format!("integer {text} is out of range")))
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
            (other, _, _) if other.is_whitespace() => {
                return Err(self.error(
                    span,
                    format!("unexpected character {other:?} (only ASCII white space separates tokens, as in ClassAd)"),
                ))
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

/// ClassAd's white space (C's `isspace`): no Unicode spaces.
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
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
            toks(r#""plain" , "a\"b\\c\nd\te\rf" , """#),
            vec![
                Tok::Str("plain".into()),
                Tok::Comma,
                Tok::Str("a\"b\\c\nd\te\rf".into()),
                Tok::Comma,
                Tok::Str(String::new())
            ]
        );
        assert_eq!(
            toks("\"héllo wörld\""),
            vec![Tok::Str("héllo wörld".into())]
        );
        // C's other escapes, as ClassAd reads them.
        assert_eq!(
            toks(r#""\b\f\'\?\a\v""#),
            vec![Tok::Str("\x08\x0c'?\x07\x0b".into())]
        );
    }

    #[test]
    fn octal_escapes_are_bytes() {
        assert_eq!(toks(r#""\101\1012""#), vec![Tok::Str("AA2".into())]);
        // Three digits only from 0-3: `\400` is `\40` then '0'.
        assert_eq!(toks(r#""\400\777\7a""#), vec![Tok::Str(" 0?7\x07a".into())]);
        assert_eq!(toks(r#""\303\251""#), vec![Tok::Str("é".into())]);
        assert_eq!(
            lex_error(r#"a = "\377";"#),
            "t.jdl:1:5: string is not UTF-8 (after its octal escapes)"
        );
        assert_eq!(
            lex_error(r#"a = "x\0";"#),
            "t.jdl:1:7: NUL character in string"
        );
        assert_eq!(
            lex_error("a = \"x\0\";"),
            "t.jdl:1:7: NUL character in string"
        );
    }

    #[test]
    fn strings_span_lines_and_adjacent_ones_join() {
        assert_eq!(
            toks("\"a\n b\" x"),
            vec![Tok::Str("a\n b".into()), Tok::Ident("x".into())]
        );
        assert_eq!(
            toks("\"ab\" \"cd\"\n\t\"ef\""),
            vec![Tok::Str("abcdef".into())]
        );
        // Only white space joins them (ClassAd refuses a comment between).
        assert_eq!(
            toks("\"ab\" /**/ \"cd\""),
            vec![Tok::Str("ab".into()), Tok::Str("cd".into())]
        );
    }

    #[test]
    fn quoted_names() {
        assert_eq!(
            toks(r"'weird name' 'it\'s' 'true'"),
            ["weird name", "it's", "true"].map(|w| Tok::QuotedName(w.into()))
        );
        assert_eq!(
            lex_error("a = '';"),
            "t.jdl:1:5: empty quoted attribute name ''"
        );
        assert_eq!(
            lex_error("a = 'x;"),
            "t.jdl:1:5: unterminated quoted name: no closing '\\'' before end of input"
        );
    }

    #[test]
    fn unknown_escape_is_reported_at_the_backslash() {
        assert_eq!(
            lex_error(r#"a = "x\qy";"#),
            r#"t.jdl:1:7: unknown escape sequence '\q' in string (known: \" \' \\ \? \a \b \f \n \r \t \v \NNN)"#
        );
    }

    #[test]
    fn unterminated_string_is_reported_at_its_start() {
        assert_eq!(
            lex_error("a = 1;\n  b = \"abc;\n c = 1;"),
            "t.jdl:2:7: unterminated string: no closing '\"' before end of input"
        );
        assert_eq!(
            lex_error("b = \"abc\\"),
            "t.jdl:1:5: unterminated string: no closing '\"' before end of input"
        );
    }

    #[test]
    fn numbers() {
        assert_eq!(
            toks("0 42 1.5 .5 2e3 1.5E-3 4e+2 0.25"),
            vec![
                Tok::Int(0),
                Tok::Int(42),
                Tok::Real(1.5),
                Tok::Real(0.5),
                Tok::Real(2000.0),
                Tok::Real(0.0015),
                Tok::Real(400.0),
                Tok::Real(0.25)
            ]
        );
        assert_eq!(toks("9223372036854775807"), vec![Tok::Int(i64::MAX as u64)]);
        // i64::MIN's magnitude; the parser accepts it only after a minus.
        assert_eq!(toks("9223372036854775808"), vec![Tok::Int(1 << 63)]);
        // Separated by a space, a dot after an integer is a selection.
        assert_eq!(
            toks("1 .x"),
            vec![Tok::Int(1), Tok::Dot, Tok::Ident("x".into())]
        );
    }

    #[test]
    fn bad_numbers() {
        assert_eq!(
            lex_error("a = 9223372036854775809;"),
            "t.jdl:1:5: integer 9223372036854775809 is out of range"
        );
        assert_eq!(
            lex_error("a = 1e999;"),
            "t.jdl:1:5: real 1e999 is out of range"
        );
        assert_eq!(lex_error("a = 12abc;"), "t.jdl:1:5: invalid number '12abc'");
        assert_eq!(lex_error("a = 2e;"), "t.jdl:1:5: invalid number '2e'");
        for src in ["1.e5", "1.x", "5."] {
            assert_eq!(
                lex_error(&format!("a = {src};")),
                format!(
                    "t.jdl:1:5: invalid number '{}.': a digit must follow the '.'",
                    &src[..1]
                )
            );
        }
        assert_eq!(
            lex_error("a = 010;"),
            "t.jdl:1:5: integer 010 has a leading zero (ClassAd would read it as octal); write it without"
        );
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
        for space in ['\u{a0}', '\u{3000}', '\u{2028}'] {
            assert_eq!(
                lex_error(&format!("a ={space}1;")),
                format!(
                    "t.jdl:1:4: unexpected character {space:?} \
                     (only ASCII white space separates tokens, as in ClassAd)"
                )
            );
        }
        // C's vertical tab and form feed are white space.
        assert_eq!(
            toks("a\x0b=\x0c1"),
            vec![Tok::Ident("a".into()), Tok::Assign, Tok::Int(1)]
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
