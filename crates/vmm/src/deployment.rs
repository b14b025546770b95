//! The life of one domain on this host: deploy (prolog), reach (exec),
//! tear down (epilog), and clean up after a crash.
//!
//! Every step that creates something records it in the journal first and
//! runs under [`step_lock`], so that a signal handler which takes the lock
//! sees a journal that covers everything that exists.

use crate::capacity;
use crate::guest_link::{GuestLink, LinkError};
use crate::hypervisor::qemu::{AccelChoice, QemuOptions};
use crate::hypervisor::{
    self, Domain, DomainSpec, Hypervisor, HypervisorConfig, HypervisorError, XenGuestKind,
    XenOptions,
};
use crate::image_store::{self, DiskToSave, ImageStore, Manifest, SaveMeta};
use crate::journal::{DeploymentDetails, Journal, JournalError, Resource};
use crate::storage::{self, JobDisk, StorageError};
use sd_host::fault_point;
use sd_host::peer::ProcessStamp;
use sd_policy::ResolvedEnvironment;
use sd_site::{Acceleration, Backend, DiskFormat, SiteConfig, XenGuestType};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
    #[error("{error}{} — console log: {console}", guest_said(last_words))]
    Link {
        error: LinkError,
        console: String,
        /// The boot's own `sd-init:` lines from the console, last few.
        last_words: Vec<String>,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no deployment {0:?} on this host")]
    NoSuchDeployment(String),
    #[error(transparent)]
    Store(#[from] crate::image_store::StoreError),
    /// Over a user's limit, or the node is full (`LimitError::node_full`):
    /// nothing was made.
    #[error(transparent)]
    Limit(#[from] crate::capacity::LimitError),
    #[error("network cleanup: {0}")]
    NetworkCleanup(#[source] crate::network::NetworkError),
    #[error("network {network}: {source}")]
    Network {
        network: String,
        source: crate::network::NetworkError,
    },
}

fn guest_said(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("; the guest said: {}", lines.join(" | "))
    }
}

/// Whose fault a failure is. It decides what the batch system is told: a
/// user's fault fails the job with the reason and the node stays in
/// service; a site's fault takes the node out (Slurm drains it) for the admin.
pub use sd_site::Fault;

impl DeployError {
    /// A guest that does not come up is the fault of whoever made its image:
    /// the site's for a catalogue image, the user's for one a job saved (its
    /// job may have wiped its own disk). Everything else here is the site's.
    pub fn fault(&self, env: &ResolvedEnvironment) -> Fault {
        match self {
            // A user's own limit is the user's; a full node is nobody's
            // fault, and must not take the node out of service either.
            DeployError::Limit(_) => Fault::User,
            DeployError::Link { error, .. } if env.from_store && error.is_guest_side() => {
                Fault::User
            }
            // The job's own address choice (taken, out of range), or no
            // address left: the job fails, the node stays in service.
            DeployError::Network { source, .. } if source.is_the_requests() => Fault::User,
            _ => Fault::Site,
        }
    }
}

/// The last `sd-init:` lines of a console log (the initramfs says why it
/// gave up there), escaped: the guest is not trusted to write our logs.
fn last_words(console_log: &Path) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    const TAIL: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::File::open(console_log) else {
        return vec![];
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut bytes = Vec::new();
    let _ = f.take(TAIL).read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<String> = text
        .lines()
        .filter_map(|l| l.find("sd-init:").map(|i| &l[i..]))
        .map(|l| {
            let l: String = l.chars().take(200).collect();
            l.escape_debug().to_string()
        })
        .collect();
    let keep = lines.len().saturating_sub(3);
    lines.drain(..keep);
    lines
}

/// Held while a resource is recorded and created, and by whoever cleans up
/// on a signal: cleanup then never races a half-made step.
pub fn step_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The backend a site's config chooses, or the one a journal names.
pub fn backend_for(
    site: &SiteConfig,
    name: Option<&str>,
) -> Result<Box<dyn Hypervisor>, DeployError> {
    let name = name.or(match site.backend {
        Backend::Auto => None,
        Backend::Qemu => Some("qemu"),
        Backend::Xen => Some("xen"),
    });
    Ok(hypervisor::open(name, &hypervisor_config(site))?)
}

/// What the backends need of the site's config, and nothing more.
fn hypervisor_config(site: &SiteConfig) -> HypervisorConfig {
    HypervisorConfig {
        qemu: QemuOptions {
            binary: site.qemu.binary.clone(),
            accel: match site.acceleration {
                Acceleration::Auto => AccelChoice::Auto,
                Acceleration::Kvm => AccelChoice::Kvm,
                Acceleration::Tcg => AccelChoice::Tcg,
            },
            run_as: site.qemu.run_as.clone(),
            sandbox: site.qemu.sandbox,
            cache_dir: site.state_dir.clone(),
        },
        xen: XenOptions {
            guest_type: match site.xen.guest_type {
                XenGuestType::Pv => XenGuestKind::Pv,
                XenGuestType::Pvh => XenGuestKind::Pvh,
            },
            pvh_cpuid: site.xen.pvh_cpuid.clone(),
        },
    }
}

/// The domain of deployment `id` under `backend` (the journal's), if the
/// hypervisor has it.
fn find_domain(
    site: &SiteConfig,
    backend: &dyn Hypervisor,
    id: &str,
) -> Result<Option<Arc<dyn Domain>>, DeployError> {
    Ok(backend.find(&domain_name(site, id))?)
}

/// Whether the domain of deployment `id` runs now.
pub fn domain_running(site: &SiteConfig, backend: Option<&str>, id: &str) -> bool {
    backend_for(site, backend)
        .and_then(|b| find_domain(site, b.as_ref(), id))
        .is_ok_and(|d| d.is_some_and(|d| d.is_running()))
}

/// The running domain of deployment `id` (its journal names the backend),
/// for live changes (`sd set`): None if it does not run.
pub fn running_domain(
    site: &SiteConfig,
    backend: Option<&str>,
    id: &str,
) -> Result<Option<Arc<dyn Domain>>, DeployError> {
    let backend = backend_for(site, backend)?;
    Ok(find_domain(site, backend.as_ref(), id)?.filter(|d| d.is_running()))
}

/// Name of the hypervisor domain of deployment `id`.
pub fn domain_name(site: &SiteConfig, id: &str) -> String {
    // Ids are unique within one state directory; the hypervisor's names are
    // host-wide. A tag of the state directory keeps two sites on one host
    // (a test's and the real one) from ever touching each other's domains.
    let tag = sd_host::name_tag(site.state_dir.as_os_str().as_encoded_bytes());
    format!("sd-{id}-{tag:08x}")
}

fn run_dir(site: &SiteConfig, id: &str) -> PathBuf {
    site.state_dir.join("run").join(id)
}

pub fn console_log_path(site: &SiteConfig, id: &str) -> PathBuf {
    site.log_dir.join(format!("{id}.console.log"))
}

/// Where a deployment sits among others: the segment its `private`
/// networks join (its pool's; alone, its own), and the other members of
/// its pool by name, for its `/etc/hosts`.
#[derive(Debug, Clone, Default)]
pub struct Neighbourhood {
    /// None: the deployment's own segment.
    pub segment: Option<String>,
    pub hosts: Vec<(String, Ipv4Addr)>,
    /// The segment's other hosts, when the pool spans several.
    pub tunnel: Option<crate::network::Tunnel>,
}

/// A running domain with its agent answering.
pub struct Deployment {
    pub id: String,
    journal: Journal,
    backend: Box<dyn Hypervisor>,
    domain: Arc<dyn Domain>,
    pub link: GuestLink,
    pub acceleration: String,
    pub boot_time: Duration,
    /// How it started: `boot`, or `clone` of a template.
    pub start: &'static str,
}

impl Deployment {
    /// The backend it runs under (`qemu`, `xen`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Creates the job's disk, boots the domain, waits for its agent.
    /// On failure everything made so far is undone before returning.
    pub fn deploy(
        site: &SiteConfig,
        id: &str,
        env: &ResolvedEnvironment,
        uid: u32,
        owner_pid: Option<u32>,
    ) -> Result<Deployment, DeployError> {
        let owner = owner_pid.and_then(|p| ProcessStamp::of(p as i32));
        Deployment::deploy_owned(site, id, env, uid, owner)
    }

    /// [`Deployment::deploy`] for a deployment that lives only as long as
    /// `owner` (an HTCondor job's starter): one per owner, reaped once it
    /// is gone.
    pub fn deploy_owned(
        site: &SiteConfig,
        id: &str,
        env: &ResolvedEnvironment,
        uid: u32,
        owner: Option<ProcessStamp>,
    ) -> Result<Deployment, DeployError> {
        Deployment::deploy_among(site, id, env, uid, owner, None, &Neighbourhood::default())
    }

    /// [`Deployment::deploy_owned`] of a member of a pool: its private
    /// networks are the pool's segment, its `/etc/hosts` names the others.
    /// Made by a step of Slurm job `slurm_job`, it is that job's epilog's
    /// to clean up on this node, whatever becomes of the step.
    pub fn deploy_among(
        site: &SiteConfig,
        id: &str,
        env: &ResolvedEnvironment,
        uid: u32,
        owner: Option<ProcessStamp>,
        slurm_job: Option<&str>,
        neighbours: &Neighbourhood,
    ) -> Result<Deployment, DeployError> {
        let backend = backend_for(site, None)?;
        let journal = {
            // The node's limits, and the journal that makes this deployment
            // count, under one node-wide lock: every front end's deploys race.
            let _admission = capacity::lock(&site.state_dir)?;
            // Guests share the host's memory under QEMU; under Xen the
            // hypervisor's, which dom0's MemTotal does not show.
            let guest_memory = match backend.name() {
                "xen" => None,
                _ => Some(capacity::mem_total_mib()?),
            };
            capacity::check(
                &site.node_limits,
                guest_memory,
                &capacity::running(&site.state_dir)?,
                uid,
                env.memory_mib,
                owner,
            )?;
            let _step = step_lock();
            Journal::create_with(
                &site.state_dir,
                id,
                DeploymentDetails {
                    backend: Some(backend.name().to_string()),
                    uid: Some(uid),
                    owner_pid: owner.map(|o| o.pid as u32),
                    owner_start_time: owner.map(|o| o.start_time),
                    slurm_job: slurm_job.map(str::to_string),
                    environment: Some(env.clone()),
                    ..DeploymentDetails::default()
                },
            )?
        };
        let mut rollback = Rollback {
            journal: Some(journal),
            site,
            backend: Some(backend),
        };
        let (link, booted, boot_time, start) = rollback.boot(id, env, neighbours)?;
        let (journal, backend) = rollback.disarm();
        watch_domain(&link, backend.as_ref(), &booted.domain);
        Ok(Deployment {
            id: id.to_string(),
            journal,
            backend,
            domain: booted.domain,
            link,
            acceleration: booted.acceleration,
            boot_time,
            start,
        })
    }

    /// Graceful end: the agent unmounts and powers off; if the domain is not
    /// gone within the site's shutdown timeout it is destroyed. The disk is
    /// saved as a new image when the request (and the site's `save_images`)
    /// say so; then every journal entry is undone.
    pub fn teardown(
        self,
        site: &SiteConfig,
        job_succeeded: bool,
    ) -> Result<SaveOutcome, DeployError> {
        let end = power_off(site, self.domain.as_ref(), self.link);
        fault_point::reached("domain: stopped");
        let saved = save_if_wanted(site, &self.journal, end, job_succeeded);
        let _step = step_lock();
        undo(site, self.journal)?;
        Ok(saved)
    }
}

/// What became of a save: None when none was wanted.
pub type SaveOutcome = Option<Result<Manifest, SaveError>>;

/// Why a wanted save did not happen. The job has ended either way; the
/// reason goes to its log and the user.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("the domain did not shut down cleanly; its disk is not saved")]
    NotShutDownCleanly,
    #[error(
        "the disk could not be saved as {name}: its base was not recorded \
         (a deployment of an older version), and its own header is not trusted"
    )]
    BaseNotRecorded { name: String },
    #[error("the disk could not be saved as {name}: {source}")]
    Disk { name: String, source: StorageError },
    #[error("the disk could not be saved as {name}: {source}")]
    Store {
        name: String,
        source: crate::image_store::StoreError,
    },
}

/// How the domain ended before its teardown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GuestEnd {
    /// It powered off by itself: its file system was unmounted cleanly, so
    /// its disk may be saved.
    PoweredOff,
    /// It did not (no agent, a hung guest): it is destroyed, its disk is
    /// not consistent.
    Destroyed,
}

/// Asks the agent to power the domain off and waits for it, up to the
/// site's shutdown timeout; whatever is left is destroyed by `undo`.
fn power_off(site: &SiteConfig, domain: &dyn Domain, link: GuestLink) -> GuestEnd {
    let name = domain.name();
    let timeout = Duration::from_secs(site.shutdown_timeout_secs);
    if let Err(e) = link.power_off() {
        // The agent is gone: the hypervisor may still ask the guest kernel.
        tracing::warn!("agent of {name} did not power off ({e})");
        if !matches!(domain.request_shutdown(), Ok(true)) {
            return GuestEnd::Destroyed;
        }
    }
    if domain.wait_stopped(timeout) {
        GuestEnd::PoweredOff
    } else {
        tracing::warn!(
            "domain {name} did not power off in {} s; destroying it",
            timeout.as_secs()
        );
        GuestEnd::Destroyed
    }
}

/// Keeps the job's disk as a new image in the store, if its resolved
/// environment (in the journal) says so. The domain is down by now.
fn save_if_wanted(
    site: &SiteConfig,
    journal: &Journal,
    end: GuestEnd,
    job_succeeded: bool,
) -> SaveOutcome {
    let env = journal.details().environment.as_ref()?;
    // A live change (`sd set NAME save=...`) is in the journal on disk.
    let live = journal.current_save();
    let save_image = live.as_ref().map_or(env.save_image, |s| s.save_image);
    if !save_image {
        if live.is_some() && env.save_image {
            tracing::info!(
                "{}: not saved (save=false was set while it ran)",
                journal.id()
            );
        }
        return None;
    }
    let mut env = env.clone();
    if let Some(live) = live {
        env.save_image = true;
        if live.save_as.is_some() {
            env.save_as = live.save_as;
        }
    }
    let env = &env;
    if env.save_only_on_success && !job_succeeded {
        tracing::info!("the job failed: its disk is not saved (save_images: on_success)");
        return None;
    }
    let result = save(site, journal, env, end);
    if let Err(e) = &result {
        tracing::error!("{e}");
    }
    Some(result)
}

fn save(
    site: &SiteConfig,
    journal: &Journal,
    env: &ResolvedEnvironment,
    end: GuestEnd,
) -> Result<Manifest, SaveError> {
    if end != GuestEnd::PoweredOff {
        return Err(SaveError::NotShutDownCleanly);
    }
    let id = journal.id();
    let name = match &env.save_as {
        Some(n) => n.clone(),
        None => format!("{}-{id}", env.vo).to_ascii_lowercase(),
    };
    let meta = SaveMeta {
        source_job: id.to_string(),
        vo: env.vo.clone(),
        base_image: env.catalogue_image.clone(),
        saved_by_uid: journal.details().uid.unwrap_or(0),
        vo_quota_bytes: env.store_quota_bytes,
    };
    let disk = match journal.undo_order().find_map(JobDisk::from_resource) {
        // A thin snapshot: read as raw; its data is what the pool gave it.
        Some(JobDisk::Lvm { vg, thin_pool, lv }) => {
            let allocated =
                storage::lvm_volume_allocated(&vg, &thin_pool, &lv).map_err(|source| {
                    SaveError::Disk {
                        name: name.clone(),
                        source,
                    }
                })?;
            DiskToSave {
                path: crate::storage_lvm::device_path(&vg, &lv),
                format: DiskFormat::Raw,
                allocated: Some(allocated),
                backing: None,
            }
        }
        _ => {
            let format = if env.image.format == DiskFormat::Raw {
                DiskFormat::Raw
            } else {
                DiskFormat::Qcow2
            };
            let (path, format) = storage::job_disk(&run_dir(site, id), format);
            let backing = journal.details().disk_backing.clone();
            if format == DiskFormat::Qcow2 && backing.is_none() {
                return Err(SaveError::BaseNotRecorded { name });
            }
            DiskToSave {
                path,
                format,
                allocated: None,
                backing,
            }
        }
    };
    let started = Instant::now();
    let progress = image_store::progress(&format!("saving {name}"));
    let manifest = ImageStore::of_site(site)
        .save_disk(&disk, &name, meta, &*progress)
        .map_err(|source| SaveError::Store {
            name: name.clone(),
            source,
        })?;
    tracing::info!(
        "saved the disk as image {name} ({} MiB, {} MiB compressed) in {:.1} s",
        manifest.size >> 20,
        manifest.compressed_size >> 20,
        started.elapsed().as_secs_f64()
    );
    Ok(manifest)
}

/// Reaches the agent of a running deployment again (`sd-exec`). Waits up to
/// `timeout` for the link: one client at a time is served.
pub fn attach(site: &SiteConfig, id: &str, timeout: Duration) -> Result<GuestLink, DeployError> {
    attach_channel(site, id, timeout, Channel::Control)
}

/// [`attach`] on the agent's exec channel, which nothing holds for long
/// (`sd exec` into a domain whose control link `sd run` or a pool's
/// monitor keeps); the control link where the domain has none.
pub fn attach_exec(
    site: &SiteConfig,
    id: &str,
    timeout: Duration,
) -> Result<GuestLink, DeployError> {
    attach_channel(site, id, timeout, Channel::Exec)
}

enum Channel {
    Control,
    Exec,
}

fn attach_channel(
    site: &SiteConfig,
    id: &str,
    timeout: Duration,
    channel: Channel,
) -> Result<GuestLink, DeployError> {
    let journal = Journal::open(&site.state_dir, id)?
        .ok_or_else(|| DeployError::NoSuchDeployment(id.into()))?;
    let details = journal.details();
    let exec = match channel {
        Channel::Exec => details.exec_socket.clone(),
        Channel::Control => None,
    };
    let socket = exec
        .or_else(|| details.agent_socket.clone())
        .ok_or_else(|| DeployError::NoSuchDeployment(id.into()))?;
    let hostname = details
        .environment
        .as_ref()
        .map(|e| e.hostname.as_str())
        .unwrap_or("sd-guest")
        .to_string();
    let backend = backend_for(site, details.backend.as_deref())?;
    let domain = find_domain(site, backend.as_ref(), id)?;
    let console = details
        .console_log
        .clone()
        .unwrap_or_default()
        .display()
        .to_string();
    let alive = || domain.as_ref().is_some_and(|d| d.is_running());
    let link = GuestLink::connect(&socket, &hostname, timeout, &alive).map_err(|error| {
        DeployError::Link {
            error,
            console,
            last_words: vec![],
        }
    })?;
    if let Some(domain) = &domain {
        watch_domain(&link, backend.as_ref(), domain);
    }
    Ok(link)
}

/// A link that ends when its domain does (see [`GuestLink::watch`]), for
/// backends whose channel does not close by itself.
fn watch_domain(link: &GuestLink, backend: &dyn Hypervisor, domain: &Arc<dyn Domain>) {
    if backend.link_outlives_domain() {
        let domain = domain.clone();
        link.watch(Duration::from_secs(1), move || domain.is_running());
    }
}

/// Graceful end of a deployment known only by its id (`sd-epilog`): power
/// off through the agent if it answers, save the disk if wanted, undo the
/// journal. None if there was no such deployment.
pub fn finish(
    site: &SiteConfig,
    id: &str,
    job_succeeded: bool,
) -> Result<Option<SaveOutcome>, DeployError> {
    let Some(journal) = Journal::open(&site.state_dir, id)? else {
        return Ok(None);
    };
    let backend = backend_for(site, journal.details().backend.as_deref())?;
    let mut end = GuestEnd::Destroyed;
    let domain = find_domain(site, backend.as_ref(), id)?.filter(|d| d.is_running());
    if let (Some(domain), Some(_)) = (domain, &journal.details().agent_socket) {
        match attach(site, id, Duration::from_secs(5)) {
            Ok(link) => end = power_off(site, domain.as_ref(), link),
            Err(e) => tracing::warn!("{id}: agent not reachable ({e}); destroying the domain"),
        }
    }
    fault_point::reached("domain: stopped");
    let saved = save_if_wanted(site, &journal, end, job_succeeded);
    let _step = step_lock();
    undo(site, journal)?;
    Ok(Some(saved))
}

/// A deployment under construction: dropped on error, it undoes what its
/// journal holds.
struct Rollback<'a> {
    journal: Option<Journal>,
    site: &'a SiteConfig,
    backend: Option<Box<dyn Hypervisor>>,
}

impl Rollback<'_> {
    fn boot(
        &mut self,
        id: &str,
        env: &ResolvedEnvironment,
        neighbours: &Neighbourhood,
    ) -> Result<(GuestLink, hypervisor::Booted, Duration, &'static str), DeployError> {
        let started = Instant::now();
        let site = self.site;
        let backend = self.backend.as_ref().unwrap();
        let journal = self.journal.as_mut().unwrap();
        let dir = run_dir(site, id);
        let job_disk = JobDisk::for_image(&env.image, &dir, &site.state_dir, id)?;
        let console_log = console_log_path(site, id);
        {
            let _step = step_lock();
            journal.record(Resource::Directory { path: dir.clone() })?;
            std::fs::create_dir_all(&dir)?;
            // The job's disk and sockets are nobody else's business.
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            std::fs::create_dir_all(&site.log_dir)?;
        }
        {
            let _step = step_lock();
            // Recorded first: a crash while it is made leaves it to cleanup.
            journal.record(job_disk.resource())?;
            match &job_disk {
                JobDisk::Lvm { lv, .. } => {
                    let base = env
                        .image
                        .lvm
                        .as_ref()
                        .ok_or_else(|| StorageError::NoLvmBase(env.image.name.clone()))?;
                    storage::create_lvm_job_disk(base, lv, env.disk_mib)?;
                }
                JobDisk::File { path, .. } => {
                    // A saved image is decompressed (once, verified) into the store's cache.
                    let base = if env.from_store {
                        ImageStore::of_site(site).open_for_use(
                            &env.image.name,
                            &*image_store::progress(&format!("decompressing {}", env.image.name)),
                        )?
                    } else {
                        env.image.disk.clone()
                    };
                    if env.image.format == DiskFormat::Qcow2 {
                        journal.update_details(|f| f.disk_backing = Some(base.clone()))?;
                    }
                    storage::create_job_disk(&base, env.image.format, path, env.disk_mib)?;
                }
            }
        }
        let nics = attach_networks(site, journal, backend.as_ref(), env, neighbours)?;
        let spec = DomainSpec {
            name: domain_name(site, id),
            nics: nics
                .iter()
                .map(|n| hypervisor::NicSpec {
                    host_device: n.tap.clone(),
                    bridge: n.bridge.clone(),
                    mac: n.mac.0,
                    isolated: n.isolated,
                })
                .collect(),
            kernel: env.image.kernel.clone(),
            initrd: env.image.initrd.clone(),
            cmdline: boot_cmdline(backend.as_ref()),
            memory_mib: env.memory_mib,
            vcpus: env.vcpus,
            disk: job_disk.path(),
            disk_format: job_disk.format().qemu_format(),
            run_dir: dir,
            console_log: console_log.clone(),
            ram: hypervisor::RamMode::Anonymous,
        };
        // A clone of a template where the site wants it and the domain can
        // be one; built here on first need (outside the step lock: it takes
        // it for its own steps).
        let template = template_for(site, backend.as_ref(), env, &spec, &job_disk);
        let mut start = "boot";
        let booted = {
            let _step = step_lock();
            // Recorded first, by name: a crash during create leaves it to cleanup.
            journal.record(Resource::Domain {
                backend: backend.name().into(),
                name: spec.name.clone(),
            })?;
            let booted = match &template {
                Some(t) => match backend.create(&crate::template::clone_spec(&spec, t)) {
                    Ok(b) => {
                        start = "clone";
                        b
                    }
                    Err(e) => {
                        // Its QEMU is gone (the backend destroyed it); the
                        // disk was never touched by its guest.
                        crate::template::discard(t, &e.to_string());
                        if let Some(d) = backend.find(&spec.name)? {
                            d.destroy()?;
                        }
                        backend.create(&spec)?
                    }
                },
                None => backend.create(&spec)?,
            };
            journal.update_details(|f| {
                f.start = Some(start.to_string());
                f.agent_socket = Some(booted.agent_socket.clone());
                f.exec_socket = booted.exec_socket.clone();
                f.control_socket = booted.control_socket.clone();
                f.acceleration = Some(booted.acceleration.clone());
                f.console_log = Some(console_log.clone());
            })?;
            fault_point::reached("domain: created");
            booted
        };
        for socket in std::iter::once(&booted.agent_socket).chain(&booted.exec_socket) {
            grant_agent_access(&spec.run_dir, socket, env_uid(journal))?;
        }
        let alive = || booted.domain.is_running();
        let timeout = Duration::from_secs(site.boot_timeout_secs);
        let connect = if backend.agent_device().is_some() {
            GuestLink::connect_when_ready
        } else {
            GuestLink::connect
        };
        let link =
            connect(&booted.agent_socket, &env.hostname, timeout, &alive).map_err(|error| {
                DeployError::Link {
                    error,
                    console: console_log.display().to_string(),
                    last_words: last_words(&console_log),
                }
            })?;
        fault_point::reached("agent: hello");
        // Its own randomness, clock and machine-id before anything else (a
        // clone's disk is mounted here), then its network.
        let identity = crate::template::fresh_identity()?;
        link.set_identity(&identity, timeout)
            .map_err(|error| DeployError::Link {
                error,
                console: console_log.display().to_string(),
                last_words: last_words(&console_log),
            })?;
        fault_point::reached("agent: identity set");
        if !nics.is_empty() {
            let config = sd_proto::NetworkConfig {
                hostname: env.hostname.clone(),
                interfaces: nics
                    .iter()
                    .map(|n| sd_proto::InterfaceConfig {
                        mac: n.mac.0,
                        address: n.ip.map(|ip| (ip, n.prefix_len)),
                        gateway: n.gateway,
                        dns: n.dns.clone(),
                    })
                    .collect(),
                hosts: neighbours.hosts.clone(),
            };
            let up =
                link.configure_network(&config, timeout)
                    .map_err(|error| DeployError::Link {
                        error: name_the_network(error, &nics, env),
                        console: console_log.display().to_string(),
                        last_words: last_words(&console_log),
                    })?;
            fault_point::reached("agent: network configured");
            for (nic, wanted) in up.iter().zip(&env.networks) {
                match nic.address {
                    Some((ip, prefix)) if nic.dhcp => tracing::info!(
                        "{}: {} got {ip}/{prefix} by DHCP on network {}",
                        spec.name,
                        nic.name,
                        wanted.network
                    ),
                    Some((ip, prefix)) => tracing::debug!(
                        "{}: {} is {ip}/{prefix} on network {}",
                        spec.name,
                        nic.name,
                        wanted.network
                    ),
                    None => tracing::debug!(
                        "{}: {} is up on network {}",
                        spec.name,
                        nic.name,
                        wanted.network
                    ),
                }
            }
        }
        let elapsed = started.elapsed();
        tracing::info!(
            "{}: {} in {:.3} s ({})",
            id,
            if start == "clone" {
                "started as a clone of a template"
            } else {
                "booted"
            },
            elapsed.as_secs_f64(),
            booted.acceleration
        );
        Ok((link, booted, elapsed, start))
    }

    fn disarm(&mut self) -> (Journal, Box<dyn Hypervisor>) {
        (self.journal.take().unwrap(), self.backend.take().unwrap())
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if let Some(journal) = self.journal.take() {
            let _step = step_lock();
            if let Err(e) = undo(self.site, journal) {
                tracing::error!("cleanup after a failed deployment: {e}");
            }
        }
    }
}

/// The template a domain of `env` is cloned from, if the site wants
/// clones (`templates: auto`), the backend is QEMU and the domain can be
/// one; a template that cannot be had is logged, and the domain boots.
fn template_for(
    site: &SiteConfig,
    backend: &dyn Hypervisor,
    env: &ResolvedEnvironment,
    spec: &DomainSpec,
    disk: &JobDisk,
) -> Option<crate::template::Template> {
    if site.templates != sd_site::Templates::Auto || backend.name() != "qemu" {
        return None;
    }
    if !matches!(disk, JobDisk::File { .. }) {
        return None;
    }
    if let Some(why) = crate::template::not_cloneable(env) {
        tracing::info!("{}: boots: {why}", spec.name);
        return None;
    }
    let qemu = crate::hypervisor::qemu::Qemu::new(hypervisor_config(site).qemu);
    match crate::template::for_clone(site, &qemu, env, spec, true) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!("{e}; the domain boots instead");
            None
        }
    }
}

/// [`undo`] for `template`'s build journal.
pub(crate) fn undo_journal(site: &SiteConfig, journal: Journal) -> Result<(), DeployError> {
    undo(site, journal)
}

/// The QEMU backend of a site, for `sd template build`.
pub fn qemu_of(site: &SiteConfig) -> crate::hypervisor::qemu::Qemu {
    crate::hypervisor::qemu::Qemu::new(hypervisor_config(site).qemu)
}

/// The spec a boot of `env` would get (for a template of it): named and
/// placed by the template's build.
pub fn template_boot_spec(site: &SiteConfig, env: &ResolvedEnvironment) -> DomainSpec {
    let qemu = qemu_of(site);
    DomainSpec {
        name: String::new(),
        kernel: env.image.kernel.clone(),
        initrd: env.image.initrd.clone(),
        cmdline: boot_cmdline(&qemu),
        memory_mib: env.memory_mib,
        vcpus: env.vcpus,
        disk: PathBuf::new(),
        disk_format: storage::job_disk(Path::new("/"), env.image.format)
            .1
            .qemu_format(),
        run_dir: PathBuf::new(),
        console_log: PathBuf::new(),
        nics: vec![],
        ram: hypervisor::RamMode::Anonymous,
    }
}

/// The kernel command line of a boot under `backend`.
fn boot_cmdline(backend: &dyn Hypervisor) -> String {
    format!(
        "console={} panic=-1 quiet loglevel=3 sd.root={}{}",
        backend.console_device(),
        backend.disk_device(),
        backend
            .agent_device()
            .map(|d| format!(" sd.agent={d}"))
            .unwrap_or_default()
    )
}

/// Connects the domain's NICs to the site's networks, each part journaled
/// before it is made (see `network`).
fn attach_networks(
    site: &SiteConfig,
    journal: &mut Journal,
    backend: &dyn Hypervisor,
    env: &ResolvedEnvironment,
    neighbours: &Neighbourhood,
) -> Result<Vec<crate::network::AttachedNic>, DeployError> {
    if env.networks.is_empty() {
        return Ok(vec![]);
    }
    let host_end = match backend.name() {
        // The tap is opened by QEMU as the unprivileged user it runs as.
        "qemu" => crate::network::HostEnd::Tap {
            user: site
                .qemu
                .run_as
                .as_deref()
                .filter(|_| nix::unistd::geteuid().is_root())
                .and_then(|u| nix::unistd::User::from_name(u).ok().flatten())
                .map_or_else(|| nix::unistd::geteuid().as_raw(), |u| u.uid.as_raw()),
        },
        // libxl makes the vif (netback) and vif-bridge puts it on the bridge.
        "xen" => crate::network::HostEnd::HypervisorVif,
        other => {
            return Err(DeployError::Hypervisor(HypervisorError::Unsupported {
                backend: other,
                what: "networks",
            }))
        }
    };
    let segment = neighbours
        .segment
        .clone()
        .unwrap_or_else(|| journal.id().to_string());
    let mut attached = vec![];
    for (index, nic) in env.networks.iter().enumerate() {
        let config = crate::network::NicConfig {
            network: nic.network.clone(),
            kind: crate::network::NetworkKind::of_site(
                &nic.kind,
                &segment,
                neighbours.tunnel.as_ref(),
            ),
            ip: nic.ip,
            host_end,
        };
        let _step = step_lock();
        let made = crate::network::attach(journal, &site.state_dir, index as u32, &config)
            .map_err(|source| DeployError::Network {
                network: nic.network.clone(),
                source,
            })?;
        attached.push(made);
    }
    Ok(attached)
}

/// The agent names a NIC it could not set up by its MAC (it knows no
/// network names): the site's name of that network is put before it.
fn name_the_network(
    error: LinkError,
    nics: &[crate::network::AttachedNic],
    env: &ResolvedEnvironment,
) -> LinkError {
    let LinkError::Guest(message) = error else {
        return error;
    };
    let named = nics
        .iter()
        .zip(&env.networks)
        .find(|(nic, _)| message.contains(&nic.mac.to_string()))
        .map(|(_, wanted)| {
            let said = message.strip_prefix("network: ").unwrap_or(&message);
            format!("network {}: {said}", wanted.network)
        });
    LinkError::Guest(named.unwrap_or(message))
}

fn env_uid(journal: &Journal) -> Option<u32> {
    journal.details().uid
}

/// The job's user reaches its domain's agent (sd-exec runs as that user):
/// the run directory becomes traversable, the agent socket the user's.
/// The control socket stays root's.
fn grant_agent_access(
    run_dir: &Path,
    agent_socket: &Path,
    uid: Option<u32>,
) -> Result<(), DeployError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(uid) = uid.filter(|&u| u != nix::unistd::geteuid().as_raw()) else {
        return Ok(());
    };
    std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o711))?;
    std::os::unix::fs::chown(agent_socket, Some(uid), None)?;
    std::fs::set_permissions(agent_socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Undoes a journal's entries in reverse order, then drops the journal.
/// Idempotent: what is already gone is skipped.
fn undo(site: &SiteConfig, journal: Journal) -> Result<(), DeployError> {
    for resource in journal.undo_order() {
        match resource {
            Resource::Domain { backend, name } => {
                if let Some(domain) = backend_for(site, Some(backend))?.find(name)? {
                    domain.destroy()?
                }
            }
            Resource::File { path } => remove(std::fs::remove_file(path))?,
            Resource::Directory { path } => remove(std::fs::remove_dir_all(path))?,
            Resource::LvmVolume { vg, thin_pool, lv } => {
                storage::remove_lvm_volume(vg, thin_pool, lv)?
            }
            r @ (Resource::Tap { .. }
            | Resource::Bridge { .. }
            | Resource::Tunnel { .. }
            | Resource::NftTable { .. }
            | Resource::Lease { .. }) => {
                crate::network::undo(r).map_err(DeployError::NetworkCleanup)?;
            }
        }
        fault_point::reached(&format!("undone: {}", resource.kind()));
    }
    journal.remove()?;
    Ok(())
}

/// A removal whose target is already gone is a success.
fn remove(result: std::io::Result<()>) -> Result<(), DeployError> {
    match result {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Crash path: undoes deployment `id` from its journal alone (no agent).
/// Returns false if there was nothing to clean.
pub fn cleanup(site: &SiteConfig, id: &str) -> Result<bool, DeployError> {
    let _step = step_lock();
    cleanup_unlocked(site, id)
}

/// For a signal handler: stops every further deployment step of this
/// process (the step lock is taken and never given back), then undoes `id`.
/// The caller exits afterwards.
pub fn interrupt(site: &SiteConfig, id: &str) -> Result<bool, DeployError> {
    std::mem::forget(step_lock());
    cleanup_unlocked(site, id)
}

fn cleanup_unlocked(site: &SiteConfig, id: &str) -> Result<bool, DeployError> {
    match Journal::open(&site.state_dir, id)? {
        Some(journal) => undo(site, journal).map(|()| true),
        None => Ok(false),
    }
}

/// Deployments made by steps of Slurm job `job` (pool members on this
/// node), for its epilog.
pub fn of_slurm_job(site: &SiteConfig, job: &str) -> Result<Vec<String>, DeployError> {
    let mut out = vec![];
    for id in Journal::list(&site.state_dir)? {
        if let Some(j) = Journal::open(&site.state_dir, &id)? {
            if j.details().slurm_job.as_deref() == Some(job) {
                out.push(id);
            }
        }
    }
    Ok(out)
}

/// Deployments whose owning process (an `sd run`, an HTCondor job's
/// starter) is gone: safe to clean. An owner recorded with its start time
/// is gone too when its pid now names a later process.
pub fn orphaned(site: &SiteConfig) -> Result<Vec<String>, DeployError> {
    let mut out = vec![];
    for id in Journal::list(&site.state_dir)? {
        if let Some(j) = Journal::open(&site.state_dir, &id)? {
            let f = j.details();
            let gone = match (f.owner_pid, f.owner_start_time) {
                (Some(pid), Some(start_time)) => !ProcessStamp {
                    pid: pid as i32,
                    start_time,
                }
                .alive(),
                (Some(pid), None) => !Path::new(&format!("/proc/{pid}")).exists(),
                (None, _) => false,
            };
            if gone {
                out.push(id);
            }
        }
    }
    Ok(out)
}
