//! QEMU backend: one `qemu-system-x86_64` process per domain, detached from
//! the caller (a Slurm prolog exits while its domain runs on), controlled over
//! QMP, found again by its `-name guest=NAME`.

use super::kvm_probe::{kvm_usable, KvmVerdict};
use super::{procs, Booted, Domain, DomainSpec, Hypervisor, HypervisorError};
use sd_host::peer::ProcessStamp;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How KVM is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelChoice {
    /// KVM if the probe shows guests really run, else TCG.
    Auto,
    Kvm,
    Tcg,
}

#[derive(Debug, Clone)]
pub struct QemuOptions {
    pub binary: PathBuf,
    pub accel: AccelChoice,
    /// User QEMU drops to after opening its files, when we run as root.
    pub run_as: Option<String>,
    /// `-sandbox on`: seccomp filter against spawning, privilege changes, obsolete calls.
    pub sandbox: bool,
    /// Where the KVM probe's verdict is cached.
    pub cache_dir: PathBuf,
}

pub struct Qemu {
    options: QemuOptions,
    /// The binary's (major, minor), asked once: options differ between 7.2 and 10.x.
    version: std::sync::OnceLock<Option<(u32, u32)>>,
}

/// `QEMU emulator version 10.0.2 (Debian ...)` -> (10, 0).
fn parse_version(banner: &str) -> Option<(u32, u32)> {
    let rest = banner.split("version ").nth(1)?;
    let mut parts = rest.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

const START_TIMEOUT: Duration = Duration::from_secs(15);
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(3);

impl Qemu {
    pub fn new(options: QemuOptions) -> Self {
        Qemu {
            options,
            version: std::sync::OnceLock::new(),
        }
    }

    /// The binary's version, or None when it cannot be asked (then the
    /// command line is QEMU 7.2's, which 10.x also still takes).
    pub fn version(&self) -> Option<(u32, u32)> {
        *self.version.get_or_init(|| {
            let out = Command::new(&self.options.binary)
                .arg("--version")
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .output()
                .ok()?;
            parse_version(&String::from_utf8_lossy(&out.stdout))
        })
    }

    pub(crate) fn choose_accel(&self, kernel: &Path) -> (&'static str, Option<String>) {
        match self.options.accel {
            AccelChoice::Kvm => ("kvm", None),
            AccelChoice::Tcg => ("tcg", None),
            AccelChoice::Auto => match kvm_usable(
                &self.options.binary,
                &self.confinement(),
                kernel,
                &self.options.cache_dir,
                KVM_PROBE_TIMEOUT,
            ) {
                KvmVerdict::Works => ("kvm", None),
                KvmVerdict::Unusable(why) => ("tcg", Some(why)),
            },
        }
    }

    /// What confines a QEMU we start as root, the KVM probe's included: the
    /// seccomp sandbox and the drop to the unprivileged `run_as` user.
    fn confinement(&self) -> Vec<String> {
        let mut confinement: Vec<String> = vec![];
        let run_as = self
            .options
            .run_as
            .as_ref()
            .filter(|_| nix::unistd::geteuid().is_root());
        if self.options.sandbox {
            // QEMU installs its seccomp filter before it drops to the -runas
            // user, so set*id must stay allowed for that drop; once it runs
            // as that user it cannot get root back anyway.
            let elevate = if run_as.is_some() { "allow" } else { "deny" };
            confinement.push("-sandbox".into());
            confinement.push(format!(
                "on,obsolete=deny,elevateprivileges={elevate},spawn=deny,resourcecontrol=deny"
            ));
        }
        if let Some(user) = run_as {
            // QEMU 9.1 replaced `-runas USER` (deprecated since) with
            // `-run-with user=USER`; 7.2 knows only the former.
            if self.version().is_some_and(|v| v >= (9, 1)) {
                confinement.push("-run-with".into());
                confinement.push(format!("user={user}"));
            } else {
                confinement.push("-runas".into());
                confinement.push(user.clone());
            }
        }
        confinement
    }

    /// The command line, apart from the binary. Public for the benchmark,
    /// which boots the same machine without SmartDomains around it.
    pub fn args(
        &self,
        spec: &DomainSpec,
        accel: &str,
        qmp: &Path,
        agent: &Path,
        pidfile: &Path,
    ) -> Vec<String> {
        let exec = exec_socket(agent);
        let cpu = if accel == "kvm" { "host" } else { "max" };
        let mut args: Vec<String> = vec![
            "-name".into(),
            format!("guest={},debug-threads=off", spec.name),
            "-machine".into(),
            format!("pc,accel={accel}"),
            "-cpu".into(),
            cpu.into(),
            "-m".into(),
            format!("{}M", spec.memory_mib),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
            "-serial".into(),
            format!("file:{}", spec.console_log.display()),
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initrd.display().to_string(),
            "-append".into(),
            spec.cmdline.clone(),
            // A file (overlay, raw clone) or a block device (an LVM thin
            // snapshot, `/dev/VG/LV`, root's): QEMU opens its drives before it
            // drops to `-runas`, so neither needs to be the run_as user's.
            "-drive".into(),
            format!(
                "file={},if=virtio,format={},discard=unmap",
                spec.disk.display(),
                spec.disk_format
            ),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!(
                "socket,id=agent,path={},server=on,wait=off",
                agent.display()
            ),
            "-device".into(),
            format!(
                "virtserialport,chardev=agent,name={}",
                sd_proto::VIRTIO_PORT_NAME
            ),
            "-chardev".into(),
            format!("socket,id=exec,path={},server=on,wait=off", exec.display()),
            "-device".into(),
            format!(
                "virtserialport,chardev=exec,name={}",
                sd_proto::EXEC_PORT_NAME
            ),
            // The memory balloon: `sd set NAME memory=MiB` lowers (and
            // raises again, up to `-m`) what the guest may use.
            "-device".into(),
            "virtio-balloon-pci,id=balloon0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", qmp.display()),
            "-pidfile".into(),
            pidfile.display().to_string(),
        ];
        for (i, nic) in spec.nics.iter().enumerate() {
            // The tap exists and is the run_as user's: QEMU opens it by
            // name, runs no script, and needs no privilege for it.
            args.push("-netdev".into());
            args.push(format!(
                "tap,id=nic{i},ifname={},script=no,downscript=no",
                nic.host_device
            ));
            args.push("-device".into());
            args.push(format!(
                "virtio-net-pci,netdev=nic{i},mac={}",
                nic.mac_text()
            ));
        }
        args.extend(self.confinement());
        crate::template::adapt_qemu_args(&mut args, spec);
        args
    }

    /// The binary, and its `--version` line (a template's validity).
    pub(crate) fn binary_path(&self) -> PathBuf {
        self.options.binary.clone()
    }

    pub(crate) fn version_banner(&self) -> Option<String> {
        let out = Command::new(&self.options.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        Some(
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .next()?
                .to_string(),
        )
    }
}

impl Hypervisor for Qemu {
    fn name(&self) -> &'static str {
        "qemu"
    }

    fn console_device(&self) -> &'static str {
        "ttyS0"
    }

    fn disk_device(&self) -> &'static str {
        "/dev/vda"
    }

    fn create(&self, spec: &DomainSpec) -> Result<Booted, HypervisorError> {
        let (accel, why_not_kvm) = self.choose_accel(&spec.kernel);
        if let Some(why) = why_not_kvm {
            tracing::info!("KVM not usable ({why}); running under TCG emulation");
        }
        let qmp = spec.run_dir.join("qmp.sock");
        let agent = spec.run_dir.join("agent.sock");
        let pidfile = spec.run_dir.join("qemu.pid");
        let qemu_log = spec.run_dir.join("qemu.log");

        let log = std::fs::File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&qemu_log)?;
        let mut cmd = Command::new(&self.options.binary);
        cmd.args(self.args(spec, accel, &qmp, &agent, &pidfile))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // Its own session: the caller's terminal signals and the batch
        // system's process-group kills are for the caller, not the domain.
        // SAFETY: setsid is async-signal-safe.
        // umask 077: the QMP socket, the console log and QEMU's own log are
        // root's (QEMU makes them before it drops to run_as), nobody else's.
        // A clone's disk, as descriptors 3 and 4 (see template::disk_fds).
        let disk_fds = crate::template::disk_fds(spec)?;
        let raw_fds: Vec<i32> = disk_fds
            .iter()
            .map(std::os::fd::AsRawFd::as_raw_fd)
            .collect();
        unsafe {
            cmd.pre_exec(move || {
                nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
                crate::template::inherit_fds(&raw_fds)?;
                nix::unistd::setsid().map(drop).map_err(Into::into)
            });
        }
        let program = self.options.binary.display().to_string();
        let mut child = cmd
            .spawn()
            .map_err(|source| HypervisorError::Spawn { program, source })?;
        let domain = Arc::new(QemuDomain {
            name: spec.name.clone(),
            uids: self.domain_uids(),
            process: ProcessStamp::of(child.id() as i32),
        });

        // Wait for QMP; QEMU opens its sockets before the guest starts.
        let deadline = Instant::now() + START_TIMEOUT;
        let stream = loop {
            if let Some(status) = child.try_wait()? {
                let detail = std::fs::read_to_string(&qemu_log).unwrap_or_default();
                return Err(HypervisorError::StartFailed {
                    detail: format!("{status}: {}", detail.trim()),
                });
            }
            if let Ok(s) = UnixStream::connect(&qmp) {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(HypervisorError::StartFailed {
                    detail: "no QMP socket after 15 s".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        // Reap it when it ends, so that it does not linger as a zombie of ours.
        std::thread::spawn(move || child.wait());
        // A clone of a template: its state, then a new QMP session.
        let stream = match &spec.ram {
            super::RamMode::Clone { state, .. } => {
                crate::template::restore(stream, state).map_err(|e| {
                    let _ = domain.destroy();
                    HypervisorError::StartFailed {
                        detail: format!(
                            "the clone's restore failed: {e}: {}",
                            std::fs::read_to_string(&qemu_log)
                                .unwrap_or_default()
                                .trim()
                        ),
                    }
                })?;
                UnixStream::connect(&qmp)?
            }
            _ => stream,
        };

        let kvm = qmp_query_kvm(stream).map_err(|e| HypervisorError::StartFailed {
            detail: format!(
                "{e}: {}",
                std::fs::read_to_string(&qemu_log)
                    .unwrap_or_default()
                    .trim()
            ),
        })?;
        let acceleration = if kvm { "kvm" } else { "tcg" }.to_string();
        Ok(Booted {
            domain,
            exec_socket: Some(exec_socket(&agent)),
            agent_socket: agent,
            control_socket: Some(qmp),
            acceleration,
        })
    }

    fn find(&self, name: &str) -> Result<Option<Arc<dyn Domain>>, HypervisorError> {
        let uids = self.domain_uids();
        let Some(&pid) = find_processes(name, &uids).first() else {
            return Ok(None);
        };
        Ok(Some(Arc::new(QemuDomain {
            name: name.to_string(),
            uids,
            process: ProcessStamp::of(pid as i32),
        })))
    }
}

/// One QEMU process. Known by its pid and start time once seen, so that
/// asking whether it runs needs no scan of /proc, and a later process that
/// got its pid is never taken for it.
struct QemuDomain {
    name: String,
    uids: Vec<u32>,
    process: Option<ProcessStamp>,
}

impl QemuDomain {
    /// Its processes now: the one seen, or (never seen, or gone and
    /// restarted under that name?) whatever runs under its name as ours.
    fn processes(&self) -> Vec<u32> {
        match self.process {
            Some(p) if p.alive() => vec![p.pid as u32],
            Some(_) => vec![],
            None => find_processes(&self.name, &self.uids),
        }
    }
}

impl QemuDomain {
    /// Its QMP socket, from its own command line (`-qmp unix:PATH,...`): the
    /// process was found by name among our uids, so this is ours.
    fn qmp_socket(&self) -> Result<PathBuf, HypervisorError> {
        let pid = *self.processes().first().ok_or_else(|| {
            HypervisorError::Control(format!("domain {} is not running", self.name))
        })?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        args.windows(2)
            .find(|w| w[0] == b"-qmp")
            .and_then(|w| {
                let text = std::str::from_utf8(w[1]).ok()?;
                let path = text.strip_prefix("unix:")?.split(',').next()?;
                Some(PathBuf::from(path))
            })
            .ok_or_else(|| {
                HypervisorError::Control(format!("domain {} has no QMP socket", self.name))
            })
    }

    /// One QMP exchange, bounded: 5 s to connect (QEMU serves one QMP client
    /// at a time), 10 s per answer.
    fn qmp<T>(
        &self,
        f: impl FnOnce(
            &mut qapi::Qmp<qapi::Stream<std::io::BufReader<&UnixStream>, &UnixStream>>,
        ) -> Result<T, qapi::ExecuteError>,
    ) -> Result<T, HypervisorError> {
        let path = self.qmp_socket()?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(e) if Instant::now() > deadline => {
                    return Err(HypervisorError::Control(format!(
                        "QMP socket {}: {e}",
                        path.display()
                    )))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let mut qmp = qapi::Qmp::from_stream(&stream);
        let control = |e: qapi::ExecuteError| HypervisorError::Control(e.to_string());
        qmp.handshake().map_err(control)?;
        f(&mut qmp).map_err(control)
    }
}

impl Domain for QemuDomain {
    fn name(&self) -> &str {
        &self.name
    }

    fn backend(&self) -> &'static str {
        "qemu"
    }

    fn is_running(&self) -> bool {
        !self.processes().is_empty()
    }

    fn hypervisor_pids(&self) -> Vec<u32> {
        self.processes()
    }

    fn pause(&self, paused: bool) -> Result<(), HypervisorError> {
        if paused {
            self.qmp(|qmp| qmp.execute(&qapi::qmp::stop {}).map(drop))
        } else {
            self.qmp(|qmp| qmp.execute(&qapi::qmp::cont {}).map(drop))
        }
    }

    fn set_memory_target(&self, mib: u64) -> Result<(), HypervisorError> {
        let value = i64::try_from(mib << 20)
            .map_err(|_| HypervisorError::Control(format!("memory target {mib} MiB too large")))?;
        self.qmp(|qmp| qmp.execute(&qapi::qmp::balloon { value }).map(drop))
    }

    fn memory_actual_mib(&self) -> Result<u64, HypervisorError> {
        let info = self.qmp(|qmp| qmp.execute(&qapi::qmp::query_balloon {}))?;
        Ok(info.actual.max(0) as u64 >> 20)
    }

    fn destroy(&self) -> Result<(), HypervisorError> {
        use nix::sys::signal::{kill, Signal};
        let signal_all = |signal| {
            for pid in self.processes() {
                let _ = kill(nix::unistd::Pid::from_raw(pid as i32), signal);
            }
        };
        // SIGTERM is QEMU's clean quit; SIGKILL if it does not come.
        signal_all(Signal::SIGTERM);
        if !self.wait_stopped(Duration::from_secs(3)) {
            signal_all(Signal::SIGKILL);
            self.wait_stopped(Duration::from_secs(3));
        }
        Ok(())
    }
}

/// The exec channel's socket, beside the agent's.
fn exec_socket(agent: &Path) -> PathBuf {
    agent.with_file_name("exec.sock")
}

/// Asks QEMU which accelerator really runs the guest.
fn qmp_query_kvm(stream: UnixStream) -> Result<bool, HypervisorError> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut qmp = qapi::Qmp::from_stream(&stream);
    let control = |e: qapi::ExecuteError| HypervisorError::Control(e.to_string());
    qmp.handshake().map_err(control)?;
    let info = qmp.execute(&qapi::qmp::query_kvm {}).map_err(control)?;
    Ok(info.enabled)
}

impl Qemu {
    /// Whom our QEMUs run as: us, and the `run_as` user they drop to.
    fn domain_uids(&self) -> Vec<u32> {
        let mut uids = vec![nix::unistd::geteuid().as_raw()];
        if let Some(user) = self.options.run_as.as_deref() {
            if let Ok(Some(u)) = nix::unistd::User::from_name(user) {
                uids.push(u.uid.as_raw());
            }
        }
        uids
    }
}

/// PIDs of QEMU processes started for the domain `name` (by their `-name`)
/// that run as one of `uids`: any local user can start a process with that
/// name, which must not pass for the domain (its save would be dropped, or
/// we would kill it).
fn find_processes(name: &str, uids: &[u32]) -> Vec<u32> {
    let wanted = format!("guest={name},debug-threads=off");
    procs::matching(Some(uids), |args| {
        procs::has_option(args, b"-name", wanted.as_bytes())
    })
}

#[cfg(test)]
mod find_tests {
    use super::find_processes;
    use std::process::Command;

    /// A process of `uid` whose command line names domain `name` as QEMU's would.
    fn impostor(uid: u32, name: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        Command::new("sh")
            .args(["-c", "sleep 30; true", "-name"])
            .arg(format!("guest={name},debug-threads=off"))
            .uid(uid)
            .gid(uid)
            .spawn()
            .unwrap()
    }

    #[test]
    fn another_users_process_with_the_domains_name_is_not_the_domain() {
        sd_host::needs_root("starting another user's process");
        let name = format!("sd-impostor-{}", std::process::id());
        let mut theirs = impostor(65534, &name);
        let mut ours = impostor(0, &format!("{name}-ours"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let found_theirs = find_processes(&name, &[0]);
        let found_ours = find_processes(&format!("{name}-ours"), &[0]);
        for c in [&mut theirs, &mut ours] {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(found_theirs.is_empty(), "{found_theirs:?}");
        // The same command line as one of ours is found (the test can fail).
        assert_eq!(found_ours.len(), 1, "{found_ours:?}");
    }
}

#[cfg(test)]
mod version_tests {
    use super::parse_version;

    #[test]
    fn reads_debian_banners() {
        assert_eq!(
            parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n"),
            Some((10, 0))
        );
        assert_eq!(
            parse_version("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18)"),
            Some((7, 2))
        );
        assert_eq!(parse_version("no banner"), None);
    }
}
