//! The site's store of saved images: a job's disk, kept after the job,
//! that later jobs ask for by name.
//!
//! A saved image is a standalone qcow2 (the job's overlay flattened over its
//! backing chain), compressed with zstd, beside a JSON manifest:
//!
//! ```text
//! <dir>/<name>.qcow2.zst     the image, compressed
//! <dir>/<name>.json          its manifest (sha256 of the .zst, sizes, origin)
//! <cache_dir>/<name>-<sha256 prefix>.qcow2   decompressed on first use
//! ```
//!
//! An image exists once its manifest does: saving writes temporaries
//! (`*.tmp-<pid>`), fsyncs them, renames the image and then the manifest. A
//! crash leaves only temporaries (or, between the two renames, an image
//! without a manifest), which [`ImageStore::cleanup_temporaries`] removes.
//! Decompressed copies are made once, under a lock, and shared by every job
//! that uses the image as its backing file (read-only, like a catalogue
//! image).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use sd_site::{validate_image_name, DiskFormat};

/// zstd level of saved images (the CLI's default).
const ZSTD_LEVEL: i32 = 3;
/// What compression reads (and buffers to write) at a time.
const COMPRESS_CHUNK: usize = 4 << 20;
/// Blocks of zeros this large are left as holes in a decompressed image.
const SPARSE_BLOCK: usize = 64 << 10;
/// Hex digits of the sha256 in a cached image's name.
const CACHE_HASH_PREFIX: usize = 16;
/// Lock file (in the store and in the cache) serialising commits, removals
/// and decompressions.
const LOCK_FILE: &str = ".lock";

/// What a saved image is and where it came from; `<dir>/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// The job whose disk this was (batch system job id or deployment id).
    pub source_job: String,
    /// The VO of that job; quotas count per VO.
    pub vo: String,
    /// Catalogue image the job's disk was an overlay of (its kernel and
    /// initrd are the ones to boot this image with).
    pub base_image: String,
    /// Format of the decompressed image: always `qcow2`, standalone (no
    /// backing file).
    pub format: String,
    /// Bytes of the decompressed qcow2.
    pub size: u64,
    /// Bytes of `<name>.qcow2.zst`.
    pub compressed_size: u64,
    /// sha256 of `<name>.qcow2.zst`, lower-case hex.
    pub sha256: String,
    /// When it was saved, RFC 3339 UTC (`2026-11-24T16:32:55Z`).
    pub created: String,
    /// The job's user.
    pub saved_by_uid: u32,
}

/// A job's disk to save: where it is and how to read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskToSave {
    /// A qcow2 overlay, a raw file, or a block device (an LVM snapshot).
    pub path: PathBuf,
    /// How it is read: `Qcow2` (over its backing chain) or `Raw` (`Lvm` is
    /// read as `Raw`). Always given, never probed: a guest could have
    /// written a qcow2 header into a raw disk.
    pub format: DiskFormat,
    /// Bytes its data takes, when the caller knows better than `qemu-img
    /// info` (which sees no allocation on a block device): the free-space
    /// check wants at least this much in the store.
    pub allocated: Option<u64>,
    /// The qcow2 file a qcow2 overlay was made on, as recorded when it was
    /// made. Read in place of the backing file the overlay's header names:
    /// QEMU (and so a guest that escaped into it) can rewrite that header,
    /// and root would then copy any host file into the saved image.
    /// `None` for a qcow2: the header is trusted ([`DiskToSave::file`]).
    pub backing: Option<PathBuf>,
}

impl DiskToSave {
    /// A disk file whose qcow2 header is trusted (tests, tools; never a
    /// disk a guest could write to): `*.raw` is raw, anything else a qcow2
    /// over the backing file its header names.
    pub fn file(path: &Path) -> DiskToSave {
        let format = if path.extension().is_some_and(|e| e == "raw") {
            DiskFormat::Raw
        } else {
            DiskFormat::Qcow2
        };
        DiskToSave {
            path: path.to_path_buf(),
            format,
            allocated: None,
            backing: None,
        }
    }

    /// How qemu-img is to read it: `-f FORMAT PATH`, or for a qcow2 overlay
    /// with a recorded backing file, `--image-opts` naming that file (the
    /// header's backing name is not opened).
    fn source_args(&self) -> Result<Vec<std::ffi::OsString>, StoreError> {
        let format = self.format.qemu_format();
        if self.format == DiskFormat::Qcow2 {
            check_qcow2_header(&self.path)?;
        }
        match (&self.backing, self.format) {
            (Some(backing), DiskFormat::Qcow2) => {
                check_qcow2_header(backing)?;
                let mut opts =
                    std::ffi::OsString::from("driver=qcow2,file.driver=file,file.filename=");
                opts.push(escape_opt(&self.path));
                opts.push(",backing.driver=qcow2,backing.file.driver=file,backing.file.filename=");
                opts.push(escape_opt(backing));
                Ok(vec!["--image-opts".into(), opts])
            }
            _ => Ok(vec!["-f".into(), format.into(), self.path.clone().into()]),
        }
    }
}

/// A path as a value in QEMU's `key=value,...` option syntax (`,` doubled).
fn escape_opt(path: &Path) -> std::ffi::OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::new();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    std::ffi::OsString::from_vec(out)
}

/// Refuses a qcow2 whose header asks for an external data file (the
/// `data_file` incompatible feature, bit 2): qemu-img would read the file
/// the header names, which the guest's QEMU may have chosen.
fn check_qcow2_header(path: &Path) -> Result<(), StoreError> {
    use std::io::Read;
    let bad = |stderr: String| StoreError::QemuImg {
        action: "read",
        path: path.to_path_buf(),
        stderr,
    };
    let mut header = [0u8; 80];
    let mut f = File::open(path).map_err(|e| bad(e.to_string()))?;
    f.read_exact(&mut header)
        .map_err(|e| bad(format!("no qcow2 header: {e}")))?;
    if &header[0..4] != b"QFI\xfb" {
        return Err(bad("not a qcow2 file".into()));
    }
    let version = u32::from_be_bytes(header[4..8].try_into().unwrap());
    if version >= 3 {
        let incompatible = u64::from_be_bytes(header[72..80].try_into().unwrap());
        if incompatible & (1 << 2) != 0 {
            return Err(bad(
                "its header asks for an external data file; not read (a job's disk never has one)"
                    .into(),
            ));
        }
    }
    Ok(())
}

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
fn bytes(n: u64) -> String {
    format!("{n} bytes ({:.1} MiB)", n as f64 / (1u64 << 20) as f64)
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || matches!(
            e.kind(),
            io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
        )
}

/// An I/O error on `path`; running out of space is [`StoreError::Full`] of
/// the directory `path` is in.
fn io_error(path: &Path, e: io::Error) -> StoreError {
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

fn at(path: &Path) -> impl Fn(io::Error) -> StoreError + '_ {
    move |e| io_error(path, e)
}

/// The saved images of a site.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
    cache_dir: PathBuf,
}

/// Admission looks saved images up through this (policy reads no file).
impl sd_policy::SavedImages for ImageStore {
    fn find(&self, name: &str) -> Result<Option<sd_policy::SavedImage>, String> {
        let found = ImageStore::find(self, name).map_err(|e| e.to_string())?;
        Ok(found.map(|m| sd_policy::SavedImage {
            disk: self.image_path(&m.name),
            name: m.name,
            vo: m.vo,
            base_image: m.base_image,
            source_job: m.source_job,
        }))
    }
}

impl ImageStore {
    /// A store in `dir` (e.g. `<state_dir>/store`) whose decompressed
    /// images go to `cache_dir` (e.g. `<state_dir>/store-cache`). Touches
    /// nothing: directories are made when first written.
    pub fn new(dir: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>) -> Self {
        ImageStore {
            dir: dir.into(),
            cache_dir: cache_dir.into(),
        }
    }

    /// The store of a site: `STATE_DIR/store`, cache `STATE_DIR/store-cache`.
    pub fn of_site(site: &sd_site::SiteConfig) -> Self {
        ImageStore::new(
            site.state_dir.join("store"),
            site.state_dir.join("store-cache"),
        )
    }

    /// The manifest of a saved image, if the store has one by that name.
    pub fn find(&self, name: &str) -> Result<Option<Manifest>, StoreError> {
        if !self.manifest_path(name).exists() {
            return Ok(None);
        }
        self.read_manifest(name).map(Some)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    fn image_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.qcow2.zst"))
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    fn cache_path(&self, m: &Manifest) -> PathBuf {
        let prefix = &m.sha256[..CACHE_HASH_PREFIX.min(m.sha256.len())];
        self.cache_dir.join(format!("{}-{prefix}.qcow2", m.name))
    }

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
    /// `progress(done, total)` reports the compression, in bytes of the
    /// flattened image (the flattening before it reports nothing).
    pub fn save(
        &self,
        overlay: &Path,
        name: &str,
        meta: SaveMeta,
        progress: &dyn Fn(u64, u64),
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
        progress: &dyn Fn(u64, u64),
    ) -> Result<Manifest, StoreError> {
        check_name(name)?;
        let overlay = disk.path.as_path();
        let source = disk.source_args()?;
        // What it takes on disk at most: the overlay and its backing chain,
        // flattened (qemu-img fails here on an overlay a running QEMU holds).
        let needed = match (disk.allocated, &disk.backing) {
            (Some(n), _) => n,
            // `qemu-img info` walks the chain by the header's names: measure
            // what the flattened copy needs instead, over the recorded base.
            (None, Some(_)) => measured_size(overlay, &source)?,
            (None, None) => allocated_size_of_chain(overlay, &source)?,
        };
        create_private_dir(&self.dir)?;
        if self.manifest_path(name).exists() {
            return Err(StoreError::Exists {
                name: name.into(),
                dir: self.dir.clone(),
            });
        }
        if let Some(quota) = meta.vo_quota_bytes {
            let usage = self.usage_of(&meta.vo)?;
            if usage >= quota {
                return Err(StoreError::Quota {
                    name: name.into(),
                    vo: meta.vo.clone(),
                    quota,
                    usage,
                    new: None,
                });
            }
        }
        let free = free_bytes(&self.dir)?;
        if needed > free {
            return Err(StoreError::NoSpace {
                dir: self.dir.clone(),
                needed,
                free,
            });
        }

        let pid = std::process::id();
        let zst_tmp = self.dir.join(format!("{name}.qcow2.zst.tmp-{pid}"));
        let flat_tmp = self.dir.join(format!("{name}.qcow2.tmp-{pid}"));
        let json_tmp = self.dir.join(format!("{name}.json.tmp-{pid}"));
        // Claims the temporary names: another save of the same name in this
        // process fails here instead of writing over this one's files.
        let zst = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&zst_tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Busy {
                    name: name.into(),
                    file: zst_tmp,
                })
            }
            Err(e) => return Err(io_error(&zst_tmp, e)),
        };
        let temps = Temporaries(vec![zst_tmp.clone(), flat_tmp.clone(), json_tmp.clone()]);

        flatten(overlay, &source, &flat_tmp)?;
        let mut flat = File::open(&flat_tmp).map_err(at(&flat_tmp))?;
        let size = flat.metadata().map_err(at(&flat_tmp))?.len();
        let (compressed_size, sha256) =
            compress(&mut flat, size, &zst, progress).map_err(|e| match e {
                CopyError::Read(e) => io_error(&flat_tmp, e),
                CopyError::Write(e) => io_error(&zst_tmp, e),
            })?;
        zst.sync_all().map_err(at(&zst_tmp))?;
        drop((flat, zst));
        // The flattened copy is not needed any more: give its space back
        // before the manifest is written.
        fs::remove_file(&flat_tmp).map_err(at(&flat_tmp))?;

        let manifest = Manifest {
            name: name.into(),
            source_job: meta.source_job,
            vo: meta.vo,
            base_image: meta.base_image,
            format: "qcow2".into(),
            size,
            compressed_size,
            sha256,
            created: rfc3339_utc(SystemTime::now()),
            saved_by_uid: meta.saved_by_uid,
        };
        write_synced(&json_tmp, &manifest_json(&manifest))?;

        // Commit: name still free, quota still kept, then image and manifest.
        let _lock = lock(&self.dir)?;
        if self.manifest_path(name).exists() {
            return Err(StoreError::Exists {
                name: name.into(),
                dir: self.dir.clone(),
            });
        }
        if let Some(quota) = meta.vo_quota_bytes {
            let usage = self.usage_of(&manifest.vo)?;
            if usage.saturating_add(compressed_size) > quota {
                return Err(StoreError::Quota {
                    name: name.into(),
                    vo: manifest.vo.clone(),
                    quota,
                    usage,
                    new: Some(compressed_size),
                });
            }
        }
        let image = self.image_path(name);
        let manifest_file = self.manifest_path(name);
        fs::rename(&zst_tmp, &image).map_err(at(&image))?;
        if let Err(e) = fs::rename(&json_tmp, &manifest_file) {
            // Without its manifest the image is invisible: take it away
            // again, while the lock still keeps other saves of it out.
            let _ = fs::remove_file(&image);
            return Err(io_error(&manifest_file, e));
        }
        temps.disarm();
        sync_dir(&self.dir)?;
        Ok(manifest)
    }

    /// Every saved image, by name.
    pub fn list(&self) -> Result<Vec<Manifest>, StoreError> {
        let mut out = vec![];
        for file in entries(&self.dir)? {
            // Files not named like an image are not the store's.
            let Some(name) = file_name(&file)
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| validate_image_name(n).is_ok())
            else {
                continue;
            };
            out.push(self.read_manifest(name)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn read_manifest(&self, name: &str) -> Result<Manifest, StoreError> {
        let file = self.manifest_path(name);
        let text = match fs::read(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    name: name.into(),
                    dir: self.dir.clone(),
                    available: self.names()?,
                })
            }
            Err(e) => return Err(io_error(&file, e)),
        };
        let m: Manifest = serde_json::from_slice(&text).map_err(|e| StoreError::Corrupt {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        let corrupt = |reason: String| StoreError::Corrupt {
            file: file.clone(),
            reason,
        };
        if m.name != name {
            return Err(corrupt(format!("it names image {:?}", m.name)));
        }
        if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(corrupt(format!(
                "sha256 {:?} is not 64 hex digits",
                m.sha256
            )));
        }
        Ok(m)
    }

    fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = entries(&self.dir)?
            .iter()
            .filter_map(|f| file_name(f)?.strip_suffix(".json").map(String::from))
            .filter(|n| validate_image_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Compressed bytes of `vo`'s saved images.
    fn usage_of(&self, vo: &str) -> Result<u64, StoreError> {
        Ok(self
            .list()?
            .iter()
            .filter(|m| m.vo == vo)
            .map(|m| m.compressed_size)
            .sum())
    }

    /// Removes image `name`: its manifest first (it is gone from then on),
    /// then the image and its decompressed copies. A running domain that
    /// uses a copy keeps it open and is not disturbed.
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        check_name(name)?;
        let _lock = lock(&self.dir)?;
        let manifest = self.manifest_path(name);
        match fs::remove_file(&manifest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound {
                    name: name.into(),
                    dir: self.dir.clone(),
                    available: self.names()?,
                })
            }
            Err(e) => return Err(io_error(&manifest, e)),
        }
        sync_dir(&self.dir)?;
        remove_if_present(&self.image_path(name))?;
        // A first use under way finishes before its copy is removed.
        let _cache_lock = if self.cache_dir.is_dir() {
            Some(lock(&self.cache_dir)?)
        } else {
            None
        };
        for file in entries(&self.cache_dir)? {
            if file_name(&file).is_some_and(|f| is_cache_entry_of(f, name)) {
                remove_if_present(&file)?;
            }
        }
        Ok(())
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
    /// `progress(done, total)` reports the decompression, in bytes of the
    /// decompressed image.
    pub fn open_for_use(
        &self,
        name: &str,
        progress: &dyn Fn(u64, u64),
    ) -> Result<PathBuf, StoreError> {
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

    fn decompress_into_cache(
        &self,
        name: &str,
        progress: &dyn Fn(u64, u64),
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

        let tmp = PathBuf::from(format!("{}.tmp-{}", cached.display(), std::process::id()));
        let temps = Temporaries(vec![tmp.clone()]);
        let out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(at(&tmp))?;
        let written = decompress(src, &out, m.size, progress).map_err(|e| match e {
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
        out.sync_all().map_err(at(&tmp))?;
        drop(out);
        fs::rename(&tmp, &cached).map_err(at(&cached))?;
        temps.disarm();
        sync_dir(&self.cache_dir)?;
        Ok(cached)
    }

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

/// A bar at a terminal, else progress lines in the log (the hooks' case).
pub fn progress(label: &str) -> Box<dyn Fn(u64, u64)> {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        terminal_progress(label)
    } else {
        log_progress(label)
    }
}

/// A progress bar on stderr for [`ImageStore::save`] and
/// [`ImageStore::open_for_use`] when stderr is a terminal (`label`, bytes
/// done of total, rate, time left), finished when all is done; when stderr
/// is not a terminal, a callback that does nothing.
pub fn terminal_progress(label: &str) -> Box<dyn Fn(u64, u64)> {
    use std::io::IsTerminal;
    if !io::stderr().is_terminal() {
        return Box::new(|_, _| {});
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    Box::new(move |done, total| {
        if bar.is_finished() {
            return;
        }
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.set_position(done);
        if done >= total {
            bar.finish();
        }
    })
}

/// A callback for [`ImageStore::save`] and [`ImageStore::open_for_use`]
/// that logs (`tracing::info!`, for the batch-system hooks' logs) `label:
/// N% (done of total bytes)` at the start and at every further 10%.
pub fn log_progress(label: &str) -> Box<dyn Fn(u64, u64)> {
    let label = label.to_string();
    let last = std::cell::Cell::new(None::<u64>);
    Box::new(move |done, total| {
        let step = progress_step(done, total);
        if last.get().is_some_and(|l| l >= step) {
            return;
        }
        last.set(Some(step));
        tracing::info!("{label}: {}% ({done} of {total} bytes)", step * 10);
    })
}

/// Tenths done: 0..=10 (10 when `total` is 0).
fn progress_step(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 10;
    }
    ((done.min(total) as u128 * 10) / total as u128) as u64
}

fn check_name(name: &str) -> Result<(), StoreError> {
    validate_image_name(name).map_err(|reason| StoreError::InvalidName {
        name: name.into(),
        reason,
    })
}

/// Removes its files when dropped (on an error path) unless disarmed.
struct Temporaries(Vec<PathBuf>);

impl Temporaries {
    fn disarm(mut self) {
        self.0.clear();
    }
}

impl Drop for Temporaries {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = fs::remove_file(f);
        }
    }
}

/// `<anything>.tmp-<pid>` → pid.
fn temporary_pid(file: &str) -> Option<i32> {
    let (_, pid) = file.rsplit_once(".tmp-")?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

fn pid_alive(pid: i32) -> bool {
    use nix::errno::Errno;
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None) {
        Ok(()) => true,
        Err(Errno::ESRCH) => false,
        Err(_) => true, // EPERM: someone else's, alive
    }
}

/// `<name>-<16 hex>.qcow2`.
fn is_cache_entry_of(file: &str, name: &str) -> bool {
    file.strip_prefix(name)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(".qcow2"))
        .is_some_and(|h| h.len() == CACHE_HASH_PREFIX && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_complete(path: &Path, size: u64) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.len() == size)
}

fn file_name(path: &Path) -> Option<&str> {
    path.file_name()?.to_str()
}

/// The files of `dir`; none if it does not exist.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
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

fn remove_if_present(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error(path, e)),
    }
}

/// Saved images hold a job's data: the store and its cache are root's alone
/// (QEMU opens its disks before it drops to `run_as`).
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    if !dir.is_dir() {
        fs::create_dir_all(dir).map_err(at(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(at(dir))?;
    }
    Ok(())
}

/// An exclusive lock on `<dir>/.lock`, held until dropped. Separate opens
/// exclude each other, threads of one process included.
fn lock(dir: &Path) -> Result<File, StoreError> {
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

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(at(dir))
}

fn write_synced(path: &Path, data: &[u8]) -> Result<(), StoreError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o644)
        .open(path)
        .map_err(at(path))?;
    f.write_all(data).map_err(at(path))?;
    f.sync_all().map_err(at(path))
}

fn manifest_json(m: &Manifest) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(m).expect("a manifest serialises");
    v.push(b'\n');
    v
}

/// Bytes free for an unprivileged writer on `dir`'s file system.
fn free_bytes(dir: &Path) -> Result<u64, StoreError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| io_error(dir, e.into()))?;
    #[allow(clippy::unnecessary_cast)] // the types differ between libcs
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}

fn qemu_img(args: &[&std::ffi::OsStr]) -> Result<std::process::Output, StoreError> {
    Command::new("qemu-img")
        .args(args)
        .output()
        .map_err(StoreError::Tool)
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// `qemu-img COMMAND... --output=json SOURCE...` of the disk at `overlay`,
/// parsed; an error names the disk.
fn qemu_img_json(
    overlay: &Path,
    command: &[&str],
    source: &[std::ffi::OsString],
) -> Result<serde_json::Value, StoreError> {
    let mut args: Vec<&std::ffi::OsStr> = command.iter().map(|a| a.as_ref()).collect();
    args.push("--output=json".as_ref());
    args.extend(source.iter().map(|a| a.as_os_str()));
    let out = qemu_img(&args)?;
    let failed = |stderr: String| StoreError::QemuImg {
        action: "read",
        path: overlay.to_path_buf(),
        stderr,
    };
    if !out.status.success() {
        return Err(failed(stderr_of(&out)));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| failed(format!("unexpected `qemu-img {}` output: {e}", command[0])))
}

fn unexpected(overlay: &Path, what: &str) -> StoreError {
    StoreError::QemuImg {
        action: "read",
        path: overlay.to_path_buf(),
        stderr: format!("unexpected `qemu-img` output: {what}"),
    }
}

/// Bytes the overlay and every file of its backing chain (as its header
/// names them) take on disk.
fn allocated_size_of_chain(
    overlay: &Path,
    source: &[std::ffi::OsString],
) -> Result<u64, StoreError> {
    let chain = qemu_img_json(overlay, &["info", "--backing-chain"], source)?;
    let images = chain
        .as_array()
        .ok_or_else(|| unexpected(overlay, "not a list"))?;
    Ok(images
        .iter()
        .map(|image| match image["actual-size"].as_u64() {
            Some(s) => s,
            // No allocation figure (some protocols): the whole virtual size.
            None => image["virtual-size"].as_u64().unwrap_or(0),
        })
        .fold(0u64, u64::saturating_add))
}

/// Bytes a standalone qcow2 of `source` needs (`qemu-img measure`).
fn measured_size(overlay: &Path, source: &[std::ffi::OsString]) -> Result<u64, StoreError> {
    qemu_img_json(overlay, &["measure", "-O", "qcow2"], source)?["required"]
        .as_u64()
        .ok_or_else(|| unexpected(overlay, "no \"required\""))
}

/// `qemu-img convert -O qcow2`: the overlay (read as `source` says: its
/// format given, never probed, since a guest could have written a qcow2
/// header into a raw disk; its backing file the recorded one) and its
/// backing chain as one standalone qcow2 (zero clusters left out).
fn flatten(overlay: &Path, source: &[std::ffi::OsString], out: &Path) -> Result<(), StoreError> {
    let mut args: Vec<&std::ffi::OsStr> = vec!["convert".as_ref(), "-q".as_ref()];
    args.extend(source.iter().map(|a| a.as_os_str()));
    args.extend(["-O".as_ref(), "qcow2".as_ref(), out.as_os_str()]);
    let res = qemu_img(&args)?;
    if res.status.success() {
        return Ok(());
    }
    let stderr = stderr_of(&res);
    if stderr.contains("No space left on device") || stderr.contains("Disk quota exceeded") {
        return Err(StoreError::Full {
            dir: out.parent().unwrap_or(out).to_path_buf(),
        });
    }
    Err(StoreError::QemuImg {
        action: "flatten",
        path: overlay.to_path_buf(),
        stderr,
    })
}

/// Which side of a copy failed.
#[derive(Debug)]
enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

/// Passes writes on and hashes and counts what was written.
struct HashingWriter<W> {
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
fn compress(
    src: &mut File,
    size: u64,
    out: &File,
    progress: &dyn Fn(u64, u64),
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
    progress(0, size);
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        enc.write_all(&buf[..n]).map_err(CopyError::Write)?;
        done += n as u64;
        progress(done, size);
    }
    let mut sink = enc.finish().map_err(CopyError::Write)?;
    sink.flush().map_err(CopyError::Write)?;
    let HashingWriter {
        inner,
        hasher,
        written,
    } = sink;
    drop(inner);
    Ok((written, hex(&hasher.finalize())))
}

/// Decompresses `src` into `out` (from offset 0), leaving 64 KiB blocks of
/// zeros as holes; returns the decompressed size. A second thread writes
/// while this one decompresses, and starts the writeback of what it wrote
/// as it goes, so that the caller's fsync has little left to wait for.
fn decompress(
    src: File,
    out: &File,
    size: u64,
    progress: &dyn Fn(u64, u64),
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
        progress(0, size);
        let read = (|| {
            // No buffer back: the writer failed, and says why below.
            while let Ok(mut buf) = empty_rx.recv() {
                let n = read_full(&mut dec, &mut buf)?;
                if n == 0 || full_tx.send((buf, n, pos)).is_err() {
                    break;
                }
                pos += n as u64;
                progress(pos, size);
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
    Ok(pos)
}

/// Asks the kernel to start writing `from..to` of `file` back to disk, and
/// returns at once (an optimisation only: the fsync that follows reports
/// errors).
fn start_writeback(file: &File, from: u64, to: u64) {
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

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
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
fn write_sparse(out: &File, data: &[u8], offset: u64) -> io::Result<()> {
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

fn sha256_of(f: &mut File) -> io::Result<String> {
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

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
fn rfc3339_utc(t: SystemTime) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    fn run(cmd: &mut Command) {
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs qemu-utils)"));
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn qemu_img_create(path: &Path, size: &str, backing: Option<&Path>) {
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2"]);
        if let Some(b) = backing {
            cmd.args(["-F", "qcow2", "-b"]).arg(b);
        }
        run(cmd.arg(path).arg(size));
    }

    fn qemu_io_write(path: &Path, pattern: u8, offset: &str, len: &str) {
        run(Command::new("qemu-io").args([
            "-f".as_ref(),
            "qcow2".as_ref(),
            "-c".as_ref(),
            format!("write -q -P {pattern:#x} {offset} {len}").as_ref(),
            path.as_os_str(),
        ]));
    }

    /// The guest-visible contents of an image (its backing chain included).
    fn raw_contents(path: &Path) -> Vec<u8> {
        let out = tempfile::NamedTempFile::new().unwrap();
        run(Command::new("qemu-img")
            .args(["convert", "-O", "raw"])
            .arg(path)
            .arg(out.path()));
        fs::read(out.path()).unwrap()
    }

    /// A base (8 MiB, 0x11 in its first MiB) and an overlay on it (0x5a in
    /// its second MiB), in `dir`.
    fn job_disk(dir: &Path) -> PathBuf {
        let base = dir.join("base.qcow2");
        qemu_img_create(&base, "8M", None);
        qemu_io_write(&base, 0x11, "0", "1M");
        let overlay = dir.join("overlay.qcow2");
        qemu_img_create(&overlay, "8M", Some(&base));
        qemu_io_write(&overlay, 0x5a, "1M", "1M");
        overlay
    }

    fn meta(vo: &str, quota: Option<u64>) -> SaveMeta {
        SaveMeta {
            source_job: "slurm-9001".into(),
            vo: vo.into(),
            base_image: "debian-minimal".into(),
            saved_by_uid: 1000,
            vo_quota_bytes: quota,
        }
    }

    fn store_in(dir: &Path) -> ImageStore {
        ImageStore::new(dir.join("store"), dir.join("store-cache"))
    }

    fn files_in(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = entries(dir)
            .unwrap()
            .iter()
            .map(|p| file_name(p).unwrap().to_string())
            .filter(|f| f != LOCK_FILE)
            .collect();
        v.sort();
        v
    }

    fn no_progress(_: u64, _: u64) {}

    /// A guest that escaped into its QEMU may rewrite its overlay's header to
    /// name any host file as the backing file; the save reads the recorded
    /// base, never that name, and refuses an external data file.
    #[test]
    fn a_save_reads_the_recorded_base_not_the_backing_file_the_header_names() {
        let tmp = tempfile::tempdir().unwrap();
        let overlay = job_disk(tmp.path());
        let base = tmp.path().join("base.qcow2");
        let expected = raw_contents(&overlay);
        let secret = tmp.path().join("secret.qcow2");
        qemu_img_create(&secret, "8M", None);
        qemu_io_write(&secret, 0x77, "0", "1M");
        run(Command::new("qemu-img")
            .args(["rebase", "-u", "-F", "qcow2", "-b"])
            .arg(&secret)
            .arg(&overlay));
        let store = store_in(tmp.path());
        let disk = DiskToSave {
            backing: Some(base),
            ..DiskToSave::file(&overlay)
        };
        store
            .save_disk(&disk, "honest", meta("demo", None), &no_progress)
            .unwrap();
        let saved = store.open_for_use("honest", &no_progress).unwrap();
        assert_eq!(raw_contents(&saved), expected, "the recorded base's data");
        // Trusting the header (as before) would have copied the secret.
        store
            .save(&overlay, "trusting", meta("demo", None), &no_progress)
            .unwrap();
        let trusting = store.open_for_use("trusting", &no_progress).unwrap();
        assert_eq!(raw_contents(&trusting)[..4], [0x77; 4]);

        // An external data file in the header: refused, whatever the backing.
        let with_data_file = tmp.path().join("data-file.qcow2");
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-o"])
            .arg(format!(
                "data_file={}",
                secret.with_extension("data").display()
            ))
            .arg(&with_data_file)
            .arg("8M"));
        let e = store
            .save_disk(
                &DiskToSave::file(&with_data_file),
                "df",
                meta("demo", None),
                &no_progress,
            )
            .unwrap_err();
        assert!(e.to_string().contains("external data file"), "{e}");
    }

    #[test]
    fn save_list_use_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let overlay = job_disk(tmp.path());
        let overlay_before = fs::read(&overlay).unwrap();
        let store = store_in(tmp.path());
        assert_eq!(store.list().unwrap(), []);

        let calls = Cell::new(Vec::<(u64, u64)>::new());
        let progress = |d, t| {
            let mut v = calls.take();
            v.push((d, t));
            calls.set(v);
        };
        let m = store
            .save(&overlay, "atlas-sim.v1", meta("atlas", None), &progress)
            .unwrap();
        assert_eq!(
            fs::read(&overlay).unwrap(),
            overlay_before,
            "overlay untouched"
        );
        let calls = calls.take();
        assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(calls.last(), Some(&(m.size, m.size)));

        assert_eq!(m.name, "atlas-sim.v1");
        assert_eq!(
            (m.source_job.as_str(), m.vo.as_str(), m.base_image.as_str()),
            ("slurm-9001", "atlas", "debian-minimal")
        );
        assert_eq!((m.format.as_str(), m.saved_by_uid), ("qcow2", 1000));
        let zst = store.dir().join("atlas-sim.v1.qcow2.zst");
        assert_eq!(m.compressed_size, fs::metadata(&zst).unwrap().len());
        assert!(m.compressed_size < m.size);
        assert_eq!(m.sha256, sha256_of(&mut File::open(&zst).unwrap()).unwrap());
        assert_eq!(m.created.len(), 20, "{}", m.created);
        assert_eq!(
            files_in(store.dir()),
            ["atlas-sim.v1.json", "atlas-sim.v1.qcow2.zst"]
        );
        assert_eq!(store.list().unwrap(), std::slice::from_ref(&m));

        let used = store.open_for_use("atlas-sim.v1", &no_progress).unwrap();
        assert_eq!(
            used,
            store
                .cache_dir()
                .join(format!("atlas-sim.v1-{}.qcow2", &m.sha256[..16]))
        );
        assert_eq!(fs::metadata(&used).unwrap().len(), m.size);
        // A standalone qcow2 with the job's disk in it.
        let info = Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(&used)
            .output()
            .unwrap();
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        assert_eq!(info["format"], "qcow2");
        assert!(info.get("backing-filename").is_none());
        let contents = raw_contents(&used);
        assert_eq!(contents, raw_contents(&overlay));
        assert!(contents[..1 << 20].iter().all(|&b| b == 0x11));
        assert!(contents[1 << 20..2 << 20].iter().all(|&b| b == 0x5a));
        assert!(contents[2 << 20..].iter().all(|&b| b == 0));
        run(Command::new("qemu-img")
            .arg("compare")
            .arg(&overlay)
            .arg(&used));

        // Decompressed once: the second use finds it.
        let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let first = inode(&used);
        let again = store
            .open_for_use("atlas-sim.v1", &|_, _| panic!("decompressed again"))
            .unwrap();
        assert_eq!((again.clone(), inode(&again)), (used.clone(), first));

        // The name is taken.
        let e = store
            .save(&overlay, "atlas-sim.v1", meta("atlas", None), &no_progress)
            .unwrap_err();
        assert!(matches!(e, StoreError::Exists { .. }), "{e}");

        // Removed: gone from the list, the store and the cache.
        store.remove("atlas-sim.v1").unwrap();
        assert_eq!(store.list().unwrap(), []);
        assert_eq!(files_in(store.dir()), Vec::<String>::new());
        assert_eq!(files_in(store.cache_dir()), Vec::<String>::new());
        let e = store.remove("atlas-sim.v1").unwrap_err();
        assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
        let e = store
            .open_for_use("atlas-sim.v1", &no_progress)
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "no saved image \"atlas-sim.v1\" in {}; saved images: none",
                store.dir().display()
            )
        );
    }

    /// A raw disk (a cloned raw image, or an LVM snapshot's block device)
    /// is read as raw, never probed, and saved as a standalone qcow2 like
    /// an overlay; a caller's allocation figure (a thin volume's) is the
    /// one the free-space check uses.
    #[test]
    fn a_raw_disk_is_saved_as_qcow2() {
        let tmp = tempfile::tempdir().unwrap();
        let disk = tmp.path().join("disk.raw");
        let mut data = vec![0u8; 4 << 20];
        data[..1 << 20].fill(0x33);
        // A qcow2 magic at its start must not make it a qcow2.
        data[..4].copy_from_slice(b"QFI\xfb");
        fs::write(&disk, &data).unwrap();
        let store = store_in(tmp.path());

        let m = store
            .save(&disk, "raw-file", meta("demo", None), &no_progress)
            .unwrap();
        assert_eq!(m.format, "qcow2");
        let used = store.open_for_use("raw-file", &no_progress).unwrap();
        assert_eq!(raw_contents(&used), data);

        // As for a block device: no extension, format and allocation given.
        let dev = tmp.path().join("lvm-volume");
        fs::copy(&disk, &dev).unwrap();
        let to_save = DiskToSave {
            path: dev.clone(),
            format: DiskFormat::Lvm,
            allocated: Some(1 << 20),
            backing: None,
        };
        store
            .save_disk(&to_save, "from-lvm", meta("demo", None), &no_progress)
            .unwrap();
        let used = store.open_for_use("from-lvm", &no_progress).unwrap();
        assert_eq!(raw_contents(&used), data);
        // A figure larger than the free space is refused before anything is written.
        let huge = DiskToSave {
            allocated: Some(u64::MAX / 2),
            backing: None,
            ..to_save
        };
        let e = store
            .save_disk(&huge, "too-big", meta("demo", None), &no_progress)
            .unwrap_err();
        assert!(matches!(e, StoreError::NoSpace { .. }), "{e}");
        assert_eq!(fs::read(&dev).unwrap(), data, "the disk is only read");
    }

    #[test]
    fn a_flipped_byte_is_a_checksum_error() {
        let tmp = tempfile::tempdir().unwrap();
        let overlay = job_disk(tmp.path());
        let store = store_in(tmp.path());
        let m = store
            .save(&overlay, "img", meta("demo", None), &no_progress)
            .unwrap();
        let zst = store.dir().join("img.qcow2.zst");
        let mut data = fs::read(&zst).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0x01;
        fs::write(&zst, &data).unwrap();

        let e = store
            .open_for_use("img", &|_, _| panic!("decompressed a corrupt image"))
            .unwrap_err();
        let StoreError::Checksum { file, expected, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!((file, expected), (&zst, &m.sha256));
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "{} is corrupt (checksum mismatch): its sha256 is ",
                zst.display()
            )),
            "{msg}"
        );
        assert!(msg.ends_with("Remove the image (it cannot be repaired) and save it again"));
        // Nothing else done: no decompressed copy, no temporary.
        assert_eq!(files_in(store.cache_dir()), Vec::<String>::new());
        assert!(!store
            .cache_dir()
            .join(format!("img-{}.qcow2", &m.sha256[..16]))
            .exists());
    }

    fn dead_pid() -> u32 {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn cleanup_removes_temporaries_of_dead_processes_only() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_in(tmp.path());
        assert_eq!(store.cleanup_temporaries().unwrap(), Vec::<PathBuf>::new());
        fs::create_dir_all(store.dir()).unwrap();
        fs::create_dir_all(store.cache_dir()).unwrap();
        let (dead, live) = (dead_pid(), std::process::id());
        let write = |dir: &Path, f: &str| fs::write(dir.join(f), b"x").unwrap();
        for f in [
            format!("a.qcow2.zst.tmp-{dead}"),
            format!("a.qcow2.tmp-{dead}"),
            format!("a.json.tmp-{dead}"),
            format!("b.qcow2.zst.tmp-{live}"),
            format!("b.json.tmp-{live}"),
            "c.qcow2.zst".into(), // a crash between the renames: no manifest
            "d.qcow2.zst".into(),
            "d.json".into(),
            "notes.tmp-x".into(),
            "e.tmp-".into(),
        ] {
            write(store.dir(), &f);
        }
        write(
            store.cache_dir(),
            &format!("d-0123456789abcdef.qcow2.tmp-{dead}"),
        );
        write(
            store.cache_dir(),
            &format!("d-fedcba9876543210.qcow2.tmp-{live}"),
        );

        let removed = store.cleanup_temporaries().unwrap();
        let mut expected = vec![
            store.dir().join(format!("a.qcow2.zst.tmp-{dead}")),
            store.dir().join(format!("a.qcow2.tmp-{dead}")),
            store.dir().join(format!("a.json.tmp-{dead}")),
            store.dir().join("c.qcow2.zst"),
            store
                .cache_dir()
                .join(format!("d-0123456789abcdef.qcow2.tmp-{dead}")),
        ];
        expected.sort();
        assert_eq!(removed, expected);
        assert_eq!(
            files_in(store.dir()),
            [
                format!("b.json.tmp-{live}"),
                format!("b.qcow2.zst.tmp-{live}"),
                "d.json".into(),
                "d.qcow2.zst".into(),
                "e.tmp-".into(),
                "notes.tmp-x".into(),
            ]
        );
        assert_eq!(
            files_in(store.cache_dir()),
            [format!("d-fedcba9876543210.qcow2.tmp-{live}")]
        );
    }

    #[test]
    fn quota_counts_the_vo_images_and_the_new_one() {
        let tmp = tempfile::tempdir().unwrap();
        let overlay = job_disk(tmp.path());
        let store = store_in(tmp.path());
        let first = store
            .save(&overlay, "one", meta("atlas", None), &no_progress)
            .unwrap();
        let c = first.compressed_size;
        // Another VO's images do not count.
        store
            .save(&overlay, "cms-one", meta("cms", Some(c + 10)), &no_progress)
            .unwrap();

        // Room for part of a second image: refused after compressing it.
        let quota = c + c / 2;
        let e = store
            .save(&overlay, "two", meta("atlas", Some(quota)), &no_progress)
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Quota { usage, new: Some(n), .. } if usage == c && n == c),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            format!(
                "saving \"two\" would exceed VO \"atlas\"'s image store quota of {}: its saved \
                 images use {} and this one needs {}; remove some of them",
                bytes(quota),
                bytes(c),
                bytes(c)
            )
        );
        // Quota already used up: refused before anything is written.
        let e = store
            .save(&overlay, "three", meta("atlas", Some(c)), &no_progress)
            .unwrap_err();
        assert!(matches!(e, StoreError::Quota { new: None, .. }), "{e}");
        assert!(e
            .to_string()
            .contains("VO \"atlas\"'s image store quota of"));
        assert_eq!(
            files_in(store.dir()),
            [
                "cms-one.json",
                "cms-one.qcow2.zst",
                "one.json",
                "one.qcow2.zst"
            ]
        );
        // Room for both.
        store
            .save(&overlay, "two", meta("atlas", Some(2 * c)), &no_progress)
            .unwrap();
    }

    /// A tmpfs of `size` mounted at `dir` while it lives (root only).
    struct Tmpfs(PathBuf);

    impl Tmpfs {
        fn mount(dir: &Path, size: &str) -> Tmpfs {
            sd_host::needs_root("mounting a small tmpfs");
            fs::create_dir_all(dir).unwrap();
            nix::mount::mount(
                Some("tmpfs"),
                dir,
                Some("tmpfs"),
                nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
                Some(format!("size={size},mode=0700").as_str()),
            )
            .expect("mount tmpfs");
            Tmpfs(dir.to_path_buf())
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }

    #[test]
    fn refused_when_the_store_has_too_little_free_space() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.qcow2");
        qemu_img_create(&base, "16M", None);
        qemu_io_write(&base, 0x11, "0", "4M");
        let overlay = tmp.path().join("overlay.qcow2");
        qemu_img_create(&overlay, "16M", Some(&base));
        qemu_io_write(&overlay, 0x5a, "4M", "1M");
        let _fs = Tmpfs::mount(&tmp.path().join("small"), "2m");
        let store = ImageStore::new(tmp.path().join("small/store"), tmp.path().join("cache"));
        let e = store
            .save(&overlay, "big", meta("demo", None), &no_progress)
            .unwrap_err();
        let StoreError::NoSpace { needed, free, .. } = e else {
            panic!("{e}")
        };
        assert!(needed > 5 << 20 && free <= 2 << 20, "{needed} {free}");
        let msg = e.to_string();
        assert!(
            msg.starts_with(&format!(
                "not enough free space in the image store {}: saving needs about {needed} bytes",
                store.dir().display()
            )),
            "{msg}"
        );
        assert!(msg.contains(&format!("{free} bytes (")), "{msg}");
        assert_eq!(files_in(store.dir()), Vec::<String>::new());
    }

    /// Deterministic bytes that do not compress.
    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn disk_full_while_saving_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        // 3 MiB that do not compress: the estimate (~3 MiB) fits in 5 MiB,
        // the flattened copy and the compressed one together (~6 MiB) do not.
        let raw = tmp.path().join("base.raw");
        fs::write(&raw, noise(3 << 20)).unwrap();
        let base = tmp.path().join("base.qcow2");
        run(Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(&raw)
            .arg(&base));
        let overlay = tmp.path().join("overlay.qcow2");
        qemu_img_create(&overlay, "4M", Some(&base));
        qemu_io_write(&overlay, 0x5a, "3M", "64k");
        let overlay_before = fs::read(&overlay).unwrap();
        let _fs = Tmpfs::mount(&tmp.path().join("small"), "5m");
        let store = ImageStore::new(tmp.path().join("small/store"), tmp.path().join("cache"));
        let e = store
            .save(&overlay, "full", meta("demo", None), &no_progress)
            .unwrap_err();
        assert!(matches!(e, StoreError::Full { .. }), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "the image store {} is full (no space left on device)",
                store.dir().display()
            )),
            "{e}"
        );
        assert_eq!(files_in(store.dir()), Vec::<String>::new());
        assert_eq!(store.list().unwrap(), []);
        assert_eq!(fs::read(&overlay).unwrap(), overlay_before);
    }

    #[test]
    fn names_are_checked_like_catalogue_names() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_in(tmp.path());
        let overlay = tmp.path().join("none.qcow2");
        for bad in ["", "../etc", "a/b", "Atlas", ".hidden", "-x", "a b"] {
            let e = store
                .save(&overlay, bad, meta("demo", None), &no_progress)
                .unwrap_err();
            assert!(matches!(e, StoreError::InvalidName { .. }), "{bad}: {e}");
            let e = store.open_for_use(bad, &no_progress).unwrap_err();
            assert!(matches!(e, StoreError::InvalidName { .. }), "{bad}: {e}");
            let e = store.remove(bad).unwrap_err();
            assert!(matches!(e, StoreError::InvalidName { .. }), "{bad}: {e}");
        }
        assert_eq!(
            store.remove("../etc").unwrap_err().to_string(),
            "invalid image name \"../etc\": an image is named by its catalogue name, never by a path"
        );
        assert!(!store.dir().exists() && !store.cache_dir().exists());
    }

    #[test]
    fn a_disk_in_use_or_missing_is_not_saved() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_in(tmp.path());
        let e = store
            .save(
                &tmp.path().join("none.qcow2"),
                "x",
                meta("demo", None),
                &no_progress,
            )
            .unwrap_err();
        assert!(
            matches!(e, StoreError::QemuImg { action: "read", .. }),
            "{e}"
        );
        assert!(!store.dir().exists());

        // A process that has the disk open for writing (as a running
        // domain's QEMU does) holds its lock: refused, nothing written.
        let overlay = job_disk(tmp.path());
        let mut holder = Command::new("qemu-io")
            .args(["-f", "qcow2"])
            .arg(&overlay)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Its prompt says the image is open.
        let mut prompt = [0u8; 9];
        holder
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut prompt)
            .unwrap();
        assert_eq!(&prompt, b"qemu-io> ");
        let e = store
            .save(&overlay, "x", meta("demo", None), &no_progress)
            .unwrap_err();
        holder.kill().unwrap();
        holder.wait().unwrap();
        assert!(
            matches!(e, StoreError::QemuImg { action: "read", .. }),
            "{e}"
        );
        assert!(
            e.to_string()
                .ends_with("(is its domain still running? save it after the domain is off)"),
            "{e}"
        );
        assert!(!store.dir().exists());
        store
            .save(&overlay, "x", meta("demo", None), &no_progress)
            .unwrap();
    }

    #[test]
    fn refused_when_the_cache_has_too_little_free_space() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("base.qcow2");
        qemu_img_create(&base, "16M", None);
        qemu_io_write(&base, 0x11, "0", "4M");
        let store = ImageStore::new(tmp.path().join("store"), tmp.path().join("small/cache"));
        let m = store
            .save(&base, "big", meta("demo", None), &no_progress)
            .unwrap();
        let _fs = Tmpfs::mount(&tmp.path().join("small"), "2m");
        let e = store.open_for_use("big", &no_progress).unwrap_err();
        assert!(
            matches!(e, StoreError::CacheNoSpace { needed, .. } if needed == m.size),
            "{e}"
        );
        assert!(
            e.to_string().starts_with(&format!(
                "not enough free space in the image cache {} to decompress the image",
                store.cache_dir().display()
            )),
            "{e}"
        );
        assert_eq!(files_in(store.cache_dir()), Vec::<String>::new());
    }

    #[test]
    fn a_bad_manifest_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let store = store_in(tmp.path());
        fs::create_dir_all(store.dir()).unwrap();
        fs::write(store.dir().join("x.json"), b"{").unwrap();
        let e = store.list().unwrap_err();
        assert!(
            e.to_string().starts_with(&format!(
                "manifest {} is unreadable (",
                store.dir().join("x.json").display()
            )),
            "{e}"
        );
    }

    #[test]
    fn sparse_writes_and_timestamps() {
        let tmp = tempfile::tempdir().unwrap();
        let f = File::create(tmp.path().join("s")).unwrap();
        let mut data = vec![0u8; 4 * SPARSE_BLOCK];
        data[SPARSE_BLOCK + 3] = 7;
        data[4 * SPARSE_BLOCK - 1] = 9;
        write_sparse(&f, &data, 0).unwrap();
        write_sparse(&f, &vec![0u8; SPARSE_BLOCK], data.len() as u64).unwrap();
        f.set_len((data.len() + SPARSE_BLOCK) as u64).unwrap();
        let back = fs::read(tmp.path().join("s")).unwrap();
        assert_eq!(&back[..data.len()], &data[..]);
        assert!(back[data.len()..].iter().all(|&b| b == 0));

        let t = |s| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(t(0), "1970-01-01T00:00:00Z");
        assert_eq!(t(951_825_600), "2000-02-29T12:00:00Z");
        assert_eq!(t(1_795_538_775), "2026-11-24T16:46:15Z");
        assert_eq!(t(4_107_542_399), "2100-02-28T23:59:59Z");
        assert_eq!(temporary_pid("a.json.tmp-42"), Some(42));
        assert_eq!(temporary_pid("a.json.tmp-4x"), None);
        assert!(is_cache_entry_of("a-b-0123456789abcdef.qcow2", "a-b"));
        assert!(!is_cache_entry_of("a-b-0123456789abcdef.qcow2", "a"));
    }

    #[test]
    fn progress_is_logged_every_tenth() {
        let steps: Vec<u64> = [0, 5, 9, 10, 19, 20, 55, 99, 100]
            .iter()
            .map(|&d| progress_step(d, 100))
            .collect();
        assert_eq!(steps, [0, 0, 0, 1, 1, 2, 5, 9, 10]);
        assert_eq!(progress_step(0, 0), 10);
        assert_eq!(progress_step(u64::MAX, u64::MAX), 10);
        assert_eq!(progress_step(7, 3), 10);
        // Both kinds of callback take what save and open_for_use report.
        let tmp = tempfile::tempdir().unwrap();
        let store = store_in(tmp.path());
        let overlay = job_disk(tmp.path());
        let log = log_progress("saving x");
        store
            .save(&overlay, "x", meta("demo", None), &*log)
            .unwrap();
        let term = terminal_progress("decompressing x");
        store.open_for_use("x", &*term).unwrap();
        term(1, 1);
        term(2, 1);
    }

    fn median(v: &mut [f64]) -> f64 {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    }

    /// Timings for `scripts/bench-storage`: `SD_BENCH_INPUT` is a
    /// standalone qcow2 (a flattened disk), `SD_BENCH_DIR` a directory to
    /// work in, `SD_BENCH_N` the runs (default 1). Prints one `bench` line
    /// of medians in milliseconds.
    #[test]
    #[ignore]
    fn bench_save_and_decompress() {
        let input = PathBuf::from(std::env::var_os("SD_BENCH_INPUT").expect("SD_BENCH_INPUT"));
        let dir = PathBuf::from(std::env::var_os("SD_BENCH_DIR").expect("SD_BENCH_DIR"));
        let n: usize = std::env::var("SD_BENCH_N").map_or(1, |v| v.parse().unwrap());
        let size = fs::metadata(&input).unwrap().len();
        let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
        let mut t_ms: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut time = |what, t: Instant| t_ms.entry(what).or_default().push(ms(t));
        // Each timed part starts with nothing dirty in the page cache (as
        // the script's zstd runs do): writeback of earlier parts would slow
        // it down by up to 3x on a VM's disk.
        let settle = nix::unistd::sync;
        let mut compressed = 0;
        for _ in 0..n {
            // The compression part of save, alone: from the flattened file
            // (in the page cache) to a .zst, then its fsync.
            let out_path = dir.join("bench.zst");
            let out = File::create(&out_path).unwrap();
            let mut src = File::open(&input).unwrap();
            settle();
            let t = Instant::now();
            compressed = compress(&mut src, size, &out, &no_progress).unwrap().0;
            time("compress_ms", t);
            let t = Instant::now();
            out.sync_all().unwrap();
            time("compress_fsync_ms", t);
            drop(out);
            fs::remove_file(&out_path).unwrap();

            // The whole of save (flattening included).
            let store = ImageStore::new(dir.join("store"), dir.join("store-cache"));
            let _ = store.remove("bench");
            settle();
            let t = Instant::now();
            let m = store
                .save(&input, "bench", meta("bench", None), &no_progress)
                .unwrap();
            time("save_ms", t);

            // The parts of the first use: checksum, decompression, fsync.
            let t = Instant::now();
            let mut f = File::open(store.image_path("bench")).unwrap();
            assert_eq!(sha256_of(&mut f).unwrap(), m.sha256);
            time("verify_ms", t);
            f.rewind().unwrap();
            let out_path = dir.join("bench.qcow2");
            let out = File::create(&out_path).unwrap();
            settle();
            let t = Instant::now();
            assert_eq!(decompress(f, &out, m.size, &no_progress).unwrap(), m.size);
            time("decompress_ms", t);
            let t = Instant::now();
            out.sync_all().unwrap();
            time("decompress_fsync_ms", t);
            drop(out);
            fs::remove_file(&out_path).unwrap();

            // The whole of the first use.
            settle();
            let t = Instant::now();
            store.open_for_use("bench", &no_progress).unwrap();
            time("open_for_use_ms", t);
            store.remove("bench").unwrap();
        }
        let mut line = format!("bench size={size} compressed={compressed}");
        for (what, v) in &mut t_ms {
            line += &format!(" {what}={:.1}", median(v));
            eprintln!("{what}: {v:.0?}");
        }
        println!("{line}");
    }
}
