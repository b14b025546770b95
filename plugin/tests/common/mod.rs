//! What the integration tests share: where the checkout and the guest
//! images are, and how output is read. Each test file takes what it uses.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The top of the checkout.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The guest images `scripts/setup` built (`$SD_IMAGE_DIR`, default
/// build/images); fails with what to do when they are not there.
pub fn images() -> PathBuf {
    let dir = std::env::var_os("SD_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/images"));
    for image in ["debian-minimal.qcow2", "busybox.qcow2"] {
        assert!(
            dir.join(image).exists(),
            "no {image} in {}: run scripts/setup first",
            dir.display()
        );
    }
    dir
}

/// The release of the guest kernel the images boot (`uname -r` in a guest).
pub fn guest_kernel() -> String {
    std::fs::read_to_string(images().join("kernel-release"))
        .unwrap()
        .trim()
        .to_string()
}

/// A command's output as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}
