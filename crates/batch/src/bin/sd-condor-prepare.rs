//! `sd-condor-prepare`: HTCondor's PREPARE_JOB hook (`SD_HOOK_PREPARE_JOB`).
//! Reads the job ad on stdin; for a job with `+SDEnvironment = "JDL|IMAGE[:NETWORK,...]"`,
//! reads the JDL with the job owner's rights and has the SmartDomains node
//! service boot the job's domain. Prints `SDDomain`, `SDBackend`, ... as job
//! ad updates. Exit 2 (user error) or 1 (site fault) holds the job with the
//! reason, printed as `HookStatusMessage` (and on stderr, for the starter's
//! log). See `sd_batch::condor`.

fn main() -> std::process::ExitCode {
    if std::env::args()
        .nth(1)
        .is_some_and(|a| a == "-h" || a == "--help")
    {
        eprintln!(
            "usage: sd-condor-prepare < JOB_AD\n\n\
             HTCondor PREPARE_JOB hook: boots the SmartDomains domain a job asked for with\n\
             `+SDEnvironment = \"hello.jdl\"` (a JDL, relative to the submit directory) or\n\
             `+SDEnvironment = \"busybox\"` (a catalogue image). Configure with\n\
             STARTER_DEFAULT_JOB_HOOK_KEYWORD = SD and SD_HOOK_PREPARE_JOB = /path/sd-condor-prepare.\n\
             Jobs without SDEnvironment are untouched. Needs `sd node-service` on the node\n\
             ($SD_NODE_SOCKET, default /run/smartdomains/node.sock).\n\
             Exit status: 0 ok, 2 request refused, 1 site fault: HTCondor holds the job, with the\n\
             reason we print as HookStatusMessage in its HoldReason."
        );
        return std::process::ExitCode::from(0);
    }
    std::process::ExitCode::from(sd_batch::condor::prepare() as u8)
}
