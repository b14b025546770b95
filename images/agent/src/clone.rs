//! A domain's own identity ([`sd_proto::HostMsg::Identity`]) and, for a
//! template's boot, the VO disk mounted only then.
//!
//! A template is a guest stopped here, in the initramfs, with the agent up
//! and the VO disk not mounted (`sd.template` on the kernel command line:
//! `/init` then execs us with `--template-root DEV`). Every clone resumes
//! from that same memory: same entropy pool, same clock, same everything.
//! The host's first messages after its Hello give the clone its own: a seed
//! credited to the entropy pool and the kernel's generator reseeded from
//! it at once, the real time, the machine-id; then its disk (its own
//! copy-on-write overlay, on the device the template saw) is mounted.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Printed on the console once the template's agent serves its port: the
/// host stops and saves the template after it.
pub const TEMPLATE_READY: &str = "template ready: waiting for a clone's identity";

struct PendingRoot {
    device: String,
    fstype: String,
    root: PathBuf,
}

static PENDING: Mutex<Option<PendingRoot>> = Mutex::new(None);

/// The VO disk is mounted when the identity arrives, not at boot.
pub fn defer_root(device: String, fstype: String, root: PathBuf) {
    let ok_device = (device.starts_with("/dev/vd") || device.starts_with("/dev/xvd"))
        && device.len() <= 9
        && device
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase());
    if !ok_device {
        crate::fatal(&format!(
            "--template-root {device:?}: expected /dev/vdX or /dev/xvdX"
        ));
    }
    if fstype.is_empty() || !fstype.bytes().all(|b| b.is_ascii_alphanumeric()) {
        crate::fatal(&format!(
            "--template-fstype {fstype:?}: not a file system type"
        ));
    }
    *PENDING.lock().unwrap_or_else(|e| e.into_inner()) = Some(PendingRoot {
        device,
        fstype,
        root,
    });
}

/// Whether the VO disk still waits for an identity (nothing may touch the
/// root until then).
pub fn root_pending() -> bool {
    PENDING.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// Applies an identity; true if the VO disk was mounted for it.
pub fn apply(id: &sd_proto::CloneIdentity, root: &Path) -> Result<bool, String> {
    id.check()?;
    add_entropy(&id.seed)?;
    set_clock(id.unix_time_ns)?;
    let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    let mounted = match pending.as_ref() {
        Some(p) => {
            mount_root(p)?;
            *pending = None;
            true
        }
        None => false,
    };
    drop(pending);
    write_machine_id(root, &id.machine_id)?;
    Ok(mounted)
}

/// `RNDADDENTROPY` credits the seed to the pool (a plain write mixes it in
/// without credit); a write where the ioctl is refused.
fn add_entropy(seed: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("identity: cannot open /dev/urandom: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let mut info: Vec<u8> = Vec::with_capacity(8 + seed.len());
    info.extend_from_slice(&((seed.len() * 8) as i32).to_ne_bytes());
    info.extend_from_slice(&(seed.len() as i32).to_ne_bytes());
    info.extend_from_slice(seed);
    info.resize(8 + seed.len().div_ceil(4) * 4, 0);
    // _IOW('R', 0x03, int[2])
    const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
    // SAFETY: info is a valid rand_pool_info of buf_size bytes, alive for the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) };
    if r != 0 {
        f.write_all(seed)
            .map_err(|e| format!("identity: cannot write the seed to /dev/urandom: {e}"))?;
    }
    // A clone's generator state is its template's: reseed it now from the
    // pool (which has the seed), not at its next scheduled reseed.
    // _IO('R', 0x07)
    const RNDRESEEDCRNG: libc::c_ulong = 0x5207;
    // SAFETY: no argument.
    if unsafe { libc::ioctl(f.as_raw_fd(), RNDRESEEDCRNG as _, 0) } != 0 {
        return Err(format!(
            "identity: cannot reseed the kernel's random generator: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn set_clock(unix_time_ns: u64) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: (unix_time_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_time_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(format!(
            "identity: cannot set the clock: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// What `/init` does at a normal boot, here for a clone: the VO disk (its
/// clean buffers dropped first: the template's kernel read its first blocks
/// from the template's own overlay), then proc, sys, dev, dev/pts, dev/shm
/// and a tmpfs /tmp inside it.
fn mount_root(p: &PendingRoot) -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Path::new(&p.device).exists() {
        if Instant::now() > deadline {
            return Err(format!("clone: root device {} did not appear", p.device));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    flush_buffers(&p.device);
    let root = &p.root;
    std::fs::create_dir_all(root).map_err(|e| format!("clone: mkdir {}: {e}", root.display()))?;
    mount(
        Some(p.device.as_str()),
        root,
        Some(p.fstype.as_str()),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| {
        format!(
            "clone: cannot mount {} ({}) on {}: {e}",
            p.device,
            p.fstype,
            root.display()
        )
    })?;
    for d in ["proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d))
            .map_err(|e| format!("clone: cannot create /{d} in the VO image: {e}"))?;
    }
    let sub = |src: &str, dir: &str, fstype: &str, flags: MsFlags, data: Option<&str>| {
        mount(Some(src), &root.join(dir), Some(fstype), flags, data)
            .map_err(|e| format!("clone: cannot mount {fstype} on /{dir}: {e}"))
    };
    sub("proc", "proc", "proc", MsFlags::empty(), None)?;
    sub("sysfs", "sys", "sysfs", MsFlags::empty(), None)?;
    if sub("devtmpfs", "dev", "devtmpfs", MsFlags::empty(), None).is_err() {
        mount(
            Some("/dev"),
            &root.join("dev"),
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| format!("clone: cannot mount /dev: {e}"))?;
    }
    let _ = std::fs::create_dir_all(root.join("dev/pts"));
    let _ = std::fs::create_dir_all(root.join("dev/shm"));
    sub(
        "devpts",
        "dev/pts",
        "devpts",
        MsFlags::empty(),
        Some("mode=0620,ptmxmode=0666,gid=5"),
    )?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
    if let Err(e) = sub("tmpfs", "dev/shm", "tmpfs", nosuid, Some("mode=1777")) {
        crate::log(&format!("{e} (continuing)"));
    }
    if root.join("tmp").is_dir() {
        sub("tmpfs", "tmp", "tmpfs", nosuid, Some("mode=1777"))?;
    }
    Ok(())
}

/// `BLKFLSBUF`: drops the device's cached blocks.
fn flush_buffers(device: &str) {
    use std::os::fd::AsRawFd;
    const BLKFLSBUF: libc::c_ulong = 0x1261;
    if let Ok(f) = std::fs::File::open(device) {
        // SAFETY: no argument.
        unsafe { libc::ioctl(f.as_raw_fd(), BLKFLSBUF as _, 0) };
    }
}

/// The VO image's `/etc/machine-id`, where it has an `/etc` (a symlink
/// there is the image's, hostile: replaced, never followed).
fn write_machine_id(root: &Path, id: &str) -> Result<(), String> {
    let etc = root.join("etc");
    match std::fs::symlink_metadata(&etc) {
        Ok(m) if m.is_dir() => {}
        _ => return Ok(()),
    }
    let target = etc.join("machine-id");
    let tmp = etc.join(".machine-id.sd-tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::write(&tmp, format!("{id}\n"))
        .and_then(|()| std::fs::rename(&tmp, &target))
        .map_err(|e| format!("identity: cannot write /etc/machine-id: {e}"))
}
