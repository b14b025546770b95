//! The job's disk: a copy-on-write qcow2 overlay over a catalogue image.
//!
//! The base is only ever read (QEMU opens a backing file read-only), so any
//! number of jobs share it and none can change it.

use crate::site::DiskFormat;
use std::io::Read;
use std::path::Path;
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
}

/// Virtual size of a disk image in bytes: the qcow2 header's, or a raw file's length.
pub fn virtual_size(path: &Path, format: DiskFormat) -> Result<u64, StorageError> {
    let err = |source| StorageError::Base {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(err)?;
    match format {
        DiskFormat::Raw => Ok(f.metadata().map_err(err)?.len()),
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
    let fmt = match format {
        DiskFormat::Qcow2 => "qcow2",
        DiskFormat::Raw => "raw",
    };
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(virtual_size(&small, DiskFormat::Qcow2), Ok(_)));
        std::fs::write(dir.path().join("raw"), b"not qcow").unwrap();
        assert!(matches!(
            virtual_size(&dir.path().join("raw"), DiskFormat::Qcow2),
            Err(_)
        ));
    }
}
