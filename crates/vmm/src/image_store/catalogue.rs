//! The images the store holds: their manifests, listed, found and removed.

use serde::{Deserialize, Serialize};
use std::fs;
use std::io;

use sd_site::validate_image_name;

use super::cache::is_cache_entry_of;
use super::error::{io_error, StoreError};
use super::files::{entries, file_name, remove_if_present, sync_dir};
use super::locking::lock;
use super::ImageStore;

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

impl ImageStore {
    /// The manifest of a saved image, if the store has one by that name.
    pub fn find(&self, name: &str) -> Result<Option<Manifest>, StoreError> {
        if !self.manifest_path(name).exists() {
            return Ok(None);
        }
        self.read_manifest(name).map(Some)
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

    pub(super) fn read_manifest(&self, name: &str) -> Result<Manifest, StoreError> {
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

    pub(super) fn names(&self) -> Result<Vec<String>, StoreError> {
        let mut names: Vec<String> = entries(&self.dir)?
            .iter()
            .filter_map(|f| file_name(f)?.strip_suffix(".json").map(String::from))
            .filter(|n| validate_image_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
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
}

pub(super) fn check_name(name: &str) -> Result<(), StoreError> {
    validate_image_name(name).map_err(|reason| StoreError::InvalidName {
        name: name.into(),
        reason,
    })
}

pub(super) fn manifest_json(m: &Manifest) -> Vec<u8> {
    let mut v = serde_json::to_vec_pretty(m).expect("a manifest serialises");
    v.push(b'\n');
    v
}
