//! `sd-classad-json FILE...`: one line of JSON per file, for the ClassAd
//! conformance script (`scripts/classad-conformance`), which compares it
//! with HTCondor's own library. Not used at run time.
//!
//! Each line is `{"file", "ok": true, "attributes": [{"name", "value",
//! "parens"}]}` or `{"file", "ok": false, "error"}`: `value` is the literal
//! (or list of literals) or null, `parens` the expression with every
//! operator parenthesized, which shows how we grouped it.

use sd_languages::jdl::{parse_str, Expr, Value};
use serde_json::{json, Value as Json};
use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: sd-classad-json FILE...");
        return ExitCode::from(64);
    }
    for file in files {
        let line = match std::fs::read(&file) {
            Err(e) => json!({"file": file, "ok": false, "error": format!("cannot read: {e}")}),
            Ok(bytes) => match String::from_utf8(bytes) {
                Err(_) => json!({"file": file, "ok": false, "error": "not UTF-8"}),
                Ok(text) => match parse_str(&text, Path::new(&file)) {
                    Err(e) => json!({"file": file, "ok": false, "error": e.to_string()}),
                    Ok(ad) => {
                        let attributes: Vec<Json> = ad
                            .iter()
                            .map(|a| {
                                json!({
                                    "name": a.name,
                                    "value": literal(&a.value.node),
                                    "parens": parens(&a.value.node),
                                })
                            })
                            .collect();
                        json!({"file": file, "ok": true, "attributes": attributes})
                    }
                },
            },
        };
        println!("{line}");
    }
    ExitCode::SUCCESS
}

/// The value of a literal or a list of literals; null otherwise.
fn literal(expr: &Expr) -> Json {
    match expr {
        Expr::Literal(Value::String(s)) => json!({"string": s}),
        Expr::Literal(Value::Integer(n)) => json!({"integer": n}),
        Expr::Literal(Value::Real(r)) => json!({"real": r}),
        Expr::Literal(Value::Boolean(b)) => json!({"boolean": b}),
        Expr::Literal(Value::Undefined) => json!("undefined"),
        Expr::Literal(Value::Error) => json!("error"),
        Expr::List(items) => {
            let values: Vec<Json> = items.iter().map(|i| literal(&i.node)).collect();
            if values.iter().any(Json::is_null) {
                Json::Null
            } else {
                Json::Array(values)
            }
        }
        _ => Json::Null,
    }
}

/// ClassAd text with parentheses around every operation (trees are at most
/// 200 levels high, so recursing is safe).
fn parens(expr: &Expr) -> String {
    match expr {
        Expr::Literal(_) | Expr::AttrRef { .. } | Expr::Record(_) => expr.to_string(),
        Expr::List(items) => {
            let items: Vec<String> = items.iter().map(|i| parens(&i.node)).collect();
            format!("{{{}}}", items.join(", "))
        }
        Expr::Unary { op, operand } => format!("({}{})", op.symbol(), parens(operand)),
        // Short chains fold, to check left associativity; a long one stays
        // flat, as the reference refuses thousands of nested parentheses.
        Expr::Chain { first, rest } if rest.len() <= 50 => {
            rest.iter().fold(parens(first), |lhs, (op, rhs)| {
                format!("({lhs} {} {})", op.symbol(), parens(rhs))
            })
        }
        Expr::Chain { first, rest } => {
            let rest: String = rest
                .iter()
                .map(|(op, rhs)| format!(" {} {}", op.symbol(), parens(rhs)))
                .collect();
            format!("({}{rest})", parens(first))
        }
        Expr::Conditional {
            cond,
            then,
            otherwise,
        } => format!(
            "({} ? {} : {})",
            parens(cond),
            parens(then),
            parens(otherwise)
        ),
        Expr::Call { function, args } => {
            let args: Vec<String> = args.iter().map(parens).collect();
            format!("{function}({})", args.join(", "))
        }
        Expr::Select { base, attr } => format!("({}).{attr}", parens(base)),
        Expr::Subscript { base, index } => format!("({})[{}]", parens(base), parens(index)),
    }
}
