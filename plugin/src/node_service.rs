//! The node service: the one privileged process of the HTCondor front end.
//!
//! HTCondor runs its job hooks and the job wrapper as the job's owner, not
//! as root. Booting a domain needs root (the state directory, QEMU dropping
//! to `sd-qemu`, KVM), so the hooks ask this root-owned service on the
//! node, over a Unix socket (default [`DEFAULT_SOCKET`]):
//!
//! * the caller is known by the kernel (`SO_PEERCRED`: uid, gid, pid), not
//!   by anything it says; unless started with `--any-caller`, it must be a
//!   descendant of a `condor_starter` (a job's hook, not any local user);
//! * **deploy**: the hook has already read the user's JDL itself, with the
//!   user's own rights, and sends its text; an image name is only looked up
//!   in the site catalogue. The service checks the request against the
//!   site's policy and deploys `condor-CLUSTER.PROC-TAG` for the caller's uid:
//!   the journal records the owner, the agent socket becomes the user's
//!   (the job wrapper talks to the guest directly, like `sd-exec`);
//! * **teardown**: only of a deployment whose journal owner is the caller
//!   (or root).
//!
//! One JSON line in, one JSON line out, per connection; one thread per
//! connection, so two jobs boot at once.

use crate::batch::{self, Request};
use crate::deployment::{self, Deployment};
use crate::journal::Journal;
use crate::site::SiteConfig;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the hooks find the service (also inside HTCondor's root, by a
/// bind mount). `SD_NODE_SOCKET` overrides it.
pub const DEFAULT_SOCKET: &str = "/run/smartdomains/node.sock";

pub fn socket_path() -> PathBuf {
    match std::env::var_os("SD_NODE_SOCKET") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(DEFAULT_SOCKET),
    }
}

/// What a hook asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServiceRequest {
    /// PREPARE_JOB: boot the domain of job `job` (`CLUSTER.PROC`).
    Deploy {
        job: String,
        /// `GlobalJobId` (schedd, job, time): two schedds' jobs 11.0 differ.
        #[serde(default)]
        global_id: String,
        request: Request,
        /// The job's accounting group: the VO of a bare image request, if
        /// the site knows it as one.
        account: Option<String>,
    },
    /// JOB_EXIT: power the domain off, save its disk per policy, undo the
    /// journal. `how` is HTCondor's reason (exit, evict, remove, hold);
    /// `outcome` is what the hook saw of the job's end, for the log.
    Teardown {
        job: String,
        #[serde(default)]
        global_id: String,
        how: String,
        succeeded: bool,
        outcome: String,
    },
}

/// What the service answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceReply {
    Deployed {
        deployment: String,
        domain: String,
        backend: String,
        acceleration: String,
        boot_secs: f64,
    },
    /// Teardown done; `found` false if there was nothing to tear down.
    Finished { found: bool },
    /// The user's error (request, policy): the job is held with this.
    Refused(String),
    /// The site's fault: the job is held with this, for the admin.
    Fault(String),
}

/// `CLUSTER.PROC`, digits only.
pub fn valid_job_id(job: &str) -> bool {
    match job.split_once('.') {
        Some((c, p)) => {
            !c.is_empty()
                && !p.is_empty()
                && c.len() <= 12
                && p.len() <= 12
                && c.chars().chain(p.chars()).all(|ch| ch.is_ascii_digit())
        }
        None => false,
    }
}

/// The deployment of HTCondor job `CLUSTER.PROC` of user `uid`:
/// `condor-CLUSTER.PROC-TAG`, the tag a hash of the uid and the job's
/// `GlobalJobId`. Jobs of two schedds never share a deployment, and no user
/// can take (or block) the name of another user's job.
pub fn deployment_id(job: &str, uid: u32, global_id: &str) -> String {
    let tag = crate::name_tag(uid.to_le_bytes().iter().chain(global_id.as_bytes()));
    format!("condor-{job}-{tag:08x}")
}

/// Sends one request and waits for the reply (a boot takes seconds).
pub fn call(socket: &Path, request: &ServiceRequest) -> std::io::Result<ServiceReply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(CALL_TIMEOUT))?;
    let mut line = serde_json::to_vec(request).map_err(std::io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line)?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    BufReader::new(stream).read_line(&mut reply)?;
    if reply.trim().is_empty() {
        return Err(std::io::Error::other(
            "the node service closed the connection without an answer (see its log)",
        ));
    }
    serde_json::from_str(&reply).map_err(std::io::Error::other)
}

/// Who is calling, as the kernel says.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

fn caller_of(stream: &UnixStream) -> std::io::Result<Caller> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(std::io::Error::from)?;
    Ok(Caller {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid(),
    })
}

/// True if `pid` descends from a `condor_starter` process started by root.
fn under_condor_starter(pid: i32) -> bool {
    let mut pid = pid;
    for _ in 0..64 {
        if pid <= 1 {
            return false;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return false;
        };
        // pid (comm) state ppid ...: comm may hold spaces and parentheses.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            return false;
        };
        let comm = head.split_once('(').map_or("", |(_, c)| c);
        // Anyone can name a process condor_starter; only root can start
        // one whose real uid is root's.
        if comm == "condor_starter" && real_uid(pid) == Some(0) {
            return true;
        }
        pid = match tail.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
            Some(p) => p,
            None => return false,
        };
    }
    false
}

/// The real uid of process `pid` (`Uid:` in /proc/PID/status).
fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `sd node-service`: serves until SIGTERM/SIGINT. Returns an exit status.
pub fn serve(config: &Path, socket: &Path, pid_file: Option<&Path>, any_caller: bool) -> i32 {
    let site = match SiteConfig::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sd node-service: {e}");
            return 125;
        }
    };
    let (_log, _span) = crate::hook_log::init("sd-node-service", &site.log_dir, "-");
    if let Some(dir) = socket.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let _ = std::fs::remove_file(socket);
    let listener = match UnixListener::bind(socket) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("cannot listen on {}: {e}", socket.display());
            eprintln!(
                "sd node-service: cannot listen on {}: {e}",
                socket.display()
            );
            return 125;
        }
    };
    // Every local user may connect; who they are decides what they may do.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666));
    if let Some(p) = pid_file {
        let _ = crate::atomic_file::write(p, format!("{}\n", std::process::id()).as_bytes());
    }
    stop_on_signal(socket.to_path_buf(), pid_file.map(Path::to_path_buf));
    tracing::info!(
        "listening on {} (state {}, callers: {})",
        socket.display(),
        site.state_dir.display(),
        if any_caller {
            "any local user"
        } else {
            "HTCondor job hooks"
        }
    );
    let site = std::sync::Arc::new(site);
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let site = site.clone();
        std::thread::spawn(move || serve_one(&site, stream, any_caller));
    }
    0
}

fn stop_on_signal(socket: PathBuf, pid_file: Option<PathBuf>) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    let _ = set.thread_block();
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            tracing::info!("{}: stopping", sig.as_str());
            let _ = std::fs::remove_file(&socket);
            if let Some(p) = pid_file {
                let _ = std::fs::remove_file(p);
            }
            std::process::exit(0);
        }
    });
}

fn serve_one(site: &SiteConfig, stream: UnixStream, any_caller: bool) {
    let caller = match caller_of(&stream) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("a caller without credentials: {e}");
            return;
        }
    };
    // One line, bounded: the JDL it carries may be max_request_bytes, and
    // JSON escaping grows a byte to at most 6 (`\u00XX`).
    let line_limit = site.max_request_bytes.saturating_mul(6) + 64 * 1024;
    let mut line = String::new();
    if BufReader::new((&stream).take(line_limit))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let reply = match serde_json::from_str::<ServiceRequest>(&line) {
        Err(_) if !line.ends_with('\n') && line.len() as u64 >= line_limit => ServiceReply::Refused(format!(
            "request to the node service over {line_limit} bytes (the site's max_request_bytes is {})",
            site.max_request_bytes
        )),
        Err(e) => ServiceReply::Fault(format!("malformed request to the node service: {e}")),
        Ok(ServiceRequest::Deploy {
            request: Request::Jdl { ref path, ref text },
            ..
        }) if text.len() as u64 > site.max_request_bytes => ServiceReply::Refused(format!(
            "{}: is {} bytes, more than the site's limit of {} (max_request_bytes)",
            path.display(),
            text.len(),
            site.max_request_bytes
        )),
        Ok(_) if !any_caller && caller.uid != 0 && !under_condor_starter(caller.pid) => {
            tracing::warn!(
                "refused uid {} pid {}: not an HTCondor job hook",
                caller.uid,
                caller.pid
            );
            ServiceReply::Refused(
                "the SmartDomains node service serves HTCondor job hooks only".into(),
            )
        }
        Ok(request) => handle(site, caller, request),
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = (&stream).write_all(&out);
}

/// Does what one request asks, for `caller`.
pub fn handle(site: &SiteConfig, caller: Caller, request: ServiceRequest) -> ServiceReply {
    let (hook, job, global_id) = match &request {
        ServiceRequest::Deploy { job, global_id, .. } => ("sd-condor-prepare", job, global_id),
        ServiceRequest::Teardown { job, global_id, .. } => ("sd-condor-exit", job, global_id),
    };
    let (job, global_id) = (job.clone(), global_id.clone());
    let _span = tracing::info_span!("sd", %hook, %job).entered();
    if !valid_job_id(&job) {
        return ServiceReply::Fault(format!("{job:?} is not an HTCondor job id (CLUSTER.PROC)"));
    }
    let id = deployment_id(&job, caller.uid, &global_id);
    // A JOB_EXIT that comes while PREPARE_JOB's deploy still runs (HTCondor
    // gave up on the hook) waits for it, then undoes all of it.
    let lock = deployment_lock(&id);
    let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
    match request {
        ServiceRequest::Deploy {
            request, account, ..
        } => deploy(site, caller, &id, &request, account.as_deref()),
        ServiceRequest::Teardown {
            how,
            succeeded,
            outcome,
            ..
        } => teardown(site, caller, &id, &how, succeeded, &outcome),
    }
}

/// One operation at a time per deployment.
fn deployment_lock(id: &str) -> std::sync::Arc<std::sync::Mutex<()>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    static LOCKS: Mutex<Option<HashMap<String, Arc<Mutex<()>>>>> = Mutex::new(None);
    let mut locks = LOCKS.lock().unwrap_or_else(|e| e.into_inner());
    let map = locks.get_or_insert_with(HashMap::new);
    // Forget the locks nobody holds or waits for.
    map.retain(|_, l| Arc::strong_count(l) > 1);
    map.entry(id.to_string()).or_default().clone()
}

fn deploy(
    site: &SiteConfig,
    caller: Caller,
    id: &str,
    request: &Request,
    account: Option<&str>,
) -> ServiceReply {
    let what = match request {
        Request::Jdl { path, .. } => path.display().to_string(),
        Request::Image(name) => format!("image {name}"),
    };
    tracing::info!("request {what} for uid {}", caller.uid);
    let owner = match crate::owner::Owner::of_uid(caller.uid) {
        Ok(o) => o,
        Err(e) => return ServiceReply::Refused(e.to_string()),
    };
    let env = match batch::admit(site, &owner, request, account) {
        Ok(env) => env,
        Err(message) => {
            tracing::warn!("refused (user error, the job is held): {message}");
            return ServiceReply::Refused(message);
        }
    };
    // A journal already there: a run of the same job whose JOB_EXIT never
    // came (the node rebooted, the starter died). Its owner's to reuse.
    match Journal::open(&site.state_dir, id) {
        Ok(Some(old)) => {
            let owner = old.facts().uid;
            if owner != Some(caller.uid) {
                return ServiceReply::Fault(format!(
                    "deployment {id} already exists for uid {owner:?}: clean it up with `sd cleanup {id}`"
                ));
            }
            tracing::warn!("removing the leftover deployment {id} of an earlier run");
            if let Err(e) = deployment::cleanup(site, id) {
                return ServiceReply::Fault(format!("leftover deployment {id}: {e}"));
            }
        }
        Ok(None) => {}
        Err(e) => return ServiceReply::Fault(e.to_string()),
    }
    let started = Instant::now();
    match Deployment::deploy(site, id, &env, caller.uid, None) {
        Ok(d) => {
            let boot_secs = started.elapsed().as_secs_f64();
            tracing::info!(
                "domain {id} up in {boot_secs:.1} s under {}: image {} ({} MiB, {} vCPU), guest kernel {}",
                d.acceleration,
                env.image.name,
                env.memory_mib,
                env.vcpus,
                d.link.info.kernel_release
            );
            let journal = Journal::open(&site.state_dir, id).ok().flatten();
            let backend = journal
                .and_then(|j| j.facts().backend.clone())
                .unwrap_or_else(|| "qemu".into());
            // Dropping the deployment closes our link: the agent serves one
            // client at a time, and the next is the job's wrapper.
            let reply = ServiceReply::Deployed {
                deployment: id.to_string(),
                domain: deployment::domain_name(site, id),
                backend,
                acceleration: d.acceleration.clone(),
                boot_secs,
            };
            drop(d);
            reply
        }
        Err(e) if e.fault(&env) == deployment::Fault::User => {
            tracing::warn!("user error (the job is held): the domain did not come up: {e}");
            ServiceReply::Refused(format!("the domain did not come up: {e}"))
        }
        Err(e) => {
            tracing::error!("site fault, the job is held: {e}");
            ServiceReply::Fault(e.to_string())
        }
    }
}

fn teardown(
    site: &SiteConfig,
    caller: Caller,
    id: &str,
    how: &str,
    succeeded: bool,
    outcome: &str,
) -> ServiceReply {
    tracing::info!("job ended ({how}): {outcome}");
    match Journal::open(&site.state_dir, id) {
        Ok(Some(j)) => {
            let owner = j.facts().uid;
            if caller.uid != 0 && owner != Some(caller.uid) {
                tracing::warn!(
                    "uid {} may not tear down {id} (owner {owner:?})",
                    caller.uid
                );
                return ServiceReply::Refused(format!(
                    "deployment {id} is not yours (uid {})",
                    caller.uid
                ));
            }
        }
        Ok(None) => {
            tracing::info!("no domain to clean up (PREPARE_JOB refused the request or never ran)");
            return ServiceReply::Finished { found: false };
        }
        Err(e) => return ServiceReply::Fault(e.to_string()),
    }
    match crate::batch::finish_logged(site, id, succeeded) {
        Ok(found) => ServiceReply::Finished { found },
        Err(e) => {
            tracing::error!("cleanup failed, the node keeps leftovers: {e}");
            ServiceReply::Fault(format!("cleanup of {id} failed: {e}"))
        }
    }
}

/// How long a hook waits for the service before calling it a site fault.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        assert!(valid_job_id("12.0"));
        assert!(!valid_job_id("12"));
        assert!(!valid_job_id("12.x"));
        assert!(!valid_job_id("../1.0"));
        assert!(!valid_job_id(".0"));
        let a = deployment_id("12.0", 4242, "vm#12.0#1795550000");
        assert!(
            a.starts_with("condor-12.0-") && crate::journal::valid_id(&a),
            "{a}"
        );
        assert_eq!(a, deployment_id("12.0", 4242, "vm#12.0#1795550000"));
        assert_ne!(a, deployment_id("12.0", 4243, "vm#12.0#1795550000"));
        assert_ne!(a, deployment_id("12.0", 4242, "other#12.0#1795550000"));
        let longest = deployment_id("999999999999.999999999999", u32::MAX, "x");
        assert!(crate::journal::valid_id(&longest), "{longest}");
    }

    #[test]
    fn the_wire_format_is_one_json_line() {
        let r = ServiceRequest::Deploy {
            job: "7.0".into(),
            global_id: "vm#7.0#1".into(),
            request: Request::Image("busybox".into()),
            account: None,
        };
        insta::assert_snapshot!(serde_json::to_string(&r).unwrap(), @r#"{"op":"deploy","job":"7.0","global_id":"vm#7.0#1","request":{"image":"busybox"},"account":null}"#);
        let back: ServiceRequest =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        insta::assert_snapshot!(serde_json::to_string(&ServiceReply::Refused("no".into())).unwrap(), @r#"{"refused":"no"}"#);
    }

    #[test]
    fn this_test_is_no_condor_starter() {
        assert!(!under_condor_starter(std::process::id() as i32));
        assert_eq!(
            real_uid(std::process::id() as i32),
            Some(nix::unistd::getuid().as_raw())
        );
    }
}
