//! Booted templates: a domain started as a copy-on-write clone of a guest
//! stopped in its initramfs, instead of a boot (QEMU only).
//!
//! **A template** of a catalogue image is a QEMU guest booted with
//! `sd.template` on its command line: `/init` starts the agent before the
//! VO disk is mounted, the agent prints [`TEMPLATE_READY`] and waits. Its
//! RAM is a `memory-backend-file,share=on` in `/dev/shm`; with migration
//! capability `x-ignore-shared`, `stop` and a migration to a small state
//! file (the devices, not the RAM) save it, then it quits. What is kept, in
//! `STATE_DIR/templates/IMAGE-MEMm-VCPUSc/`: `template.json` (what it was made
//! from, [`TemplateKey`]) and `state`; the RAM file beside it in /dev/shm.
//!
//! **A clone** is the same machine with `share=off` on that RAM file (a
//! private mapping: its writes are its own, the file never changes) and
//! `-incoming defer`; over QMP the same capability, `migrate-incoming` of
//! the state, and it runs. Its disk is on its own command line, on the same
//! virtio-blk device the template had: the template saw a throwaway overlay
//! of the same base image and size (it never mounted it; the agent drops the
//! device's buffers before mounting the clone's). A hot-plugged disk was the
//! other way: it needs the disk passed as a file descriptor (QEMU has
//! dropped to `run_as` by then), and PCI hot-plug's ACPI round trip, for
//! nothing gained. The host then sends the identity (a seed the agent
//! credits to the entropy pool and reseeds the kernel's generator with,
//! the clock, the machine-id; the host name came with the Hello).
//! `-device vmgenid` (the kernel's own fork signal) is left out: QEMU 10.0
//! cannot save a booted guest that has it ("Bad address").
//!
//! **Validity**: a template is used only when everything it was made from
//! is what a new domain would be made from ([`TemplateKey`]: QEMU's binary
//! and version, machine and accelerator, the kernel's and initrd's (so the
//! agent's) hashes, the kernel command line, memory, vCPUs, the disk's base
//! and size, and the whole device layout: the QEMU command line with the
//! per-domain paths taken out). Anything else is a rebuild, never a wrong
//! clone. A clone that fails to restore is destroyed, the template is
//! removed (rebuilt on next need) and the domain boots.
//!
//! Building one is journaled like a deployment (its own journal,
//! `template-…`, owned by the building process): a killed build leaves
//! nothing after `sd cleanup`.

use crate::deployment::{domain_name, step_lock, DeployError};
use crate::hypervisor::qemu::Qemu;
use crate::hypervisor::{DomainSpec, RamMode};
use crate::journal::{Journal, Resource};
use crate::storage;
use sd_host::peer::ProcessStamp;
use sd_policy::ResolvedEnvironment;
use sd_site::{DiskFormat, SiteConfig};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What the agent prints once a template's guest waits for a clone
/// (images/agent/src/clone.rs).
pub const TEMPLATE_READY: &str = "sd-guest: template ready: waiting for a clone's identity";

/// The kernel command line flag of a template's boot (and of its clones,
/// whose command line must be the template's).
pub const CMDLINE_FLAG: &str = "sd.template";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("image {image} cannot have a template: {why}")]
    NotCloneable { image: String, why: String },
    #[error("template of {image}: {what}: {source}")]
    Io {
        image: String,
        what: String,
        source: std::io::Error,
    },
    #[error(
        "template of {image}: the guest did not get ready within {secs} s \
         (console log: {console}; is the initrd built from this checkout? images/build initrd)"
    )]
    NotReady {
        image: String,
        secs: u64,
        console: String,
    },
    #[error("template of {image}: QMP: {detail} (QEMU's log: {log})")]
    Qmp {
        image: String,
        detail: String,
        log: String,
    },
    #[error("template of {image}: {source}")]
    Deploy {
        image: String,
        #[source]
        source: Box<DeployError>,
    },
}

/// Everything a template was made from; a clone is made only when a new
/// domain's key equals its template's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateKey {
    pub image: String,
    pub qemu_binary: PathBuf,
    /// `qemu --version`'s first line.
    pub qemu_version: String,
    /// The binary's size and modification time (a reinstall of the same version).
    pub qemu_stamp: (u64, i64),
    pub machine: String,
    pub acceleration: String,
    pub kernel_sha256: String,
    pub initrd_sha256: String,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// The disk's base image: path, size, modification time, and the job
    /// disk's size and format (the guest's kernel read its capacity).
    pub disk_base: (PathBuf, u64, i64),
    pub disk_mib: u64,
    pub disk_format: String,
    /// The QEMU command line, per-domain paths and names replaced.
    pub device_layout: Vec<String>,
}

/// A template on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub key: TemplateKey,
    pub ram_file: PathBuf,
    pub created_unix: u64,
    pub build_secs: f64,
}

/// A template found valid, ready to be cloned.
#[derive(Debug, Clone)]
pub struct Template {
    pub dir: PathBuf,
    pub meta: TemplateMeta,
}

impl Template {
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state")
    }
}

/// One entry of `sd images`' template list.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    pub image: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// Bytes of RAM file (what /dev/shm holds) and of state file.
    pub ram_bytes: u64,
    pub state_bytes: u64,
    pub created_unix: u64,
    /// False: its RAM file is missing (it will be rebuilt).
    pub complete: bool,
}

pub fn templates_dir(site: &SiteConfig) -> PathBuf {
    site.state_dir.join("templates")
}

fn slug(env: &ResolvedEnvironment) -> String {
    format!("{}-{}m-{}c", env.image.name, env.memory_mib, env.vcpus)
}

fn ram_path(site: &SiteConfig, slug: &str, suffix: &str) -> PathBuf {
    let tag = sd_host::name_tag(site.state_dir.as_os_str().as_encoded_bytes());
    PathBuf::from(format!("/dev/shm/sd-template-{tag:08x}-{slug}{suffix}.ram"))
}

/// Why this environment's domain cannot be a clone (None: it can).
pub fn not_cloneable(env: &ResolvedEnvironment) -> Option<String> {
    if !env.networks.is_empty() {
        return Some("its domain has networks (NICs are not part of templates yet)".into());
    }
    if env.from_store {
        return Some("a saved image of the store (templates are for catalogue images)".into());
    }
    if env.image.format == DiskFormat::Lvm {
        return Some("an lvm image (its disk is a volume, not a file)".into());
    }
    None
}

/// The spec a clone of `env` gets in `spec` (built by `deployment` for a
/// boot): the template's command line and its RAM.
pub fn cmdline_of(boot_cmdline: &str) -> String {
    format!("{boot_cmdline} {CMDLINE_FLAG}")
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    crate::image_store::sha256_file(&mut f)
}

fn stamp(path: &Path) -> std::io::Result<(u64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec()))
}

/// The key of a template for `spec` (a template-mode spec), as `qemu` would run it.
pub fn key_for(
    qemu: &Qemu,
    env: &ResolvedEnvironment,
    spec: &DomainSpec,
) -> Result<TemplateKey, TemplateError> {
    let io = |what: &str, p: &Path| {
        let image = env.image.name.clone();
        let what = format!("{what} {}", p.display());
        move |source| TemplateError::Io {
            image,
            what,
            source,
        }
    };
    let binary = in_path(&qemu.binary_path());
    let qemu_version = qemu.version_banner().unwrap_or_default();
    let (accel, _) = qemu.choose_accel(&spec.kernel);
    // The layout: the command line of a domain named and placed canonically.
    let mut canonical = spec.clone();
    canonical.name = "TEMPLATE".into();
    canonical.disk = "/DISK".into();
    canonical.run_dir = "/RUN".into();
    canonical.console_log = "/CONSOLE".into();
    canonical.ram = RamMode::Template {
        file: "/RAM".into(),
    };
    let device_layout = qemu.args(
        &canonical,
        accel,
        Path::new("/RUN/qmp.sock"),
        Path::new("/RUN/agent.sock"),
        Path::new("/RUN/qemu.pid"),
    );
    let (base_size, base_mtime) =
        stamp(&env.image.disk).map_err(io("base disk", &env.image.disk))?;
    Ok(TemplateKey {
        image: env.image.name.clone(),
        qemu_stamp: stamp(&binary).map_err(io("QEMU binary", &binary))?,
        qemu_binary: binary,
        qemu_version,
        machine: "pc".into(),
        acceleration: accel.into(),
        kernel_sha256: file_sha256(&spec.kernel).map_err(io("kernel", &spec.kernel))?,
        initrd_sha256: file_sha256(&spec.initrd).map_err(io("initrd", &spec.initrd))?,
        cmdline: spec.cmdline.clone(),
        memory_mib: spec.memory_mib,
        vcpus: spec.vcpus,
        disk_base: (env.image.disk.clone(), base_size, base_mtime),
        disk_mib: env.disk_mib,
        disk_format: spec.disk_format.into(),
        device_layout,
    })
}

/// A bare program name as `$PATH` finds it (what QEMU's spawn runs).
/// Where `execvp` finds `program`: in `PATH`, or, when it is unset (Slurm
/// runs its prolog so), in glibc's default `/bin:/usr/bin`; canonical, so
/// that `/bin/x` and `/usr/bin/x` are one binary (and one template).
fn in_path(program: &Path) -> PathBuf {
    let found = if program.components().count() > 1 {
        program.to_path_buf()
    } else {
        let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
        std::env::split_paths(&path)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
            .unwrap_or_else(|| program.to_path_buf())
    };
    std::fs::canonicalize(&found).unwrap_or(found)
}

fn read_meta(dir: &Path) -> Option<TemplateMeta> {
    let text = std::fs::read_to_string(dir.join("template.json")).ok()?;
    serde_json::from_str(&text).ok()
}

/// The valid template for `key`, if there is one; a stale one is removed.
fn find_valid(site: &SiteConfig, slug: &str, key: &TemplateKey) -> Option<Template> {
    let dir = templates_dir(site).join(slug);
    let meta = read_meta(&dir)?;
    let complete = meta.ram_file.exists() && dir.join("state").exists();
    if meta.key == *key && complete {
        return Some(Template { dir, meta });
    }
    let why = if !complete {
        "its RAM or state file is missing".to_string()
    } else {
        differences(&meta.key, key)
    };
    tracing::info!("template {slug} is stale ({why}): rebuilding it");
    let _ = remove_dir_and_ram(&dir);
    None
}

/// What differs between two keys, for the log.
fn differences(old: &TemplateKey, new: &TemplateKey) -> String {
    let (a, b) = (
        serde_json::to_value(old).unwrap_or_default(),
        serde_json::to_value(new).unwrap_or_default(),
    );
    let mut out = vec![];
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, v) in a {
            if b.get(k) != Some(v) {
                out.push(k.as_str());
            }
        }
    }
    format!("changed: {}", out.join(", "))
}

fn remove_dir_and_ram(dir: &Path) -> std::io::Result<()> {
    if let Some(meta) = read_meta(dir) {
        match std::fs::remove_file(&meta.ram_file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Marks a template for rebuild after a clone of it failed: it is removed.
pub fn discard(template: &Template, why: &str) {
    tracing::warn!(
        "template {} failed to clone ({why}): removed, it is rebuilt on next need",
        template.dir.display()
    );
    let _ = remove_dir_and_ram(&template.dir);
}

/// Holds the node's template lock (builds and lookups of one state directory).
struct Lock(#[allow(dead_code)] std::fs::File);

fn lock(site: &SiteConfig, image: &str) -> Result<Lock, TemplateError> {
    let dir = templates_dir(site);
    let io = |what: &str| {
        let image = image.to_string();
        let what = what.to_string();
        move |source| TemplateError::Io {
            image,
            what,
            source,
        }
    };
    std::fs::create_dir_all(&dir).map_err(io("create the templates directory"))?;
    let f = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join(".lock"))
        .map_err(io("open the templates lock"))?;
    // SAFETY: a valid fd.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io("lock the templates")(std::io::Error::last_os_error()));
    }
    Ok(Lock(f))
}

/// The template a clone of `spec` (a boot's spec of `env`) starts from:
/// the valid one, or, when `build` (the site's `templates: auto`), one
/// built now. None: no valid template and none is to be built.
pub fn for_clone(
    site: &SiteConfig,
    qemu: &Qemu,
    env: &ResolvedEnvironment,
    boot_spec: &DomainSpec,
    build: bool,
) -> Result<Option<Template>, TemplateError> {
    if let Some(why) = not_cloneable(env) {
        return Err(TemplateError::NotCloneable {
            image: env.image.name.clone(),
            why,
        });
    }
    let spec = template_spec(boot_spec, Path::new("/RAM"));
    let key = key_for(qemu, env, &spec)?;
    let slug = slug(env);
    let _lock = lock(site, &env.image.name)?;
    if let Some(t) = find_valid(site, &slug, &key) {
        return Ok(Some(t));
    }
    if !build {
        return Ok(None);
    }
    build_locked(site, qemu, env, boot_spec, key, &slug).map(Some)
}

/// `sd template build`: (re)builds the template of `env`'s image, memory
/// and vCPUs, unless a valid one exists (then it is returned, `false`).
pub fn build(
    site: &SiteConfig,
    qemu: &Qemu,
    env: &ResolvedEnvironment,
    boot_spec: &DomainSpec,
) -> Result<(Template, bool), TemplateError> {
    if let Some(why) = not_cloneable(env) {
        return Err(TemplateError::NotCloneable {
            image: env.image.name.clone(),
            why,
        });
    }
    let spec = template_spec(boot_spec, Path::new("/RAM"));
    let key = key_for(qemu, env, &spec)?;
    let slug = slug(env);
    let _lock = lock(site, &env.image.name)?;
    if let Some(t) = find_valid(site, &slug, &key) {
        return Ok((t, false));
    }
    build_locked(site, qemu, env, boot_spec, key, &slug).map(|t| (t, true))
}

/// A boot spec turned into a template's: its flag on the command line, its RAM in `ram`.
fn template_spec(boot: &DomainSpec, ram: &Path) -> DomainSpec {
    let mut spec = boot.clone();
    spec.cmdline = cmdline_of(&boot.cmdline);
    spec.ram = RamMode::Template { file: ram.into() };
    spec
}

/// The spec of a clone of `template` (from a boot spec: its name, disk and paths).
pub fn clone_spec(boot: &DomainSpec, template: &Template) -> DomainSpec {
    let mut spec = boot.clone();
    spec.cmdline = cmdline_of(&boot.cmdline);
    spec.ram = RamMode::Clone {
        file: template.meta.ram_file.clone(),
        state: template.state_file(),
    };
    spec
}

fn build_locked(
    site: &SiteConfig,
    qemu: &Qemu,
    env: &ResolvedEnvironment,
    boot_spec: &DomainSpec,
    key: TemplateKey,
    slug: &str,
) -> Result<Template, TemplateError> {
    use crate::hypervisor::Hypervisor;
    let image = env.image.name.clone();
    let started = Instant::now();
    let deploy = |e: DeployError| TemplateError::Deploy {
        image: image.clone(),
        source: Box::new(e),
    };
    let io = |what: &str| {
        let image = image.clone();
        let what = what.to_string();
        move |source| TemplateError::Io {
            image,
            what,
            source,
        }
    };
    let pid = std::process::id();
    let id = format!(
        "template-{}-{pid}",
        slug.chars().take(40).collect::<String>()
    );
    let build_dir = templates_dir(site).join(format!(".build-{slug}-{pid}"));
    let run = build_dir.join("run");
    let ram_tmp = ram_path(site, slug, &format!(".{pid}.tmp"));
    let mut journal = {
        let _step = step_lock();
        // Owned by this process: a killed build is an orphan `sd cleanup` undoes.
        let me = ProcessStamp::of(pid as i32);
        let details = crate::journal::DeploymentDetails {
            backend: Some("qemu".into()),
            owner_pid: me.map(|o| o.pid as u32),
            owner_start_time: me.map(|o| o.start_time),
            ..Default::default()
        };
        Journal::create_with(&site.state_dir, &id, details).map_err(|e| deploy(e.into()))?
    };
    let result = (|| -> Result<Template, TemplateError> {
        {
            let _step = step_lock();
            journal
                .record(Resource::Directory {
                    path: build_dir.clone(),
                })
                .map_err(|e| deploy(e.into()))?;
            std::fs::create_dir_all(&run).map_err(io("create the build directory"))?;
            std::fs::set_permissions(
                &build_dir,
                std::os::unix::fs::PermissionsExt::from_mode(0o700),
            )
            .map_err(io("chmod the build directory"))?;
        }
        let disk = run.join("placeholder.disk");
        storage::create_job_disk(&env.image.disk, env.image.format, &disk, env.disk_mib)
            .map_err(|e| deploy(e.into()))?;
        {
            let _step = step_lock();
            journal
                .record(Resource::File {
                    path: ram_tmp.clone(),
                })
                .map_err(|e| deploy(e.into()))?;
            // Made here, root's, 0600: QEMU opens it before it drops to run_as.
            std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode_0600()
                .open(&ram_tmp)
                .map_err(io("create the RAM file in /dev/shm"))?;
        }
        let mut spec = template_spec(boot_spec, &ram_tmp);
        spec.name = domain_name(site, &id);
        spec.disk = disk;
        spec.run_dir = run.clone();
        spec.console_log = run.join("console.log");
        let booted = {
            let _step = step_lock();
            journal
                .record(Resource::Domain {
                    backend: "qemu".into(),
                    name: spec.name.clone(),
                })
                .map_err(|e| deploy(e.into()))?;
            qemu.create(&spec).map_err(|e| deploy(e.into()))?
        };
        // Ready: the agent says so on the console, then answers a hello.
        let timeout = Duration::from_secs(site.boot_timeout_secs);
        wait_for_line(&spec.console_log, TEMPLATE_READY, timeout, &|| {
            booted.domain.is_running()
        })
        .map_err(|()| TemplateError::NotReady {
            image: image.clone(),
            secs: site.boot_timeout_secs,
            console: spec.console_log.display().to_string(),
        })?;
        let alive = || booted.domain.is_running();
        let link = crate::guest_link::GuestLink::connect(
            &booted.agent_socket,
            &env.hostname,
            timeout,
            &alive,
        )
        .map_err(|e| TemplateError::Qmp {
            image: image.clone(),
            detail: format!("the template's agent did not answer: {e}"),
            log: spec.console_log.display().to_string(),
        })?;
        link.ping(Duration::from_secs(10))
            .map_err(|e| TemplateError::Qmp {
                image: image.clone(),
                detail: format!("the template's agent did not answer a ping: {e}"),
                log: spec.console_log.display().to_string(),
            })?;
        drop(link);
        // The agent sees the host hang up and goes back to reading its port.
        std::thread::sleep(Duration::from_millis(100));
        let state = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(build_dir.join("state"))
            .map_err(io("create the state file"))?;
        let qmp_err = |detail: String| TemplateError::Qmp {
            image: image.clone(),
            detail,
            log: run.join("qemu.log").display().to_string(),
        };
        save(&run.join("qmp.sock"), &state).map_err(qmp_err)?;
        drop(state);
        if !booted.domain.wait_stopped(Duration::from_secs(10)) {
            booted.domain.destroy().map_err(|e| deploy(e.into()))?;
        }
        // Published: the directory (its meta names the final RAM file),
        // then the RAM file. A crash between leaves a template without RAM:
        // found incomplete, rebuilt.
        let ram_file = ram_path(site, slug, "");
        let meta = TemplateMeta {
            key,
            ram_file: ram_file.clone(),
            created_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            build_secs: started.elapsed().as_secs_f64(),
        };
        std::fs::remove_dir_all(&run).map_err(io("remove the build's run directory"))?;
        let mut f = std::fs::File::create(build_dir.join("template.json"))
            .map_err(io("write template.json"))?;
        f.write_all(
            serde_json::to_string_pretty(&meta)
                .unwrap_or_default()
                .as_bytes(),
        )
        .and_then(|()| f.sync_all())
        .map_err(io("write template.json"))?;
        let dir = templates_dir(site).join(slug);
        let _step = step_lock();
        remove_dir_and_ram(&dir).map_err(io("remove the old template"))?;
        std::fs::rename(&build_dir, &dir).map_err(io("publish the template"))?;
        std::fs::rename(&ram_tmp, &ram_file).map_err(io("publish the RAM file"))?;
        Ok(Template { dir, meta })
    })();
    let _step = step_lock();
    match result {
        Ok(t) => {
            // Everything it recorded is gone or published now.
            journal.remove().map_err(|e| deploy(e.into()))?;
            tracing::info!(
                "template {slug} built in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            Ok(t)
        }
        Err(e) => {
            if let Err(u) = crate::deployment::undo_journal(site, journal) {
                tracing::error!("cleanup after a failed template build: {u}");
            }
            Err(e)
        }
    }
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Waits for `line` in the console log (written by our initrd only: a
/// template's guest never sees a VO disk).
fn wait_for_line(
    log: &Path,
    line: &str,
    timeout: Duration,
    alive: &dyn Fn() -> bool,
) -> Result<(), ()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read(log) {
            if String::from_utf8_lossy(&text).contains(line) {
                return Ok(());
            }
        }
        if !alive() || Instant::now() > deadline {
            return Err(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sd template rm`: removes every template of `image`; their count.
pub fn remove(site: &SiteConfig, image: &str) -> Result<usize, TemplateError> {
    let _lock = lock(site, image)?;
    let mut n = 0;
    for t in list(site) {
        if t.image == image {
            remove_dir_and_ram(&templates_dir(site).join(&t.name)).map_err(|source| {
                TemplateError::Io {
                    image: image.into(),
                    what: format!("remove template {}", t.name),
                    source,
                }
            })?;
            n += 1;
        }
    }
    Ok(n)
}

/// The templates of the state directory.
pub fn list(site: &SiteConfig) -> Vec<Listed> {
    let mut out = vec![];
    let Ok(entries) = std::fs::read_dir(templates_dir(site)) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let Some(meta) = read_meta(&e.path()) else {
            continue;
        };
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        out.push(Listed {
            name,
            image: meta.key.image.clone(),
            memory_mib: meta.key.memory_mib,
            vcpus: meta.key.vcpus,
            ram_bytes: size(&meta.ram_file),
            state_bytes: size(&e.path().join("state")),
            created_unix: meta.created_unix,
            complete: meta.ram_file.exists(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

// ---------------------------------------------------------------------------
// QMP, for what the `qapi` crate cannot do: pass a file descriptor (getfd).

struct Qmp {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(socket: &Path) -> Result<Qmp, String> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| format!("connect {}: {e}", socket.display()))?;
        Self::over(stream)
    }

    fn over(stream: UnixStream) -> Result<Qmp, String> {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        let reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
        let mut q = Qmp { stream, reader };
        q.read_line()?; // the greeting
        q.execute("qmp_capabilities", serde_json::json!({}), None)?;
        Ok(q)
    }

    fn read_line(&mut self) -> Result<serde_json::Value, String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => Err("QEMU closed its QMP socket".into()),
            Ok(_) => serde_json::from_str(&line).map_err(|e| format!("bad QMP reply: {e}")),
            Err(e) => Err(format!("QMP read: {e}")),
        }
    }

    /// Runs a command (with `fd` attached, for getfd); its `return`.
    fn execute(
        &mut self,
        command: &str,
        arguments: serde_json::Value,
        fd: Option<i32>,
    ) -> Result<serde_json::Value, String> {
        let text =
            serde_json::json!({"execute": command, "arguments": arguments}).to_string() + "\n";
        match fd {
            None => (&self.stream)
                .write_all(text.as_bytes())
                .map_err(|e| format!("QMP write: {e}"))?,
            Some(fd) => {
                use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
                let iov = [std::io::IoSlice::new(text.as_bytes())];
                let fds = [fd];
                let sent = sendmsg::<()>(
                    self.stream.as_raw_fd(),
                    &iov,
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::empty(),
                    None,
                )
                .map_err(|e| format!("QMP sendmsg: {e}"))?;
                if sent != text.len() {
                    (&self.stream)
                        .write_all(&text.as_bytes()[sent..])
                        .map_err(|e| format!("QMP write: {e}"))?;
                }
            }
        }
        loop {
            let reply = self.read_line()?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                return Err(format!(
                    "{command}: {}",
                    e.get("desc").and_then(|d| d.as_str()).unwrap_or("error")
                ));
            }
            // An event: skipped.
        }
    }

    fn ignore_shared(&mut self) -> Result<(), String> {
        self.execute(
            "migrate-set-capabilities",
            serde_json::json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]}),
            None,
        )
        .map(drop)
    }

    /// The migration's status, and its error if it failed.
    fn migration_status(&mut self) -> Result<(String, String), String> {
        let r = self.execute("query-migrate", serde_json::json!({}), None)?;
        let field = |k: &str| r.get(k).and_then(|s| s.as_str()).unwrap_or("").to_string();
        Ok((field("status"), field("error-desc")))
    }
}

/// Stops the template's guest and saves its devices (its RAM is the shared
/// file) into `state`, then quits QEMU.
fn save(qmp: &Path, state: &std::fs::File) -> Result<(), String> {
    let mut q = Qmp::connect(qmp)?;
    q.ignore_shared()?;
    q.execute("stop", serde_json::json!({}), None)?;
    q.execute(
        "getfd",
        serde_json::json!({"fdname": "sd-state"}),
        Some(state.as_raw_fd()),
    )?;
    q.execute("migrate", serde_json::json!({"uri": "fd:sd-state"}), None)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, error) = q.migration_status()?;
        match status.as_str() {
            "completed" => break,
            s @ ("failed" | "cancelled") => return Err(format!("the save {s}: {error}")),
            _ if Instant::now() > deadline => return Err("the save took over 60 s".into()),
            _ => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    let _ = q.execute("quit", serde_json::json!({}), None);
    Ok(())
}

/// A clone just started (`-incoming defer`): loads its template's state and
/// lets it run. Called by the QEMU backend right after QMP answers.
pub(crate) fn restore(qmp_stream: UnixStream, state: &Path) -> Result<(), String> {
    let file = std::fs::File::open(state)
        .map_err(|e| format!("cannot open the template's state {}: {e}", state.display()))?;
    let mut q = Qmp::over(qmp_stream)?;
    q.ignore_shared()?;
    q.execute(
        "getfd",
        serde_json::json!({"fdname": "sd-state"}),
        Some(file.as_raw_fd()),
    )?;
    q.execute(
        "migrate-incoming",
        serde_json::json!({"uri": "fd:sd-state"}),
        None,
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = q.execute("query-status", serde_json::json!({}), None)?;
        match status.get("status").and_then(|s| s.as_str()).unwrap_or("") {
            "running" => return Ok(()),
            "inmigrate" | "restore-vm" if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(2))
            }
            "paused" | "prelaunch" | "postmigrate" => {
                q.execute("cont", serde_json::json!({}), None)?;
            }
            other => return Err(format!("the clone is {other:?} after its restore")),
        }
    }
}

/// A fresh identity for one domain: 64 bytes of the host's randomness,
/// the host's clock, a new machine-id.
pub fn fresh_identity() -> std::io::Result<sd_proto::CloneIdentity> {
    let mut seed = vec![0u8; 64];
    let mut id = [0u8; 16];
    {
        use std::io::Read;
        let mut r = std::fs::File::open("/dev/urandom")?;
        r.read_exact(&mut seed)?;
        r.read_exact(&mut id)?;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(std::io::Error::other)?;
    Ok(sd_proto::CloneIdentity {
        seed,
        unix_time_ns: now.as_nanos() as u64,
        machine_id: id.iter().map(|b| format!("{b:02x}")).collect(),
    })
}

/// The QEMU command line of a template or a clone: RAM from the file,
/// vmgenid, and for a clone `-incoming defer`. Nothing for a plain boot.
pub(crate) fn adapt_qemu_args(args: &mut Vec<String>, spec: &DomainSpec) {
    let (file, share, incoming) = match &spec.ram {
        RamMode::Anonymous => return,
        RamMode::Template { file } => (file, "on", false),
        RamMode::Clone { file, .. } => (file, "off", true),
    };
    if let Some(i) = args.iter().position(|a| a == "-machine") {
        if let Some(m) = args.get_mut(i + 1) {
            m.push_str(",memory-backend=sd-ram");
        }
    }
    args.push("-object".into());
    args.push(format!(
        "memory-backend-file,id=sd-ram,size={}M,mem-path={},share={share}",
        spec.memory_mib,
        file.display()
    ));
    // No `-device vmgenid`: with it, QEMU 10.0 fails to save a booted
    // guest ("Error in migration completion: Bad address"); the agent
    // forces the reseed instead (RNDADDENTROPY of the host's seed, then
    // RNDRESEEDCRNG) before anything runs.
    if incoming {
        args.push("-incoming".into());
        args.push("defer".into());
        // Its disk by descriptor: QEMU reopens its images when the incoming
        // migration completes, after it dropped to run_as, which may not
        // open the root-only run directory.
        let by_path = format!("file={},", spec.disk.display());
        for a in args.iter_mut() {
            if a.starts_with(&by_path) {
                *a = a.replacen(&by_path, "file=/dev/fdset/1,", 1);
            }
        }
        for fd in [FIRST_DISK_FD, FIRST_DISK_FD + 1] {
            args.push("-add-fd".into());
            args.push(format!("fd={fd},set=1"));
        }
    } else {
        // A template's QEMU keeps its user: after a drop to run_as, QEMU
        // 10.0's save of a booted guest fails ("Bad address"). It runs only
        // our kernel and initramfs (its disk is a throwaway overlay that is
        // never mounted), under the seccomp sandbox; every clone drops.
        for flag in ["-run-with", "-runas"] {
            if let Some(i) = args.iter().position(|a| a == flag) {
                args.drain(i..(i + 2).min(args.len()));
            }
        }
    }
}

const FIRST_DISK_FD: i32 = 3;

/// A clone's disk, opened read-write and read-only (QEMU takes from the
/// fd set the one whose mode it asks for); nothing for other domains.
pub(crate) fn disk_fds(spec: &DomainSpec) -> std::io::Result<Vec<std::fs::File>> {
    if !matches!(spec.ram, RamMode::Clone { .. }) {
        return Ok(vec![]);
    }
    Ok(vec![
        std::fs::File::options()
            .read(true)
            .write(true)
            .open(&spec.disk)?,
        std::fs::File::open(&spec.disk)?,
    ])
}

/// In the child before exec: `fds` become 3, 4, … and stay open across exec.
/// Only async-signal-safe calls.
pub(crate) fn inherit_fds(fds: &[i32]) -> std::io::Result<()> {
    // Moved above the targets first, so that none is overwritten before it is moved.
    let mut high = Vec::with_capacity(fds.len());
    for &fd in fds {
        // SAFETY: fcntl on a descriptor of ours.
        let h = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 64) };
        if h < 0 {
            return Err(std::io::Error::last_os_error());
        }
        high.push(h);
    }
    for (i, &h) in high.iter().enumerate() {
        // SAFETY: dup2 onto a fixed number; the new descriptor has no CLOEXEC.
        if unsafe { libc::dup2(h, FIRST_DISK_FD + i as i32) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(ram: RamMode) -> DomainSpec {
        DomainSpec {
            name: "d".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
            memory_mib: 256,
            vcpus: 1,
            disk: "/disk".into(),
            disk_format: "qcow2",
            run_dir: "/run".into(),
            console_log: "/c".into(),
            nics: vec![],
            ram,
        }
    }

    fn args(ram: RamMode) -> Vec<String> {
        let mut a = vec!["-machine".into(), "pc,accel=tcg".into()];
        adapt_qemu_args(&mut a, &spec(ram));
        a
    }

    #[test]
    fn a_boot_is_unchanged_a_template_shares_a_clone_maps_privately() {
        assert_eq!(args(RamMode::Anonymous), ["-machine", "pc,accel=tcg"]);
        let t = args(RamMode::Template {
            file: "/dev/shm/t.ram".into(),
        });
        assert_eq!(t[1], "pc,accel=tcg,memory-backend=sd-ram");
        assert!(t.contains(
            &"memory-backend-file,id=sd-ram,size=256M,mem-path=/dev/shm/t.ram,share=on".to_string()
        ));
        assert!(!t.contains(&"-incoming".to_string()));
        let c = args(RamMode::Clone {
            file: "/dev/shm/t.ram".into(),
            state: "/s".into(),
        });
        assert!(c.iter().any(|a| a.ends_with("share=off")));
        assert!(c.windows(2).any(|w| w == ["-incoming", "defer"]), "{c:?}");
        // Its disk by descriptor: two of them, in fd set 1.
        assert_eq!(c.iter().filter(|a| *a == "-add-fd").count(), 2, "{c:?}");
        // The same devices, in the same order, apart from the RAM's sharing,
        // -incoming and the disk's descriptors.
        let strip = |v: &[String]| -> Vec<String> {
            let mut out = vec![];
            let mut args = v.iter();
            while let Some(a) = args.next() {
                match a.as_str() {
                    "-add-fd" => {
                        args.next();
                    }
                    "-incoming" | "defer" => {}
                    _ => out.push(a.replace("share=off", "share=on")),
                }
            }
            out
        };
        assert_eq!(strip(&t), strip(&c));
    }

    #[test]
    fn differences_name_the_changed_fields() {
        let k = TemplateKey {
            image: "busybox".into(),
            qemu_binary: "/q".into(),
            qemu_version: "10".into(),
            qemu_stamp: (1, 2),
            machine: "pc".into(),
            acceleration: "tcg".into(),
            kernel_sha256: "a".into(),
            initrd_sha256: "b".into(),
            cmdline: "c".into(),
            memory_mib: 256,
            vcpus: 1,
            disk_base: ("/d".into(), 1, 2),
            disk_mib: 10,
            disk_format: "qcow2".into(),
            device_layout: vec!["-m".into()],
        };
        let mut other = k.clone();
        other.memory_mib = 512;
        other.initrd_sha256 = "x".into();
        let d = differences(&k, &other);
        assert!(
            d.contains("memory_mib") && d.contains("initrd_sha256"),
            "{d}"
        );
        assert!(!d.contains("kernel_sha256"), "{d}");
    }

    #[test]
    fn identities_are_fresh_and_valid() {
        let a = fresh_identity().unwrap();
        let b = fresh_identity().unwrap();
        assert_eq!(a.check(), Ok(()));
        assert_ne!(a.seed, b.seed);
        assert_ne!(a.machine_id, b.machine_id);
    }
}
