//! Hypervisor backends behind one trait.
//!
//! A backend gets a fully resolved [`DomainSpec`] (storage is already
//! prepared above it, in `storage`) and turns it into a running domain whose
//! guest agent is reachable on a Unix socket. Everything a backend creates on
//! the host goes into the journal before it exists, so that
//! [`Hypervisor::destroy`] can find it again after any crash.

pub mod kvm_probe;
pub mod qemu;
#[cfg(feature = "xen")]
pub mod xen;

use crate::journal::{Journal, JournalError};
use std::path::PathBuf;
use std::time::Duration;

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
}

/// What a booted domain offers to the layers above.
#[derive(Debug, Clone)]
pub struct Booted {
    /// Unix socket on which the guest agent's channel is served.
    pub agent_socket: PathBuf,
    pub control_socket: Option<PathBuf>,
    /// How the domain runs, e.g. `kvm` or `tcg` (reported to the user).
    pub acceleration: String,
}

#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot start {program}: {source} (is it installed? scripts/setup installs it)")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("the hypervisor exited during start-up: {detail}")]
    StartFailed { detail: String },
    #[error("hypervisor control: {0}")]
    Control(String),
    #[error("the {backend} backend does not support {what}")]
    Unsupported {
        backend: &'static str,
        what: &'static str,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

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
    /// agent may still be booting.
    fn boot(&self, spec: &DomainSpec, journal: &mut Journal) -> Result<Booted, HypervisorError>;

    /// Is the domain of this name still there?
    fn is_running(&self, name: &str) -> bool;

    /// Waits up to `timeout` for the domain to stop by itself (after the
    /// agent powered it off). True if it stopped.
    fn wait_stopped(&self, name: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.is_running(name) {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Asks the guest to shut down through the hypervisor (used when its
    /// agent does not answer). False if the backend has no such request.
    fn request_shutdown(&self, _name: &str) -> Result<bool, HypervisorError> {
        Ok(false)
    }

    /// Changes the memory the guest may use while it runs (balloon target).
    fn set_memory_target(&self, _name: &str, _mib: u64) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported {
            backend: self.name(),
            what: "memory target changes",
        })
    }

    /// Pauses or resumes every vCPU of the domain.
    fn pause(&self, _name: &str, _paused: bool) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported {
            backend: self.name(),
            what: "pause",
        })
    }

    /// Stops the domain at once, whatever state it is in. Idempotent: a
    /// domain that is already gone is not an error.
    fn destroy(&self, name: &str) -> Result<(), HypervisorError>;
}
