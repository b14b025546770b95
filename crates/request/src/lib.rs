//! What a job asks for, independent of the front end that carried it
//! (a JDL's `VirtualEnvironment` record, `--sd-env=IMAGE`, `+SDEnvironment`).
//!
//! Every field is optional: what the job leaves out, the site's defaults and
//! the image's defaults fill in (see `policy`).
//!
//! These types are also what crosses from the request parser, which runs
//! with the user's rights (`sd-parse-request`), to the root side that
//! admits it: plain data, checked field by field by serde.

use serde::{Deserialize, Serialize};

/// What a job asks for and for which VO: everything admission reads of a
/// job's description.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The VO the job names (`VirtualOrganisation`), if any; it only picks
    /// among the owner's VOs.
    pub vo: Option<String>,
    pub environment: EnvironmentRequest,
}

/// The `VirtualEnvironment = [ ... ]` record of a JDL, or an image name alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentRequest {
    /// Catalogue name of the VO image (never a path).
    pub image: Option<String>,
    /// Guest memory in MiB.
    pub memory_mib: Option<u64>,
    /// Virtual CPUs.
    pub vcpus: Option<u32>,
    /// Size of the job's disk (the copy-on-write overlay) in MiB.
    pub disk_mib: Option<u64>,
    /// Keep the domain's disk as a new image after the job.
    pub save_image: Option<bool>,
    /// Name of that image in the site's store (default: `<vo>-<deployment>`).
    pub save_as: Option<String>,
    /// Hostname the guest gets.
    pub hostname: Option<String>,
}

impl EnvironmentRequest {
    /// A request that names only an image (`--sd-env=debian-minimal`).
    pub fn image_only(name: &str) -> Self {
        EnvironmentRequest {
            image: Some(name.to_string()),
            ..Default::default()
        }
    }
}
