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
//! (`*.tmp-<pid>`, `sd_host::atomic_file`'s scheme), fsyncs them, renames
//! the image and then the manifest. A crash leaves only temporaries (or,
//! between the two renames, an image without a manifest), which
//! [`ImageStore::cleanup_temporaries`] removes.
//! Decompressed copies are made once, under a lock, and shared by every job
//! that uses the image as its backing file (read-only, like a catalogue
//! image).

//!
//! The module by concept: [`catalogue`] (manifests: list, find, remove),
//! [`save`] (a job's disk saved in named steps), [`quota`] (what a save may
//! take), [`cache`] (decompressed copies), [`locking`] (the lock,
//! temporaries and their cleanup), [`disk`] (a disk as `qemu-img` reads
//! it), [`progress`] (what long work reports; the CLI shows it).

use std::path::{Path, PathBuf};

mod cache;
mod catalogue;
mod disk;
mod error;
mod files;
mod locking;
pub mod progress;
mod quota;
mod save;

pub use catalogue::Manifest;
pub use disk::DiskToSave;
pub use error::StoreError;
pub use progress::{progress, LogProgress, NoProgress, Progress};
pub use save::SaveMeta;

/// The SHA-256 of a whole file, in hex.
pub fn sha256_file(f: &mut std::fs::File) -> std::io::Result<String> {
    files::sha256_of(f)
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
}

#[cfg(test)]
mod tests;
