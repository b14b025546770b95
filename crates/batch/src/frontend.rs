//! What every batch-system front end shares (Slurm in `slurm`, HTCondor in
//! `condor`): the request a job makes (a JDL file or a catalogue image),
//! checking it against the site's policy, and running a job's command
//! inside its domain through the guest link. The lifecycle itself is
//! `deployment`'s.

use crate::parse_jail::{self, ParseFailure};
use sd_host::owner::Owner;
use sd_host::user_files::UserFiles;
use sd_policy::{self as policy, PolicyError, ResolvedEnvironment};
use sd_proto::{RunRequest, StdinSource};
use sd_request::{EnvironmentRequest, JobRequest};
use sd_site::SiteConfig;
use sd_site::{Blame, Fault};
use sd_vmm::deployment::{self, DeployError, Deployment};
use sd_vmm::guest_link::{GuestLink, JobOutcome};
use sd_vmm::image_store::ImageStore;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

pub use sd_request::carried::{Request, RequestSpec};

/// Reads the JDL a request names, as `user`, relative to `work_dir`. The
/// error is the user's, worded for the user.
pub fn read_request(
    spec: &RequestSpec,
    work_dir: &Path,
    user: UserFiles,
    max_bytes: u64,
) -> Result<Request, String> {
    match spec {
        RequestSpec::Image { name, networks } => Ok(Request::Image {
            name: name.clone(),
            networks: networks.clone(),
        }),
        RequestSpec::Jdl(path) => {
            let path = work_dir.join(path);
            let text = user
                .read_text(&path, max_bytes, "max_request_bytes")
                .map_err(|e| e.to_string())?;
            Ok(Request::Jdl { path, text })
        }
    }
}

/// Why a request was not admitted: whose fault it is decides what the
/// batch system is told (a user's refusal never drains a node).
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    Parse(#[from] ParseFailure),
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl Blame for Refusal {
    fn fault(&self) -> Fault {
        match self {
            Refusal::Parse(e) => e.fault(),
            Refusal::Policy(e) => e.fault(),
        }
    }
}

/// Parses and admits a request of `owner`. A JDL is parsed by
/// `sd-parse-request` with the owner's rights ([`parse_jail`]), never here.
/// `account` is the job's accounting name (Slurm account, HTCondor
/// `AcctGroup`; both chosen by the user): for an image alone, it names the
/// VO if the site knows it as one, and like a JDL's `VirtualOrganisation`
/// it only picks among the owner's VOs.
pub fn admit(
    site: &SiteConfig,
    owner: &Owner,
    request: &Request,
    account: Option<&str>,
) -> Result<ResolvedEnvironment, Refusal> {
    let request = match request {
        Request::Jdl { path, text } => parse_jail::parse_jdl(owner, path, text)?,
        Request::Image { name, networks } => JobRequest {
            vo: account
                .filter(|a| site.vos.contains_key(*a))
                .map(str::to_string),
            environment: EnvironmentRequest {
                networks: networks
                    .iter()
                    .map(|n| sd_request::NetworkRequest::named(n))
                    .collect(),
                ..EnvironmentRequest::image_only(name)
            },
        },
    };
    admit_parsed(site, owner, &request).map_err(Refusal::Policy)
}

/// Admits a request already parsed (by `sd run`, as its own user).
pub fn admit_parsed(
    site: &SiteConfig,
    owner: &Owner,
    request: &JobRequest,
) -> Result<ResolvedEnvironment, PolicyError> {
    policy::admit(
        site,
        owner,
        request.vo.as_deref(),
        &request.environment,
        &ImageStore::of_site(site),
    )
}

/// Why a command could not be run in the job's domain.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("no deployment {0} on this node")]
    NoDomain(String),
    #[error("{0}")]
    Site(String),
}

/// Runs `argv` inside deployment `id` with this process's stdin, stdout,
/// stderr and environment, in `cwd`: [`attach`] then [`run_command`].
pub fn run_in_domain(
    site: &SiteConfig,
    id: &str,
    argv: Vec<String>,
    cwd: String,
    signals: nix::sys::signal::SigSet,
) -> Result<JobOutcome, RunError> {
    let link = attach(site, id)?;
    run_command(&link, argv, cwd, signals)
}

/// Reaches the agent of deployment `id`.
pub fn attach(site: &SiteConfig, id: &str) -> Result<GuestLink, RunError> {
    deployment::attach(site, id, Duration::from_secs(site.boot_timeout_secs)).map_err(|e| match e {
        DeployError::NoSuchDeployment(_) => RunError::NoDomain(id.to_string()),
        other => RunError::Site(other.to_string()),
    })
}

/// Runs `argv` in the guest with this process's stdin, stdout, stderr and
/// environment, in `cwd`. A `#!` script on the host (a batch system's
/// spool or scratch directory) is copied into the guest at the same path
/// first. `signals` (blocked by the caller with [`block_forwarded_signals`]
/// before any thread existed) are forwarded to the command.
pub fn run_command(
    link: &GuestLink,
    argv: Vec<String>,
    cwd: String,
    signals: nix::sys::signal::SigSet,
) -> Result<JobOutcome, RunError> {
    let program = argv
        .first()
        .cloned()
        .ok_or_else(|| RunError::Site("no command".into()))?;
    if let Some(mut script) = host_script(&program) {
        link.put_file(&mut script, &program, 0o755)
            .map_err(|e| RunError::Site(e.to_string()))?;
    }
    run_streamed(link, argv, cwd, signals)
}

/// Runs `argv` in the guest as it is there (nothing copied from the host),
/// with this process's stdin, stdout, stderr and environment, in `cwd`;
/// `signals` as for [`run_command`]. `sd exec`'s way in.
pub fn run_streamed(
    link: &GuestLink,
    argv: Vec<String>,
    cwd: String,
    signals: nix::sys::signal::SigSet,
) -> Result<JobOutcome, RunError> {
    if argv.is_empty() {
        return Err(RunError::Site("no command".into()));
    }
    let env = std::env::vars()
        .filter(|(k, _)| !k.is_empty() && !k.contains('='))
        .collect();
    let request = RunRequest {
        argv,
        env,
        cwd,
        stdin: StdinSource::Stream,
    };
    forward_signals(signals, link.writer());
    let stdin: Box<dyn Read + Send> = Box::new(std::io::stdin());
    link.run(
        request,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
        Some(stdin),
    )
    .map_err(|e| RunError::Site(e.to_string()))
}

/// The program, if it is a `#!` script on the host.
fn host_script(program: &str) -> Option<std::fs::File> {
    if !program.starts_with('/') {
        return None;
    }
    let mut f = std::fs::File::open(program).ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut magic = [0u8; 2];
    f.read_exact(&mut magic).ok()?;
    if &magic != b"#!" {
        return None;
    }
    std::fs::File::open(program).ok()
}

/// Why a job got no domain, by who has to act; every front end tells its
/// batch system by this (Slurm: refusal file or drain; HTCondor: hold
/// reasons; `sd run`: exit status).
#[derive(Debug, thiserror::Error)]
pub enum BootFailure {
    /// The user's: the request, the user's own limit, a saved image of
    /// theirs that does not boot. The node stays in service.
    #[error("{0}")]
    Refused(String),
    /// Nobody's: the node is full now; the job may run later or elsewhere.
    #[error("{0}")]
    NodeFull(String),
    /// The site's: the admin must look (Slurm drains the node).
    #[error("{0}")]
    Site(String),
}

impl BootFailure {
    pub fn fault(&self) -> Fault {
        match self {
            BootFailure::Refused(_) | BootFailure::NodeFull(_) => Fault::User,
            BootFailure::Site(_) => Fault::Site,
        }
    }
}

impl From<Refusal> for BootFailure {
    fn from(e: Refusal) -> Self {
        match e.fault() {
            Fault::User => BootFailure::Refused(e.to_string()),
            Fault::Site => BootFailure::Site(e.to_string()),
        }
    }
}

/// The one boot path of every front end: deploys `env` as `id` for `uid`
/// (owned by `owner`: the process whose end tears it down), logs how it
/// went, and words a failure by whose it is.
pub fn boot(
    site: &SiteConfig,
    id: &str,
    env: &ResolvedEnvironment,
    uid: u32,
    owner: Option<sd_host::peer::ProcessStamp>,
) -> Result<Deployment, BootFailure> {
    let started = std::time::Instant::now();
    match Deployment::deploy_owned(site, id, env, uid, owner) {
        Ok(d) => {
            tracing::info!(
                "domain {id} up in {:.1} s under {}: image {} ({} MiB, {} vCPU), guest kernel {}",
                started.elapsed().as_secs_f64(),
                d.acceleration,
                env.image.name,
                env.memory_mib,
                env.vcpus,
                d.link.info.kernel_release
            );
            Ok(d)
        }
        Err(DeployError::Limit(e)) if e.node_full() => {
            tracing::warn!("node full, the job may run later or elsewhere: {e}");
            Err(BootFailure::NodeFull(e.to_string()))
        }
        Err(e) if e.fault(env) == Fault::User => {
            tracing::warn!("refused, the node stays up: cannot start the domain: {e}");
            Err(BootFailure::Refused(format!(
                "cannot start the domain: {e}"
            )))
        }
        Err(e) => {
            tracing::error!("site fault: cannot start the domain: {e}");
            Err(BootFailure::Site(format!("cannot start the domain: {e}")))
        }
    }
}

/// The epilog's end of deployment `id`: graceful shutdown, save per
/// policy, journal undone, all logged. Ok(false) if there was none.
pub fn finish_logged(site: &SiteConfig, id: &str, succeeded: bool) -> Result<bool, DeployError> {
    let started = std::time::Instant::now();
    let Some(saved) = deployment::finish(site, id, succeeded)? else {
        return Ok(false);
    };
    tracing::info!(
        "domain {id} shut down and cleaned up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // A failed save is logged (by deployment); the node is fine.
    if let Some(Ok(m)) = saved {
        tracing::info!("image {} saved for VO {}", m.name, m.vo);
    }
    Ok(true)
}

/// SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2: what `scancel`, srun and
/// condor_rm send. Block them before any thread exists, so that every
/// thread inherits the mask.
pub fn block_forwarded_signals() -> nix::sys::signal::SigSet {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    let _ = set.thread_block();
    set
}

/// Those signals go to the command in the guest; its death ends the caller.
fn forward_signals(set: nix::sys::signal::SigSet, writer: sd_vmm::guest_link::LinkWriter) {
    std::thread::spawn(move || {
        while let Ok(sig) = set.wait() {
            tracing::info!("forwarding {} to the guest", sig.as_str());
            if writer.signal(sig as i32).is_err() {
                return;
            }
        }
    });
}

/// Dies of `signal` (as the command in the guest did), so that the batch
/// system records a signal; returns 128+signal if that fails.
pub fn die_by(signal: i32) -> i32 {
    use nix::sys::signal::{
        raise, signal as set_handler, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal,
    };
    if let Ok(sig) = Signal::try_from(signal) {
        // SAFETY: restoring the default disposition.
        unsafe {
            let _ = set_handler(sig, SigHandler::SigDfl);
        }
        let mut set = SigSet::empty();
        set.add(sig);
        let _ = sigprocmask(SigmaskHow::SIG_UNBLOCK, Some(&set), None);
        let _ = raise(sig);
    }
    128 + signal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_names_a_jdl_or_an_image() {
        assert_eq!(
            RequestSpec::parse("jobs/hello.jdl"),
            RequestSpec::Jdl("jobs/hello.jdl".into())
        );
        assert_eq!(
            RequestSpec::parse("hello.jdl"),
            RequestSpec::Jdl("hello.jdl".into())
        );
        let image = |name: &str, networks: &[&str]| RequestSpec::Image {
            name: name.into(),
            networks: networks.iter().map(|n| n.to_string()).collect(),
        };
        assert_eq!(
            RequestSpec::parse(" debian-minimal "),
            image("debian-minimal", &[])
        );
        assert_eq!(
            RequestSpec::parse("busybox:nat"),
            image("busybox", &["nat"])
        );
        assert_eq!(
            RequestSpec::parse("busybox: nat, private"),
            image("busybox", &["nat", "private"])
        );
        // A path is a file, never an image: the catalogue decides what images exist.
        assert_eq!(RequestSpec::parse("../x"), RequestSpec::Jdl("../x".into()));
    }

    /// The networks of an image-only request are admitted as a JDL's
    /// `Network` is: the VO's, or refused with the VO's list.
    #[test]
    fn an_image_request_carries_its_networks_to_admission() {
        let site = SiteConfig::from_str(
            "images:\n  busybox: { disk: b.qcow2, kernel: k, initrd: i }\n\
             networks:\n  nat: { kind: nat, subnet: 10.213.0.0/24 }\n\
             \x20 lab: { kind: private, subnet: 10.214.0.0/24 }\n\
             vos:\n  demo: { images: \"*\", networks: [nat] }\ndefault_vo: demo\n",
            Path::new("site.yaml"),
        )
        .unwrap();
        let request = |spec: &str| {
            let RequestSpec::Image { name, networks } = RequestSpec::parse(spec) else {
                panic!("an image")
            };
            admit(
                &site,
                &Owner::Root,
                &Request::Image { name, networks },
                None,
            )
        };
        let env = request("busybox:nat").unwrap();
        assert_eq!(env.networks.len(), 1);
        assert_eq!(env.networks[0].network, "nat");
        assert!(request("busybox").unwrap().networks.is_empty());
        let refused = request("busybox:lab").unwrap_err().to_string();
        assert!(refused.contains("may not use network \"lab\""), "{refused}");
    }
}
