//! A user's JDL, as the Slurm and HTCondor front ends read it: the ClassAd
//! syntax, then the attributes SmartDomains acts on.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_languages::jdl::JobDescription;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // Front ends read the file as UTF-8 text and refuse anything else.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match JobDescription::parse(text, Path::new("fuzz.jdl")) {
        Ok(description) => drop(format!("{description:?}")),
        // The message goes to the user: formatting it must not panic either.
        Err(error) => drop(error.to_string()),
    }
});
