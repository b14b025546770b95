//! A pool description in SmartFrog text (`.sf`): parsed, then resolved
//! (extends, references, type checks) against the built-in prelude, as
//! `sd pool` does with a user's file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_languages::description::{resolve_str, Format};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match resolve_str("fuzz.sf", text, Format::SmartFrog) {
        Ok(d) => drop(format!("{d:?}")),
        Err(e) => drop(e.to_string()),
    }
});
