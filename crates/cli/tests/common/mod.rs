//! What the integration tests share: where the checkout and the guest
//! images are, and how output is read. Each test file takes what it uses.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The top of the checkout.
pub fn repo() -> PathBuf {
    // crates/cli: two levels below the top.
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
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

/// A binary of another crate of the workspace, built next to this test
/// (`cargo test --workspace` builds them all; Cargo names only this
/// crate's own binaries in `CARGO_BIN_EXE_*`).
#[allow(dead_code)]
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/PROFILE/deps/TEST-HASH → target/PROFILE/NAME
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE")
        .join(name);
    assert!(
        bin.exists(),
        "{} is not built: run the tests with `cargo test --workspace`, as scripts/test does",
        bin.display()
    );
    bin
}
