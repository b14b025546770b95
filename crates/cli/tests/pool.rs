//! Pools on real VMs: `sd start` deploys a described pool in order,
//! `sd terminate` stops it in reverse order and leaves nothing; a Compound
//! boots its members at once; a member that dies (its QEMU killed) makes
//! the pool's monitor terminate the others in reverse creation order.
//!
//! Needs `scripts/setup` to have run (images in build/images, qemu, the
//! sd-qemu user). Each test has its own site: config, state and log dirs.
//! The tests boot their VMs one test at a time (a lock), so that the
//! machine's few cores go to one test's domains.

mod common;
use common::{images, text};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

// One test's VMs at a time.
use common::serial;

struct Site(common::TestSite);

impl Site {
    fn new() -> Site {
        Site::with("acceleration: auto\nboot_timeout_secs: 120\n")
    }

    /// A site whose config has `extra` (acceleration, boot timeout).
    fn with(extra: &str) -> Site {
        let config = format!(
            "image_dir: {images}\n\
             backend: qemu\n{extra}\
             qemu:\n  run_as: sd-qemu\n  sandbox: true\n\
             default_vo: demo\n\
             defaults: {{ image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: sd-guest }}\n\
             images:\n\
             \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             \x20 broken: {{ disk: {{dir}}/missing.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             vos:\n\
             \x20 demo: {{ images: [busybox, broken], max_memory_mib: 512, max_vcpus: 2, max_disk_mib: 4096 }}\n",
            images = images().display(),
        );
        Site(common::TestSite::new("sd-pool-", &config))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path(rel)
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

    /// Journals, run directories, QEMU processes and pool monitors of this site.
    fn leftovers(&self) -> Vec<String> {
        self.0.leftovers(&["qemu-system", "pool-monitor"])
    }

    /// Pid of the QEMU process of deployment `id` of this site (found by its
    /// `-name guest=sd-ID-TAG,`).
    fn qemu_of(&self, id: &str) -> Option<i32> {
        let marker = self.0.dir.path().display().to_string();
        let wanted = format!("guest=sd-{id}-");
        std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let named = args.windows(2).any(|w| {
                w[0] == "-name"
                    && w[1].starts_with(&wanted)
                    && w[1][wanted.len()..].split(',').next().is_some_and(|tag| {
                        tag.len() == 8 && tag.chars().all(|c| c.is_ascii_hexdigit())
                    })
            });
            (named && args.iter().any(|a| a.contains(&marker))).then_some(pid)
        })
    }

    /// Waits until `done()` or `timeout` (then panics, saying `what`).
    fn wait_for(&self, what: &str, timeout: Duration, done: impl Fn() -> bool) {
        let started = Instant::now();
        while !done() {
            if started.elapsed() > timeout {
                let log = std::fs::read_dir(self.path("log"))
                    .map(|d| {
                        d.flatten()
                            .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                            .filter(|e| e.file_name().to_string_lossy().starts_with("pool-"))
                            .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                            .collect::<String>()
                    })
                    .unwrap_or_default();
                panic!("{what}: not within {timeout:?}; monitor log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn record(&self, rel: &str) -> serde_json::Value {
        let text = std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        serde_json::from_slice(&text).unwrap()
    }
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
  sfLivenessDelay: 2
  sfLivenessFactor: 3
  db: { extends: Worker }
  worker1: { extends: Worker }
  worker2: { extends: Worker }
  worker3: { extends: Worker }
";

#[test]
fn sequence_pool_starts_in_order_and_stops_in_reverse_leaving_nothing() {
    let _serial = serial();
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
    assert!(all.contains("pool seq: Sequence 4/4 up, 1024M"), "{all}");

    // Its monitor beats every member (the description's delay: 2 s).
    let monitor = site.record("state/pools/seq.json")["monitor_pid"]
        .as_u64()
        .expect("a monitor pid");
    site.wait_for("a beat from every member", Duration::from_secs(60), || {
        let l = text(&site.sd(&["status", "seq"]).stdout);
        l.contains(&format!("monitor: {monitor} running"))
            && ids.iter().all(|id| {
                l.lines().any(|line| {
                    line.starts_with(id) && line.contains(" ago ") && line.contains(" 0/3 ")
                })
            })
    });

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
    assert!(!site.path("state/pools/seq.liveness").exists());
    assert_eq!(last["terminated_because"], serde_json::Value::Null);

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
    let _serial = serial();
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
    let why = last["terminated_because"].as_str().unwrap_or_default();
    assert!(
        why.contains("rolled back") && why.contains("pool-rb-bad"),
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
    let _serial = serial();
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

#[test]
fn a_dead_member_terminates_its_compound_in_reverse_creation_order() {
    let _serial = serial();
    let site = Site::with("acceleration: tcg\nboot_timeout_secs: 300\n");
    let file = site.description(
        "M: { extends: DefaultXenDomain, image: busybox, memory: 128, disk: 1024 }\n\
         sfConfig:\n  extends: Compound\n  sfSyncTerminate: true\n  \
         sfLivenessDelay: 1\n  sfLivenessFactor: 3\n  \
         a: { extends: M }\n  b: { extends: M }\n  c: { extends: M }\n",
    );
    let out = site.sd(&["start", "k", &file]);
    assert!(out.status.success(), "sd start: {}", text(&out.stderr));
    let record = site.record("state/pools/k.json");
    let monitor = record["monitor_pid"].as_u64().expect("a monitor pid") as i32;
    site.wait_for(
        "a first beat from every member",
        Duration::from_secs(60),
        || {
            let l = std::fs::read(site.path("state/pools/k.liveness")).unwrap_or_default();
            let l: serde_json::Value = serde_json::from_slice(&l).unwrap_or_default();
            l["members"].as_array().is_some_and(|m| {
                m.len() == 3 && m.iter().all(|b| b["last_beat_unix_ms"].as_u64().is_some())
            })
        },
    );

    // Kill b's hypervisor, as a crash would.
    let qemu = site.qemu_of("pool-k-b").expect("b's QEMU");
    let killed_ms = pool_now_ms();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();

    // The monitor sees b miss 3 beats (1 s apart), then stops every member.
    site.wait_for(
        "the pool terminated by its monitor",
        Duration::from_secs(300),
        || !site.path("state/pools/k.json").exists(),
    );
    site.wait_for("the monitor gone", Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{monitor}/cmdline")).exists()
            || std::fs::read(format!("/proc/{monitor}/cmdline"))
                .unwrap_or_default()
                .is_empty()
    });
    let last = site.record("log/pool-k.pool.json");
    let why = last["terminated_because"].as_str().unwrap_or_default();
    assert!(
        why.contains("pool-k-b") && why.contains("missed 3 beats"),
        "{last}"
    );
    let detected = last["terminated_unix_ms"].as_u64().unwrap();
    let down = times(&last, "down_unix_ms");
    // sfSyncTerminate true: one after another, reverse creation order (c, b, a).
    assert!(down.windows(2).all(|w| w[0] > w[1]), "down times {down:?}");
    assert!(
        down.iter().all(|d| *d >= detected),
        "{down:?} before {detected}"
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert!(!site.path("state/pools/k.liveness").exists());
    let log = std::fs::read_to_string(site.path("log/pool-k.log")).unwrap();
    assert!(log.contains("is dead"), "{log}");
    eprintln!(
        "dead member detected {:.1} s after the kill (liveness window 3 s), \
         pool down {:.1} s after that",
        detected.saturating_sub(killed_ms) as f64 / 1000.0,
        down[0].saturating_sub(detected) as f64 / 1000.0
    );
    // Nothing left to terminate; status says how it ended.
    let again = site.sd(&["terminate", "k"]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    let status = site.sd(&["status", "k"]);
    assert!(
        text(&status.stdout).contains("pool-k-b"),
        "{}",
        text(&status.stdout)
    );
}

fn pool_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn sixteen_domains_of_one_compound_start_at_once_as_clones_of_one_template_and_leave_nothing() {
    let _serial = serial();
    // The site clones pool members from a template (one boot, built by the
    // first member while the others wait for it). TCG on a small shared
    // machine: the timeouts are generous and liveness lenient (no timing
    // assertion; scripts/bench-template measures).
    let site = Site::with(
        "acceleration: tcg\nboot_timeout_secs: 1200\nshutdown_timeout_secs: 60\ntemplates: auto\n",
    );
    let mut body = String::from(
        "M: { extends: DefaultXenDomain, image: busybox, memory: 128, disk: 1024 }\n\
         sfConfig:\n  extends: Compound\n  sfSyncTerminate: false\n  \
         sfLivenessDelay: 10\n  sfLivenessFactor: 12\n",
    );
    let ids: Vec<String> = (1..=16).map(|i| format!("m{i:02}")).collect();
    for id in &ids {
        body.push_str(&format!("  {id}: {{ extends: M }}\n"));
    }
    let file = site.description(&body);
    let started = Instant::now();
    let out = site.sd(&["start", "sixteen", &file]);
    let wall = started.elapsed();
    assert!(out.status.success(), "sd start: {}", text(&out.stderr));

    let record = site.record("state/pools/sixteen.json");
    let members = record["members"].as_array().unwrap();
    let recorded: Vec<&str> = members.iter().map(|m| m["id"].as_str().unwrap()).collect();
    let expected: Vec<String> = ids.iter().map(|i| format!("pool-sixteen-{i}")).collect();
    assert_eq!(recorded, expected, "recorded in description order");
    // Each member's boot as an interval [up - boot, up]: how many overlap.
    let up = times(&record, "up_unix_ms");
    let boot = times(&record, "boot_ms");
    let mut edges: Vec<(u64, i32)> = up
        .iter()
        .zip(&boot)
        .flat_map(|(u, b)| [(u - b, 1), (*u, -1)])
        .collect();
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    assert!(
        most >= 8,
        "at most {most} boots overlapped: {up:?} {boot:?}"
    );

    let all = text(&site.sd(&["status"]).stdout);
    for id in &expected {
        let line = all
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} missing from:\n{all}"));
        assert!(line.contains(" clone "), "{id} is no clone: {line}");
    }
    let status = text(&site.sd(&["status", "sixteen"]).stdout);
    for id in &expected {
        let line = status
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("{id} missing from:\n{status}"));
        assert!(line.contains(" up ") && line.contains("128M"), "{line}");
    }
    let stopped = Instant::now();
    let out = site.sd(&["terminate", "sixteen"]);
    assert!(out.status.success(), "sd terminate: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).lines().count(), 16);
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert!(!site.path("state/pools/sixteen.json").exists());
    let rm = site.sd(&["template", "rm", "busybox"]);
    assert!(rm.status.success(), "sd template rm: {}", text(&rm.stderr));
    eprintln!(
        "16-member Compound of clones: up in {:.1} s ({most} boots at once; boots {:.1}..{:.1} s), terminated in {:.1} s",
        wall.as_secs_f64(),
        *boot.iter().min().unwrap() as f64 / 1000.0,
        *boot.iter().max().unwrap() as f64 / 1000.0,
        stopped.elapsed().as_secs_f64()
    );
}
