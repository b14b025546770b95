//! Decompressed images, made once (verified, under the cache's lock) on
//! first use and shared read-only by every job that uses them.

use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::catalogue::check_name;
use super::error::{at, io_error, CopyError, StoreError};
use super::files::{create_private_dir, sha256_of, sync_dir};
use super::locking::lock;
use super::progress::Progress;
use super::quota::free_bytes;
use super::{ImageStore, Manifest};
use sd_host::atomic_file::{self, TempFile};

/// Blocks of zeros this large are left as holes in a decompressed image.
pub(super) const SPARSE_BLOCK: usize = 64 << 10;
/// Hex digits of the sha256 in a cached image's name.
pub(super) const CACHE_HASH_PREFIX: usize = 16;

impl ImageStore {
    pub(super) fn cache_path(&self, m: &Manifest) -> PathBuf {
        let prefix = &m.sha256[..CACHE_HASH_PREFIX.min(m.sha256.len())];
        self.cache_dir.join(format!("{}-{prefix}.qcow2", m.name))
    }

    /// The decompressed image `name`, to use as a (read-only) backing file.
    ///
    /// The first use checks the sha256 of the compressed file against the
    /// manifest ([`StoreError::Checksum`], and nothing else done, when they
    /// differ) and decompresses it into `<cache_dir>/<name>-<sha256
    /// prefix>.qcow2` (a temporary, fsynced, renamed). Later uses find that
    /// file (of the manifest's size) and return it at once. Concurrent
    /// first uses wait for one another: one decompresses.
    ///
    /// `progress` reports the decompression, in bytes of the
    /// decompressed image.
    pub fn open_for_use(&self, name: &str, progress: &dyn Progress) -> Result<PathBuf, StoreError> {
        check_name(name)?;
        let m = self.read_manifest(name)?;
        let cached = self.cache_path(&m);
        if is_complete(&cached, m.size) {
            return Ok(cached);
        }
        self.decompress_into_cache(name, progress)
            .map_err(|e| match e {
                StoreError::Full { dir } => StoreError::CacheFull { dir },
                e => e,
            })
    }

    pub(super) fn decompress_into_cache(
        &self,
        name: &str,
        progress: &dyn Progress,
    ) -> Result<PathBuf, StoreError> {
        create_private_dir(&self.cache_dir)?;
        let _lock = lock(&self.cache_dir)?;
        // Again under the lock: another process may have decompressed it,
        // or the image may have been removed, meanwhile.
        let m = self.read_manifest(name)?;
        let cached = self.cache_path(&m);
        if is_complete(&cached, m.size) {
            return Ok(cached);
        }
        let free = free_bytes(&self.cache_dir)?;
        if m.size > free {
            return Err(StoreError::CacheNoSpace {
                dir: self.cache_dir.clone(),
                needed: m.size,
                free,
            });
        }
        let image = self.image_path(name);
        let mut src = File::open(&image).map_err(at(&image))?;
        let actual = sha256_of(&mut src).map_err(at(&image))?;
        if actual != m.sha256 {
            return Err(StoreError::Checksum {
                file: image,
                expected: m.sha256,
                actual,
            });
        }
        src.rewind().map_err(at(&image))?;

        let out = TempFile::create(&cached).map_err(at(&atomic_file::temporary_path(&cached)))?;
        let tmp = out.path().to_path_buf();
        let written = decompress(src, out.file(), m.size, progress).map_err(|e| match e {
            // Not the file system's: zstd's own.
            CopyError::Read(e) if e.raw_os_error().is_none() => StoreError::Decompress {
                file: image.clone(),
                reason: e.to_string(),
            },
            CopyError::Read(e) => io_error(&image, e),
            CopyError::Write(e) => io_error(&tmp, e),
        })?;
        if written != m.size {
            return Err(StoreError::Decompress {
                file: image,
                reason: format!("{written} bytes, the manifest says {}", m.size),
            });
        }
        out.sync().map_err(at(&tmp))?;
        out.persist().map_err(at(&cached))?;
        sync_dir(&self.cache_dir)?;
        Ok(cached)
    }
}

/// `<name>-<16 hex>.qcow2`.
pub(super) fn is_cache_entry_of(file: &str, name: &str) -> bool {
    file.strip_prefix(name)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".qcow2"))
        .is_some_and(|h| h.len() == CACHE_HASH_PREFIX && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(super) fn is_complete(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

/// Decompresses `src` into `out` (from offset 0), leaving 64 KiB blocks of
/// zeros as holes; returns the decompressed size. A second thread writes
/// while this one decompresses, and starts the writeback of what it wrote
/// as it goes, so that the caller's fsync has little left to wait for.
pub(super) fn decompress(
    src: File,
    out: &File,
    size: u64,
    progress: &dyn Progress,
) -> Result<u64, CopyError> {
    use std::sync::mpsc::sync_channel;
    const CHUNK: usize = 512 << 10;
    const BUFFERS: usize = 4;
    const WRITEBACK_EVERY: u64 = 8 << 20;
    let reader = io::BufReader::with_capacity(1 << 20, src);
    let mut dec = zstd::Decoder::with_buffer(reader).map_err(CopyError::Read)?;
    let mut pos = 0u64;
    let (read, written) = std::thread::scope(|s| {
        let (full_tx, full_rx) = sync_channel::<(Vec<u8>, usize, u64)>(BUFFERS);
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
        for _ in 0..BUFFERS {
            empty_tx.send(vec![0u8; CHUNK]).unwrap();
        }
        let writer = s.spawn(move || -> io::Result<()> {
            let mut flushed = 0;
            for (buf, n, at) in full_rx {
                write_sparse(out, &buf[..n], at)?;
                // The reader may be gone (it failed): nothing to give back to.
                let _ = empty_tx.send(buf);
                let end = at + n as u64;
                if end - flushed >= WRITEBACK_EVERY {
                    start_writeback(out, flushed, end);
                    flushed = end;
                }
            }
            Ok(())
        });
        progress.started(size);
        let read = (|| {
            // No buffer back: the writer failed, and says why below.
            while let Ok(mut buf) = empty_rx.recv() {
                let n = read_full(&mut dec, &mut buf)?;
                if n == 0 || full_tx.send((buf, n, pos)).is_err() {
                    break;
                }
                pos += n as u64;
                progress.advanced_to(pos);
                if n < CHUNK {
                    break;
                }
            }
            Ok(())
        })();
        drop(full_tx);
        (
            read,
            writer.join().expect("the writer thread does not panic"),
        )
    });
    read.map_err(CopyError::Read)?;
    written.map_err(CopyError::Write)?;
    // Trailing holes still count.
    out.set_len(pos).map_err(CopyError::Write)?;
    progress.finished();
    Ok(pos)
}

/// Asks the kernel to start writing `from..to` of `file` back to disk, and
/// returns at once (an optimisation only: the fsync that follows reports
/// errors).
pub(super) fn start_writeback(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(from), i64::try_from(to - from)) else {
        return;
    };
    // SAFETY: a plain syscall on a file descriptor `file` keeps open; it
    // touches no memory of ours.
    unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes `data` at `offset`, skipping blocks that are all zeros.
pub(super) fn write_sparse(out: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut i = 0;
    while i < data.len() {
        let end = (i + SPARSE_BLOCK).min(data.len());
        let zero = data[i..end].iter().fold(0u8, |a, &b| a | b) == 0;
        match (zero, run_start) {
            (true, Some(s)) => {
                out.write_all_at(&data[s..i], offset + s as u64)?;
                run_start = None;
            }
            (false, None) => run_start = Some(i),
            _ => {}
        }
        i = end;
    }
    if let Some(s) = run_start {
        out.write_all_at(&data[s..], offset + s as u64)?;
    }
    Ok(())
}
