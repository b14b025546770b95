//! Whose an error is to fix, decided where the error arises: the user's
//! (their request, their file, their guest) or the site's (its config, its
//! disks, its hypervisor). Front ends word and exit by it, once
//! ([`ExitCode`]), and a user's fault never drains a node.

/// Who has to act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The job's owner: change the request, the file, the guest.
    User,
    /// The site's admin: the configuration, the node, the hypervisor.
    Site,
}

/// An error that knows whose it is.
pub trait Blame: std::error::Error {
    fn fault(&self) -> Fault;
}

/// Every exit status SmartDomains gives for its own failures, in one
/// place (a job's own status passes through unchanged).
pub struct ExitCode;

impl ExitCode {
    /// `sd run`, `sd-exec`, `sd-condor-wrapper`: the request was refused,
    /// the user's to fix. Also HTCondor PREPARE_JOB's hold subcode for it.
    pub const REFUSED: i32 = 2;
    /// `sd run`, `sd-exec`, `sd-condor-wrapper`: the node or site failed,
    /// the admin's to fix (125, as `env` and `docker run` use it, so it
    /// never looks like a job's own status).
    pub const SITE: i32 = 125;
    /// A Slurm Prolog/Epilog that succeeded, or refused the job's request
    /// (the job then fails with the reason; the node stays in service).
    pub const HOOK_OK: i32 = 0;
    /// A hook's site fault: Slurm drains the node (slurm.conf(5));
    /// HTCondor holds the job with this subcode.
    pub const HOOK_SITE: i32 = 1;
    /// HTCondor PREPARE_JOB: the node is full now, nobody's fault; a
    /// SYSTEM_PERIODIC_RELEASE on this subcode lets the job match again.
    pub const NODE_FULL: i32 = 3;

    /// A command's exit status for a failure that is `fault`'s.
    pub fn of(fault: Fault) -> i32 {
        match fault {
            Fault::User => ExitCode::REFUSED,
            Fault::Site => ExitCode::SITE,
        }
    }
}
