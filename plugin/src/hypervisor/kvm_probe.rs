//! Does KVM actually run guests on this host?
//!
//! `/dev/kvm` can exist while guests hang (nested virtualisation gone
//! wrong). The probe runs a real guest — four instructions in real mode that
//! write a byte to a port and halt — in a child process that is killed if it
//! does not finish in time. A child, because a vCPU stuck inside the kernel
//! cannot be abandoned by a thread. The verdict is cached per host boot.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Hidden argument of our binaries that runs [`run_probe_guest`].
pub const PROBE_ARG: &str = "__probe-kvm";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmVerdict {
    Works,
    Unusable(String),
}

/// Probes (or reads the cached verdict for this boot from `cache_dir`).
pub fn kvm_usable(cache_dir: &Path, timeout: Duration) -> KvmVerdict {
    if !Path::new("/dev/kvm").exists() {
        return KvmVerdict::Unusable("/dev/kvm does not exist".into());
    }
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let cache = cache_dir.join("kvm-probe");
    if let Ok(text) = std::fs::read_to_string(&cache) {
        if let Some((id, verdict)) = text.split_once('\n') {
            if id == boot_id.trim() {
                return if verdict == "works" { KvmVerdict::Works } else { KvmVerdict::Unusable(verdict.into()) };
            }
        }
    }
    let verdict = probe_in_child(timeout);
    let line = match &verdict {
        KvmVerdict::Works => "works".to_string(),
        KvmVerdict::Unusable(why) => why.replace('\n', " "),
    };
    let _ = std::fs::create_dir_all(cache_dir);
    let _ = std::fs::write(&cache, format!("{}\n{line}", boot_id.trim()));
    verdict
}

fn probe_in_child(timeout: Duration) -> KvmVerdict {
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return KvmVerdict::Unusable(format!("cannot find own executable: {e}")),
    };
    let mut child = match Command::new(exe).arg(PROBE_ARG).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => return KvmVerdict::Unusable(format!("cannot start the probe: {e}")),
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => return KvmVerdict::Works,
            Ok(Some(status)) => return KvmVerdict::Unusable(format!("probe guest failed ({status})")),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return KvmVerdict::Unusable(format!("probe guest did not halt within {timeout:?}"));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return KvmVerdict::Unusable(format!("probe: {e}")),
        }
    }
}

/// The probe guest itself (runs in the child): exits 0 if the guest wrote
/// its byte and halted.
pub fn run_probe_guest() -> i32 {
    match probe_guest() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kvm probe: {e}");
            1
        }
    }
}

fn probe_guest() -> Result<(), String> {
    use kvm_ioctls::{Kvm, VcpuExit};
    const GUEST_ADDR: u64 = 0x1000;
    // mov dx, 0x3f8; mov al, 'K'; out dx, al; hlt
    let code: [u8; 8] = [0xba, 0xf8, 0x03, 0xb0, b'K', 0xee, 0xf4, 0xf4];
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("create VM: {e}"))?;
    let size = 0x1000usize;
    // SAFETY: an anonymous private mapping we own for the life of the VM.
    let mem = unsafe {
        libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_ANONYMOUS | libc::MAP_PRIVATE, -1, 0)
    };
    if mem == libc::MAP_FAILED {
        return Err("mmap failed".into());
    }
    // SAFETY: `mem` is a fresh mapping of `size` bytes.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), mem as *mut u8, code.len()) };
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: GUEST_ADDR,
        memory_size: size as u64,
        userspace_addr: mem as u64,
        flags: 0,
    };
    // SAFETY: the region stays mapped until the process exits.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("map guest memory: {e}"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("create vCPU: {e}"))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    let mut regs = vcpu.get_regs().map_err(|e| e.to_string())?;
    regs.rip = GUEST_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs).map_err(|e| e.to_string())?;
    let mut wrote = false;
    for _ in 0..16 {
        match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
            VcpuExit::IoOut(0x3f8, data) if data == b"K" => wrote = true,
            VcpuExit::Hlt if wrote => return Ok(()),
            other => return Err(format!("unexpected exit {other:?}")),
        }
    }
    Err("guest did not halt".into())
}
