//! Saving a job's disk as an image, in named steps: the checks that refuse
//! before anything is written, flattening and compressing into
//! temporaries, and the commit under the store's lock.

use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::catalogue::{check_name, manifest_json};
use super::disk::{flatten, DiskToSave};
use super::error::{at, io_error, CopyError, StoreError};
use super::files::{create_private_dir, hex, sync_dir};
use super::locking::{lock, Temporaries};
use super::progress::Progress;
use super::{ImageStore, Manifest};
use sd_host::atomic_file::{self, TempFile};
use sd_host::fault_point;

/// zstd level of saved images (the CLI's default).
pub(super) const ZSTD_LEVEL: i32 = 3;
/// What compression reads (and buffers to write) at a time.
pub(super) const COMPRESS_CHUNK: usize = 4 << 20;

/// Who saves an image, for its manifest and the VO's quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaveMeta {
    pub source_job: String,
    pub vo: String,
    /// Catalogue name of the overlay's base.
    pub base_image: String,
    pub saved_by_uid: u32,
    /// The VO's quota in bytes (compressed sizes of its saved images, the
    /// new one included); `None`: no quota.
    pub vo_quota_bytes: Option<u64>,
}

/// The temporaries of one save, beside their final names in the store
/// (`sd_host::atomic_file`'s scheme: `<final name>.tmp-<pid>`).
pub(super) struct SaveFiles {
    /// `<name>.qcow2.zst.tmp-<pid>`: the compressed image, claimed first.
    zst: TempFile,
    /// `<name>.qcow2.tmp-<pid>`: the flattened qcow2 (`qemu-img` writes
    /// it), removed once compressed, or by the guard on an error.
    flat: PathBuf,
    _flat_guard: Temporaries,
}

/// What flattening and compressing made of the disk.
pub(super) struct Compressed {
    /// Bytes of the flattened qcow2.
    size: u64,
    /// Bytes of the `.zst`.
    compressed_size: u64,
    sha256: String,
}

impl ImageStore {
    /// Saves `overlay` (a qcow2 over its backing chain, not in use by a
    /// running domain) as image `name`. The overlay is only read.
    ///
    /// Refused before anything is written when the name is taken, the VO is
    /// already at its quota, or the store's file system has less free space
    /// than the overlay and its backing chain take. Then: `qemu-img convert
    /// -O qcow2` into a temporary standalone qcow2 in the store, compressed
    /// (zstd level 3, one worker per core) into `<name>.qcow2.zst.tmp-<pid>`
    /// while its sha256 is computed, the manifest written beside it; both
    /// fsynced and renamed (image first, manifest last) under the store's
    /// lock, after the quota is checked again with the real compressed size.
    /// On any error the temporaries are removed.
    ///
    /// `progress` reports the compression, in bytes of the
    /// flattened image (the flattening before it reports nothing).
    pub fn save(
        &self,
        overlay: &Path,
        name: &str,
        meta: SaveMeta,
        progress: &dyn Progress,
    ) -> Result<Manifest, StoreError> {
        self.save_disk(&DiskToSave::file(overlay), name, meta, progress)
    }

    /// [`ImageStore::save`] of any job disk: a qcow2 overlay, a raw file or
    /// a raw block device (an LVM thin snapshot), flattened the same way.
    pub fn save_disk(
        &self,
        disk: &DiskToSave,
        name: &str,
        meta: SaveMeta,
        progress: &dyn Progress,
    ) -> Result<Manifest, StoreError> {
        check_name(name)?;
        let source = disk.source_args()?;
        let needed = disk.space_needed(&source)?;
        create_private_dir(&self.dir)?;
        self.check_name_free(name)?;
        self.check_quota_before_save(name, &meta)?;
        self.check_free_space(needed)?;

        let files = self.claim_temporaries(name)?;
        let (zst, compressed) = flatten_and_compress(disk, &source, files, progress)?;
        let manifest = Manifest {
            name: name.into(),
            source_job: meta.source_job,
            vo: meta.vo,
            base_image: meta.base_image,
            format: "qcow2".into(),
            size: compressed.size,
            compressed_size: compressed.compressed_size,
            sha256: compressed.sha256,
            created: rfc3339_utc(SystemTime::now()),
            saved_by_uid: meta.saved_by_uid,
        };
        let json = self.write_manifest_temporary(&manifest)?;
        self.commit(&manifest, meta.vo_quota_bytes, zst, json)?;
        sync_dir(&self.dir)?;
        fault_point::reached("save: manifest renamed");
        Ok(manifest)
    }

    /// [`StoreError::Exists`] if the store has an image `name`.
    pub(super) fn check_name_free(&self, name: &str) -> Result<(), StoreError> {
        if self.manifest_path(name).exists() {
            return Err(StoreError::Exists {
                name: name.into(),
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    /// Claims the temporary names: another save of the same name in this
    /// process fails here ([`StoreError::Busy`]) instead of writing over
    /// this one's files. The temporaries go when dropped.
    pub(super) fn claim_temporaries(&self, name: &str) -> Result<SaveFiles, StoreError> {
        let image = self.image_path(name);
        let zst = match TempFile::create_new(&image) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Busy {
                    name: name.into(),
                    file: atomic_file::temporary_path(&image),
                })
            }
            Err(e) => return Err(io_error(&atomic_file::temporary_path(&image), e)),
        };
        let flat = atomic_file::temporary_path(&self.dir.join(format!("{name}.qcow2")));
        Ok(SaveFiles {
            zst,
            _flat_guard: Temporaries(vec![flat.clone()]),
            flat,
        })
    }

    /// `<name>.json.tmp-<pid>`: the manifest, written and fsynced.
    pub(super) fn write_manifest_temporary(&self, m: &Manifest) -> Result<TempFile, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let target = self.manifest_path(&m.name);
        let tmp_path = atomic_file::temporary_path(&target);
        let mut json = TempFile::create(&target).map_err(at(&tmp_path))?;
        let f = json.file_mut();
        f.set_permissions(fs::Permissions::from_mode(0o644))
            .map_err(at(&tmp_path))?;
        f.write_all(&manifest_json(m)).map_err(at(&tmp_path))?;
        json.sync().map_err(at(&tmp_path))?;
        Ok(json)
    }

    /// The commit, under the store's lock: the name still free and the
    /// quota still kept (with the real compressed size), then the image
    /// and, last, its manifest renamed into place (the directory's fsync
    /// is the caller's).
    pub(super) fn commit(
        &self,
        manifest: &Manifest,
        quota: Option<u64>,
        zst: TempFile,
        json: TempFile,
    ) -> Result<(), StoreError> {
        let name = manifest.name.as_str();
        let _lock = lock(&self.dir)?;
        self.check_name_free(name)?;
        self.check_quota_at_commit(manifest, quota)?;
        let image = self.image_path(name);
        let manifest_file = self.manifest_path(name);
        zst.persist().map_err(at(&image))?;
        fault_point::reached("save: image renamed");
        if let Err(e) = json.persist() {
            // Without its manifest the image is invisible: take it away
            // again, while the lock still keeps other saves of it out.
            let _ = fs::remove_file(&image);
            return Err(io_error(&manifest_file, e));
        }
        Ok(())
    }
}

/// The disk flattened into `files.flat`, compressed into the `.zst`
/// temporary (fsynced, returned), and the flattened copy removed again.
pub(super) fn flatten_and_compress(
    disk: &DiskToSave,
    source: &[std::ffi::OsString],
    files: SaveFiles,
    progress: &dyn Progress,
) -> Result<(TempFile, Compressed), StoreError> {
    let SaveFiles {
        zst,
        flat: flat_path,
        _flat_guard,
    } = files;
    let zst_path = zst.path().to_path_buf();
    flatten(&disk.path, source, &flat_path)?;
    fault_point::reached("save: flattened");
    let mut flat = File::open(&flat_path).map_err(at(&flat_path))?;
    let size = flat.metadata().map_err(at(&flat_path))?.len();
    let (compressed_size, sha256) =
        compress(&mut flat, size, zst.file(), progress).map_err(|e| match e {
            CopyError::Read(e) => io_error(&flat_path, e),
            CopyError::Write(e) => io_error(&zst_path, e),
        })?;
    zst.sync().map_err(at(&zst_path))?;
    fault_point::reached("save: compressed");
    drop(flat);
    // The flattened copy is not needed any more: give its space back
    // before the manifest is written.
    fs::remove_file(&flat_path).map_err(at(&flat_path))?;
    Ok((
        zst,
        Compressed {
            size,
            compressed_size,
            sha256,
        },
    ))
}

/// Passes writes on and hashes and counts what was written.
pub(super) struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compresses `src` (`size` bytes) into `out` with zstd (level 3, one worker
/// per core, content size and checksum in the frame, as the CLI writes)
/// and returns the compressed size and its sha256.
pub(super) fn compress(
    src: &mut File,
    size: u64,
    out: &File,
    progress: &dyn Progress,
) -> Result<(u64, String), CopyError> {
    let sink = HashingWriter {
        inner: BufWriter::with_capacity(COMPRESS_CHUNK, out),
        hasher: Sha256::new(),
        written: 0,
    };
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let mut enc = zstd::Encoder::new(sink, ZSTD_LEVEL).map_err(CopyError::Write)?;
    enc.multithread(workers).map_err(CopyError::Write)?;
    enc.include_checksum(true).map_err(CopyError::Write)?;
    enc.set_pledged_src_size(Some(size))
        .map_err(CopyError::Write)?;
    let mut buf = vec![0u8; COMPRESS_CHUNK];
    let mut done = 0u64;
    progress.started(size);
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        enc.write_all(&buf[..n]).map_err(CopyError::Write)?;
        done += n as u64;
        progress.advanced_to(done);
    }
    let mut sink = enc.finish().map_err(CopyError::Write)?;
    sink.flush().map_err(CopyError::Write)?;
    let HashingWriter {
        inner,
        hasher,
        written,
    } = sink;
    drop(inner);
    progress.finished();
    Ok((written, hex(&hasher.finalize())))
}
/// `YYYY-MM-DDTHH:MM:SSZ`.
pub(super) fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}
