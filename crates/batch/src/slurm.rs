//! Slurm front end: `sd-prolog`, `sd-exec`, `sd-epilog`.
//!
//! The request reaches the prolog as `SPANK_SD_ENV` (our SPANK plugin's
//! `--sd-env=`) or as `--comment=sd-env:VALUE`; VALUE is a JDL file
//! (relative to the job's working directory, read with the user's rights)
//! or a catalogue image name.
//!
//! A request the user got wrong (bad JDL, policy) must not drain the node:
//! the prolog records the refusal, exits 0, and `sd-exec` — the job's own
//! command — prints it to the job's stderr and fails the job. Only site
//! faults (hypervisor, disk, config) fail the prolog, and Slurm drains the
//! node for the admin to look at.

pub use crate::frontend::RequestSpec;
use crate::frontend::{self, BootFailure, RunError};
use sd_host::owner::Owner;
use sd_host::user_files::UserFiles;
use sd_policy::ResolvedEnvironment;
use sd_site::{ExitCode, SiteConfig};
use sd_vmm::deployment;
use sd_vmm::guest_link::JobOutcome;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Prefix of a request carried in `--comment`.
pub const COMMENT_PREFIX: &str = "sd-env:";

/// Where the request came from in the hooks' environment, if anywhere.
pub fn requested_sd_env(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    if let Some(v) = var("SPANK_SD_ENV").filter(|v| !v.trim().is_empty()) {
        return Some(v.trim().to_string());
    }
    let comment = var("SLURM_JOB_COMMENT")?;
    let value = comment.trim().strip_prefix(COMMENT_PREFIX)?.trim();
    (!value.is_empty()).then(|| value.to_string())
}

/// The job as the prolog and epilog see it.
#[derive(Debug, Clone)]
pub struct SlurmJob {
    pub id: String,
    pub uid: u32,
    pub gid: u32,
    pub work_dir: PathBuf,
    pub account: Option<String>,
}

impl SlurmJob {
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<SlurmJob, String> {
        let need =
            |name: &str| var(name).ok_or_else(|| format!("{name} is not set: not run by Slurm?"));
        let number = |name: &str| -> Result<u32, String> {
            need(name)?
                .parse()
                .map_err(|_| format!("{name} is not a number"))
        };
        let id = need("SLURM_JOB_ID")?;
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
            return Err(format!("SLURM_JOB_ID {id:?} is not a job number"));
        }
        Ok(SlurmJob {
            id,
            uid: number("SLURM_JOB_UID")?,
            gid: number("SLURM_JOB_GID")?,
            work_dir: PathBuf::from(var("SLURM_JOB_WORK_DIR").unwrap_or_else(|| "/".into())),
            account: var("SLURM_JOB_ACCOUNT").filter(|a| !a.is_empty()),
        })
    }

    pub fn deployment_id(&self) -> String {
        deployment_id(&self.id)
    }
}

pub fn deployment_id(job_id: &str) -> String {
    format!("slurm-{job_id}")
}

fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Where a refused request's message waits for the job's `sd-exec`.
fn refusal_path(site: &SiteConfig, id: &str) -> PathBuf {
    site.state_dir.join("refused").join(id)
}

/// Checks the request: JDL read as the user, parsed with the user's
/// rights, policy.
pub fn resolve(
    site: &SiteConfig,
    job: &SlurmJob,
    spec: &RequestSpec,
) -> Result<ResolvedEnvironment, BootFailure> {
    // Who the job's owner is, and its groups, from the user database.
    let owner = Owner::of_uid(job.uid).map_err(|e| BootFailure::Refused(e.to_string()))?;
    let user = UserFiles::of(&owner, job.gid);
    let request = frontend::read_request(spec, &job.work_dir, user, site.max_request_bytes)
        .map_err(BootFailure::Refused)?;
    Ok(frontend::admit(
        site,
        &owner,
        &request,
        job.account.as_deref(),
    )?)
}

/// `sd-prolog`. Exit status: 0 (domain up, no request, or request refused:
/// the job fails with the reason, which `sd-exec` prints), 1 (site fault:
/// Slurm drains the node).
pub fn prolog() -> i32 {
    // The fast path for every job that asks for nothing: no file is touched.
    let Some(value) = requested_sd_env(env_var) else {
        return 0;
    };
    let site = match SiteConfig::load(&SiteConfig::default_path()) {
        Ok(s) => s,
        Err(e) => return site_fault_before_config("sd-prolog", &e.to_string()),
    };
    let job = match SlurmJob::from_env(env_var) {
        Ok(j) => j,
        Err(e) => return site_fault_before_config("sd-prolog", &e),
    };
    let (_log, _span) = crate::hook_log::init("sd-prolog", &site.log_dir, &job.id);
    let id = job.deployment_id();
    tracing::info!(
        "request {value:?} for uid {} in {}",
        job.uid,
        job.work_dir.display()
    );
    let booted = resolve(&site, &job, &RequestSpec::parse(&value)).and_then(|env| {
        fits_the_jobs_memory(&job.id, env.memory_mib)?;
        let cgroups = join_job_cgroups(&job);
        let booted = frontend::boot(&site, &id, &env, job.uid, None);
        if let Some(c) = cgroups {
            if booted.is_ok() {
                c.leave();
            } else {
                c.undo();
            }
        }
        booted
    });
    match booted {
        Ok(_) => {
            start_container_watcher(&job.id);
            ExitCode::HOOK_OK
        }
        Err(e @ BootFailure::Site(_)) => {
            tracing::error!("site fault, failing the prolog (Slurm drains the node): {e}");
            ExitCode::HOOK_SITE
        }
        // The user's (or a full node): the job fails with the reason.
        Err(e) => {
            tracing::warn!("refused, the node stays up: {e}");
            match write_refusal(&site, &id, job.uid, &e.to_string()) {
                Ok(()) => ExitCode::HOOK_OK,
                Err(e) => {
                    tracing::error!("cannot record the refusal: {e}");
                    ExitCode::HOOK_SITE
                }
            }
        }
    }
}

/// The refusal is the job's user's to read (its `sd-exec` prints it), and nobody else's.
fn write_refusal(site: &SiteConfig, id: &str, uid: u32, message: &str) -> std::io::Result<()> {
    let path = refusal_path(site, id);
    std::fs::create_dir_all(path.parent().unwrap())?;
    sd_host::atomic_file::write_for(&path, format!("{message}\n").as_bytes(), uid)
}

/// Without a site config there is no log directory: syslog and stderr.
fn site_fault_before_config(hook: &'static str, message: &str) -> i32 {
    let (_log, _span) = crate::hook_log::init(
        hook,
        Path::new("/var/log/smartdomains"),
        &env_var("SLURM_JOB_ID").unwrap_or_default(),
    );
    tracing::error!("site fault: {message}");
    eprintln!("{hook}: {message}");
    ExitCode::HOOK_SITE
}

/// `sd-epilog`. Exit status 0 unless something could not be cleaned up
/// (then the node is drained: it holds leftovers an admin must see).
pub fn epilog() -> i32 {
    let Some(value) = requested_sd_env(env_var) else {
        return epilog_of_steps();
    };
    let site = match SiteConfig::load(&SiteConfig::default_path()) {
        Ok(s) => s,
        Err(e) => return site_fault_before_config("sd-epilog", &e.to_string()),
    };
    let Some(job_id) = env_var("SLURM_JOB_ID") else {
        return site_fault_before_config("sd-epilog", "SLURM_JOB_ID is not set: not run by Slurm?");
    };
    let (_log, _span) = crate::hook_log::init("sd-epilog", &site.log_dir, &job_id);
    let id = deployment_id(&job_id);
    let outcome = job_outcome(&job_id);
    tracing::info!("job ended: {outcome}");
    if matches!(std::fs::remove_file(refusal_path(&site, &id)), Ok(())) {
        tracing::info!("the request {value:?} had been refused; nothing was deployed");
    }
    // Slurm's "exit:signal" of the batch script; a cancel leaves 0:0 but is no success.
    let succeeded = env_var("SLURM_JOB_EXIT_CODE2").as_deref() == Some("0:0")
        && !outcome.contains("CANCELLED")
        && !outcome.contains("TIMEOUT");
    let own = match crate::frontend::finish_logged(&site, &id, succeeded) {
        Ok(true) => ExitCode::HOOK_OK,
        Ok(false) => {
            tracing::info!("no domain to clean up (the prolog refused the request or never ran)");
            ExitCode::HOOK_OK
        }
        Err(e) => {
            tracing::error!("cleanup failed, the node keeps leftovers: {e}");
            ExitCode::HOOK_SITE
        }
    };
    remove_job_cgroups(&job_id);
    match clean_steps_domains(&site, &job_id) {
        Ok(()) => own,
        Err(()) => ExitCode::HOOK_SITE,
    }
}

/// The epilog of a job that asked for no domain of its own: its steps may
/// still have made some (`sd start` of a pool over the allocation), which
/// a step killed before its own teardown left. Quiet (no log, exit 0) when
/// there are none, as for any job SmartDomains has nothing to do with.
fn epilog_of_steps() -> i32 {
    let (Some(job_id), Ok(site)) = (
        env_var("SLURM_JOB_ID"),
        SiteConfig::load(&SiteConfig::default_path()),
    ) else {
        return ExitCode::HOOK_OK;
    };
    match deployment::of_slurm_job(&site, &job_id) {
        Ok(ids) if ids.is_empty() => ExitCode::HOOK_OK,
        _ => {
            let (_log, _span) = crate::hook_log::init("sd-epilog", &site.log_dir, &job_id);
            match clean_steps_domains(&site, &job_id) {
                Ok(()) => ExitCode::HOOK_OK,
                Err(()) => ExitCode::HOOK_SITE,
            }
        }
    }
}

/// Undoes every deployment the job's steps made on this node (pool
/// members), from their journals.
fn clean_steps_domains(site: &SiteConfig, job_id: &str) -> Result<(), ()> {
    let ids = deployment::of_slurm_job(site, job_id).map_err(|e| {
        tracing::error!("cannot list the domains of the job's steps: {e}");
    })?;
    let mut failed = false;
    for id in ids {
        match deployment::cleanup(site, &id) {
            Ok(_) => tracing::info!("{id}: left by a step of the job; cleaned up"),
            Err(e) => {
                tracing::error!("{id}: cleanup failed, the node keeps leftovers: {e}");
                failed = true;
            }
        }
    }
    if failed {
        Err(())
    } else {
        Ok(())
    }
}

/// `scontrol show job -o JOB` (hooks have no PATH), within 3 s; None if
/// there is no scontrol or it does not answer.
fn scontrol_show_job(job_id: &str) -> Option<String> {
    let scontrol = ["/usr/bin/scontrol", "/usr/local/bin/scontrol"]
        .into_iter()
        .find(|p| Path::new(p).exists())?;
    let mut child = std::process::Command::new(scontrol)
        .args(["show", "job", "-o", job_id])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let mut out = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    let _ = child.wait();
    (!out.is_empty()).then_some(out)
}

/// Field `name` of `scontrol show job -o` output.
fn job_info_field<'a>(out: &'a str, name: &str) -> Option<&'a str> {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
}

/// Exit code, or what `scontrol` says (a cancel or a time limit leave the
/// code at 0).
fn job_outcome(job_id: &str) -> String {
    let code = env_var("SLURM_JOB_EXIT_CODE2").unwrap_or_else(|| "?".into());
    let Some(out) = scontrol_show_job(job_id) else {
        return format!("exit code {code}");
    };
    let field = |name: &str| job_info_field(&out, name).unwrap_or("?").to_string();
    format!(
        "exit code {code}, state {}, reason {}",
        field("JobState"),
        field("Reason")
    )
}

/// A Slurm memory size (`700M`, `2G`, `512K`, `1T`; no unit: MiB) in MiB.
fn slurm_size_mib(v: &str) -> Option<u64> {
    let (digits, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = digits.parse().ok()?;
    match unit {
        "" | "M" => Some(n),
        "K" => Some(n / 1024),
        "G" => n.checked_mul(1024),
        "T" => n.checked_mul(1024 * 1024),
        _ => None,
    }
}

/// The memory the job was allocated on each of its nodes, in MiB
/// (`MinMemoryNode`, or `MinMemoryCPU` times its CPUs on this node); None
/// if Slurm allocates no memory (`SelectTypeParameters` without memory: 0).
fn job_memory_mib(show_job: &str, cpus_on_node: Option<u64>) -> Option<u64> {
    let mib = if let Some(v) = job_info_field(show_job, "MinMemoryNode") {
        slurm_size_mib(v)?
    } else {
        slurm_size_mib(job_info_field(show_job, "MinMemoryCPU")?)?.checked_mul(cpus_on_node?)?
    };
    (mib > 0).then_some(mib)
}

/// Admission against the job's allocation: its cgroup's memory limit (with
/// `ConstrainRAMSpace`, what it was allocated) must hold the guest and QEMU.
/// The cgroup itself is made only after the prolog: the allocation is read
/// from Slurm. A request that does not fit is the user's (the node stays up).
fn fits_the_jobs_memory(job_id: &str, memory_mib: u64) -> Result<(), BootFailure> {
    let Some(out) = scontrol_show_job(job_id) else {
        return Ok(());
    };
    // "2" or "2(x3)": this node's share of the job's CPUs.
    let cpus = env_var("SLURM_JOB_CPUS_PER_NODE").and_then(|v| {
        v.split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
    });
    let Some(limit) = job_memory_mib(&out, cpus) else {
        return Ok(());
    };
    sd_vmm::cgroup::check_memory(limit << 20, memory_mib).map_err(BootFailure::Refused)
}

/// The job's cgroups, made and joined before the domain boots so that QEMU
/// is the job's from its start (`sd_vmm::cgroup::prepare_slurm`); None when
/// Slurm runs without cgroups here, or they cannot be made (logged: the
/// watcher still places QEMU once Slurm has made them).
fn join_job_cgroups(job: &SlurmJob) -> Option<sd_vmm::cgroup::Prepared> {
    let node = env_var("SLURMD_NODENAME");
    let root = Path::new(sd_vmm::cgroup::CGROUP_ROOT);
    match sd_vmm::cgroup::prepare_slurm(root, node.as_deref(), job.uid, &job.id) {
        Ok(p) if p.is_empty() => None,
        Ok(p) => {
            tracing::info!("the domain boots in job {}'s cgroups", job.id);
            Some(p)
        }
        Err(e) => {
            tracing::error!("{e}; the domain boots outside the job's cgroups");
            None
        }
    }
}

/// Starts `sd-prolog --contain`, detached: the prolog must return before
/// Slurm makes the job's cgroups (with `PrologFlags=Contain`, right after).
/// A failure to start it is logged; the domain runs, outside the job's cgroups.
fn start_container_watcher(job_id: &str) {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("cannot start the cgroup watcher (own path: {e}); the domain stays outside the job's cgroups");
            return;
        }
    };
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(CONTAIN_ARG)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: setsid is async-signal-safe. Its own session: Slurm waits for
    // the prolog's process group and output, not for it.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    match cmd.spawn() {
        Ok(child) => tracing::info!("cgroup watcher of job {job_id}: process {}", child.id()),
        Err(e) => tracing::error!(
            "cannot start the cgroup watcher: {e}; the domain stays outside the job's cgroups"
        ),
    }
}

/// The argument of `sd-prolog` that makes it the cgroup watcher.
pub const CONTAIN_ARG: &str = "--contain";

/// How long the watcher waits for Slurm to make the job's cgroups.
const CGROUP_WAIT: Duration = Duration::from_secs(60);

/// `sd-prolog --contain`, started by the prolog with its environment: waits
/// for the job's cgroups (`sd_vmm::cgroup`), places the domain's hypervisor
/// processes in them, then follows the job: when Slurm suspends it
/// (`scontrol suspend`, gang scheduling, `PreemptMode=SUSPEND`: SIGSTOP to
/// its tasks) the domain is paused (QMP `stop`), and continued on resume.
/// Ends when the domain or the job's cgroups are gone. Exit 0 always: it
/// logs what it could not do.
pub fn contain() -> i32 {
    let Ok(site) = SiteConfig::load(&SiteConfig::default_path()) else {
        return 0;
    };
    let Ok(job) = SlurmJob::from_env(env_var) else {
        return 0;
    };
    let (_log, _span) = crate::hook_log::init("sd-contain", &site.log_dir, &job.id);
    let id = job.deployment_id();
    let domain = match deployment::running_domain(&site, None, &id) {
        Ok(Some(d)) => d,
        Ok(None) => return 0,
        Err(e) => {
            tracing::error!("cannot find the domain of {id}: {e}");
            return 0;
        }
    };
    let pids = domain.hypervisor_pids();
    if pids.is_empty() {
        tracing::info!(
            "backend {}: the domain has no host processes to place in the job's cgroups              (Xen: the hypervisor owns its vCPUs and memory)",
            domain.backend()
        );
    }
    let node = env_var("SLURMD_NODENAME");
    let root = Path::new(sd_vmm::cgroup::CGROUP_ROOT);
    let started = Instant::now();
    let find = || sd_vmm::cgroup::JobContainer::slurm(root, node.as_deref(), job.uid, &job.id);
    let container = loop {
        // The extern step's task is started once the step's cgroups are all
        // made; a moment more for the last plugin's.
        if find().is_some_and(|c| c.extern_task().is_some()) {
            std::thread::sleep(Duration::from_millis(300));
            if let Some(c) = find() {
                break c;
            }
        }
        if started.elapsed() > CGROUP_WAIT || !domain.is_running() {
            tracing::info!(
                "job {} has no cgroups after {:.0} s (Slurm without proctrack/cgroup, task/cgroup                  and PrologFlags=Contain?): the domain runs outside them",
                job.id,
                started.elapsed().as_secs_f64()
            );
            return 0;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for &pid in &pids {
        match container.place(pid) {
            Ok(()) => tracing::info!(
                "hypervisor process {pid} placed in the job's cgroups ({}) {:.1} s after the prolog",
                container
                    .jobs
                    .iter()
                    .map(|(c, _)| *c)
                    .collect::<Vec<_>>()
                    .join(", "),
                started.elapsed().as_secs_f64()
            ),
            Err(e) => tracing::error!("{e}"),
        }
    }
    if let Some(limit) = container.memory_limit() {
        tracing::info!("the job's memory limit: {} MiB", limit >> 20);
    }
    let mut paused = false;
    while domain.is_running() {
        match container.suspended() {
            Some(s) if s != paused => match domain.pause(s) {
                Ok(()) => {
                    paused = s;
                    tracing::info!(
                        "job {} {}: domain {}",
                        job.id,
                        if s { "suspended" } else { "resumed" },
                        if s {
                            "paused (QMP stop)"
                        } else {
                            "continued (QMP cont)"
                        }
                    );
                }
                Err(e) => {
                    tracing::error!(
                        "cannot {} the domain: {e}",
                        if s { "pause" } else { "continue" }
                    );
                    std::thread::sleep(Duration::from_secs(1));
                }
            },
            Some(_) => {}
            // The extern step is gone: the job ends, its epilog tears the domain down.
            None if container
                .extern_freezer
                .as_ref()
                .is_some_and(|d| !d.exists()) =>
            {
                break
            }
            None => {}
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The job ends while suspended: the epilog shuts a running guest down.
    if paused && domain.is_running() {
        if let Err(e) = domain.pause(false) {
            tracing::warn!("cannot continue the domain for its shutdown: {e}");
        }
    }
    0
}

/// The epilog's end of the job's cgroups: Slurm could not remove the job's
/// cgroups that held the domain while its steps ended; once the domain is
/// gone they are empty, and removed here (deepest first; one that still
/// holds a process stays).
fn remove_job_cgroups(job: &str) {
    let (Some(uid), node) = (
        env_var("SLURM_JOB_UID").and_then(|u| u.parse().ok()),
        env_var("SLURMD_NODENAME"),
    ) else {
        return;
    };
    let root = Path::new(sd_vmm::cgroup::CGROUP_ROOT);
    if let Some(c) = sd_vmm::cgroup::JobContainer::slurm(root, node.as_deref(), uid, job) {
        for (_, dir) in &c.jobs {
            // QEMU, just destroyed, may take a moment to leave it.
            let deadline = Instant::now() + Duration::from_secs(10);
            while let Err(e) = sd_vmm::cgroup::remove_tree(dir) {
                if Instant::now() > deadline {
                    tracing::warn!("job cgroup {} not removed: {e}", dir.display());
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `sd-exec -- CMD ARGS...`: runs the command inside this job's domain.
/// Returns the command's exit status; a command killed by signal N kills
/// `sd-exec` with N (the caller is told with `Err`).
pub fn exec(argv: Vec<String>) -> Result<JobOutcome, ExecError> {
    if argv.is_empty() {
        return Err(ExecError::Usage);
    }
    // Blocked before any thread exists, so that every thread inherits it.
    let signals = frontend::block_forwarded_signals();
    let job_id = env_var("SLURM_JOB_ID").ok_or(ExecError::NotInJob)?;
    let site = SiteConfig::load(&SiteConfig::default_path())
        .map_err(|e| ExecError::Site(e.to_string()))?;
    let id = deployment_id(&job_id);
    if let Ok(message) = std::fs::read_to_string(refusal_path(&site, &id)) {
        return Err(ExecError::Refused(message.trim().to_string()));
    }
    // A batch script lives on the host (Slurm's spool): the guest gets a
    // copy at the same path (frontend::run_in_domain). Programs are the guest's own.
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| "/".into());
    frontend::run_in_domain(&site, &id, argv, cwd, signals).map_err(|e| match e {
        RunError::NoDomain(_) => ExecError::NoDomain(job_id.clone()),
        RunError::Site(m) => match killed_by_the_memory_limit(&job_id) {
            Some(message) => ExecError::MemoryLimit(message),
            None => ExecError::Site(m),
        },
    })
}

/// Why the domain is gone, if the job's own memory limit killed it: the
/// kernel's kills in the job's memory cgroup, its limit and its peak.
fn killed_by_the_memory_limit(job_id: &str) -> Option<String> {
    let uid = nix::unistd::getuid().as_raw();
    let node = env_var("SLURMD_NODENAME");
    let container = sd_vmm::cgroup::JobContainer::slurm(
        Path::new(sd_vmm::cgroup::CGROUP_ROOT),
        node.as_deref(),
        uid,
        job_id,
    )?;
    let verdict = container.memory_verdict()?;
    if verdict.oom_kills == 0 {
        return None;
    }
    let mib = |b: Option<u64>| b.map_or("?".to_string(), |b| (b >> 20).to_string());
    Some(format!(
        "the job's domain was killed by the job's memory limit ({} MiB, Slurm's --mem; \
         {} MiB at the peak; {} process(es) killed in job {job_id}'s memory cgroup): ask \
         for more memory (--mem), or give the guest less (VirtualEnvironment Memory): \
         its QEMU needs about {} MiB beside the guest's RAM",
        mib(verdict.limit),
        mib(verdict.max_usage),
        verdict.oom_kills,
        sd_vmm::cgroup::QEMU_OVERHEAD_MIB,
    ))
}

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("usage: sd-exec -- COMMAND [ARGS...]")]
    Usage,
    #[error("not inside a Slurm job (SLURM_JOB_ID is not set)")]
    NotInJob,
    #[error("SmartDomains refused this job's environment request: {0}")]
    Refused(String),
    #[error("job {0} has no SmartDomains domain on this node: it asked for none (--sd-env=, or --comment=sd-env:...) or its prolog failed (see the site's sd-hooks.log)")]
    NoDomain(String),
    #[error("{0}")]
    Site(String),
    /// The user's: the allocation is too small for what the job does.
    #[error("{0}")]
    MemoryLimit(String),
}

impl ExecError {
    /// The exit status `sd-exec` gives the job.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Usage | ExecError::Refused(_) | ExecError::MemoryLimit(_) => {
                ExitCode::REFUSED
            }
            _ => ExitCode::SITE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn request_from_spank_or_comment() {
        assert_eq!(requested_sd_env(vars(&[])), None);
        assert_eq!(
            requested_sd_env(vars(&[("SLURM_JOB_COMMENT", "just a note")])),
            None
        );
        assert_eq!(
            requested_sd_env(vars(&[("SLURM_JOB_COMMENT", "sd-env:")])),
            None
        );
        assert_eq!(
            requested_sd_env(vars(&[("SLURM_JOB_COMMENT", " sd-env: busybox ")])),
            Some("busybox".into())
        );
        assert_eq!(
            requested_sd_env(vars(&[
                ("SPANK_SD_ENV", "jobs/hello.jdl"),
                ("SLURM_JOB_COMMENT", "sd-env:x")
            ])),
            Some("jobs/hello.jdl".into())
        );
    }

    #[test]
    fn job_context_is_checked() {
        let ok = SlurmJob::from_env(vars(&[
            ("SLURM_JOB_ID", "42"),
            ("SLURM_JOB_UID", "1000"),
            ("SLURM_JOB_GID", "1000"),
            ("SLURM_JOB_WORK_DIR", "/home/u"),
        ]))
        .unwrap();
        assert_eq!(ok.deployment_id(), "slurm-42");
        assert!(SlurmJob::from_env(vars(&[
            ("SLURM_JOB_ID", "../1"),
            ("SLURM_JOB_UID", "0"),
            ("SLURM_JOB_GID", "0")
        ]))
        .is_err());
        assert!(SlurmJob::from_env(vars(&[("SLURM_JOB_ID", "1")])).is_err());
    }
}
