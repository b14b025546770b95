//! HTCondor front end: `sd-condor-prepare` (PREPARE_JOB hook),
//! `sd-condor-wrapper` (USER_JOB_WRAPPER), `sd-condor-exit` (JOB_EXIT hook).
//!
//! The request is the job ad's `SDEnvironment` (`+SDEnvironment = "x.jdl"`
//! or `"image"` in the submit file). All three run as the job's owner, so
//! the privileged steps go through the root-owned node service
//! (`node_service`): the prepare hook reads the user's JDL itself and sends
//! its text, the service checks it and deploys `condor-CLUSTER.PROC-TAG`, and
//! the wrapper talks to the guest agent directly (its socket is the
//! user's), like Slurm's `sd-exec`.
//!
//! Failures hold the job, with a reason that says who must act: HTCondor
//! holds a job whose PREPARE_JOB exits non-zero (HoldReasonCode 19, the
//! subcode is our exit status: [`EXIT_REFUSED`] for the user's errors,
//! [`EXIT_SITE_FAULT`] for the site's) and puts the hook's stderr in the
//! hold reason. JOB_EXIT always asks for a teardown, whatever the job's end
//! (exit, evict, remove, hold): the journal says what exists.

use crate::frontend::{self, RequestSpec, RunError};
use crate::node_service::{self, ServiceReply, ServiceRequest};
use sd_host::user_files::UserFiles;
pub use sd_request::job_ad::{jdl_candidates, mentions_request, output_files, JobAd, ATTRIBUTE};
use sd_site::{ExitCode, SiteConfig};
use sd_vmm::guest_link::JobOutcome;
use std::io::Read;
use std::path::PathBuf;

/// PREPARE_JOB's exit statuses (HTCondor's HoldReasonSubCode): the
/// user's, the site's, a full node (scripts/condor-local releases those).
/// Holding never drains the node.
pub const EXIT_REFUSED: i32 = ExitCode::REFUSED;
pub const EXIT_SITE_FAULT: i32 = ExitCode::HOOK_SITE;
pub const EXIT_NODE_FULL: i32 = ExitCode::NODE_FULL;

fn node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "this node".into())
}

/// The hold reason of a refused request (the user's to fix).
pub fn refused_message(message: &str) -> String {
    format!("SmartDomains refused this job's environment request: {message}")
}

/// The hold reason of a full node (nobody's to fix: the job waits).
pub fn node_full_message(message: &str) -> String {
    format!(
        "SmartDomains: {} has no room for this job's domain now, no fault of the job's or the \
         site's (the job can run elsewhere or later): {message}",
        node_name()
    )
}

/// The hold reason of a site fault (the admin's to fix).
pub fn fault_message(message: &str) -> String {
    format!(
        "SmartDomains site fault on {} (for the site admin; see sd-hooks.log): {message}",
        node_name()
    )
}

/// `sd-condor-prepare`: reads the job ad on stdin. Prints ClassAd updates
/// (`SDDomain`, `SDBackend`, ...) on stdout; exits 0 (domain up, or no
/// request), [`EXIT_REFUSED`] or [`EXIT_SITE_FAULT`] with the reason on
/// stderr.
pub fn prepare() -> i32 {
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        return hold(
            EXIT_SITE_FAULT,
            &fault_message(&format!("cannot read the job ad: {e}")),
        );
    }
    let ad = JobAd::parse(&text);
    let Some(spec) = ad.request() else {
        return 0;
    };
    let job = match ad.job_id() {
        Ok(j) => j,
        Err(e) => {
            return hold(EXIT_SITE_FAULT, &fault_message(&e));
        }
    };
    // A JDL is read with the job owner's rights — which are ours.
    let request = match read_request(&ad, &spec) {
        Ok(r) => r,
        Err(message) => return hold(EXIT_REFUSED, &refused_message(&message)),
    };
    let socket = node_service::socket_path();
    let call = ServiceRequest::Deploy {
        job,
        global_id: ad.string("GlobalJobId").unwrap_or_default(),
        request,
        account: ad.string("AcctGroup"),
    };
    match node_service::call(&socket, &call) {
        Ok(ServiceReply::Deployed {
            deployment,
            domain,
            backend,
            acceleration,
            boot_secs,
        }) => {
            println!("SDDeployment = {}", quote(&deployment));
            println!("SDDomain = {}", quote(&domain));
            println!("SDBackend = {}", quote(&backend));
            println!("SDAcceleration = {}", quote(&acceleration));
            println!("SDBootSeconds = {boot_secs:.2}");
            0
        }
        Ok(ServiceReply::Refused(message)) => hold(EXIT_REFUSED, &refused_message(&message)),
        Ok(ServiceReply::Fault(message)) => hold(EXIT_SITE_FAULT, &fault_message(&message)),
        Ok(ServiceReply::NodeFull(message)) => hold(EXIT_NODE_FULL, &node_full_message(&message)),
        Ok(other) => hold(
            EXIT_SITE_FAULT,
            &fault_message(&format!("unexpected node service answer {other:?}")),
        ),
        Err(e) => hold(
            EXIT_SITE_FAULT,
            &fault_message(&format!(
                "the node service does not answer on {}: {e} (is `sd-node-service` running?)",
                socket.display()
            )),
        ),
    }
}

fn read_request(ad: &JobAd, spec: &RequestSpec) -> Result<frontend::Request, String> {
    let RequestSpec::Jdl(path) = spec else {
        return frontend::read_request(
            spec,
            std::path::Path::new("/"),
            UserFiles::caller(),
            sd_site::DEFAULT_MAX_REQUEST_BYTES,
        );
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let candidates = jdl_candidates(ad, path, &cwd);
    let found = candidates
        .iter()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .cloned();
    match found {
        // The hook runs as the job's owner; the node service applies the
        // site's own limit to what it is sent.
        Some(p) => frontend::read_request(
            &RequestSpec::Jdl(p),
            &cwd,
            UserFiles::caller(),
            sd_site::DEFAULT_MAX_REQUEST_BYTES,
        ),
        None => Err(format!(
            "{}: no such JDL file in the submit directory, nor transferred with the job \
             (looked at {}); name it in transfer_input_files, or submit from a shared directory",
            path.display(),
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A failed PREPARE_JOB: HTCondor holds the job and takes the hold
/// reason from the `HookStatusMessage` of the hook's stdout (not from
/// stderr, which only reaches the starter's log); we write both.
fn hold(code: i32, message: &str) -> i32 {
    print!("{}", hold_ad(code, message));
    eprintln!("{message}");
    code
}

/// The ClassAd lines of a failed PREPARE_JOB.
pub fn hold_ad(code: i32, message: &str) -> String {
    let _ = code;
    format!("HookStatusMessage = {}\n", quote(message))
}

/// A ClassAd string literal.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `sd-condor-exit exit|evict|remove|hold`: reads the final job ad on
/// stdin and has the job's domain torn down (HTCondor ignores our status;
/// 0 unless the teardown failed).
pub fn exit_hook(how: &str) -> i32 {
    let mut text = String::new();
    let _ = std::io::stdin().read_to_string(&mut text);
    let ad = JobAd::parse(&text);
    if ad.request().is_none() {
        return 0;
    }
    let job = match ad.job_id() {
        Ok(j) => j,
        Err(e) => {
            eprintln!("sd-condor-exit: {e}");
            return 1;
        }
    };
    let code = ad.int("ExitCode");
    let signal = ad
        .bool("ExitBySignal")
        .unwrap_or(false)
        .then(|| ad.int("ExitSignal"))
        .flatten();
    let outcome = match (code, signal) {
        (_, Some(s)) => format!("killed by signal {s}"),
        (Some(c), None) => format!("exit code {c}"),
        (None, None) => "never ran".into(),
    };
    let outcome = match ad.string("SDDomain") {
        Some(d) => format!("{outcome}, domain {d} (from PREPARE_JOB's ad update)"),
        None => outcome,
    };
    let succeeded = how == "exit" && code == Some(0) && signal.is_none();
    let call = ServiceRequest::Teardown {
        job,
        global_id: ad.string("GlobalJobId").unwrap_or_default(),
        how: how.to_string(),
        succeeded,
        outcome,
    };
    match node_service::call(&node_service::socket_path(), &call) {
        Ok(ServiceReply::Finished { .. }) => 0,
        Ok(ServiceReply::Refused(m) | ServiceReply::Fault(m) | ServiceReply::NodeFull(m)) => {
            eprintln!("sd-condor-exit: {m}");
            1
        }
        Ok(other) => {
            eprintln!("sd-condor-exit: unexpected answer {other:?}");
            1
        }
        Err(e) => {
            eprintln!("sd-condor-exit: the node service does not answer: {e}");
            1
        }
    }
}

/// What the wrapper does with the job.
pub enum WrapperPlan {
    /// No request: exec the job itself, untouched.
    Plain,
    /// Run it in the job's deployment.
    InDomain { job: String, ad: Box<JobAd> },
}

/// Reads `$_CONDOR_JOB_AD` (cheap for the plain job: one file, one scan).
pub fn wrapper_plan() -> Result<WrapperPlan, String> {
    let Some(path) = std::env::var_os("_CONDOR_JOB_AD") else {
        return Ok(WrapperPlan::Plain);
    };
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read the job ad {}: {e}", path.to_string_lossy()))?;
    if !mentions_request(&text) {
        return Ok(WrapperPlan::Plain);
    }
    let ad = JobAd::parse(&text);
    if ad.request().is_none() {
        return Ok(WrapperPlan::Plain);
    }
    Ok(WrapperPlan::InDomain {
        job: ad.job_id()?,
        ad: Box::new(ad),
    })
}

/// Runs the job's argv in its domain. `signals` were blocked before any
/// thread existed. When the job runs in HTCondor's scratch directory, the
/// files HTCondor transferred there go into the guest first (same paths),
/// and the job's `transfer_output_files` come back after it, so that
/// HTCondor's file transfer works as without SmartDomains.
pub fn run_wrapped(
    job: &str,
    ad: &JobAd,
    argv: Vec<String>,
    signals: nix::sys::signal::SigSet,
) -> Result<JobOutcome, String> {
    let site =
        SiteConfig::load(&SiteConfig::default_path()).map_err(|e| fault_message(&e.to_string()))?;
    let id = node_service::deployment_id(
        job,
        nix::unistd::geteuid().as_raw(),
        &ad.string("GlobalJobId").unwrap_or_default(),
    );
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let link = frontend::attach(&site, &id).map_err(|e| run_error(job, &id, e))?;
    let scratch = std::env::var_os("_CONDOR_SCRATCH_DIR").map(PathBuf::from);
    let in_scratch = scratch.as_deref() == Some(cwd.as_path());
    if in_scratch {
        copy_in(&link, &cwd, &cwd, 0)
            .map_err(|e| fault_message(&format!("input files into the guest: {e}")))?;
    }
    let outcome = frontend::run_command(&link, argv, cwd.display().to_string(), signals)
        .map_err(|e| run_error(job, &id, e))?;
    if in_scratch {
        for name in output_files(ad) {
            copy_out(&link, &cwd.join(&name))
                .map_err(|e| fault_message(&format!("output file {name} from the guest: {e}")))?;
        }
    }
    Ok(outcome)
}

fn run_error(job: &str, id: &str, e: RunError) -> String {
    match e {
        RunError::NoDomain(_) => fault_message(&format!(
            "job {job} asked for {ATTRIBUTE} but has no domain {id} on this node: \
             is SD_HOOK_PREPARE_JOB configured (STARTER_DEFAULT_JOB_HOOK_KEYWORD = SD)?"
        )),
        RunError::Site(m) => fault_message(&m),
    }
}

/// HTCondor's own files in the scratch directory, which the guest does not need.
fn htcondor_own(name: &str) -> bool {
    name.starts_with('.') || name.starts_with("_condor_") || name == "condor_exec.exe"
}

/// Copies the regular files under `dir` into the guest at the same paths.
fn copy_in(
    link: &sd_vmm::guest_link::GuestLink,
    top: &std::path::Path,
    dir: &std::path::Path,
    depth: u32,
) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if depth > 16 {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if dir == top && htcondor_own(&name) {
            continue;
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        let path = entry.path();
        if kind.is_dir() {
            copy_in(link, top, &path, depth + 1)?;
        } else if kind.is_file() {
            let mut f =
                std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let mode = f
                .metadata()
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0o644);
            link.put_file(&mut f, &path.display().to_string(), mode)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Copies a guest file back to the same path here (as the job's owner:
/// that is who the wrapper runs as). A file the job did not make stays
/// missing, as HTCondor reports itself; any other failure (the link, this
/// disk) is an error.
fn copy_out(link: &sd_vmm::guest_link::GuestLink, path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    // Written beside it and renamed into place (`atomic_file`): HTCondor
    // never sees half a file; a missing one leaves nothing.
    let mut tmp = sd_host::atomic_file::TempFile::create(path).map_err(|e| e.to_string())?;
    match link.get_file(&path.display().to_string(), tmp.file_mut()) {
        Ok((_, mode)) => {
            let _ = tmp
                .file()
                .set_permissions(std::fs::Permissions::from_mode(mode & 0o777));
            tmp.commit().map_err(|e| e.to_string())
        }
        Err(e) => match e {
            sd_vmm::guest_link::LinkError::Guest(_) => Ok(()),
            e => Err(e.to_string()),
        },
    }
}

/// The job a `condor_starter` runs, as HTCondor itself wrote it down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StarterJob {
    /// `CLUSTER.PROC`.
    pub job: String,
    pub global_id: String,
}

/// Why the job of a starter cannot be told.
#[derive(Debug, thiserror::Error)]
pub enum StarterJobError {
    /// HTCondor's files are not where, or not what, HTCondor 23.9 makes:
    /// the site's to look at.
    #[error("cannot tell which job condor_starter {pid} runs: {why}")]
    Unknown { pid: i32, why: String },
    /// The job's own user replaced HTCondor's job ad: the job is refused.
    #[error(
        "the job ad of condor_starter {pid} ({path}) is not HTCondor's: it belongs to uid {owner}"
    )]
    Forged { pid: i32, path: String, owner: u32 },
}

/// Which job `starter` runs for `uid`, from the starter's own `.job.ad`.
///
/// Measured with HTCondor 23.9 here: a starter's cwd is its scratch
/// directory `EXECUTE/dir_<starter pid>`, owned by the job's user (0700) in
/// an execute directory of condor's; in it, the starter writes `.job.ad`
/// (the job's ClusterId, ProcId, GlobalJobId) as condor, mode 0644, before
/// PREPARE_JOB runs. Its environment and command line (`condor_starter -f
/// -a slot1_1 HOST`) name no job. The user may delete or replace that file
/// but can make no file owned by root or condor: the owner is checked. (They
/// could move in the ad of another of their own running jobs: one domain per
/// starter still holds, and the domain goes with this starter.)
pub fn starter_job(
    starter: sd_host::peer::ProcessStamp,
    uid: u32,
) -> Result<StarterJob, StarterJobError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let pid = starter.pid;
    let unknown = |why: String| StarterJobError::Unknown { pid, why };
    let cwd = format!("/proc/{pid}/cwd");
    let scratch = std::fs::read_link(&cwd).map_err(|e| unknown(format!("{cwd}: {e}")))?;
    if scratch.file_name() != Some(std::ffi::OsStr::new(&format!("dir_{pid}"))) {
        return Err(unknown(format!(
            "its working directory {} is not its scratch directory dir_{pid}",
            scratch.display()
        )));
    }
    let dir = std::fs::metadata(&cwd).map_err(|e| unknown(format!("{cwd}: {e}")))?;
    let execute = std::fs::metadata(format!("{cwd}/..")).map_err(|e| unknown(e.to_string()))?;
    if dir.uid() != uid || execute.uid() == uid {
        return Err(unknown(format!(
            "its scratch directory {} is of uid {}, in a directory of uid {}: not a job of uid {uid}",
            scratch.display(),
            dir.uid(),
            execute.uid()
        )));
    }
    let path = format!("{cwd}/.job.ad");
    let shown = scratch.join(".job.ad").display().to_string();
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| unknown(format!("{shown}: {e}")))?;
    let meta = file.metadata().map_err(|e| unknown(e.to_string()))?;
    if !meta.is_file() || (meta.uid() != 0 && meta.uid() != execute.uid()) {
        return Err(StarterJobError::Forged {
            pid,
            path: shown,
            owner: meta.uid(),
        });
    }
    let mut text = String::new();
    (&mut file)
        .take(1 << 20)
        .read_to_string(&mut text)
        .map_err(|e| unknown(format!("{shown}: {e}")))?;
    // All of this was the starter's only if it still runs.
    if !starter.alive() {
        return Err(unknown("it exited".into()));
    }
    let ad = JobAd::parse(&text);
    Ok(StarterJob {
        job: ad.job_id().map_err(|e| unknown(format!("{shown}: {e}")))?,
        global_id: ad.string("GlobalJobId").unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_reasons_say_who_acts() {
        insta::assert_snapshot!(refused_message("VO atlas may not use image busybox (allowed: debian-minimal)"),
            @"SmartDomains refused this job's environment request: VO atlas may not use image busybox (allowed: debian-minimal)");
        assert!(fault_message("QEMU died").contains("for the site admin"));
        assert_eq!(
            hold_ad(EXIT_REFUSED, "bad \"x\" at a\\b\nline 2"),
            "HookStatusMessage = \"bad \\\"x\\\" at a\\\\b\\nline 2\"\n"
        );
        let back = JobAd::parse(&hold_ad(EXIT_REFUSED, "bad \"x\" at a\\b"));
        assert_eq!(
            back.string("HookStatusMessage").unwrap(),
            "bad \"x\" at a\\b"
        );
    }
}
