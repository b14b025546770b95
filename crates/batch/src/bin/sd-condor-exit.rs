//! `sd-condor-exit`: HTCondor's JOB_EXIT hook (`SD_HOOK_JOB_EXIT`). Reads the
//! final job ad on stdin, with HTCondor's reason as its argument (exit,
//! evict, remove, hold), and has the node service power the job's domain
//! off, save its disk per policy, and undo its journal. Idempotent; a job
//! without SDEnvironment costs one read of stdin. See `sd_batch::condor`.

fn main() -> std::process::ExitCode {
    let how = std::env::args().nth(1).unwrap_or_else(|| "exit".into());
    if how == "-h" || how == "--help" {
        eprintln!(
            "usage: sd-condor-exit [exit|evict|remove|hold] < JOB_AD\n\n\
             HTCondor JOB_EXIT hook: tears down the SmartDomains domain of a job that asked\n\
             for one (+SDEnvironment), however it ended. Configure with\n\
             SD_HOOK_JOB_EXIT = /path/sd-condor-exit."
        );
        return std::process::ExitCode::from(0);
    }
    std::process::ExitCode::from(sd_batch::condor::exit_hook(&how) as u8)
}
