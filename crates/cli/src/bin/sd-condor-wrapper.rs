//! `sd-condor-wrapper EXECUTABLE [ARGS...]`: HTCondor's USER_JOB_WRAPPER.
//! A job without `+SDEnvironment` is exec'd untouched. A job with one runs
//! inside its domain (booted by `sd-condor-prepare`) with the job's stdin,
//! stdout, stderr (byte-exact), working directory and environment; the
//! guest's exit status is the job's. Signals HTCondor sends (condor_rm,
//! condor_hold) go to the command in the guest. A fault (no domain, the
//! agent link broken) is the job's stderr and exit status 125, like `sd run`'s;
//! it is also written to `$_CONDOR_WRAPPER_ERROR_FILE`, the file HTCondor
//! documents for a wrapper's failure (HTCondor 23.9 as tested here does not
//! act on it).

use sd_batch::condor::{self, WrapperPlan};
use sd_vmm::guest_link::JobOutcome;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || (args.len() == 1 && (args[0] == "-h" || args[0] == "--help")) {
        eprintln!(
            "usage: sd-condor-wrapper EXECUTABLE [ARGS...]\n\n\
             HTCondor USER_JOB_WRAPPER: runs the job inside the SmartDomains domain it asked\n\
             for with +SDEnvironment (read from $_CONDOR_JOB_AD), and exits with the guest's\n\
             status; any other job is exec'd as it is. Configure with\n\
             USER_JOB_WRAPPER = /path/sd-condor-wrapper."
        );
        return ExitCode::from(sd_site::ExitCode::REFUSED as u8);
    }
    let plan = match condor::wrapper_plan() {
        Ok(p) => p,
        Err(e) => return fail(&condor::fault_message(&e)),
    };
    match plan {
        WrapperPlan::Plain => {
            let e = std::process::Command::new(&args[0]).args(&args[1..]).exec();
            fail(&format!("cannot execute {}: {e}", args[0]))
        }
        WrapperPlan::InDomain { job, ad } => {
            let signals = sd_batch::frontend::block_forwarded_signals();
            match condor::run_wrapped(&job, &ad, args, signals) {
                Ok(JobOutcome::Exited(code)) => ExitCode::from(code as u8),
                Ok(JobOutcome::Killed(signal)) => {
                    ExitCode::from(sd_batch::frontend::die_by(signal) as u8)
                }
                Err(message) => fail(&message),
            }
        }
    }
}

/// A fault: on the job's stderr, in HTCondor's wrapper error file, and
/// [`ExitCode::SITE`].
fn fail(message: &str) -> ExitCode {
    if let Some(path) = std::env::var_os("_CONDOR_WRAPPER_ERROR_FILE") {
        let _ = std::fs::write(path, format!("{message}\n"));
    }
    eprintln!("sd-condor-wrapper: {message}");
    ExitCode::from(sd_site::ExitCode::SITE as u8)
}
