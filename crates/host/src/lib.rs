//! What root knows of the host, and how it acts on it for a user: who a
//! uid is and which groups it has (from the system's user database, never
//! from a request), files opened with a user's rights, files replaced
//! atomically, and the processes at the other end of a socket.

pub mod atomic_file;
pub mod fault_point;
pub mod owner;
pub mod peer;
pub mod user_files;

/// Fails the calling test unless it runs as root: a root-only test that
/// returned early would pass without testing anything. The suite runs as
/// root (scripts/test); `why` says what needs it.
pub fn needs_root(why: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({why}): run it as root, as scripts/test does"
    );
}

/// A short stable tag of `bytes` (32-bit FNV-1a), for host-wide names made
/// from local ones: domain names, volume names, deployment ids. Changing it
/// renames what running deployments left behind, so it must stay as it is.
pub fn name_tag<'a>(bytes: impl IntoIterator<Item = &'a u8>) -> u32 {
    bytes.into_iter().fold(0x811c9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x01000193)
    })
}
