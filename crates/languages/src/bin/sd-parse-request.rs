//! `sd-parse-request PATH < JDL`: parses a job's JDL and prints what
//! admission needs of it as one line of JSON (`sd_request::JobRequest`).
//!
//! The root hooks never parse a user's text themselves: they run this with
//! the job owner's uid, no groups and tight limits (`sd_batch::parse_jail`),
//! so that a flaw in the parser gains nothing the user did not have. PATH
//! is only for error messages; the text comes on stdin.
//!
//! Exit status: 0 and the JSON on stdout; 2 and the user's error on stdout;
//! anything else is a fault of the node.

use sd_languages::jdl::JobDescription;
use sd_request::JobRequest;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!(
            "usage: sd-parse-request PATH < JDL\n\n\
             Parses the JDL on stdin (PATH names it in messages) and prints the\n\
             VO and VirtualEnvironment it asks for, as JSON. Run by the root hooks\n\
             with the job owner's rights; not meant to be run by hand."
        );
        return ExitCode::from(64);
    };
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        // Not UTF-8 is the user's text, not the node.
        println!(
            "{}: cannot read the JDL: {e}",
            PathBuf::from(&path).display()
        );
        return ExitCode::from(2);
    }
    let (answer, code) = match JobDescription::parse(&text, &PathBuf::from(path)) {
        Ok(jdl) => {
            let request = JobRequest {
                vo: jdl.virtual_organisation,
                environment: jdl.virtual_environment.unwrap_or_default(),
            };
            match serde_json::to_string(&request) {
                Ok(json) => (json, 0),
                Err(e) => {
                    eprintln!("sd-parse-request: {e}");
                    return ExitCode::from(70);
                }
            }
        }
        Err(e) => (e.to_string(), 2),
    };
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{answer}")
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::from(74);
    }
    ExitCode::from(code)
}
