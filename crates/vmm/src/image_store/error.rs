//! What can go wrong in the store, each message saying what to do.

use std::io;
use std::path::{Path, PathBuf};

/// Why the store could not do what was asked. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error(
        "no saved image {name:?} in {}; saved images: {}",
        dir.display(),
        if available.is_empty() { "none".to_string() } else { available.join(", ") }
    )]
    NotFound {
        name: String,
        dir: PathBuf,
        available: Vec<String>,
    },
    #[error(
        "a saved image {name:?} already exists in {}: remove it first or save under another name",
        dir.display()
    )]
    Exists { name: String, dir: PathBuf },
    #[error(
        "{} is corrupt (checksum mismatch): its sha256 is {actual}, its manifest says {expected}; \
         nothing was used. Remove the image (it cannot be repaired) and save it again",
        file.display()
    )]
    Checksum {
        file: PathBuf,
        expected: String,
        actual: String,
    },
    #[error(
        "not enough free space in the image store {}: saving needs about {} (the job's disk \
         and its base), {} are free; nothing was written. Free space there or move the store \
         to a larger file system",
        dir.display(), bytes(*needed), bytes(*free)
    )]
    NoSpace {
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error(
        "the image store {} is full (no space left on device): nothing was saved and the \
         job's disk is untouched; free space in {} and try again",
        dir.display(), dir.display()
    )]
    Full { dir: PathBuf },
    #[error(
        "not enough free space in the image cache {} to decompress the image: it needs {}, \
         {} are free. Free space there (decompressed images no job uses can go: they are \
         made again on use)",
        dir.display(), bytes(*needed), bytes(*free)
    )]
    CacheNoSpace {
        dir: PathBuf,
        needed: u64,
        free: u64,
    },
    #[error(
        "the image cache {} is full (no space left on device): nothing was decompressed; free \
         space there (decompressed images no job uses can go: they are made again on use)",
        dir.display()
    )]
    CacheFull { dir: PathBuf },
    #[error(
        "saving {name:?} would exceed VO {vo:?}'s image store quota of {}: its saved images \
         use {}{}; remove some of them",
        bytes(*quota), bytes(*usage),
        new.map(|n| format!(" and this one needs {}", bytes(n))).unwrap_or_default()
    )]
    Quota {
        name: String,
        vo: String,
        quota: u64,
        usage: u64,
        /// Compressed size of the refused image, when it got that far.
        new: Option<u64>,
    },
    #[error(
        "another save of image {name:?} is under way ({} exists); wait for it, or remove \
         that file if no save is running",
        file.display()
    )]
    Busy { name: String, file: PathBuf },
    #[error("cannot run qemu-img: {0} (scripts/setup installs qemu-utils)")]
    Tool(#[source] io::Error),
    #[error("qemu-img cannot {action} {}: {stderr}{}", path.display(),
        if stderr.contains("lock") { " (is its domain still running? save it after the domain is off)" } else { "" })]
    QemuImg {
        action: &'static str,
        path: PathBuf,
        stderr: String,
    },
    #[error(
        "manifest {} is unreadable ({reason}): remove it and its image from the store",
        file.display()
    )]
    Corrupt { file: PathBuf, reason: String },
    #[error(
        "{} does not decompress ({reason}) although its sha256 matches: remove the image and \
         save it again",
        file.display()
    )]
    Decompress { file: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `N bytes (X MiB)`.
pub(super) fn bytes(n: u64) -> String {
    format!("{n} bytes ({:.1} MiB)", n as f64 / (1u64 << 20) as f64)
}

pub(super) fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

/// An I/O error on `path`; running out of space is [`StoreError::Full`] of
/// the directory `path` is in.
pub(super) fn io_error(path: &Path, e: io::Error) -> StoreError {
    if is_full(&e) {
        StoreError::Full {
            dir: path.parent().unwrap_or(path).to_path_buf(),
        }
    } else {
        StoreError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

pub(super) fn at(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| io_error(path, e)
}
/// Which side of a copy failed.
#[derive(Debug)]
pub(super) enum CopyError {
    Read(io::Error),
    Write(io::Error),
}
