//! The site configuration: the one YAML file a site admin writes
//! (`/etc/smartdomains/site.yaml`, or `$SD_CONFIG`).
//!
//! Loading parses the file (every key is known: a typo is an error with its
//! `FILE:LINE:COLUMN`), fills in defaults, resolves paths, and checks that the
//! file makes sense as a whole (VOs name catalogue images, limits are not
//! zero, defaults fit every VO's limits …). It does not look at the disk:
//! [`SiteConfig::check_files`] does that, for `sd check-config`.
//!
//! Relative paths in the file are relative to the file's directory; catalogue
//! files (`disk`, `kernel`, `initrd`) are relative to `image_dir`.
//!
//! An image of `format: lvm` has no disk file: its base is a thin logical
//! volume (`lv:`, default: the image's name) in the site's `lvm:` volume
//! group and thin pool, and every job gets a thin snapshot of it
//! (`storage::create_lvm_job_disk`):
//!
//! ```yaml
//! lvm: { vg: sdvg, thin_pool: pool }   # thin_pool default: pool
//! images:
//!   busybox: { format: lvm, lv: busybox-base, kernel: vmlinuz, initrd: initrd.img }
//! ```

mod builder;
mod error;
mod fault;
mod model;
mod names;
mod raw;
#[cfg(test)]
mod tests;

pub(crate) use builder::*;
pub use error::*;
pub use fault::{Blame, ExitCode, Fault};
pub use model::*;
pub use names::*;
pub(crate) use raw::*;

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------

impl SiteConfig {
    /// `$SD_CONFIG` if set (and not empty), else `/etc/smartdomains/site.yaml`.
    pub fn default_path() -> PathBuf {
        match std::env::var_os("SD_CONFIG") {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_CONFIG_PATH),
        }
    }

    /// Read and check the configuration at `path`.
    pub fn load(path: &Path) -> Result<SiteConfig, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        SiteConfig::from_str(&src, path)
    }

    /// Parse and check `src` as if read from `path` (which names the file in
    /// errors and is the base of relative paths; it is not read).
    pub fn from_str(src: &str, path: &Path) -> Result<SiteConfig, ConfigError> {
        let raw: RawSite = serde_saphyr::from_str(src).map_err(|e| parse_error(path, &e))?;
        Builder { file: path }.build(raw)
    }

    /// Problems with `image_dir` and the catalogue files (disks, kernels,
    /// initrds): missing, unreadable, or not regular files (a disk may also
    /// be a block device). One message each; empty when all are there.
    pub fn check_files(
        &self,
        lvm_base_problem: &dyn Fn(&LvmBase) -> Option<String>,
    ) -> Vec<String> {
        let mut problems = Vec::new();
        match std::fs::metadata(&self.image_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => problems.push(format!(
                "image_dir {}: not a directory",
                self.image_dir.display()
            )),
            Err(e) => problems.push(format!("image_dir {}: {e}", self.image_dir.display())),
        }
        for image in self.images.values() {
            if let Some(base) = &image.lvm {
                if let Some(problem) = lvm_base_problem(base) {
                    problems.push(format!("image {:?}: {problem}", image.name));
                }
            }
            for (what, file) in [
                ("disk", &image.disk),
                ("kernel", &image.kernel),
                ("initrd", &image.initrd),
            ] {
                if what == "disk" && image.lvm.is_some() {
                    continue;
                }
                match std::fs::metadata(file) {
                    Ok(m) if m.is_file() => {}
                    // A raw disk may be a logical volume.
                    Ok(m) if what == "disk" && m.file_type().is_block_device() => {}
                    Ok(_) => problems.push(format!(
                        "image {:?}: {what} {}: not a regular file",
                        image.name,
                        file.display()
                    )),
                    Err(e) => problems.push(format!(
                        "image {:?}: {what} {}: {e}",
                        image.name,
                        file.display()
                    )),
                }
            }
        }
        // Members the node's user database does not know match nobody.
        for vo in self.vos.values() {
            let m = &vo.members;
            for g in &m.unix_groups {
                if nix::unistd::Group::from_name(g).ok().flatten().is_none() {
                    problems.push(format!(
                        "VO {:?}: Unix group {g:?} is not in this node's group database",
                        vo.name
                    ));
                }
            }
            for u in &m.users {
                if nix::unistd::User::from_name(u).ok().flatten().is_none() {
                    problems.push(format!(
                        "VO {:?}: user {u:?} is not in this node's user database",
                        vo.name
                    ));
                }
            }
        }
        problems
    }
}
