//! `sd-exec -- COMMAND [ARGS...]`: runs COMMAND inside this Slurm job's
//! SmartDomains domain, with the job's stdin, stdout, stderr, working
//! directory and environment, and exits with its status. The SPANK plugin
//! puts it in front of every task of a job run with `--sd-env=`; without the
//! plugin, a job script calls it itself.

use sd_vmm::guest_link::JobOutcome;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--") => {
            args.remove(0);
        }
        Some("-h" | "--help") | None => {
            eprintln!(
                "usage: sd-exec -- COMMAND [ARGS...]\n\n\
                 Runs COMMAND inside the SmartDomains domain of the current Slurm job\n\
                 (SLURM_JOB_ID), with this process's stdin, stdout, stderr, working\n\
                 directory and environment, and exits with COMMAND's status.\n\
                 A job asks for a domain with `--sd-env=JDL|IMAGE[:NETWORK,...]` (SPANK\n\
                 plugin) or `--comment=sd-env:JDL|IMAGE[:NETWORK,...]`."
            );
            return ExitCode::from(sd_site::ExitCode::REFUSED as u8);
        }
        Some(_) => {}
    }
    match sd_batch::slurm::exec(args) {
        Ok(JobOutcome::Exited(code)) => ExitCode::from(code as u8),
        Ok(JobOutcome::Killed(signal)) => die_by(signal),
        Err(e) => {
            eprintln!("sd-exec: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// Dies of the same signal as the command, so that Slurm records a signal.
fn die_by(signal: i32) -> ExitCode {
    ExitCode::from(sd_batch::frontend::die_by(signal) as u8)
}
