//! An HTCondor job ad on a hook's stdin (`sd-condor-prepare`, the wrapper,
//! `sd-condor-exit`): its attributes are the job owner's to write.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_request::carried::RequestSpec;
use sd_request::job_ad::{self, JobAd};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    // The hooks read stdin with `read_to_string`: not UTF-8 is refused.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = job_ad::mentions_request(text);
    let ad = JobAd::parse(text);
    // Every accessor the hooks use, on the attributes they read.
    for name in ["SDEnvironment", "Iwd", "OrigIwd", "GlobalJobId", "AcctGroup", "Args"] {
        let _ = ad.raw(name);
        let _ = ad.string(name);
    }
    let _ = ad.int("ExitCode");
    let _ = ad.bool("ExitBySignal");
    let _ = ad.job_id();
    let _ = job_ad::output_files(&ad);
    if let Some(RequestSpec::Jdl(path)) = ad.request() {
        let _ = job_ad::jdl_candidates(&ad, &path, Path::new("/scratch"));
    }
});
