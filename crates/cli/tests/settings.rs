//! `sd set` on a running pool (real VMs under QEMU): a member's memory
//! changes through the balloon and the guest sees it (`/proc/meminfo`);
//! the pool's monitor beats at a new liveness rate without a restart; the
//! save flag, flipped while the domains run, is what the teardown does.
//!
//! Needs what the pool tests need (`scripts/setup`: images with an
//! initramfs that loads virtio_balloon, qemu, the sd-qemu user). Two VMs.

mod common;
use common::{serial, text};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

const NOBODY: u32 = 65534;

const POOL: &str = "\
sfConfig:
  extends: Compound
  sfLivenessDelay: 10
  sfLivenessFactor: 5
  a: { extends: DefaultXenDomain, image: busybox, memory: 256, disk: 1024 }
  b: { extends: DefaultXenDomain, image: busybox, memory: 256, disk: 1024 }
";

fn site() -> common::TestSite {
    let config = format!(
        "{head}\
         default_vo: demo\n\
         save_images: on_request\n\
         defaults: {{ image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: sd-guest }}\n\
         images:\n\
         \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
         vos:\n\
         \x20 demo: {{ images: [busybox], max_memory_mib: 512, max_vcpus: 2, max_disk_mib: 4096 }}\n",
        head = common::qemu_site_head(),
    );
    let site = common::TestSite::new("sd-settings-", &config);
    let dir = site.dir.path();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.join("site.yaml"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    site
}

fn sd(site: &common::TestSite, args: &[&str]) -> Output {
    site.sd().args(args).stdin(Stdio::null()).output().unwrap()
}

fn mem_total_kib(site: &common::TestSite, member: &str) -> u64 {
    let out = sd(site, &["exec", member, "--", "cat", "/proc/meminfo"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("MemTotal in /proc/meminfo")
}

/// Member `id`'s beats in the liveness report over `window`: the distinct
/// last-beat times seen, and the delay the monitor reports.
fn beats_during(site: &common::TestSite, id: &str, window: Duration) -> (usize, u64) {
    let path = site.path("state/pools/live.liveness");
    let mut seen = std::collections::BTreeSet::new();
    let mut delay = 0;
    let start = Instant::now();
    while start.elapsed() < window {
        if let Ok(t) = std::fs::read(&path) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&t) {
                for m in v["members"].as_array().into_iter().flatten() {
                    if m["id"] == id {
                        if let Some(b) = m["last_beat_unix_ms"].as_u64() {
                            seen.insert(b);
                        }
                        delay = m["delay_secs"].as_u64().unwrap_or(0);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (seen.len(), delay)
}

#[test]
fn memory_liveness_and_save_change_on_a_running_pool() {
    let _serial = serial();
    let site = site();
    let file = site.path("pool.yaml");
    std::fs::write(&file, POOL).unwrap();
    let out = sd(&site, &["start", "live", &file.display().to_string()]);
    assert!(out.status.success(), "sd start: {}", text(&out.stderr));

    let result = std::panic::catch_unwind(|| {
        // Memory: down through the balloon, seen in the guest.
        let before = mem_total_kib(&site, "live/a");
        let t = Instant::now();
        let out = sd(&site, &["set", "live/a", "memory=160"]);
        let took = t.elapsed();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let said = text(&out.stdout);
        assert!(
            said.contains("pool-live-a: memory target 160 MiB, guest has 160 MiB"),
            "{said}"
        );
        let after = mem_total_kib(&site, "live/a");
        eprintln!(
            "MemTotal {before} kB -> {after} kB after memory=160 ({:.1} s)",
            took.as_secs_f64()
        );
        assert!(after + 80 * 1024 < before, "{before} -> {after}");
        // The other member is untouched.
        assert!(mem_total_kib(&site, "live/b") > after + 80 * 1024);
        // Back up, but never above the memory at boot, nor by another user.
        let out = sd(&site, &["set", "live/a", "memory=256"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let out = sd(&site, &["set", "live/a", "memory=300"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("above what the domain booted with (256 MiB)"),
            "{}",
            text(&out.stderr)
        );
        let out = site
            .sd()
            .args(["set", "live/a", "memory=100"])
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("not yours"),
            "{}",
            text(&out.stderr)
        );
        assert!(mem_total_kib(&site, "live/a") > after + 80 * 1024);

        // Liveness: from every 10 s to every second, the monitor unrestarted.
        let monitor = |site: &common::TestSite| -> u64 {
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(site.path("state/pools/live.json")).unwrap())
                    .unwrap();
            r["monitor_pid"].as_u64().unwrap()
        };
        let pid = monitor(&site);
        let (slow, delay) = beats_during(&site, "pool-live-a", Duration::from_secs(5));
        assert_eq!(delay, 10);
        let out = sd(&site, &["set", "live", "liveness=1,factor=4"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("pool-live-b: liveness every 1 s, dead after 4 missed"),
            "{}",
            text(&out.stdout)
        );
        std::thread::sleep(Duration::from_secs(2));
        let (fast, delay) = beats_during(&site, "pool-live-a", Duration::from_secs(6));
        eprintln!("beats seen in 5 s at 10 s: {slow}; in 6 s at 1 s: {fast}");
        assert_eq!(delay, 1);
        assert!(slow <= 2 && fast >= 4, "{slow} then {fast}");
        assert_eq!(monitor(&site), pid, "the monitor was not restarted");
        let out = sd(&site, &["set", "pool-live-a", "liveness=0"]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

        // Save: a on (with a name), b on and off again; the teardown obeys.
        let out = sd(&site, &["set", "live/a", "save=true", "save_as=kept-a"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("saved as kept-a at teardown"));
        for flag in ["save=true", "save=false"] {
            let out = sd(&site, &["set", "live/b", flag]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        let out = sd(&site, &["set", "live/b", "save_as=busybox"]);
        assert_eq!(out.status.code(), Some(2));
    });
    let out = sd(&site, &["terminate", "live"]);
    assert!(out.status.success(), "sd terminate: {}", text(&out.stderr));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
    let out = sd(&site, &["images"]);
    let images = text(&out.stdout);
    assert!(images.contains("kept-a"), "{images}");
    assert!(!images.contains("pool-live-b"), "{images}");
    assert!(site.leftovers(&["qemu", "pool-monitor"]).is_empty());
}
