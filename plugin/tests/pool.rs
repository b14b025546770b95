//! Pools on real VMs: `sd start` deploys a described pool in order,
//! `sd terminate` stops it in reverse order and leaves nothing.
//!
//! Needs `scripts/setup` to have run (images in build/images, qemu, the
//! sd-qemu user). Each test has its own site: config, state and log dirs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Instant;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn images() -> PathBuf {
    let dir = std::env::var_os("SD_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("build/images"));
    assert!(
        dir.join("busybox.qcow2").exists(),
        "no VO images in {}: run scripts/setup first",
        dir.display()
    );
    dir
}

struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::Builder::new()
            .prefix("sd-pool-")
            .tempdir()
            .unwrap();
        let config = format!(
            "state_dir: {dir}/state\nlog_dir: {dir}/log\nimage_dir: {images}\n\
             backend: qemu\nacceleration: auto\nboot_timeout_secs: 120\n\
             qemu:\n  run_as: sd-qemu\n  sandbox: true\n\
             default_vo: demo\n\
             defaults: {{ image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: sd-guest }}\n\
             images:\n\
             \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             \x20 broken: {{ disk: {dir}/missing.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             vos:\n\
             \x20 demo: {{ images: [busybox, broken], max_memory_mib: 512, max_vcpus: 2, max_disk_mib: 4096 }}\n",
            dir = dir.path().display(),
            images = images().display(),
        );
        std::fs::write(dir.path().join("site.yaml"), config).unwrap();
        Site { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn sd(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_sd"))
            .env("SD_CONFIG", self.path("site.yaml"))
            .env_remove("SD_LOG")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn description(&self, body: &str) -> String {
        let p = self.path("pool.yaml");
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    }

    /// Journals, run directories and QEMU processes of this site.
    fn leftovers(&self) -> Vec<String> {
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
                if cmdline.contains("qemu-system") && cmdline.contains(&marker) {
                    found.push(format!("process {}", entry.file_name().to_string_lossy()));
                }
            }
        }
        found
    }

    fn record(&self, rel: &str) -> serde_json::Value {
        let text = std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        serde_json::from_slice(&text).unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn times(record: &serde_json::Value, key: &str) -> Vec<u64> {
    record["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m[key].as_u64().unwrap_or_else(|| panic!("{key} of {m}")))
        .collect()
}

const SEQUENCE: &str = "\
Worker:
  extends: DefaultXenDomain
  image: busybox
  memory: 256
  disk: 1024

sfConfig:
  extends: Sequence
  db: { extends: Worker }
  worker1: { extends: Worker }
  worker2: { extends: Worker }
  worker3: { extends: Worker }
";

#[test]
fn sequence_pool_starts_in_order_and_stops_in_reverse_leaving_nothing() {
    let site = Site::new();
    let file = site.description(SEQUENCE);
    let ids = [
        "pool-seq-db",
        "pool-seq-worker1",
        "pool-seq-worker2",
        "pool-seq-worker3",
    ];

    let started = Instant::now();
    let out = site.sd(&["start", "seq", &file]);
    let start_time = started.elapsed();
    assert!(out.status.success(), "sd start: {}", text(&out.stderr));

    // Every member is up when `sd start` returns.
    let status = site.sd(&["status", "seq"]);
    assert!(status.status.success(), "{}", text(&status.stderr));
    let listing = text(&status.stdout);
    for id in ids {
        let line = listing
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("{id} missing from:\n{listing}"));
        assert!(line.contains(" up ") && line.contains("256M"), "{line}");
    }
    let all = text(&site.sd(&["status"]).stdout);
    assert!(ids.iter().all(|id| all.contains(id)), "{all}");

    // Created in the described order, each up after the previous one.
    let record = site.record("state/pools/seq.json");
    let members: Vec<&str> = record["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(members, ids);
    let up = times(&record, "up_unix_ms");
    assert!(up.windows(2).all(|w| w[0] < w[1]), "up times {up:?}");

    let stopped = Instant::now();
    let out = site.sd(&["terminate", "seq"]);
    let stop_time = stopped.elapsed();
    assert!(out.status.success(), "sd terminate: {}", text(&out.stderr));
    let reversed: Vec<String> = ids.iter().rev().map(|id| format!("{id}: down")).collect();
    assert_eq!(text(&out.stdout).lines().collect::<Vec<_>>(), reversed);

    // Down in reverse creation order, all after the last one came up.
    let last = site.record("log/pool-seq.pool.json");
    assert_eq!(times(&last, "up_unix_ms"), up);
    let down = times(&last, "down_unix_ms");
    assert!(down.windows(2).all(|w| w[0] > w[1]), "down times {down:?}");
    assert!(
        down[3] > up[3],
        "db down before worker3 up: {up:?} {down:?}"
    );

    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert!(!site.path("state/pools/seq.json").exists());

    // Again: nothing to do, a success.
    let again = site.sd(&["terminate", "seq"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("no such pool"));
    eprintln!(
        "4-member Sequence: started in {:.1} s, terminated in {:.1} s",
        start_time.as_secs_f64(),
        stop_time.as_secs_f64()
    );
}

#[test]
fn a_member_that_fails_rolls_back_the_ones_already_up() {
    let site = Site::new();
    let file = site.description(
        "sfConfig:\n  extends: Sequence\n  \
         db: { extends: DefaultXenDomain, image: busybox }\n  \
         bad: { extends: DefaultXenDomain, image: broken }\n",
    );
    let out = site.sd(&["start", "rb", &file]);
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("pool-rb-bad"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert!(!site.path("state/pools/rb.json").exists());
    let last = site.record("log/pool-rb.pool.json");
    assert!(
        last["members"][0]["up_unix_ms"].as_u64().is_some(),
        "{last}"
    );
    assert!(
        last["members"][0]["down_unix_ms"].as_u64().is_some(),
        "{last}"
    );
}

#[test]
fn a_refused_member_creates_nothing() {
    let site = Site::new();
    let file = site.description(
        "sfConfig:\n  extends: Sequence\n  \
         db: { extends: DefaultXenDomain, image: busybox }\n  \
         big: { extends: DefaultXenDomain, image: busybox, memory: 4096 }\n",
    );
    let out = site.sd(&["start", "big", &file]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("sfConfig:big") && err.contains("max_memory_mib"),
        "{err}"
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert!(!site.path("state/pools/big.json").exists());
}

#[test]
fn compound_without_sync_terminate_stops_its_members_concurrently() {
    let site = Site::new();
    let file = site.description(
        "sfConfig:\n  extends: Compound\n  sfSyncTerminate: false\n  \
         a: { extends: DefaultXenDomain, image: busybox }\n  \
         b: { extends: DefaultXenDomain, image: busybox }\n",
    );
    let out = site.sd(&["start", "cmp", &file]);
    assert!(out.status.success(), "sd start: {}", text(&out.stderr));
    let record = site.record("state/pools/cmp.json");
    assert_eq!(record["kind"], "Compound");
    assert_eq!(record["concurrent_terminate"], true);
    let out = site.sd(&["terminate", "cmp"]);
    assert!(out.status.success(), "sd terminate: {}", text(&out.stderr));
    let last = site.record("log/pool-cmp.pool.json");
    assert_eq!(times(&last, "down_unix_ms").len(), 2);
    assert_eq!(site.leftovers(), Vec::<String>::new());
}
