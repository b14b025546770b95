//! Hypervisor backends behind two traits: a [`Hypervisor`] creates and
//! finds domains, a [`Domain`] is one of them with its verbs.
//!
//! A backend gets a fully resolved [`DomainSpec`] (storage and journal are
//! handled above it, in `deployment`) and turns it into a running domain
//! whose guest agent is reachable on a Unix socket. It imports neither the
//! site's config nor the journal: it gets a spec and its own options, and
//! [`open`] is the one place that knows which backends were built in.

pub mod kvm_probe;
mod procs;
pub mod qemu;
#[cfg(feature = "xen")]
pub mod xen;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A domain, ready for any backend. Built by `deployment` from the admitted
/// request; every string in it has been validated there.
#[derive(Debug, Clone)]
pub struct DomainSpec {
    /// Unique on the host; a backend finds its domain again by this name.
    pub name: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// Built by us from fixed parts: nothing from a request reaches it.
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// The job's disk (a copy-on-write overlay) and its format.
    pub disk: PathBuf,
    pub disk_format: &'static str,
    /// Directory of the deployment: sockets and pid files go here.
    pub run_dir: PathBuf,
    /// Where the guest console is captured.
    pub console_log: PathBuf,
    /// Its network interfaces, in order (made by `network` before create).
    pub nics: Vec<NicSpec>,
    /// Where its RAM comes from (templates: QEMU only).
    pub ram: RamMode,
}

/// A domain's RAM: its own, a template's being made, or a clone of one
/// (see `template`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RamMode {
    #[default]
    Anonymous,
    /// Shared RAM in `file`, saved later as a template.
    Template { file: std::path::PathBuf },
    /// A private copy-on-write mapping of a template's RAM `file`, its
    /// devices restored from `state`.
    Clone {
        file: std::path::PathBuf,
        state: std::path::PathBuf,
    },
}

/// What a created domain offers to the layers above.
pub struct Booted {
    pub domain: Arc<dyn Domain>,
    /// Unix socket on which the guest agent's channel is served.
    pub agent_socket: PathBuf,
    /// The agent's second channel, for commands run in the running domain
    /// (`sd exec`), if the backend gives one.
    pub exec_socket: Option<PathBuf>,
    pub control_socket: Option<PathBuf>,
    /// How the domain runs, e.g. `kvm` or `tcg` (reported to the user).
    pub acceleration: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("cannot start {program}: {source} (is it installed? scripts/setup installs it)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the hypervisor exited during start-up: {detail}")]
    StartFailed { detail: String },
    #[error("hypervisor control: {0}")]
    Control(String),
    /// libxl or libxenctrl, with its own error code kept.
    #[cfg(feature = "xen")]
    #[error(transparent)]
    Xen(#[from] sd_xen::XenError),
    #[error("the {backend} backend does not support {what}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
    #[error("backend {backend} is not available on this host: {why}")]
    Unavailable { backend: String, why: String },
    #[error(
        "unknown backend {0:?} (a journal of another SmartDomains?): the backends are qemu and xen"
    )]
    UnknownBackend(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The options of every backend, from the site's config.
#[derive(Debug, Clone)]
pub struct HypervisorConfig {
    pub qemu: qemu::QemuOptions,
    pub xen: XenOptions,
}

/// Xen's options (plain data, so that a build without Xen can carry them).
#[derive(Debug, Clone)]
pub struct XenOptions {
    pub guest_type: XenGuestKind,
    /// `cpuid =` policy of PVH guests (`host,rdtscp=0`).
    pub pvh_cpuid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XenGuestKind {
    Pv,
    Pvh,
}

/// The backend named `name` (`qemu`, `xen`), or for None the best this
/// host has: Xen where we are its dom0, QEMU everywhere else. The one
/// place that knows which backends this build has.
pub fn open(
    name: Option<&str>,
    config: &HypervisorConfig,
) -> Result<Box<dyn Hypervisor>, HypervisorError> {
    let name = match name {
        Some(n) => n,
        None if xen_unavailable_because().is_none() => "xen",
        None => "qemu",
    };
    match name {
        "qemu" => Ok(Box::new(qemu::Qemu::new(config.qemu.clone()))),
        "xen" => match xen_unavailable_because() {
            Some(why) => Err(HypervisorError::Unavailable {
                backend: "xen".into(),
                why,
            }),
            None => open_xen(config),
        },
        other => Err(HypervisorError::UnknownBackend(other.into())),
    }
}

#[cfg(feature = "xen")]
fn xen_unavailable_because() -> Option<String> {
    xen::Xen::unavailable_because()
}

#[cfg(not(feature = "xen"))]
fn xen_unavailable_because() -> Option<String> {
    Some("this SmartDomains was built without the Xen backend (cargo feature `xen`)".into())
}

#[cfg(feature = "xen")]
fn open_xen(config: &HypervisorConfig) -> Result<Box<dyn Hypervisor>, HypervisorError> {
    Ok(Box::new(xen::Xen::new(config.xen.clone())))
}

#[cfg(not(feature = "xen"))]
fn open_xen(_config: &HypervisorConfig) -> Result<Box<dyn Hypervisor>, HypervisorError> {
    unreachable!("xen_unavailable_because is always Some without the feature")
}

/// A backend: makes domains and finds them again.
pub trait Hypervisor: Send + Sync {
    /// Short name recorded in journals (`qemu`, `xen`).
    fn name(&self) -> &'static str;

    /// The guest kernel's console device for `console=` (`ttyS0`, `hvc0`).
    fn console_device(&self) -> &'static str;

    /// The device the job's disk appears as in the guest (`/dev/vda`).
    fn disk_device(&self) -> &'static str;

    /// The guest's device of the agent channel, when the agent cannot find
    /// it by itself (a virtio-serial port is found by its name).
    fn agent_device(&self) -> Option<&'static str> {
        None
    }

    /// Whether our end of the agent channel can stay open after the domain
    /// is gone (a Xen console channel does; QEMU's socket closes with
    /// QEMU), so that a link must watch the domain to notice its end.
    fn link_outlives_domain(&self) -> bool {
        false
    }

    /// Starts the domain. Returns once the hypervisor runs it; the guest
    /// agent may still be booting. The caller has journaled the domain
    /// (by its name) before this is called.
    fn create(&self, spec: &DomainSpec) -> Result<Booted, HypervisorError>;

    /// The domain of this name, if the hypervisor has it (running, or
    /// stopped but not yet destroyed).
    fn find(&self, name: &str) -> Result<Option<Arc<dyn Domain>>, HypervisorError>;
}

/// One domain of a backend, and what can be done to it.
pub trait Domain: Send + Sync {
    fn name(&self) -> &str;

    fn backend(&self) -> &'static str;

    /// Does the domain still run?
    fn is_running(&self) -> bool;

    /// Waits up to `timeout` for the domain to stop by itself (after the
    /// agent powered it off). True if it stopped.
    fn wait_stopped(&self, timeout: Duration) -> bool {
        wait_until(timeout, || !self.is_running())
    }

    /// Asks the guest to shut down through the hypervisor (used when its
    /// agent does not answer). False if the backend has no such request.
    fn request_shutdown(&self) -> Result<bool, HypervisorError> {
        Ok(false)
    }

    /// Stops the domain at once, whatever state it is in. Idempotent: a
    /// domain that is already gone is not an error.
    fn destroy(&self) -> Result<(), HypervisorError>;

    /// Changes the memory the guest may use while it runs (balloon target).
    fn set_memory_target(&self, _mib: u64) -> Result<(), HypervisorError> {
        Err(self.unsupported("memory target changes"))
    }

    /// The memory the guest has now, as it reports it (QMP query-balloon's
    /// `actual`), in MiB.
    fn memory_actual_mib(&self) -> Result<u64, HypervisorError> {
        Err(self.unsupported("reporting the guest's memory"))
    }

    /// The host processes that run the domain (QEMU's), for placing them in
    /// a batch job's resource container (`cgroup`). Empty for a backend
    /// whose domains are no host processes (Xen: the hypervisor owns the
    /// guest's vCPUs and memory).
    fn hypervisor_pids(&self) -> Vec<u32> {
        vec![]
    }

    /// Pauses or resumes every vCPU of the domain.
    fn pause(&self, _paused: bool) -> Result<(), HypervisorError> {
        Err(self.unsupported("pause"))
    }

    /// Plugs a network interface into the running domain.
    fn attach_nic(&self, _nic: &NicSpec) -> Result<(), HypervisorError> {
        Err(self.unsupported("network interfaces added at run time"))
    }

    /// Writes the domain's memory and device state to `to` (the domain is
    /// paused while it is written).
    fn save_state(&self, _to: &std::path::Path) -> Result<(), HypervisorError> {
        Err(self.unsupported("saving a domain's state"))
    }

    fn unsupported(&self, what: &'static str) -> HypervisorError {
        HypervisorError::Unsupported {
            backend: self.backend(),
            what,
        }
    }
}

/// A network interface of a domain: the host's end, its bridge and the
/// guest's MAC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicSpec {
    /// QEMU: the tap that exists (made by `network`). Xen: the name the
    /// vif is to have in dom0 (its filters already match it).
    pub host_device: String,
    /// The bridge the host end is (QEMU) or is to be (Xen) a port of.
    pub bridge: String,
    pub mac: [u8; 6],
    /// The port must be `isolated` on its bridge: a backend whose
    /// hypervisor makes the port sets it before the guest runs.
    pub isolated: bool,
}

impl NicSpec {
    /// `02:ab:...` (QEMU's `mac=`).
    pub fn mac_text(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// Polls `done` every 20 ms until it holds or `timeout` passes. True if it held.
pub(crate) fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
