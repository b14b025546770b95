//! A request to the root node service: one JSON line from any local user,
//! decoded as `serve_one` does (`read_line`, then `serde_json::from_str`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sd_request::node_service::{self, ServiceRequest};

fuzz_target!(|data: &[u8]| {
    // `read_line` stops after the first newline and fails on invalid UTF-8.
    let line = match data.iter().position(|&b| b == b'\n') {
        Some(end) => &data[..=end],
        None => data,
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return;
    };
    let Ok(request) = serde_json::from_str::<ServiceRequest>(line) else {
        return;
    };
    // What `handle` looks at before any privileged step.
    let (ServiceRequest::Deploy { job, global_id, .. }
    | ServiceRequest::Teardown { job, global_id, .. }) = &request;
    // (`deployment_id`, a hash of a valid id, is sd-batch's: not fuzzed.)
    let _ = (node_service::valid_job_id(job), global_id.len());
    let _ = serde_json::to_string(&request);
});
