//! What keeps concurrent and interrupted work apart: the lock of the store
//! (and of its cache), the temporaries of work in progress, and the
//! cleanup of those an interrupted process left.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::error::{at, StoreError};
use super::files::{entries, file_name, remove_if_present};
use super::ImageStore;

/// Lock file (in the store and in the cache) serialising commits, removals
/// and decompressions.
pub(super) const LOCK_FILE: &str = ".lock";

impl ImageStore {
    /// Removes what interrupted saves and decompressions left: `*.tmp-<pid>`
    /// files in the store and the cache whose process is gone (a live pid's
    /// are its work in progress and are kept), and images a crash left
    /// without a manifest. Returns the files removed.
    pub fn cleanup_temporaries(&self) -> Result<Vec<PathBuf>, StoreError> {
        let mut removed = vec![];
        for dir in [&self.dir, &self.cache_dir] {
            for file in entries(dir)? {
                let Some(pid) = file_name(&file).and_then(temporary_pid) else {
                    continue;
                };
                if !pid_alive(pid) && remove_if_present(&file)? {
                    removed.push(file);
                }
            }
        }
        if self.dir.is_dir() {
            let _lock = lock(&self.dir)?;
            for file in entries(&self.dir)? {
                let Some(name) = file_name(&file).and_then(|f| f.strip_suffix(".qcow2.zst")) else {
                    continue;
                };
                if !self.manifest_path(name).exists() && remove_if_present(&file)? {
                    removed.push(file);
                }
            }
        }
        removed.sort();
        Ok(removed)
    }
}

/// An exclusive lock on `<dir>/.lock`, held until dropped. Separate opens
/// exclude each other, threads of one process included.
pub(super) fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(at(&path))?;
    f.lock().map_err(at(&path))?;
    Ok(f)
}

/// Removes its files when dropped: scratch files another program writes
/// by name (`qemu-img`'s flattened copy), gone on every path.
pub(super) struct Temporaries(pub(super) Vec<PathBuf>);

impl Drop for Temporaries {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = fs::remove_file(f);
        }
    }
}

pub(super) use sd_host::atomic_file::temporary_pid;

pub(super) fn pid_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(_) => true, // EPERM: someone else's, alive
    }
}
