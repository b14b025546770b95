//! Loop devices for the tests that need a block device (a small file
//! system that fills up): a file attached to `/dev/loopN` by ioctl, and the
//! devices a file is on. Root only. (Was `sd_vmm::storage::LoopDevice`; no
//! hypervisor uses one, so it lives with the tests.)

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Why a loop device could not be attached or detached.
#[derive(Debug, thiserror::Error)]
#[error("loop device for {}: {what}: {source}", backing.display())]
pub struct LoopError {
    backing: PathBuf,
    what: String,
    #[source]
    source: std::io::Error,
}

// <linux/loop.h>
const LOOP_SET_FD: libc::c_ulong = 0x4C00;
const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_SET_STATUS64: libc::c_ulong = 0x4C04;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_NAME_SIZE: usize = 64;

#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; LO_NAME_SIZE],
    lo_crypt_name: [u8; LO_NAME_SIZE],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

/// A file attached to a loop device (`/dev/loopN`), for hypervisors that
/// want a block device. Autoclear is set: the kernel unbinds the device when
/// its last opener closes it. Dropping it (or [`LoopDevice::detach`])
/// unbinds it at once, or as soon as whoever else holds it open lets go.
/// Root only.
#[derive(Debug)]
pub struct LoopDevice {
    device: PathBuf,
    backing: PathBuf,
    /// The open loop device; `None` once detached.
    dev: Option<File>,
}

impl LoopDevice {
    /// Binds `backing` to a free loop device: `LOOP_CONFIGURE`, or on
    /// kernels before 5.8 `LOOP_SET_FD` and `LOOP_SET_STATUS64`.
    pub fn attach(backing: &Path, read_only: bool) -> Result<LoopDevice, LoopError> {
        let fail = |what: &str, source| LoopError {
            backing: backing.to_path_buf(),
            what: what.to_string(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(backing)
            .map_err(|e| fail("open", e))?;
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(|e| fail("open /dev/loop-control", e))?;
        let mut flags = LO_FLAGS_AUTOCLEAR;
        if read_only {
            flags |= LO_FLAGS_READ_ONLY;
        }
        // SAFETY: plain-old-data, all zeros is a valid value.
        let mut info: LoopInfo64 = unsafe { std::mem::zeroed() };
        info.lo_flags = flags;
        let name = backing.as_os_str().as_encoded_bytes();
        let n = name.len().min(LO_NAME_SIZE - 1);
        info.lo_file_name[..n].copy_from_slice(&name[..n]);
        // Another process may take the device GET_FREE gave us: try again.
        let mut last = None;
        for _ in 0..16 {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument.
            let nr = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
            if nr < 0 {
                return Err(fail("LOOP_CTL_GET_FREE", std::io::Error::last_os_error()));
            }
            let device = PathBuf::from(format!("/dev/loop{nr}"));
            let dev = match OpenOptions::new()
                .read(true)
                .write(!read_only)
                .open(&device)
            {
                Ok(d) => d,
                // Not made yet by devtmpfs (or taken and removed): next.
                Err(e) => {
                    last = Some(fail(&format!("open {}", device.display()), e));
                    continue;
                }
            };
            let config = LoopConfig {
                fd: file.as_raw_fd() as u32,
                block_size: 0,
                info,
                reserved: [0; 8],
            };
            // SAFETY: LOOP_CONFIGURE reads a struct loop_config.
            let r = unsafe {
                libc::ioctl(
                    dev.as_raw_fd(),
                    LOOP_CONFIGURE as _,
                    &config as *const LoopConfig,
                )
            };
            let r = if r == 0 {
                Ok(())
            } else {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINVAL | libc::ENOTTY) => set_fd_and_status(&dev, &file, &info),
                    _ => Err(e),
                }
            };
            match r {
                Ok(()) => {
                    tracing::debug!("{} on {}", backing.display(), device.display());
                    return Ok(LoopDevice {
                        device,
                        backing: backing.to_path_buf(),
                        dev: Some(dev),
                    });
                }
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    last = Some(fail(&format!("bind {}", device.display()), e));
                }
                Err(e) => return Err(fail(&format!("bind {}", device.display()), e)),
            }
        }
        Err(last.expect("tried at least once"))
    }

    /// `/dev/loopN`.
    pub fn path(&self) -> &Path {
        &self.device
    }

    /// The file it shows.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// Unbinds the device (`LOOP_CLR_FD`; still held open elsewhere, it is
    /// unbound when that opener closes it).
    pub fn detach(mut self) -> Result<(), LoopError> {
        self.clear()
    }

    fn clear(&mut self) -> Result<(), LoopError> {
        let Some(dev) = self.dev.take() else {
            return Ok(());
        };
        // SAFETY: LOOP_CLR_FD takes no argument.
        let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _, 0) };
        let res = if r == 0 {
            Ok(())
        } else {
            let e = std::io::Error::last_os_error();
            // ENXIO: already unbound.
            if e.raw_os_error() == Some(libc::ENXIO) {
                Ok(())
            } else {
                Err(LoopError {
                    backing: self.backing.clone(),
                    what: format!("detach {}", self.device.display()),
                    source: e,
                })
            }
        };
        // Autoclear: closing the last descriptor finishes the unbinding.
        drop(dev);
        res
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(e) = self.clear() {
            tracing::warn!("{e}");
        }
    }
}

/// Kernels before 5.8: `LOOP_SET_FD`, then `LOOP_SET_STATUS64` for the flags
/// (unbinding again if that fails).
fn set_fd_and_status(dev: &File, file: &File, info: &LoopInfo64) -> std::io::Result<()> {
    // SAFETY: LOOP_SET_FD takes the backing descriptor.
    if unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_SET_FD as _, file.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: LOOP_SET_STATUS64 reads a struct loop_info64.
    let r = unsafe {
        libc::ioctl(
            dev.as_raw_fd(),
            LOOP_SET_STATUS64 as _,
            info as *const LoopInfo64,
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        // SAFETY: as above.
        unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CLR_FD as _, 0) };
        return Err(e);
    }
    Ok(())
}

/// Loop devices (`/dev/loopN`) currently bound to `file`, from
/// `/sys/block/loop*/loop/backing_file`.
pub fn loop_devices_of(file: &Path) -> Vec<PathBuf> {
    let want = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
    let mut out = vec![];
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for entry in rd.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().filter(|n| n.starts_with("loop")) else {
            continue;
        };
        let Ok(backing) = std::fs::read_to_string(entry.path().join("loop/backing_file")) else {
            continue;
        };
        // The kernel appends " (deleted)" to a removed file's name.
        let backing = backing.trim_end_matches('\n');
        if Path::new(backing) == want {
            out.push(PathBuf::from(format!("/dev/{name}")));
        }
    }
    out.sort();
    out
}
