//! File-system helpers of the store: its directories, their entries,
//! checksums.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::error::{at, io_error, StoreError};

pub(super) fn file_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
}

/// The files of `dir`; none if it does not exist.
pub(super) fn entries(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(io_error(dir, e)),
    };
    let mut out = vec![];
    for entry in rd {
        out.push(entry.map_err(at(dir))?.path());
    }
    Ok(out)
}

pub(super) fn remove_if_present(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Saved images hold a job's data: the store and its cache are root's alone
/// (QEMU opens its disks before it drops to `run_as`).
pub(super) fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(at(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(at(dir))?;
    }
    Ok(())
}

/// fsyncs `dir` (`sd_host::atomic_file`'s, with the store's error).
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    sd_host::atomic_file::sync_dir(dir).map_err(at(dir))
}

pub(super) fn sha256_of(f: &mut File) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hex(&hasher.finalize()))
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
