//! A kill at every step. `sd run` of a job is killed with SIGKILL at each
//! of its fault points in turn (`sd_host::fault_point`: armed only by the
//! test library `libsd_fault_points.so`, preloaded here). After each kill,
//! `sd cleanup` must leave the node as it was: no process, file, tap,
//! bridge, nft table, loop device or lease, no journal entry, no half-saved
//! image; the image store holds no new image or the complete one.
//!
//! Two jobs between them make everything a deployment makes. The first has
//! a copy-on-write disk, an input and an output sandbox and a save of its
//! disk to the image store; it starts as a clone of a template (built
//! first, unarmed), so that its ~20 kills cost a second each, not a boot.
//! The second is on a NAT network (lease, bridge, nft tables, tap), so it
//! boots; it is killed at its network steps, the others being the first's.
//!
//! The same for Slurm's hooks: `sd-prolog` killed at each of its steps,
//! then `sd-epilog` (run as slurmd runs them, with the job's environment),
//! and `sd-epilog` killed at each of its steps, then `sd-epilog` again.

mod common;
use common::{serial, sh, text, workspace_bin};
use sd_vmm::network::site_scope;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const SUBNET: &str = "10.234.0.0/24";

struct Site(common::TestSite);

impl Site {
    /// The first job's site (`network` false, its template built) or the
    /// second's.
    fn new(network: bool) -> Site {
        sd_host::needs_root("making bridges, taps and nft tables");
        let config = format!(
            "{head}{templates}\
             defaults: {{ image: busybox, memory_mib: 160, vcpus: 1, disk_mib: 256 }}\n\
             images:\n\
             \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             networks:\n\
             \x20 nat: {{ kind: nat, subnet: {SUBNET} }}\n\
             vos:\n\
             \x20 demo: {{ images: [busybox], networks: [nat], unix_groups: [sd-demo] }}\n\
             default_vo: demo\n",
            // TCG named: `auto` would probe KVM (3 s here) at each of ~40 starts.
            head = common::qemu_site_head().replace("acceleration: auto", "acceleration: tcg"),
            templates = if network { "" } else { "templates: auto\n" },
        );
        let site = common::TestSite::new("sd-fault-", &config);
        std::fs::write(site.path("input.txt"), "sandbox in\n").unwrap();
        let environment = if network {
            "Network = \"nat\";"
        } else {
            "SaveAs = \"fault-saved\";"
        };
        std::fs::write(
            site.path("job.jdl"),
            format!(
                "[ Executable = \"/bin/sh\"; Arguments = \"-c 'cat input.txt > output.txt'\";\n  \
                 InputSandbox = {{ \"input.txt\" }}; OutputSandbox = {{ \"output.txt\" }};\n  \
                 VirtualEnvironment = [ {environment} ]; ]\n"
            ),
        )
        .unwrap();
        let site = Site(site);
        if !network {
            // Built unarmed, once: every run after it is a clone.
            let out = site
                .0
                .sd()
                .args(["template", "build", "busybox"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "sd template build: {}",
                text(&out.stderr)
            );
        }
        site
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path(rel)
    }

    /// `sd run --id ID job.jdl` with the fault library preloaded: every
    /// point goes to `log`, and the process is killed at point `kill_at`.
    fn run(&self, id: &str, log: &Path, kill_at: Option<usize>) -> Output {
        let mut sd = self.0.sd();
        sd.current_dir(self.path(""))
            .args(["run", "--id", id, "job.jdl"])
            .stdin(Stdio::null());
        armed(&mut sd, log, kill_at);
        sd.output().unwrap()
    }

    /// Everything of this site on the node, as one list to compare: its
    /// state directory's files (small ones with their contents: leases),
    /// and its links, nft tables, loop devices and processes.
    fn footprint(&self, taps: &[String]) -> Vec<String> {
        let mut found = vec![];
        let state = self.path("state");
        let mut files = BTreeMap::new();
        walk(&state, &state, &mut files);
        found.extend(files.into_iter().map(|(p, c)| format!("file {p}: {c}")));
        let scope = site_scope(&state);
        for line in sh("ip -o link show").lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            let name = name.split('@').next().unwrap_or("");
            if name.contains(&scope) || taps.iter().any(|t| t == name) {
                found.push(format!("link {name}"));
            }
        }
        for table in sh("nft list tables").lines() {
            if table.contains(&scope) || taps.iter().any(|t| table.contains(t.as_str())) {
                found.push(table.to_string());
            }
        }
        let marker = self.path("").display().to_string();
        for line in sh("losetup -a").lines() {
            if line.contains(&marker) {
                found.push(format!("loop {line}"));
            }
        }
        found.extend(self.0.leftovers(&["qemu-system"]));
        found
    }

    fn cleanup(&self) -> String {
        let out = self.0.sd().arg("cleanup").output().unwrap();
        assert!(out.status.success(), "sd cleanup: {}", text(&out.stderr));
        text(&out.stdout)
    }

    /// The image store's state: nothing saved, or the complete image
    /// (its manifest's sha256 is the compressed file's). Removes it, so
    /// the next run starts from the same store.
    fn take_saved_image(&self) -> &'static str {
        let store = self.path("state/store");
        let manifest = store.join("fault-saved.json");
        let image = store.join("fault-saved.qcow2.zst");
        if !manifest.exists() {
            assert!(!image.exists(), "an image without its manifest");
            return "none";
        }
        let m: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
        let sum = sh(&format!("sha256sum {}", image.display()));
        assert_eq!(
            sum.split_whitespace().next(),
            m["sha256"].as_str(),
            "the saved image is the one its manifest describes"
        );
        std::fs::remove_file(&manifest).unwrap();
        std::fs::remove_file(&image).unwrap();
        "complete"
    }
}

/// Preloads the fault library into `cmd`: points to `log`, a kill at
/// `kill_at`.
fn armed(cmd: &mut Command, log: &Path, kill_at: Option<usize>) {
    cmd.env("LD_PRELOAD", workspace_bin("libsd_fault_points.so"))
        .env("SD_FAULT_LOG", log);
    match kill_at {
        Some(n) => cmd.env("SD_FAULT_AT", n.to_string()),
        None => cmd.env_remove("SD_FAULT_AT"),
    };
}

/// The points a run reached, in order (`N name` lines).
fn points(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_once(' ').map_or(l, |(_, name)| name).to_string())
        .collect()
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let meta = entry.metadata().unwrap();
        if meta.is_dir() {
            out.insert(format!("{rel}/"), String::new());
            walk(root, &path, out);
        } else if meta.len() <= 4096 {
            out.insert(
                rel,
                String::from_utf8_lossy(&std::fs::read(&path).unwrap()).into_owned(),
            );
        } else {
            out.insert(rel, format!("{} bytes", meta.len()));
        }
    }
}

/// The taps a deployment's journal records (read before cleanup removes it).
fn taps_in_journals(state: &Path) -> Vec<String> {
    let mut taps = vec![];
    for entry in std::fs::read_dir(state.join("journal"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let Ok(data) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        for r in data["resources"].as_array().into_iter().flatten() {
            if r["kind"] == "tap" {
                taps.extend(r["name"].as_str().map(str::to_string));
            }
        }
    }
    taps
}

/// Runs the job unarmed (its steps, checked against `expected`, and the
/// node after a job), then killed at each step that `kill_here` picks, and
/// `sd cleanup` after each. Returns the report, one line per kill.
fn kill_at_each_step(
    site: &Site,
    expected: &[&str],
    kill_here: impl Fn(&str) -> bool,
) -> Vec<String> {
    let log = site.path("points.log");
    let out = site.run("fault-0", &log, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(site.path("output.txt")).unwrap(),
        "sandbox in\n"
    );
    let steps = points(&log);
    site.take_saved_image();
    let baseline = site.footprint(&[]);
    for step in expected {
        assert!(
            steps.iter().any(|s| s == step),
            "no step {step:?} in {steps:#?}"
        );
    }
    let mut report = vec![];
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        if !kill_here(step) {
            report.push(format!("{n:>2} {step:<26} (killed in the other job)"));
            continue;
        }
        std::fs::remove_file(&log).unwrap();
        let _ = std::fs::remove_file(site.path("output.txt"));
        let id = format!("fault-{n}");
        let out = site.run(&id, &log, Some(n));
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "step {n} ({step}): sd run was to be killed there: {:?}\n{}",
            out.status,
            text(&out.stderr)
        );
        assert_eq!(
            points(&log).last(),
            Some(step),
            "step {n}: the same steps in the same order"
        );
        let taps = taps_in_journals(&site.path("state"));
        let cleaned = site.cleanup();
        assert!(
            cleaned.contains(&format!("{id}: cleaned up")),
            "step {n} ({step}): cleanup found nothing of {id}: {cleaned}"
        );
        let store = site.take_saved_image();
        assert_eq!(
            site.footprint(&taps),
            baseline,
            "step {n} ({step}): the node after the kill and cleanup"
        );
        report.push(format!(
            "{n:>2} {step:<26} killed, cleaned up, nothing left; image: {store}"
        ));
    }
    report
}

#[test]
fn a_job_with_sandboxes_and_a_save_killed_at_every_step_leaves_nothing() {
    let _serial = serial();
    let site = Site::new(false);
    let expected = [
        "journal: created",
        "journal: directory",
        "journal: file",
        "journal: domain",
        "domain: created",
        "agent: hello",
        "agent: identity set",
        "job: input sandbox in",
        "job: ended",
        "job: output sandbox out",
        "domain: stopped",
        "save: flattened",
        "save: compressed",
        "save: image renamed",
        "save: manifest renamed",
        "undone: domain",
        "undone: file",
        "undone: directory",
    ];
    let report = kill_at_each_step(&site, &expected, |_| true);
    eprintln!("{} steps:\n{}", report.len(), report.join("\n"));
    assert!(report.iter().all(|l| l.contains("killed,")));
}

#[test]
fn a_job_on_a_nat_network_killed_at_every_network_step_leaves_nothing() {
    let _serial = serial();
    let site = Site::new(true);
    let network = |step: &str| {
        ["lease", "bridge", "nft_table", "tap", "tunnel", "network"]
            .iter()
            .any(|kind| step.ends_with(kind) || step.contains("network"))
    };
    let expected = [
        "journal: lease",
        "journal: bridge",
        "journal: nft_table",
        "journal: tap",
        "agent: network configured",
        "undone: tap",
        "undone: nft_table",
        "undone: bridge",
        "undone: lease",
    ];
    let report = kill_at_each_step(&site, &expected, network);
    eprintln!("{} steps:\n{}", report.len(), report.join("\n"));
    assert!(report.iter().filter(|l| l.contains("killed,")).count() >= expected.len());
}

impl Site {
    /// `sd-prolog` or `sd-epilog` of Slurm job `job` (busybox, for
    /// sdtest), with the environment slurmd gives them; armed when
    /// `kill_at` is some.
    fn hook(&self, hook: &str, job: u32, log: &Path, kill_at: Option<usize>) -> Output {
        let mut cmd = Command::new(workspace_bin(hook));
        cmd.env_clear()
            .env("SD_CONFIG", self.path("site.yaml"))
            .env("SPANK_SD_ENV", "busybox")
            .env("SLURM_JOB_ID", job.to_string())
            .env("SLURM_JOB_UID", "4242")
            .env("SLURM_JOB_GID", "4242")
            .env("SLURM_JOB_WORK_DIR", "/tmp")
            .env("SLURM_JOB_EXIT_CODE2", "0:0")
            .stdin(Stdio::null());
        armed(&mut cmd, log, kill_at);
        cmd.output().unwrap()
    }

    /// What a Slurm job `job` could leave besides the site's footprint:
    /// its cgroups.
    fn job_cgroups(job: u32) -> Vec<String> {
        sh(&format!(
            "find /sys/fs/cgroup -maxdepth 5 -type d -name job_{job} 2>/dev/null"
        ))
        .lines()
        .map(str::to_string)
        .collect()
    }
}

#[test]
fn slurm_prolog_and_epilog_killed_at_every_step_then_the_epilog_leaves_nothing() {
    let _serial = serial();
    let site = Site::new(false);
    let (plog, elog) = (site.path("prolog.log"), site.path("epilog.log"));
    let ok = |out: &Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {:?} {}",
            out.status,
            text(&out.stderr)
        );
    };
    ok(&site.hook("sd-prolog", 9000, &plog, None), "prolog");
    ok(&site.hook("sd-epilog", 9000, &elog, None), "epilog");
    let (prolog_steps, epilog_steps) = (points(&plog), points(&elog));
    let hook_log = std::fs::read_to_string(site.path("log/sd-hooks.log")).unwrap_or_default();
    assert!(
        !prolog_steps.is_empty(),
        "the prolog deployed nothing: {hook_log}"
    );
    assert!(
        prolog_steps.iter().any(|s| s == "agent: identity set"),
        "{prolog_steps:?}"
    );
    assert!(
        epilog_steps.iter().any(|s| s == "undone: directory"),
        "{epilog_steps:?}"
    );
    let baseline = site.footprint(&[]);
    let mut report = vec![];
    let mut check = |job: u32, what: String| {
        assert_eq!(
            site.footprint(&[]),
            baseline,
            "{what}: the node after the epilog"
        );
        assert_eq!(
            Site::job_cgroups(job),
            Vec::<String>::new(),
            "{what}: cgroups"
        );
        report.push(format!("{what:<36} killed, epilog, nothing left"));
    };
    for (i, step) in prolog_steps.iter().enumerate() {
        let (n, job) = (i + 1, 9100 + i as u32);
        std::fs::remove_file(&plog).unwrap();
        let out = site.hook("sd-prolog", job, &plog, Some(n));
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "prolog step {n} ({step})"
        );
        assert_eq!(
            points(&plog).last(),
            Some(step),
            "prolog step {n}: the same steps"
        );
        ok(
            &site.hook("sd-epilog", job, &elog, None),
            "epilog after the killed prolog",
        );
        check(job, format!("prolog {n:>2} {step}"));
    }
    for (i, step) in epilog_steps.iter().enumerate() {
        let (n, job) = (i + 1, 9200 + i as u32);
        ok(&site.hook("sd-prolog", job, &plog, None), "prolog");
        std::fs::remove_file(&elog).unwrap();
        let out = site.hook("sd-epilog", job, &elog, Some(n));
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "epilog step {n} ({step})"
        );
        assert_eq!(
            points(&elog).last(),
            Some(step),
            "epilog step {n}: the same steps"
        );
        ok(
            &site.hook("sd-epilog", job, &elog, None),
            "the epilog again",
        );
        check(job, format!("epilog {n:>2} {step}"));
    }
    eprintln!("{} steps:\n{}", report.len(), report.join("\n"));
}
