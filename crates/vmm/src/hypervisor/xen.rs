//! Xen backend: domains created through libxl (the library `xl` is built
//! on, via `sd-xen`'s bindings), no `xl` or other shell-out.
//!
//! - Disk: the job's qcow2 overlay, served to the guest's `xen-blkfront` by
//!   QEMU's qdisk backend in dom0 (libxl starts that device model), so the
//!   storage layer is the same as for the QEMU backend.
//! - Agent link: a PV channel named [`sd_proto::VIRTIO_PORT_NAME`] whose dom0
//!   end is a Unix socket served by that device model — the same socket
//!   interface the QEMU backend offers; the guest sees it as `/dev/hvc1`.
//! - Network: one vif per NIC (`xen-netfront` in the guest), named in dom0
//!   as `network` chose, put on its bridge by Xen's `vif-bridge` script
//!   while libxl creates the domain; what needs the port (`isolated`, no
//!   IPv6) is set before the guest is unpaused.
//! - Console: `hvc0`, logged by xenconsoled to
//!   `/var/log/xen/console/guest-NAME.log`; the domain's console log in our
//!   log directory is a symbolic link to it.

/// The safe libxl/libxenctrl layer, for tools and tests that look at Xen
/// directly.
pub use sd_xen;

use super::{procs, Booted, Domain, DomainSpec, Hypervisor, HypervisorError};
pub use super::{XenGuestKind, XenOptions};
use sd_xen::{ChannelSpec, DiskSpec, DomainConfig, GuestType, Libxl, NicSpec, XenCtrl};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Xen {
    options: XenOptions,
}

/// Where xenconsoled (`--log=guest`) writes each guest's console.
const XEN_CONSOLE_LOG_DIR: &str = "/var/log/xen/console";

/// The guest's end of the agent channel: the first PV console after hvc0.
pub const GUEST_AGENT_DEVICE: &str = "/dev/hvc1";

impl Xen {
    pub fn new(options: XenOptions) -> Self {
        Xen { options }
    }

    /// Why this host cannot run Xen domains, if it cannot: we must be dom0
    /// of a running Xen, with its control interface.
    pub fn unavailable_because() -> Option<String> {
        match std::fs::read_to_string("/proc/xen/capabilities") {
            Ok(caps) if caps.contains("control_d") => None,
            Ok(_) => Some("this is a Xen guest, not dom0: domains are created from dom0".into()),
            Err(_) => Some(
                "this machine does not run under the Xen hypervisor (no /proc/xen/capabilities); \
                 boot it into Xen with a dom0 kernel, or use backend qemu (or auto)"
                    .into(),
            ),
        }
    }

    fn config(&self, spec: &DomainSpec, agent: &Path) -> Result<DomainConfig, HypervisorError> {
        let guest = match self.options.guest_type {
            XenGuestKind::Pv => GuestType::Pv,
            XenGuestKind::Pvh => GuestType::Pvh,
        };
        let mut config = DomainConfig::new(&spec.name, guest)?;
        config
            .boot(&spec.kernel, &spec.initrd, &spec.cmdline)?
            .memory_mib(spec.memory_mib)
            .vcpus(spec.vcpus);
        config.add_disk(&DiskSpec {
            target: &spec.disk,
            format: spec.disk_format,
            vdev: "xvda",
        })?;
        config.add_channel(&ChannelSpec {
            name: sd_proto::VIRTIO_PORT_NAME,
            socket: agent,
        })?;
        for nic in &spec.nics {
            config.add_nic(&NicSpec {
                bridge: &nic.bridge,
                mac: nic.mac,
                vifname: &nic.host_device,
            })?;
        }
        if guest == GuestType::Pvh {
            config.cpuid(&self.options.pvh_cpuid)?;
        }
        Ok(config)
    }
}

impl Hypervisor for Xen {
    fn name(&self) -> &'static str {
        "xen"
    }

    fn console_device(&self) -> &'static str {
        "hvc0"
    }

    fn disk_device(&self) -> &'static str {
        "/dev/xvda"
    }

    fn agent_device(&self) -> Option<&'static str> {
        Some(GUEST_AGENT_DEVICE)
    }

    fn link_outlives_domain(&self) -> bool {
        true
    }

    fn create(&self, spec: &DomainSpec) -> Result<Booted, HypervisorError> {
        if spec.ram != super::RamMode::Anonymous {
            return Err(HypervisorError::Unsupported {
                backend: "xen",
                what: "templates (clones of a booted guest)",
            });
        }
        let agent = spec.run_dir.join("agent.sock");
        let mut config = self.config(spec, &agent)?;
        let libxl = Libxl::open()?;
        link_console_log(&spec.name, &spec.console_log);
        let started = Instant::now();
        let domid = libxl.create(&mut config)?;
        // libxl ran vif-bridge for each vif before returning; the guest is
        // still paused, so its ports are finished before it sends a frame.
        for nic in &spec.nics {
            crate::network::hypervisor_port_ready(&nic.host_device, &nic.bridge, nic.isolated)
                .map_err(|e| HypervisorError::StartFailed {
                    detail: format!("domain {domid}'s vif: {e}"),
                })?;
        }
        libxl.unpause(domid)?;
        tracing::info!(
            "xen: domain {} (domid {domid}) created in {} ms",
            spec.name,
            started.elapsed().as_millis()
        );
        // The device model opens the channel's socket as it starts; libxl
        // returns once it runs, but give the socket a moment to appear.
        if !super::wait_until(Duration::from_secs(10), || agent.exists()) {
            return Err(HypervisorError::StartFailed {
                detail: format!(
                    "domain {domid} runs but the device model made no agent socket {}",
                    agent.display()
                ),
            });
        }
        let kind = match self.options.guest_type {
            XenGuestKind::Pv => "xen-pv",
            XenGuestKind::Pvh => "xen-pvh",
        };
        Ok(Booted {
            domain: Arc::new(XenDomain {
                name: spec.name.clone(),
                domid,
            }),
            agent_socket: agent,
            exec_socket: None,
            control_socket: None,
            acceleration: kind.into(),
        })
    }

    fn find(&self, name: &str) -> Result<Option<Arc<dyn Domain>>, HypervisorError> {
        // A shut-down or crashed domain still has a name until destroyed.
        Ok(Libxl::open()?.domid_of(name)?.map(|domid| {
            Arc::new(XenDomain {
                name: name.to_string(),
                domid,
            }) as Arc<dyn Domain>
        }))
    }
}

/// One Xen domain, by its domid: Xen does not reuse one while it runs, so
/// asking about it needs neither a name lookup nor a libxl context.
struct XenDomain {
    name: String,
    domid: u32,
}

impl Domain for XenDomain {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        "xen"
    }

    fn is_running(&self) -> bool {
        matches!(XenCtrl::open().and_then(|c| c.domain(self.domid)), Ok(Some(d)) if d.state.is_live())
    }

    fn request_shutdown(&self) -> Result<bool, HypervisorError> {
        // Only a live guest can act on it: libxl waits for the guest to
        // acknowledge, and a crashed one never does.
        if !self.is_running() {
            return Ok(false);
        }
        let libxl = Libxl::open()?;
        let domid = self.domid;
        // Bounded: a hung guest must not hang the epilog; the caller's
        // shutdown timeout and destroy follow anyway.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(libxl.shutdown(domid));
        });
        match rx.recv_timeout(Duration::from_secs(5)) {
            Ok(result) => result.map(|()| true).map_err(Into::into),
            Err(_) => {
                tracing::warn!(
                    "xen: {} did not acknowledge the shutdown request within 5 s",
                    self.name
                );
                Ok(false)
            }
        }
    }

    fn destroy(&self) -> Result<(), HypervisorError> {
        let libxl = Libxl::open()?;
        // Only while the name still is this domain's: once destroyed, the
        // domid is nobody's (and, much later, may be another's).
        if libxl.domid_of(&self.name)? == Some(self.domid) {
            // Found before destroy: libxl forgets them with the domain.
            let device_models = device_models_of(self.domid);
            libxl.destroy(self.domid)?;
            wait_released(&self.name, self.domid, &device_models);
        }
        Ok(())
    }

    fn set_memory_target(&self, mib: u64) -> Result<(), HypervisorError> {
        Libxl::open()?.set_memory_target(self.domid, mib * 1024)?;
        Ok(())
    }

    fn pause(&self, paused: bool) -> Result<(), HypervisorError> {
        let libxl = Libxl::open()?;
        if paused {
            libxl.pause(self.domid)?
        } else {
            libxl.unpause(self.domid)?
        }
        Ok(())
    }
}

/// After `libxl_domain_destroy` the domain's name is gone, but Xen frees
/// it only when nothing in dom0 maps its memory any more. The holder is
/// the domain's device model (the QEMU serving its disk and channel):
/// libxl asks it to exit with SIGHUP, and after a guest *kernel* crash it
/// does not (measured: still running a minute later, the domain "dying"
/// with one page). So: wait a moment, then SIGKILL what is left of the
/// device models, and wait (bounded) until Xen has let the domain go, so
/// the caller's "cleaned up" is true — or the log says why not.
fn wait_released(name: &str, domid: u32, device_models: &[u32]) {
    let started = Instant::now();
    let mut killed = false;
    let ctrl = match XenCtrl::open() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("xen: cannot ask Xen about domid {domid}: {e}");
            return;
        }
    };
    loop {
        match ctrl.domain(domid) {
            Ok(None) => {
                tracing::debug!(
                    "xen: domain {name} (domid {domid}) released {} ms after destroy",
                    started.elapsed().as_millis()
                );
                return;
            }
            Ok(Some(info)) if started.elapsed() > DESTROY_RELEASE_TIMEOUT => {
                tracing::warn!(
                    "xen: domain {name} (domid {domid}) destroyed but still held by Xen after {} s \
                     ({:?}, {} KiB): a dom0 process still maps its memory",
                    DESTROY_RELEASE_TIMEOUT.as_secs(),
                    info.state,
                    info.memory_kib
                );
                return;
            }
            Err(e) => {
                tracing::warn!("xen: cannot ask Xen about domid {domid}: {e}");
                return;
            }
            Ok(Some(_)) => {
                if !killed && started.elapsed() > DEVICE_MODEL_EXIT_GRACE {
                    killed = true;
                    // Only pids that are still this domain's device models.
                    let running = device_models_of(domid);
                    for &pid in device_models.iter().filter(|p| running.contains(p)) {
                        tracing::warn!(
                            "xen: the device model of {name} (pid {pid}) did not exit \
                                 when libxl asked it to; killing it"
                        );
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::SIGKILL,
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(50))
            }
        }
    }
}

/// The dom0 processes serving domain `domid` as its device model: QEMUs
/// started by libxl with `-xen-domid DOMID` (found in /proc; libxl's own
/// record of the pid is gone once the domain is destroyed).
fn device_models_of(domid: u32) -> Vec<u32> {
    let wanted = domid.to_string();
    procs::matching(None, |args| {
        args.first()
            .is_some_and(|a| a.ends_with(b"qemu-system-i386"))
            && procs::has_option(args, b"-xen-domid", wanted.as_bytes())
    })
}

/// How long the device model gets to exit on libxl's request.
const DEVICE_MODEL_EXIT_GRACE: Duration = Duration::from_secs(3);

/// How long [`wait_released`] waits.
const DESTROY_RELEASE_TIMEOUT: Duration = Duration::from_secs(20);

/// Our console log is a link to xenconsoled's log of the guest.
fn link_console_log(name: &str, console_log: &Path) {
    let target = PathBuf::from(XEN_CONSOLE_LOG_DIR).join(format!("guest-{name}.log"));
    let _ = std::fs::remove_file(console_log);
    if let Err(e) = std::os::unix::fs::symlink(&target, console_log) {
        tracing::warn!("console log link {}: {e}", console_log.display());
    }
}

#[cfg(test)]
mod tests {
    use super::device_models_of;
    use std::process::Command;

    /// A stand-in device model: a shell named like libxl's QEMU, with the
    /// `-xen-domid N` arguments in its command line.
    #[test]
    fn device_models_are_found_by_domid() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("xen-qemu-system-i386");
        std::os::unix::fs::symlink("/bin/sh", &fake).unwrap();
        let mut child = Command::new(&fake)
            .args(["-c", "sleep 30; true", "-xen-domid", "4242"])
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !device_models_of(4242).contains(&pid) {
            assert!(std::time::Instant::now() < deadline, "pid {pid} not found");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!device_models_of(424).contains(&pid), "another domid");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!device_models_of(4242).contains(&pid));
    }
}
