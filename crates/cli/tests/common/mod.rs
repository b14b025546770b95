//! What the integration tests share: where the checkout and the guest
//! images are, and how output is read. Each test file takes what it uses.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

pub mod loop_device;

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

/// The stdout of `sh -c CMD` (what the host says: links, tables, devices).
pub fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .unwrap();
    text(&out.stdout)
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

/// One test at a time in this test binary: the tests share the node's
/// hypervisor, batch system or a socket, and must not see each other's
/// forks and file descriptors. A failed test does not poison the next.
#[allow(dead_code)]
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The head of a test site's config that boots QEMU domains as a site
/// does (unprivileged QEMU, seccomp sandbox), with the images setup built.
pub fn qemu_site_head() -> String {
    format!(
        "image_dir: {}\nbackend: qemu\nacceleration: auto\nboot_timeout_secs: 120\n\
         qemu:\n  run_as: sd-qemu\n  sandbox: true\n",
        images().display()
    )
}

/// A site of its own for one test, in a fresh directory: its state and log
/// directories are in there, and `site.yaml` is written from `yaml` with
/// `{dir}` replaced by the directory (the rest: catalogue, VOs, backend).
#[allow(dead_code)]
pub struct TestSite {
    pub dir: tempfile::TempDir,
}

#[allow(dead_code)]
impl TestSite {
    pub fn new(prefix: &str, yaml: &str) -> TestSite {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir().unwrap();
        let d = dir.path().display().to_string();
        let config = format!(
            "state_dir: {d}/state\nlog_dir: {d}/log\n{}",
            yaml.replace("{dir}", &d)
        );
        std::fs::write(dir.path().join("site.yaml"), config).unwrap();
        TestSite { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

#[allow(dead_code)]
impl TestSite {
    /// `sd` with this site's config.
    pub fn sd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_sd"));
        c.env("SD_CONFIG", self.path("site.yaml"))
            .env_remove("SD_LOG");
        c
    }

    /// Journals and run directories of this site, and processes whose
    /// command line names its directory and one of `programs` (QEMU, a
    /// pool monitor): what a deployment could leave behind.
    pub fn leftovers(&self, programs: &[&str]) -> Vec<String> {
        let mut found = vec![];
        for sub in ["state/journal", "state/run"] {
            if let Ok(entries) = std::fs::read_dir(self.path(sub)) {
                found.extend(entries.flatten().map(|e| e.path().display().to_string()));
            }
        }
        let marker = self.dir.path().display().to_string();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
                let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                if programs.iter().any(|p| cmdline.contains(p)) && cmdline.contains(&marker) {
                    found.push(format!(
                        "process {}: {cmdline}",
                        entry.file_name().to_string_lossy()
                    ));
                }
            }
        }
        found
    }
}
