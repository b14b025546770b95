//! What a save may take: the VO's quota (compressed bytes of its saved
//! images) and the free space of the store's file system.

use std::path::Path;

use super::error::{io_error, StoreError};
use super::save::SaveMeta;
use super::{ImageStore, Manifest};

impl ImageStore {
    /// Compressed bytes of `vo`'s saved images.
    pub(super) fn usage_of(&self, vo: &str) -> Result<u64, StoreError> {
        Ok(self
            .list()?
            .iter()
            .filter(|m| m.vo == vo)
            .map(|m| m.compressed_size)
            .sum())
    }

    /// Before anything is written: [`StoreError::Quota`] if the VO is
    /// already at its quota.
    pub(super) fn check_quota_before_save(
        &self,
        name: &str,
        meta: &SaveMeta,
    ) -> Result<(), StoreError> {
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
        Ok(())
    }

    /// At the commit: [`StoreError::Quota`] if the VO's images and this
    /// one (its compressed size now known) exceed the quota.
    pub(super) fn check_quota_at_commit(
        &self,
        manifest: &Manifest,
        quota: Option<u64>,
    ) -> Result<(), StoreError> {
        if let Some(quota) = quota {
            let usage = self.usage_of(&manifest.vo)?;
            if usage.saturating_add(manifest.compressed_size) > quota {
                return Err(StoreError::Quota {
                    name: manifest.name.clone(),
                    vo: manifest.vo.clone(),
                    quota,
                    usage,
                    new: Some(manifest.compressed_size),
                });
            }
        }
        Ok(())
    }

    /// [`StoreError::NoSpace`] if the store's file system has less than
    /// `needed` bytes free.
    pub(super) fn check_free_space(&self, needed: u64) -> Result<(), StoreError> {
        let free = free_bytes(&self.dir)?;
        if needed > free {
            return Err(StoreError::NoSpace {
                dir: self.dir.clone(),
                needed,
                free,
            });
        }
        Ok(())
    }
}

/// Bytes free for an unprivileged writer on `dir`'s file system.
pub(super) fn free_bytes(dir: &Path) -> Result<u64, StoreError> {
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| io_error(dir, e.into()))?;
    #[allow(clippy::unnecessary_cast)] // the types differ between libcs
    Ok((st.blocks_available() as u64).saturating_mul(st.fragment_size() as u64))
}
