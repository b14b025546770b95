//! JDL reader: the gLite Job Description Language, which is ClassAd syntax.
//!
//! Two layers: [`parse_str`] reads the syntax into a [`ClassAd`] (records,
//! lists, expression trees); [`JobDescription::from_classad`] picks out and
//! type-checks the attributes SmartDomains acts on. Both report a
//! [`JdlError`] as `FILE:LINE:COL: MESSAGE`.

mod ast;
mod description;
mod error;
mod lexer;
mod parser;

pub use ast::{Attribute, BinaryOp, ClassAd, Expr, UnaryOp, Value};
pub use description::JobDescription;
pub use error::{spanned, JdlError, Span, Spanned};
pub use parser::parse_str;

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt::Write;
    use std::path::Path;

    const REALISTIC: &str = include_str!("testdata/realistic.jdl");

    #[test]
    fn error_displays_as_file_line_col_message() {
        let error = JdlError::new(Path::new("jobs/bad.jdl"), Span::new(3, 14), "expected ';'");
        assert_eq!(error.to_string(), "jobs/bad.jdl:3:14: expected ';'");
        assert_eq!(error.span(), Span::new(3, 14));
    }

    #[test]
    fn malformed_inputs_error_messages() {
        let cases = [
            ("unterminated string", "[\n  Executable = \"run.sh;\n  Arguments = \"x\";\n]"),
            ("missing semicolon", "[\n  Executable = \"run.sh\";\n  VirtualEnvironment = [ Image = \"deb\" Memory = 512; ];\n]"),
            ("missing closing bracket", "[\n  Executable = \"run.sh\";\n  Arguments = \"x\";\n"),
            ("bad escape", "[\n  Executable = \"C:\\data\\run.exe\";\n]"),
            ("unterminated comment", "[\n  Executable = \"run.sh\"; /* the script\n]"),
            ("unexpected token", "[\n  Executable = \"run.sh\";\n  Requirements = other.FreeCPUs >= ;\n]"),
            ("unexpected character", "[\n  Executable = \u{201c}run.sh\u{201d};\n]"),
            ("unclosed parenthesis", "[\n  Executable = \"run.sh\";\n  Rank = (other.FreeCPUs * 2;\n]"),
            ("duplicate attribute", "[\n  Executable = \"run.sh\";\n  executable = \"other.sh\";\n]"),
            ("wrong type for Memory", "[\n  Executable = \"run.sh\";\n  VirtualEnvironment = [ Memory = \"lots\"; ];\n]"),
            ("unknown VirtualEnvironment field", "[\n  Executable = \"run.sh\";\n  VirtualEnvironment = [\n    Image = \"deb\";\n    Memroy = 512;\n  ];\n]"),
            ("missing Executable", "[\n  Arguments = \"x\";\n  StdOutput = \"out\";\n]"),
            ("bad environment entry", "[\n  Executable = \"run.sh\";\n  Environment = {\"A=1\", \"2B=x\"};\n]"),
        ];
        let mut report = String::new();
        for (name, src) in cases {
            let error = JobDescription::parse(src, Path::new("jobs/bad.jdl")).expect_err(name);
            writeln!(report, "--- {name}\n{src}\n=> {error}\n").unwrap();
        }
        insta::assert_snapshot!("error_messages", report);
    }

    /// Every prefix of a valid JDL is parsed or refused, never a panic.
    #[test]
    fn truncated_input_never_panics() {
        let file = Path::new("t.jdl");
        for (end, _) in REALISTIC.char_indices() {
            let _ = JobDescription::parse(&REALISTIC[..end], file);
        }
        assert!(JobDescription::parse(REALISTIC, file).is_ok());
    }

    /// Same with one character deleted or replaced anywhere.
    #[test]
    fn mangled_input_never_panics() {
        let file = Path::new("t.jdl");
        let chars: Vec<char> = REALISTIC.chars().collect();
        for i in 0..chars.len() {
            let mut deleted = chars.clone();
            deleted.remove(i);
            let _ = JobDescription::parse(&deleted.iter().collect::<String>(), file);
            for c in [
                '"', '[', ']', '{', '(', '\\', '/', '*', '=', '-', '9', 'e', '.', '\n', '\0', 'é',
            ] {
                let mut replaced = chars.clone();
                replaced[i] = c;
                let _ = JobDescription::parse(&replaced.iter().collect::<String>(), file);
            }
        }
    }
}
