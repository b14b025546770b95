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

/// The exit statuses every command of SmartDomains uses for its own
/// failures (a job's own status passes through unchanged).
pub struct ExitCode;

impl ExitCode {
    /// The request was refused: the user's to fix.
    pub const REFUSED: i32 = 2;
    /// The node or site failed: the admin's to fix (125, as `env`/`docker
    /// run` use it, so it never looks like a job's own status).
    pub const SITE: i32 = 125;

    pub fn of(fault: Fault) -> i32 {
        match fault {
            Fault::User => ExitCode::REFUSED,
            Fault::Site => ExitCode::SITE,
        }
    }
}
