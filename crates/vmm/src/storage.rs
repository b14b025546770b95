//! The job's disk: a copy-on-write qcow2 overlay over a catalogue image.
//!
//! The base is only ever read (QEMU opens a backing file read-only), so any
//! number of jobs share it and none can change it.
//!
//! A `raw` catalogue image can instead be cloned ([`clone_raw`]): a reflink
//! where the file system shares extents (btrfs, XFS), else a sparse copy of
//! its data extents.
//!
//! An `lvm` catalogue image is a thin logical volume; the job's disk is a
//! thin snapshot of it ([`create_lvm_job_disk`], through
//! [`crate::storage_lvm`]), a block device `/dev/VG/LV` that both
//! hypervisors read as raw. [`JobDisk`] says which of these a job has.

use crate::journal::Resource;
use crate::storage_lvm::{LvmError, LvmThin};
use sd_site::{CatalogueImage, DiskFormat, LvmBase};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("base image {path}: {source}")]
    Base {
        path: String,
        source: std::io::Error,
    },
    #[error("base image {0} is not a qcow2 file")]
    NotQcow2(String),
    #[error("cannot run qemu-img: {0} (scripts/setup installs qemu-utils)")]
    Tool(std::io::Error),
    #[error("qemu-img create failed: {0}")]
    Create(String),
    #[error("cannot clone {} to {}: {source}", base.display(), target.display())]
    Clone {
        base: PathBuf,
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not enough space in {} for the job's disk: {needed} MiB needed, {free} MiB free", dir.display())]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error("the job's LVM snapshot {vg}/{lv}: {source}")]
    Lvm {
        vg: String,
        lv: String,
        #[source]
        source: Box<LvmError>,
    },
    #[error(
        "thin pool {vg}/{pool} does not zero new blocks, so a job could read what an earlier \
         job's volume left in it; refused (turn zeroing on: lvchange -Zy {vg}/{pool})"
    )]
    PoolNotZeroing { vg: String, pool: String },
    #[error("image {0:?} is of format lvm but names no base volume")]
    NoLvmBase(String),
}

/// The job's own disk file in its run directory, and its format: a qcow2
/// overlay over a qcow2 base, a clone of a raw base. (An `lvm` image's job
/// disk is no file: see [`JobDisk`].)
pub fn job_disk(run_dir: &Path, base_format: DiskFormat) -> (std::path::PathBuf, DiskFormat) {
    match base_format {
        DiskFormat::Qcow2 => (run_dir.join("disk.qcow2"), DiskFormat::Qcow2),
        DiskFormat::Raw | DiskFormat::Lvm => (run_dir.join("disk.raw"), DiskFormat::Raw),
    }
}

/// Where a job's disk is: what the journal records, the hypervisor opens,
/// a save reads and cleanup removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobDisk {
    /// A file in the run directory: a qcow2 overlay or a raw clone.
    File { path: PathBuf, format: DiskFormat },
    /// A thin snapshot `vg/lv` (in pool `thin_pool`) of an `lvm` image's
    /// base volume.
    Lvm {
        vg: String,
        thin_pool: String,
        lv: String,
    },
}

impl JobDisk {
    /// The disk deployment `id` (of the site whose state directory is
    /// `state_dir`) gets for `image`.
    pub fn for_image(
        image: &CatalogueImage,
        run_dir: &Path,
        state_dir: &Path,
        id: &str,
    ) -> Result<JobDisk, StorageError> {
        if image.format != DiskFormat::Lvm {
            let (path, format) = job_disk(run_dir, image.format);
            return Ok(JobDisk::File { path, format });
        }
        let base = image
            .lvm
            .as_ref()
            .ok_or_else(|| StorageError::NoLvmBase(image.name.clone()))?;
        Ok(JobDisk::Lvm {
            vg: base.vg.clone(),
            thin_pool: base.thin_pool.clone(),
            lv: lvm_volume_name(state_dir, id),
        })
    }

    /// The job disk a journal entry names, if it names one.
    pub fn from_resource(resource: &Resource) -> Option<JobDisk> {
        match resource {
            Resource::LvmVolume { vg, thin_pool, lv } => Some(JobDisk::Lvm {
                vg: vg.clone(),
                thin_pool: thin_pool.clone(),
                lv: lv.clone(),
            }),
            _ => None,
        }
    }

    /// What the hypervisor opens: the file, or `/dev/VG/LV`.
    pub fn path(&self) -> PathBuf {
        match self {
            JobDisk::File { path, .. } => path.clone(),
            JobDisk::Lvm { vg, lv, .. } => crate::storage_lvm::device_path(vg, lv),
        }
    }

    /// How the hypervisor reads it (a logical volume as raw).
    pub fn format(&self) -> DiskFormat {
        match self {
            JobDisk::File { format, .. } => *format,
            JobDisk::Lvm { .. } => DiskFormat::Raw,
        }
    }

    /// Its journal entry, recorded before it is made.
    pub fn resource(&self) -> Resource {
        match self {
            JobDisk::File { path, .. } => Resource::File { path: path.clone() },
            JobDisk::Lvm { vg, thin_pool, lv } => Resource::LvmVolume {
                vg: vg.clone(),
                thin_pool: thin_pool.clone(),
                lv: lv.clone(),
            },
        }
    }
}

/// Longest id part of an LVM job volume's name (64, less `sd-` and the tag).
const LV_ID_CHARS: usize = crate::storage_lvm::MAX_NAME_LEN - 3 - 9;

/// The name of deployment `id`'s thin snapshot: `sd-<id>-<tag>`, the id in
/// lower case with anything but `[a-z0-9.-]` made a `-` (and cut to fit
/// lvm2's names), the tag a hash of the state directory and the exact id.
/// Like the hypervisor's domain names, unique per host: two sites (a
/// test's and the real one) or two ids that differ only in case never
/// share a volume. Always a valid [`crate::storage_lvm::validate_name`].
pub fn lvm_volume_name(state_dir: &Path, id: &str) -> String {
    let tag = sd_host::name_tag(
        state_dir
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .chain(b"\0")
            .chain(id.as_bytes()),
    );
    let id: String = id
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(LV_ID_CHARS)
        .collect();
    format!("sd-{id}-{tag:08x}")
}

/// Makes the job's disk `lv`: a thin snapshot of `base`, active, at least
/// `size_mib` MiB (a larger request grows it with `lvextend`: free, the
/// size of a thin volume is virtual; a smaller one leaves it at the base's
/// size, as overlays never cut their base's file system). Returns its
/// device `/dev/VG/LV`. Refuses a pool that does not zero new blocks, and a
/// name already taken (by its name, a volume the same deployment of this
/// site left behind, which its cleanup may remove). On failure nothing is
/// left behind.
pub fn create_lvm_job_disk(
    base: &LvmBase,
    lv: &str,
    size_mib: u64,
) -> Result<PathBuf, StorageError> {
    let err = |source| StorageError::Lvm {
        vg: base.vg.clone(),
        lv: lv.to_string(),
        source: Box::new(source),
    };
    let pool = LvmThin::new(&base.vg, &base.thin_pool).map_err(err)?;
    let lvs = pool.list().map_err(err)?;
    if let Some(p) = lvs.iter().find(|l| l.name == base.thin_pool && l.is_pool()) {
        if !p.zeroes_new_blocks() {
            return Err(StorageError::PoolNotZeroing {
                vg: base.vg.clone(),
                pool: base.thin_pool.clone(),
            });
        }
    }
    let base_size = lvs
        .iter()
        .find(|l| l.name == base.lv)
        .map_or(0, |l| l.size_bytes);
    let started = std::time::Instant::now();
    let device = pool.snapshot(&base.lv, lv).map_err(err)?;
    let size = size_mib.saturating_mul(1 << 20);
    if size > base_size {
        if let Err(e) = pool.extend(lv, size) {
            let _ = pool.remove(lv);
            return Err(err(e));
        }
    }
    tracing::info!(
        "job disk {}: thin snapshot of {}/{} ({} MiB) in {} ms",
        device.display(),
        base.vg,
        base.lv,
        size.max(base_size) >> 20,
        started.elapsed().as_millis()
    );
    Ok(device)
}

/// How long [`remove_lvm_volume`] waits for a volume someone still holds
/// open (a hypervisor's disk backend that is just going away).
const LV_BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// Removes the job volume `vg/lv` (the undo of [`create_lvm_job_disk`]):
/// idempotent, never the pool. A volume still open (the domain's disk
/// backend not gone yet) is waited for, up to 20 s.
pub fn remove_lvm_volume(vg: &str, thin_pool: &str, lv: &str) -> Result<(), StorageError> {
    let err = |source| StorageError::Lvm {
        vg: vg.to_string(),
        lv: lv.to_string(),
        source: Box::new(source),
    };
    let pool = LvmThin::new(vg, thin_pool).map_err(err)?;
    let started = std::time::Instant::now();
    loop {
        let failure = match pool.remove(lv) {
            Ok(()) => {
                tracing::info!(
                    "job disk {vg}/{lv} removed in {} ms",
                    started.elapsed().as_millis()
                );
                return Ok(());
            }
            Err(e) => e,
        };
        // Only a volume still open is worth waiting for.
        let open = matches!(pool.info(lv), Ok(Some(v)) if v.is_open());
        if !open || started.elapsed() >= LV_BUSY_TIMEOUT {
            return Err(err(failure));
        }
        tracing::debug!("{vg}/{lv} is still open ({failure}); retrying");
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// Bytes of data in the job volume `vg/lv` (for the store's free-space check).
pub fn lvm_volume_allocated(vg: &str, thin_pool: &str, lv: &str) -> Result<u64, StorageError> {
    let err = |source| StorageError::Lvm {
        vg: vg.to_string(),
        lv: lv.to_string(),
        source: Box::new(source),
    };
    let pool = LvmThin::new(vg, thin_pool).map_err(err)?;
    let info = pool.info(lv).map_err(err)?.ok_or_else(|| {
        err(LvmError::BaseMissing {
            vg: vg.to_string(),
            pool: thin_pool.to_string(),
            lv: lv.to_string(),
        })
    })?;
    Ok(info.allocated_bytes().unwrap_or(info.size_bytes))
}

/// Creates the job's disk `target` (from [`job_disk`]) over or from `base`.
pub fn create_job_disk(
    base: &Path,
    base_format: DiskFormat,
    target: &Path,
    size_mib: u64,
) -> Result<(), StorageError> {
    match base_format {
        DiskFormat::Qcow2 => create_overlay(base, base_format, target, size_mib),
        // Its job disk is a thin snapshot: create_lvm_job_disk.
        DiskFormat::Lvm => Err(StorageError::Create(format!(
            "{}: an lvm image's job disk is a volume, not a file",
            target.display()
        ))),
        DiskFormat::Raw => {
            ensure_space_for_clone(base, target)?;
            let kind = clone_raw(base, target, size_mib)?;
            tracing::info!("raw disk cloned by {kind:?}");
            Ok(())
        }
    }
}

/// A clone needs room for the base's data (a reflink needs less, but may
/// fall back to a copy): refuse before writing rather than fill the disk.
fn ensure_space_for_clone(base: &Path, target: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(base)
        .map_err(|source| StorageError::Base {
            path: base.display().to_string(),
            source,
        })?
        .blocks()
        * 512;
    let dir = target.parent().unwrap_or(Path::new("/"));
    let Ok(st) = nix::sys::statvfs::statvfs(dir) else {
        return Ok(());
    };
    let free = st.blocks_available() * st.fragment_size();
    if allocated > free {
        return Err(StorageError::NoSpace {
            dir: dir.to_path_buf(),
            needed: allocated.div_ceil(1 << 20),
            free: free >> 20,
        });
    }
    Ok(())
}

/// Virtual size of a disk image in bytes: the qcow2 header's, or a raw file's length.
pub fn virtual_size(path: &Path, format: DiskFormat) -> Result<u64, StorageError> {
    let err = |source| StorageError::Base {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    match format {
        DiskFormat::Raw | DiskFormat::Lvm => Ok(f.metadata().map_err(err)?.len()),
        DiskFormat::Qcow2 => {
            let mut header = [0u8; 32];
            f.read_exact(&mut header).map_err(err)?;
            if &header[..4] != b"QFI\xfb" {
                return Err(StorageError::NotQcow2(path.display().to_string()));
            }
            Ok(u64::from_be_bytes(header[24..32].try_into().unwrap()))
        }
    }
}

/// Creates `overlay` (qcow2) over `base`, as large as the request asks but
/// never smaller than the base (a smaller overlay would cut its file system).
pub fn create_overlay(
    base: &Path,
    format: DiskFormat,
    overlay: &Path,
    size_mib: u64,
) -> Result<(), StorageError> {
    let base_size = virtual_size(base, format)?;
    let size = base_size.max(size_mib.saturating_mul(1 << 20));
    let fmt = format.qemu_format();
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
        .arg(base)
        .arg(overlay)
        .arg(size.to_string())
        .output()
        .map_err(StorageError::Tool)?;
    if !out.status.success() {
        return Err(StorageError::Create(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    // What the job writes is the job's: no one else on the host reads it.
    std::fs::set_permissions(overlay, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(|e| StorageError::Create(format!("chmod {}: {e}", overlay.display())))?;
    Ok(())
}

/// How [`clone_raw`] made the job's disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloneKind {
    /// `FICLONE`: the clone shares the base's extents (copy-on-write in the
    /// file system); instant, no space used until the job writes.
    Reflink,
    /// The base's data extents copied, its holes left as holes.
    SparseCopy,
}

/// Makes `target` (a new file, mode 0600) a copy of the raw image `base`,
/// grown (sparse) to `size_mib` MiB when that is larger than the base. A
/// reflink when the file system can, else a sparse copy. On error `target`
/// is removed again.
pub fn clone_raw(base: &Path, target: &Path, size_mib: u64) -> Result<CloneKind, StorageError> {
    let err = |source| StorageError::Clone {
        base: base.to_path_buf(),
        target: target.to_path_buf(),
        source,
    };
    let src = File::open(base).map_err(|source| StorageError::Base {
        path: base.display().to_string(),
        source,
    })?;
    let len = src
        .metadata()
        .map_err(|source| StorageError::Base {
            path: base.display().to_string(),
            source,
        })?
        .len();
    let dst = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(target)
        .map_err(err)?;
    let res = (|| {
        let kind = if reflink(&src, &dst) {
            CloneKind::Reflink
        } else {
            sparse_copy(&src, &dst, len)?;
            CloneKind::SparseCopy
        };
        let size = size_mib.saturating_mul(1 << 20);
        if size > len {
            dst.set_len(size)?;
        }
        dst.sync_all()?;
        Ok(kind)
    })();
    res.map_err(|e| {
        drop(dst);
        let _ = std::fs::remove_file(target);
        err(e)
    })
}

/// `FICLONE`: whether `dst` now shares all of `src`'s extents.
fn reflink(src: &File, dst: &File) -> bool {
    // SAFETY: FICLONE takes the source descriptor as its argument.
    let r = unsafe { libc::ioctl(dst.as_raw_fd(), libc::FICLONE, src.as_raw_fd()) };
    if r != 0 {
        tracing::debug!(
            "no reflink ({}): sparse copy",
            std::io::Error::last_os_error()
        );
    }
    r == 0
}

/// `lseek(fd, from, whence)`; `None` at ENXIO (no data/hole past `from`).
fn seek_extent(f: &File, from: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), from as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Copies the data extents of `src` (`len` bytes) into `dst` at the same
/// offsets; holes stay holes (`dst` ends up `len` bytes long).
fn sparse_copy(src: &File, dst: &File, len: u64) -> std::io::Result<()> {
    dst.set_len(len)?;
    let mut pos = 0;
    while pos < len {
        let start = match seek_extent(src, pos, libc::SEEK_DATA) {
            Ok(Some(s)) => s,
            Ok(None) => break,
            // No SEEK_DATA on this file system: all of it is data.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                copy_range(src, dst, pos, len - pos)?;
                break;
            }
            Err(e) => return Err(e),
        };
        let end = seek_extent(src, start, libc::SEEK_HOLE)?
            .unwrap_or(len)
            .min(len);
        copy_range(src, dst, start, end - start)?;
        pos = end;
    }
    Ok(())
}

/// Copies `len` bytes at `off` of `src` to the same offset of `dst`:
/// `copy_file_range`, or reads and writes where the kernel cannot.
fn copy_range(src: &File, dst: &File, off: u64, len: u64) -> std::io::Result<()> {
    let end = off + len;
    let mut pos = off;
    while pos < end {
        let mut off_in = pos as libc::loff_t;
        let mut off_out = pos as libc::loff_t;
        let chunk = (end - pos).min(1 << 30) as usize;
        // SAFETY: both descriptors are ours; the offsets are valid pointers.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        if n > 0 {
            pos += n as u64;
            continue;
        }
        if n == 0 {
            // The source is shorter than it was: nothing more to copy.
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL) => break,
            _ => return Err(e),
        }
    }
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        let want = ((end - pos) as usize).min(buf.len());
        let n = src.read_at(&mut buf[..want], pos)?;
        if n == 0 {
            return Ok(());
        }
        dst.write_all_at(&buf[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_images::sparse_raw;

    #[test]
    fn lvm_volume_names_are_valid_and_unique_per_site_and_id() {
        let state = Path::new("/var/lib/smartdomains");
        let name = lvm_volume_name(state, "slurm-42");
        assert!(name.starts_with("sd-slurm-42-"), "{name}");
        assert_eq!(name.len(), "sd-slurm-42-".len() + 8);
        assert_eq!(name, lvm_volume_name(state, "slurm-42"), "stable");
        assert_ne!(name, lvm_volume_name(Path::new("/tmp/t/state"), "slurm-42"));
        // Case and characters lvm2 would refuse: mapped, and still distinct.
        let upper = lvm_volume_name(state, "Pool-A_b");
        assert!(upper.starts_with("sd-pool-a-b-"), "{upper}");
        assert_ne!(upper, lvm_volume_name(state, "pool-a-b"));
        for id in [
            "run-123-1795550000000",
            "condor-12.0-0a1b2c3d",
            "pool-demo.workers.w1",
            "x_tmeta",
            "snapshot",
            &"A".repeat(64),
        ] {
            let n = lvm_volume_name(state, id);
            crate::storage_lvm::validate_name(&n).unwrap_or_else(|e| panic!("{id}: {n}: {e}"));
        }
    }

    #[test]
    fn job_disk_of_each_format() {
        let site = sd_site::SiteConfig::from_str(
            "lvm: { vg: sdvg }\n\
             images:\n\
             \x20 q: { disk: q.qcow2, kernel: k, initrd: i }\n\
             \x20 r: { disk: r.img, format: raw, kernel: k, initrd: i }\n\
             \x20 l: { format: lvm, lv: base, kernel: k, initrd: i }\n\
             vos: { demo: { images: \"*\" } }\n",
            Path::new("/etc/sd/site.yaml"),
        )
        .unwrap();
        let run = Path::new("/state/run/j1");
        let of = |name: &str| JobDisk::for_image(&site.images[name], run, &site.state_dir, "j1");
        let q = of("q").unwrap();
        assert_eq!(
            (q.path(), q.format()),
            (run.join("disk.qcow2"), DiskFormat::Qcow2)
        );
        assert_eq!(
            q.resource(),
            Resource::File {
                path: run.join("disk.qcow2")
            }
        );
        assert_eq!(JobDisk::from_resource(&q.resource()), None);
        let r = of("r").unwrap();
        assert_eq!(
            (r.path(), r.format()),
            (run.join("disk.raw"), DiskFormat::Raw)
        );
        let l = of("l").unwrap();
        let lv = lvm_volume_name(&site.state_dir, "j1");
        assert_eq!(
            l,
            JobDisk::Lvm {
                vg: "sdvg".into(),
                thin_pool: "pool".into(),
                lv: lv.clone()
            }
        );
        assert_eq!(l.path(), Path::new("/dev/sdvg").join(&lv));
        assert_eq!(l.format().qemu_format(), "raw");
        assert_eq!(
            l.resource(),
            Resource::LvmVolume {
                vg: "sdvg".into(),
                thin_pool: "pool".into(),
                lv
            }
        );
        assert_eq!(JobDisk::from_resource(&l.resource()), Some(l));
        // A store image made from an lvm base is a qcow2 (policy clears `lvm`);
        // an lvm image without its base is refused, not guessed.
        let mut broken = site.images["l"].clone();
        broken.lvm = None;
        assert!(matches!(
            JobDisk::for_image(&broken, run, &site.state_dir, "j1"),
            Err(StorageError::NoLvmBase(_))
        ));
    }

    #[test]
    fn a_clone_that_cannot_fit_is_refused_before_writing() {
        sd_host::needs_root("mounting a small tmpfs");
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let data: Vec<u8> = (0..(4u32 << 20))
            .map(|i| (i.wrapping_mul(2654435761) >> 7) as u8)
            .collect();
        std::fs::write(&base, &data).unwrap();
        let small = dir.path().join("small");
        std::fs::create_dir(&small).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&small)
            .status()
            .unwrap();
        assert!(mounted.success());
        let target = small.join("disk.raw");
        let err = create_job_disk(&base, DiskFormat::Raw, &target, 1).unwrap_err();
        let _ = Command::new("umount").arg(&small).status();
        assert!(matches!(err, StorageError::NoSpace { .. }), "{err}");
        assert!(err.to_string().contains("not enough space"), "{err}");
        assert!(!target.exists());
    }

    #[test]
    fn overlay_is_never_smaller_than_its_base_and_leaves_it_alone() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.qcow2");
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&base)
            .arg("64M")
            .status();
        if !st.map(|s| s.success()).unwrap_or(false) {
            panic!("qemu-img is needed for this test (scripts/setup installs it)");
        }
        let before = std::fs::read(&base).unwrap();
        assert_eq!(virtual_size(&base, DiskFormat::Qcow2).unwrap(), 64 << 20);
        let small = dir.path().join("small.qcow2");
        create_overlay(&base, DiskFormat::Qcow2, &small, 1).unwrap();
        assert_eq!(virtual_size(&small, DiskFormat::Qcow2).unwrap(), 64 << 20);
        let big = dir.path().join("big.qcow2");
        create_overlay(&base, DiskFormat::Qcow2, &big, 128).unwrap();
        assert_eq!(virtual_size(&big, DiskFormat::Qcow2).unwrap(), 128 << 20);
        assert_eq!(std::fs::read(&base).unwrap(), before);
        assert!(matches!(
            virtual_size(&dir.path().join("none"), DiskFormat::Raw),
            Err(StorageError::Base { .. })
        ));
        assert!(virtual_size(&small, DiskFormat::Qcow2).is_ok());
        std::fs::write(dir.path().join("raw"), b"not qcow").unwrap();
        assert!(virtual_size(&dir.path().join("raw"), DiskFormat::Qcow2).is_err());
    }

    fn blocks(path: &Path) -> u64 {
        std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn sparse_copy_keeps_holes_and_contents() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let data = sparse_raw(&base);
        // 2 MiB of data: 4096 blocks of 512 bytes (a little more for metadata).
        assert!(blocks(&base) < 5000, "{}", blocks(&base));
        let src = File::open(&base).unwrap();
        let target = dir.path().join("copy.raw");
        let dst = File::create(&target).unwrap();
        sparse_copy(&src, &dst, data.len() as u64).unwrap();
        drop(dst);
        assert_eq!(std::fs::read(&target).unwrap(), data);
        assert!(
            blocks(&target) <= blocks(&base) + 64,
            "{} vs {}",
            blocks(&target),
            blocks(&base)
        );
        assert!(blocks(&target) >= 4096, "{}", blocks(&target));
    }

    #[test]
    fn clone_raw_reflinks_or_copies_sparsely_and_grows() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.raw");
        let data = sparse_raw(&base);
        let before = std::fs::read(&base).unwrap();

        let target = dir.path().join("disk.raw");
        let kind = clone_raw(&base, &target, 32).unwrap();
        // Whichever happened is what the file system can do: ext4 and
        // tmpfs have no reflinks, btrfs and XFS do.
        let probe = File::create(dir.path().join("probe")).unwrap();
        let can_reflink = reflink(&File::open(&base).unwrap(), &probe);
        eprintln!("clone_raw on this file system: {kind:?}");
        assert_eq!(kind == CloneKind::Reflink, can_reflink, "{kind:?}");
        let got = std::fs::read(&target).unwrap();
        assert_eq!(got.len(), 32 << 20);
        assert_eq!(&got[..data.len()], &data[..]);
        assert!(got[data.len()..].iter().all(|&b| b == 0));
        if kind == CloneKind::SparseCopy {
            assert!(blocks(&target) <= blocks(&base) + 64);
        }
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&target).unwrap().permissions()
            ) & 0o777,
            0o600
        );
        assert_eq!(std::fs::read(&base).unwrap(), before);

        // Never smaller than the base; an existing target is not overwritten.
        let small = dir.path().join("small.raw");
        clone_raw(&base, &small, 1).unwrap();
        assert_eq!(std::fs::read(&small).unwrap(), data);
        let e = clone_raw(&base, &small, 1).unwrap_err();
        assert!(matches!(e, StorageError::Clone { .. }), "{e}");
        assert_eq!(std::fs::read(&small).unwrap(), data);
        let e = clone_raw(&dir.path().join("none"), &dir.path().join("x"), 1).unwrap_err();
        assert!(matches!(e, StorageError::Base { .. }), "{e}");
        assert!(!dir.path().join("x").exists());
    }
}
