//! The node service: the one privileged process of the HTCondor front end.
//!
//! HTCondor runs its job hooks and the job wrapper as the job's owner, not
//! as root. Booting a domain needs root (the state directory, QEMU dropping
//! to `sd-qemu`, KVM), so the hooks ask this root-owned service on the
//! node, over a Unix socket (default [`DEFAULT_SOCKET`]):
//!
//! * the caller is known by the kernel, pinned at accept by a pidfd
//!   ([`sd_host::peer`]: uid, gid, pid, and the root-owned `condor_starter` it
//!   runs under). Unless started with `--any-caller`, a caller of another
//!   uid than root's under no starter is refused at accept;
//! * a caller under a starter acts for the job that starter runs, read
//!   from HTCondor's own job ad ([`condor::starter_job`]), whatever job the
//!   request names. Its domain belongs to that starter (pid and start time in
//!   the journal): one per job, and reaped ([`reap`], every
//!   [`REAP_INTERVAL`], and by `sd cleanup`) once the starter is gone;
//! * **deploy**: the hook has already read the user's JDL itself, with the
//!   user's own rights, and sends its text; an image name is only looked up
//!   in the site catalogue. The service checks the request against the
//!   site's policy and the node's limits, and deploys
//!   `condor-CLUSTER.PROC-TAG` for the caller's uid: the journal records the
//!   owner, the agent socket becomes the user's (the job wrapper talks to
//!   the guest directly, like `sd-exec`);
//! * **teardown**: only of a deployment whose journal owner is the caller
//!   (or root).
//!
//! One JSON line in (within [`REQUEST_DEADLINE`]), one JSON line out, per
//! connection. At most [`MAX_CONNECTIONS`] are served at once, each on its
//! own thread (so two jobs boot at once), [`MAX_CONNECTIONS_PER_UID`] of
//! one uid; root has [`ROOT_RESERVE`] more. Connections over that are
//! answered "busy" and closed at once.

use crate::condor;
use crate::frontend::{self, BootFailure, Request};
use sd_host::peer::{Peer, ProcessStamp};
use sd_site::SiteConfig;
use sd_vmm::deployment;
use sd_vmm::status;
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

pub use sd_request::node_service::{valid_job_id, ServiceReply, ServiceRequest};

/// The deployment of HTCondor job `CLUSTER.PROC` of user `uid`:
/// `condor-CLUSTER.PROC-TAG`, the tag a hash of the uid and the job's
/// `GlobalJobId`. Jobs of two schedds never share a deployment, and no user
/// can take (or block) the name of another user's job.
pub fn deployment_id(job: &str, uid: u32, global_id: &str) -> String {
    let tag = sd_host::name_tag(uid.to_le_bytes().iter().chain(global_id.as_bytes()));
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

/// Connections served at once; more are answered "busy" and closed at once.
pub const MAX_CONNECTIONS: usize = 32;
/// Of those, one uid's: one local user cannot take them all.
pub const MAX_CONNECTIONS_PER_UID: usize = 4;
/// Kept for root beyond [`MAX_CONNECTIONS`]: the admin's own requests.
pub const ROOT_RESERVE: usize = 4;
/// The request line must have arrived within this after accept.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// How often the service reaps deployments whose job has ended.
pub const REAP_INTERVAL: Duration = Duration::from_secs(5);
/// Out of file descriptors in accept: wait this long, do not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Who is calling: the kernel's word, pinned at accept (see [`sd_host::peer`]).
#[derive(Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    /// The root-owned condor_starter the caller runs under, if any: the job
    /// it runs is the only one the caller may deploy for.
    pub starter: Option<ProcessStamp>,
    peer: Option<Peer>,
}

impl Caller {
    /// A caller that is not on a socket (tests, `handle` called directly).
    pub fn local(uid: u32, gid: u32, pid: i32) -> Caller {
        Caller {
            uid,
            gid,
            pid,
            starter: None,
            peer: None,
        }
    }

    /// The process that connected has not exited.
    fn alive(&self) -> bool {
        self.peer.as_ref().is_none_or(Peer::alive)
    }
}

/// Places for connections being served: at most [`MAX_CONNECTIONS`], and
/// [`MAX_CONNECTIONS_PER_UID`] of one uid, plus root's reserve.
#[derive(Default)]
struct Slots(std::sync::Mutex<std::collections::HashMap<u32, usize>>);

struct Slot<'a> {
    slots: &'a Slots,
    uid: u32,
}

impl Slots {
    fn take(&self, uid: u32) -> Option<Slot<'_>> {
        let mut by_uid = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = by_uid.values().sum();
        let mine = by_uid.get(&uid).copied().unwrap_or(0);
        let root = by_uid.get(&0).copied().unwrap_or(0);
        let fits = if uid == 0 {
            total < MAX_CONNECTIONS + ROOT_RESERVE
        } else {
            total - root < MAX_CONNECTIONS && mine < MAX_CONNECTIONS_PER_UID
        };
        if !fits {
            return None;
        }
        *by_uid.entry(uid).or_default() += 1;
        Some(Slot { slots: self, uid })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut by_uid = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_uid.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                by_uid.remove(&self.uid);
            }
        }
    }
}

/// `sd-node-service`: serves until SIGTERM/SIGINT. Returns an exit status.
pub fn serve(config: &Path, socket: &Path, pid_file: Option<&Path>, any_caller: bool) -> i32 {
    let site = match SiteConfig::load(config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sd-node-service: {e}");
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
                "sd-node-service: cannot listen on {}: {e}",
                socket.display()
            );
            return 125;
        }
    };
    // Every local user may connect; who they are decides what they may do.
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666));
    if let Some(p) = pid_file {
        let _ = sd_host::atomic_file::write(p, format!("{}\n", std::process::id()).as_bytes());
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
    // Leaked: both live as long as the process.
    let site: &'static SiteConfig = Box::leak(Box::new(site));
    let slots: &'static Slots = Box::leak(Box::default());
    std::thread::spawn(move || loop {
        reap(site);
        std::thread::sleep(REAP_INTERVAL);
    });
    loop {
        match listener.accept() {
            Ok((stream, _)) => accept_one(site, slots, stream, any_caller),
            // Out of descriptors: the connection waits in the backlog; back
            // off instead of spinning on the same error.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) =>
            {
                tracing::warn!("accept: {e}; backing off");
                std::thread::sleep(ACCEPT_BACKOFF);
            }
            Err(_) => {}
        }
    }
}

/// Removes the deployments whose owner (an HTCondor job's starter, an `sd
/// run`) is gone: a job that died without JOB_EXIT, or a domain a job
/// booted for itself and left behind.
pub fn reap(site: &SiteConfig) {
    let ids = match deployment::orphaned(site) {
        Ok(ids) => ids,
        Err(e) => {
            tracing::error!("reaper: {e}");
            return;
        }
    };
    for id in ids {
        let lock = deployment_lock(&id);
        let _one_at_a_time = lock.lock().unwrap_or_else(|e| e.into_inner());
        // Looked at again under the lock: a teardown may have come first.
        if !deployment::orphaned(site).is_ok_and(|ids| ids.contains(&id)) {
            continue;
        }
        match deployment::cleanup(site, &id) {
            Ok(_) => tracing::warn!("reaped {id}: its owner (the job's starter) is gone"),
            Err(e) => tracing::error!("reaping {id} failed: {e}"),
        }
    }
}

/// In the accept loop: who the caller is, pinned now; callers the service
/// never serves, and callers over the connection limits, are answered at
/// once and cost no thread.
fn accept_one(
    site: &'static SiteConfig,
    slots: &'static Slots,
    stream: UnixStream,
    any_caller: bool,
) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("a caller the kernel cannot name: {e}");
            return;
        }
    };
    let starter = if peer.uid == 0 { None } else { peer.starter() };
    if !any_caller && peer.uid != 0 && starter.is_none() {
        tracing::warn!(
            "refused uid {} pid {}: not an HTCondor job hook",
            peer.uid,
            peer.pid
        );
        return answer_now(
            &stream,
            ServiceReply::Refused(
                "the SmartDomains node service serves HTCondor job hooks only".into(),
            ),
        );
    }
    let Some(slot) = slots.take(peer.uid) else {
        tracing::warn!(
            "busy: refused a connection of uid {} pid {}",
            peer.uid,
            peer.pid
        );
        return answer_now(
            &stream,
            ServiceReply::Fault(format!(
                "the node service is busy ({MAX_CONNECTIONS} connections, \
                 {MAX_CONNECTIONS_PER_UID} per user): try again"
            )),
        );
    };
    let caller = Caller {
        uid: peer.uid,
        gid: peer.gid,
        pid: peer.pid,
        starter,
        peer: Some(peer),
    };
    let spawned = std::thread::Builder::new().spawn(move || {
        let _slot = slot;
        serve_one(site, &stream, &caller);
    });
    if let Err(e) = spawned {
        tracing::error!("no thread for a connection: {e}");
    }
}

/// A short answer from the accept loop, which never waits for a reader.
fn answer_now(stream: &UnixStream, reply: ServiceReply) {
    let _ = stream.set_nonblocking(true);
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = (&*stream).write_all(&out);
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

/// Why no request line was read.
#[derive(Debug, PartialEq, Eq)]
enum LineError {
    /// Over the limit before its end: the caller's error, answered.
    TooLong,
    /// Not all there within [`REQUEST_DEADLINE`], or the caller hung up.
    Gone,
}

/// Reads one line of at most `limit` bytes within `deadline`.
fn read_line(stream: &UnixStream, limit: u64, deadline: Instant) -> Result<String, LineError> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(LineError::Gone)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| LineError::Gone)?;
        let n = match (&*stream).read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return Err(LineError::Gone),
        };
        if let Some(end) = chunk[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&chunk[..end]);
            break;
        }
        line.extend_from_slice(&chunk[..n]);
        if line.len() as u64 >= limit {
            return Err(LineError::TooLong);
        }
    }
    if line.len() as u64 > limit {
        return Err(LineError::TooLong);
    }
    String::from_utf8(line).map_err(|_| LineError::Gone)
}

fn serve_one(site: &SiteConfig, stream: &UnixStream, caller: &Caller) {
    // One line, bounded: the JDL it carries may be max_request_bytes, and
    // JSON escaping grows a byte to at most 6 (`\u00XX`).
    let line_limit = site.max_request_bytes.saturating_mul(6) + 64 * 1024;
    let line = read_line(stream, line_limit, Instant::now() + REQUEST_DEADLINE);
    let reply = match line {
        Err(LineError::Gone) => {
            tracing::info!(
                "uid {} pid {} sent no request within {} s",
                caller.uid,
                caller.pid,
                REQUEST_DEADLINE.as_secs()
            );
            return;
        }
        Err(LineError::TooLong) => ServiceReply::Refused(format!(
            "request to the node service over {line_limit} bytes (the site's max_request_bytes is {})",
            site.max_request_bytes
        )),
        Ok(line) => match serde_json::from_str::<ServiceRequest>(&line) {
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
            // The process that connected is the one we checked, or nobody.
            Ok(_) if !caller.alive() => {
                tracing::warn!("pid {} exited before its request was served", caller.pid);
                return;
            }
            Ok(request) => handle(site, caller, request),
        },
    };
    let mut out = serde_json::to_vec(&reply).unwrap_or_default();
    out.push(b'\n');
    let _ = (&*stream).write_all(&out);
}

/// The job a request is for: a starter's own job for a hook (whatever the
/// hook said), else the job the caller named (root, `--any-caller`).
fn job_of(caller: &Caller, job: &str, global_id: &str) -> Result<(String, String), ServiceReply> {
    let Some(starter) = caller.starter else {
        return Ok((job.to_string(), global_id.to_string()));
    };
    match condor::starter_job(starter, caller.uid) {
        Ok(real) => {
            if real.job != job || real.global_id != global_id {
                tracing::warn!(
                    "pid {} named job {job} ({global_id}); its starter {} runs {} ({}): that one it is",
                    caller.pid,
                    starter.pid,
                    real.job,
                    real.global_id
                );
            }
            Ok((real.job, real.global_id))
        }
        Err(e @ condor::StarterJobError::Forged { .. }) => {
            tracing::warn!("{e}");
            Err(ServiceReply::Refused(e.to_string()))
        }
        Err(e) => {
            tracing::error!("{e}");
            Err(ServiceReply::Fault(e.to_string()))
        }
    }
}

/// Does what one request asks, for `caller`.
pub fn handle(site: &SiteConfig, caller: &Caller, request: ServiceRequest) -> ServiceReply {
    let (hook, job, global_id) = match &request {
        ServiceRequest::Deploy { job, global_id, .. } => ("sd-condor-prepare", job, global_id),
        ServiceRequest::Teardown { job, global_id, .. } => ("sd-condor-exit", job, global_id),
    };
    let (job, global_id) = match job_of(caller, job, global_id) {
        Ok(j) => j,
        Err(reply) => return reply,
    };
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
    caller: &Caller,
    id: &str,
    request: &Request,
    account: Option<&str>,
) -> ServiceReply {
    let what = match request {
        Request::Jdl { path, .. } => path.display().to_string(),
        Request::Image { name, networks } if networks.is_empty() => format!("image {name}"),
        Request::Image { name, networks } => {
            format!("image {name} on network(s) {}", networks.join(", "))
        }
    };
    tracing::info!("request {what} for uid {}", caller.uid);
    let owner = match sd_host::owner::Owner::of_uid(caller.uid) {
        Ok(o) => o,
        Err(e) => return ServiceReply::Refused(e.to_string()),
    };
    let env = match frontend::admit(site, &owner, request, account) {
        Ok(env) => env,
        Err(e) => {
            let reply = failure_reply(BootFailure::from(e));
            tracing::warn!("not admitted, the job is held: {reply:?}");
            return reply;
        }
    };
    // A journal already there: the job asks twice (refused while its
    // starter lives), or a run of the same job whose JOB_EXIT never came
    // (the node rebooted, the starter died): its owner's to reuse.
    match status::of(site, id) {
        Ok(Some(old)) => {
            let owner = old.uid;
            if !deployment::orphaned(site).is_ok_and(|o| o.iter().any(|o| o == id))
                && old.owner_pid.is_some()
            {
                tracing::warn!("refused: the job already has its domain {id}");
                return ServiceReply::Refused(format!(
                    "this job already has its domain {id} on this node (one per job)"
                ));
            }
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
    if !caller.alive() {
        tracing::warn!("pid {} exited before its domain was made", caller.pid);
        return ServiceReply::Fault(format!("the caller (pid {}) is gone", caller.pid));
    }
    let started = Instant::now();
    // A hook's domain is its starter's: one per job, reaped when it ends.
    match frontend::boot(site, id, &env, caller.uid, caller.starter) {
        Ok(d) => {
            let boot_secs = started.elapsed().as_secs_f64();
            // Dropping the deployment closes our link: the agent serves one
            // client at a time, and the next is the job's wrapper.
            let reply = ServiceReply::Deployed {
                deployment: id.to_string(),
                domain: deployment::domain_name(site, id),
                backend: d.backend_name().to_string(),
                acceleration: d.acceleration.clone(),
                boot_secs,
            };
            drop(d);
            reply
        }
        Err(e) => failure_reply(e),
    }
}

/// What the hook is told: a refusal holds the job with the user's reason,
/// a full node lets it run elsewhere, a fault holds it for the admin.
fn failure_reply(e: BootFailure) -> ServiceReply {
    match e {
        BootFailure::Refused(m) => ServiceReply::Refused(m),
        BootFailure::NodeFull(m) => ServiceReply::NodeFull(m),
        BootFailure::Site(m) => ServiceReply::Fault(m),
    }
}

fn teardown(
    site: &SiteConfig,
    caller: &Caller,
    id: &str,
    how: &str,
    succeeded: bool,
    outcome: &str,
) -> ServiceReply {
    tracing::info!("job ended ({how}): {outcome}");
    match status::of(site, id) {
        Ok(Some(d)) => {
            let owner = d.uid;
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
    match crate::frontend::finish_logged(site, id, succeeded) {
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
            a.starts_with("condor-12.0-") && sd_vmm::status::valid_id(&a),
            "{a}"
        );
        assert_eq!(a, deployment_id("12.0", 4242, "vm#12.0#1795550000"));
        assert_ne!(a, deployment_id("12.0", 4243, "vm#12.0#1795550000"));
        assert_ne!(a, deployment_id("12.0", 4242, "other#12.0#1795550000"));
        let longest = deployment_id("999999999999.999999999999", u32::MAX, "x");
        assert!(sd_vmm::status::valid_id(&longest), "{longest}");
    }

    #[test]
    fn the_wire_format_is_one_json_line() {
        let r = ServiceRequest::Deploy {
            job: "7.0".into(),
            global_id: "vm#7.0#1".into(),
            request: Request::Image {
                name: "busybox".into(),
                networks: vec![],
            },
            account: None,
        };
        insta::assert_snapshot!(serde_json::to_string(&r).unwrap(), @r#"{"op":"deploy","job":"7.0","global_id":"vm#7.0#1","request":{"image":{"name":"busybox"}},"account":null}"#);
        let back: ServiceRequest =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        insta::assert_snapshot!(serde_json::to_string(&ServiceReply::Refused("no".into())).unwrap(), @r#"{"refused":"no"}"#);
    }

    #[test]
    fn connection_slots_per_uid_overall_and_roots_reserve() {
        let slots = Slots::default();
        let mine: Vec<_> = (0..MAX_CONNECTIONS_PER_UID)
            .map(|_| slots.take(1000).unwrap())
            .collect();
        assert!(slots.take(1000).is_none(), "one user's share is full");
        let others: Vec<_> = (0..MAX_CONNECTIONS - MAX_CONNECTIONS_PER_UID)
            .map(|i| slots.take(2000 + i as u32 / 2).unwrap())
            .collect();
        assert!(slots.take(5000).is_none(), "all places taken");
        let root: Vec<_> = (0..ROOT_RESERVE).map(|_| slots.take(0).unwrap()).collect();
        assert!(slots.take(0).is_none());
        drop(mine);
        assert!(slots.take(1000).is_some(), "places come back");
        drop((others, root));
        assert_eq!(slots.0.lock().unwrap().len(), 0);
    }

    #[test]
    fn a_request_line_is_bounded_in_size_and_time() {
        let (a, b) = UnixStream::pair().unwrap();
        (&b).write_all(b"{\"op\"").unwrap();
        let started = Instant::now();
        let deadline = started + Duration::from_millis(300);
        assert_eq!(read_line(&a, 1024, deadline), Err(LineError::Gone));
        assert!(started.elapsed() < Duration::from_secs(2));
        (&b).write_all(&[b'x'; 4096]).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        assert_eq!(read_line(&a, 1024, deadline), Err(LineError::TooLong));
        let (a, b) = UnixStream::pair().unwrap();
        (&b).write_all(b"one line\nnext").unwrap();
        assert_eq!(read_line(&a, 1024, deadline).as_deref(), Ok("one line"));
    }
}
