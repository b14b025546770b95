//! SmartDomains: every grid job in the virtual machine its VO asked for.
//!
//! Data flows one way:
//! front end (`jdl`) → `request` → `policy` (against `site`) → `deployment`
//! (`journal`, `storage`) → `hypervisor` backend → `guest_link`.

pub mod atomic_file;
pub mod batch;
pub mod capacity;
pub mod condor;
pub mod deployment;
pub mod description;
pub mod guest_link;
pub mod hook_log;
pub mod hypervisor;
pub mod image_store;
pub mod jdl;
pub mod job;
pub mod journal;
pub mod node_service;
pub mod owner;
pub mod peer;
pub mod policy;
pub mod pool;
pub mod request;
pub mod site;
pub mod slurm;
pub mod storage;
pub mod storage_lvm;
pub mod user_files;

/// Fails the calling test unless it runs as root: a root-only test that
/// returned early would pass without testing anything. The suite runs as
/// root (scripts/test); `why` says what needs it.
#[cfg(test)]
pub(crate) fn needs_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({why}): run it as root, as scripts/test does"
    );
}

/// A short stable tag of `bytes` (32-bit FNV-1a), for host-wide names made
/// from local ones: domain names, volume names, deployment ids. Changing it
/// renames what running deployments left behind, so it must stay as it is.
pub(crate) fn name_tag<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u32 {
    bytes.into_iter().fold(0x811c9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x01000193)
    })
}
