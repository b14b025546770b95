//! Does KVM actually run Linux guests on this host?
//!
//! `/dev/kvm` can exist while guests hang (nested virtualisation gone
//! wrong). Measured on our build hosts: BIOS code and the kernel's real-mode
//! setup run under KVM, then the vCPU spins in the host kernel as soon as the
//! guest enters protected/long mode. So the probe boots the guest kernel
//! itself under KVM, with early printk on a serial file, and waits for
//! `Linux version` (printed at `start_kernel`, about 0.3 s in when KVM
//! works). The verdict is cached per host boot.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmVerdict {
    Works,
    Unusable(String),
}

/// Probes (or reads the cached verdict for this boot from `cache_dir`).
/// `confinement`: the sandbox and privilege-drop options every QEMU we start gets.
pub fn kvm_usable(
    qemu: &Path,
    confinement: &[String],
    kernel: &Path,
    cache_dir: &Path,
    timeout: Duration,
) -> KvmVerdict {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return KvmVerdict::Unusable(format!("/dev/kvm: {e}"));
    }
    // The verdict holds for this host boot, this QEMU and this kernel.
    let boot_id = format!(
        "{} {} {}",
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .unwrap_or_default()
            .trim(),
        qemu.display(),
        kernel.display()
    );
    let cache = cache_dir.join("kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((id, verdict)) = text.split_once('\n') {
            if id == boot_id.trim() {
                return if verdict == "works" {
                    KvmVerdict::Works
                } else {
                    KvmVerdict::Unusable(verdict.into())
                };
            }
        }
    }
    let verdict = probe(qemu, confinement, kernel, cache_dir, timeout);
    let line = match &verdict {
        KvmVerdict::Works => "works".to_string(),
        KvmVerdict::Unusable(why) => why.replace('\n', " "),
    };
    let _ = std::fs::create_dir_all(cache_dir);
    let _ = std::fs::write(&cache, format!("{}\n{line}", boot_id.trim()));
    verdict
}

fn probe(
    qemu: &Path,
    confinement: &[String],
    kernel: &Path,
    dir: &Path,
    timeout: Duration,
) -> KvmVerdict {
    let _ = std::fs::create_dir_all(dir);
    let console = dir.join(format!("kvm-probe.{}.console", std::process::id()));
    let _ = std::fs::remove_file(&console);
    let spawned = Command::new(qemu)
        .args([
            "-machine",
            "pc,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "128M",
            "-nodefaults",
            "-no-user-config",
        ])
        .args(["-display", "none", "-no-reboot", "-serial"])
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(kernel)
        .args(["-append", "console=ttyS0 earlyprintk=ttyS0 panic=-1"])
        .args(confinement)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return KvmVerdict::Unusable(format!("cannot start {}: {e}", qemu.display())),
    };
    let deadline = Instant::now() + timeout;
    let verdict = loop {
        let seen = std::fs::read_to_string(&console).unwrap_or_default();
        if seen.contains("Linux version") {
            break KvmVerdict::Works;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            break KvmVerdict::Unusable(format!("QEMU with KVM exited ({status}): {}", err.trim()));
        }
        if Instant::now() > deadline {
            break KvmVerdict::Unusable(format!(
                "a KVM guest kernel printed nothing within {timeout:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&console);
    verdict
}
