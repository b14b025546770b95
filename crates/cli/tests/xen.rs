//! The Xen backend on a real Xen 4.17 hypervisor.
//!
//! This machine has no Xen, so `xen_backend_on_real_xen` boots one:
//! `scripts/xen-testhost` starts Xen under QEMU TCG with a dom0 that sees
//! this host's file system, and runs this very test binary there with the
//! `dom0_` tests selected. Those are `#[ignore]`d everywhere else; inside
//! dom0 (`SD_IN_XEN_DOM0=1`) they create domains through our libxl
//! bindings — `sd run` with `backend: xen` — and check what is left with
//! both libxl and libxenctrl.
//!
//! Run alone: `cargo test --release --test xen -- --nocapture`.
#![cfg(feature = "xen")]

mod common;
use common::{repo, text};
use sd_site::XenGuestType;
use sd_vmm::hypervisor::xen::{sd_xen, Xen, XenGuestKind, XenOptions};
use sd_vmm::hypervisor::{Domain, Hypervisor};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------- on the host

/// Without a hypervisor: `backend: xen` is refused with a reason, `auto`
/// runs QEMU (checked without booting anything: `sd check-config`).
#[test]
fn without_xen_backend_xen_is_refused_and_auto_is_qemu() {
    if std::env::var_os("SD_IN_XEN_DOM0").is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let site = |backend: &str| {
        let images = repo().join("build/images");
        let cfg = dir.path().join(format!("{backend}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "state_dir: {d}/state\nlog_dir: {d}/log\nimage_dir: {i}\nbackend: {backend}\n\
                 images:\n  busybox: {{ disk: busybox.qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
                 vos:\n  demo: {{ images: [busybox] }}\ndefault_vo: demo\n",
                d = dir.path().display(),
                i = images.display()
            ),
        )
        .unwrap();
        sd_site::SiteConfig::load(&cfg).unwrap()
    };
    let err = sd_vmm::deployment::backend_for(&site("xen"), None)
        .err()
        .expect("no Xen here");
    let msg = err.to_string();
    assert!(
        msg.contains("backend xen is not available on this host"),
        "{msg}"
    );
    assert!(
        msg.contains("does not run under the Xen hypervisor"),
        "{msg}"
    );
    let auto = sd_vmm::deployment::backend_for(&site("auto"), None).unwrap();
    assert_eq!(auto.name(), "qemu");
}

/// Boots the Xen test host and runs the `dom0_` tests in it (about 100 s).
#[test]
fn xen_backend_on_real_xen() {
    if std::env::var_os("SD_IN_XEN_DOM0").is_some() {
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let attempt = || {
        let started = Instant::now();
        let out = Command::new(repo().join("scripts/xen-testhost"))
            .args(["--timeout", "1200", "--"])
            .arg(&exe)
            .args(["--ignored", "--test-threads=1", "--nocapture", "dom0_"])
            .current_dir(repo())
            .env("SD_SD_BIN", env!("CARGO_BIN_EXE_sd"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        println!(
            "--- Xen test host ({:.0} s)\n{stdout}\n--- stderr\n{}",
            started.elapsed().as_secs_f64(),
            text(&out.stderr)
        );
        // Every dom0_ test ran and passed (a filter typo would pass with 0 tests).
        out.status.success() && stdout.contains(&format!("test result: ok. {DOM0_TESTS} passed"))
    };
    if attempt() {
        return;
    }
    // Under TCG, the nested guests' processes occasionally crash at random
    // (scripts/xen-testhost.d/README.md: measured with xl alone, without
    // our code). One more run tells that apart from a failure of ours,
    // which fails again.
    println!(
        "=== the Xen test host run failed; running it once more to rule out an emulator crash"
    );
    assert!(attempt(), "the dom0 tests failed twice (output above)");
}

/// How many `dom0_` tests this file has.
const DOM0_TESTS: usize = 11;

// ------------------------------------------------------------ inside dom0

/// The guest type of the tests that are not about PV or PVH as such (the
/// hello test runs as both).
const GUEST: XenGuestType = XenGuestType::Pv;

/// [`GUEST`], or `SD_XEN_TEST_GUEST` (`pv` | `pvh`) to compare them.
fn guest() -> XenGuestType {
    match std::env::var("SD_XEN_TEST_GUEST").as_deref() {
        Ok("pv") => XenGuestType::Pv,
        Ok("pvh") => XenGuestType::Pvh,
        _ => GUEST,
    }
}

/// Its name in site.yaml.
fn guest_type_name(guest_type: XenGuestType) -> &'static str {
    match guest_type {
        XenGuestType::Pv => "pv",
        XenGuestType::Pvh => "pvh",
    }
}

/// A site with `backend: xen` in a temporary directory of dom0.
struct Site {
    dir: tempfile::TempDir,
    guest_type: XenGuestType,
}

impl Site {
    fn new(guest_type: XenGuestType) -> Site {
        assert!(
            std::env::var_os("SD_IN_XEN_DOM0").is_some(),
            "dom0_ tests run inside the Xen test host (xen_backend_on_real_xen)"
        );
        let dir = tempfile::Builder::new()
            .prefix("sd-xen-")
            .tempdir()
            .unwrap();
        let kind = guest_type_name(guest_type);
        let config = format!(
            "state_dir: {d}/state\nlog_dir: {d}/log\nimage_dir: {i}\nbackend: xen\n\
             boot_timeout_secs: 150\nshutdown_timeout_secs: 30\n\
             xen: {{ guest_type: {kind} }}\n\
             defaults: {{ image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 256, hostname: xen-guest }}\n\
             images:\n\
             \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinux, initrd: initrd.img }}\n\
             vos:\n\
             \x20 demo: {{ images: [busybox], max_memory_mib: 512, max_vcpus: 2, max_disk_mib: 1024 }}\n\
             default_vo: demo\n",
            d = dir.path().display(),
            i = repo().join("build/images").display(),
        );
        std::fs::write(dir.path().join("site.yaml"), config).unwrap();
        std::fs::create_dir(dir.path().join("job")).unwrap();
        Site { dir, guest_type }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn jdl(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path("job").join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn sd(&self) -> Command {
        let bin = std::env::var_os("SD_SD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_sd").into());
        let mut c = Command::new(bin);
        c.env("SD_CONFIG", self.path("site.yaml"))
            .env_remove("SD_LOG");
        c
    }

    /// `sd -v run JDL`, run once more if the guest's user space crashed in
    /// the way TCG-emulated Xen PV makes processes crash at random (see
    /// [`emulator_crash_in`]); the retry is printed.
    fn run(&self, jdl: &Path) -> Output {
        let out = self.run_once(jdl);
        if matches!(out.status.code(), Some(0..=124)) {
            return out;
        }
        match emulator_crash_in(&self.path("log")) {
            Some(line) => {
                println!("=== the guest crashed ({line:?}): running the job once more");
                self.run_once(jdl)
            }
            None => out,
        }
    }

    /// `sd -v run JDL`; killed (and the test failed, with diagnostics) if
    /// it takes longer than 4 minutes.
    fn run_once(&self, jdl: &Path) -> Output {
        let started = Instant::now();
        let mut child = self
            .sd()
            .args(["-v", "run"])
            .arg(jdl)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (mut so, mut se) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let out_t = std::thread::spawn(move || {
            let mut v = vec![];
            so.read_to_end(&mut v).unwrap();
            v
        });
        let err_t = std::thread::spawn(move || {
            let mut v = vec![];
            se.read_to_end(&mut v).unwrap();
            v
        });
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            if started.elapsed() > Duration::from_secs(240) {
                let _ = child.kill();
                let st = child.wait().unwrap();
                let out = Output {
                    status: st,
                    stdout: out_t.join().unwrap(),
                    stderr: err_t.join().unwrap(),
                };
                self.diagnose(&out);
                panic!("sd run hung for 240 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stderr = err_t.join().unwrap();
        // -v log lines (libxl's, ours) are for diagnosis; the job's stderr is the rest.
        let stderr = text(&stderr);
        let (log, job_stderr): (Vec<&str>, Vec<&str>) = stderr
            .split_inclusive('\n')
            .partition(|l| l.starts_with("\u{1b}[") || l.starts_with("sd: "));
        let out = Output {
            status,
            stdout: out_t.join().unwrap(),
            stderr: job_stderr.concat().into_bytes(),
        };
        println!(
            "sd run {} ({:?}): {:.2} s\n{}",
            jdl.display(),
            self.guest_type,
            started.elapsed().as_secs_f64(),
            log.concat()
        );
        if !matches!(out.status.code(), Some(0..=124)) {
            self.diagnose(&out);
        }
        out
    }

    /// What a failed run left in the logs: ours, the guest's console,
    /// libxl's device model.
    fn diagnose(&self, out: &Output) {
        println!(
            "--- sd run failed ({:?}); its stderr:\n{}",
            out.status,
            text(&out.stderr)
        );
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.path("log"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        logs.extend(
            std::fs::read_dir("/var/log/xen")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file()),
        );
        logs.extend(
            std::fs::read_dir("/var/log/xen/console")
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        );
        for log in logs {
            let body = std::fs::read_to_string(&log).unwrap_or_else(|e| format!("({e})"));
            let tail: Vec<&str> = body.lines().rev().take(60).collect();
            println!(
                "--- {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// The running domain of the test's deployment, through our backend.
    fn domain(&self) -> Arc<dyn Domain> {
        let xen = Xen::new(XenOptions {
            guest_type: match self.guest_type {
                XenGuestType::Pv => XenGuestKind::Pv,
                XenGuestType::Pvh => XenGuestKind::Pvh,
            },
            pvh_cpuid: "host,rdtscp=0".into(),
        });
        xen.find(&self.xen_domain_name())
            .unwrap()
            .expect("the domain")
    }

    /// Journals and run directories left in the state directory.
    fn leftovers(&self) -> Vec<String> {
        let mut found = vec![];
        for sub in ["state/journal", "state/run"] {
            if let Ok(entries) = std::fs::read_dir(self.path(sub)) {
                found.extend(entries.flatten().map(|e| e.path().display().to_string()));
            }
        }
        found
    }
}

/// A guest console line saying a process died of heap corruption or a
/// segfault. Under TCG, Xen's lazy FPU switching made processes die so at
/// random (ours, busybox's, dom0's); the test host now boots Xen with
/// eager FPU switching and none has been seen since (numbers in
/// scripts/xen-testhost.d/README.md). A safety net: a run that shows one
/// is repeated once, saying so, rather than failed.
fn emulator_crash_in(log_dir: &Path) -> Option<String> {
    let logs = std::fs::read_dir(log_dir).ok()?;
    logs.flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".console.log"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|body| body.lines().map(str::to_string).collect::<Vec<_>>())
        .find(|l| l.contains("malloc(): ") || l.contains("segfault at") || l.contains("free(): "))
}

/// Runs a test on a fresh site, and once more on another if it failed and
/// the guest's console shows an emulator crash ([`emulator_crash_in`]), for
/// tests that drive `sd run` themselves rather than through [`Site::run`].
fn retried_on_emulator_crash(test: impl Fn(&Site)) {
    let site = Site::new(guest());
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| test(&site)));
    let Err(panic) = failed else { return };
    match emulator_crash_in(&site.path("log")) {
        Some(line) => {
            println!("=== the guest crashed ({line:?}): running the test once more");
            test(&Site::new(guest()));
        }
        None => std::panic::resume_unwind(panic),
    }
}

/// Domains other than dom0, as libxl and as the hypervisor (libxenctrl) see them.
fn domains_besides_dom0() -> (Vec<String>, Vec<u32>) {
    let libxl = sd_xen::Libxl::open().unwrap();
    let named = libxl
        .list()
        .unwrap()
        .into_iter()
        .filter(|d| d.domid != 0)
        .map(|d| format!("{} ({})", d.name, d.domid))
        .collect();
    let ctrl = sd_xen::XenCtrl::open().unwrap();
    let ids = ctrl
        .domains()
        .unwrap()
        .into_iter()
        .filter(|d| d.domid != 0)
        .map(|d| d.domid)
        .collect();
    (named, ids)
}

/// Dying domains take a moment to leave the hypervisor's list.
fn assert_only_dom0() {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (named, ids) = domains_besides_dom0();
        if named.is_empty() && ids.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            dump_xen_state(&ids);
            panic!("domains left: libxl {named:?}, xc {ids:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What holds a domain that will not go: the hypervisor's view of it
/// (debug keys `q`, domains, and `g`, grant tables, in Xen's console
/// ring), its xenstore nodes, and the dom0 processes that serve guests.
/// `xl` here is a diagnostic only; nothing on the deploy path uses it.
fn dump_xen_state(ids: &[u32]) {
    let sh = |cmd: &str| {
        let out = Command::new("sh").args(["-c", cmd]).output();
        let body = match out {
            Ok(o) => format!("{}{}", text(&o.stdout), text(&o.stderr)),
            Err(e) => format!("({e})"),
        };
        println!("--- $ {cmd}\n{body}");
    };
    sh("xl list -v 2>&1; xl info 2>&1 | grep -E 'free_memory|total_memory'");
    sh("ps -eo pid,ppid,stat,etime,args | grep -E 'qemu|xen|sd ' | grep -v grep");
    for id in ids {
        sh(&format!(
            "xenstore-ls -f /local/domain/{id} 2>&1 | head -40; \
             xenstore-ls -f /libxl/{id} 2>&1 | head -20; \
             xenstore-ls -f /local/domain/0/backend 2>&1 | grep '/{id}/' | head -40"
        ));
    }
    sh("xl debug-keys q; xl debug-keys g; xl dmesg | tail -120");
}

fn hello_exit_code_and_bytes(guest_type: XenGuestType) {
    let site = Site::new(guest_type);
    // Every byte value, and the guest's own identity.
    let jdl = site.jdl(
        "hello.jdl",
        r#"Executable = "/bin/sh";
           Arguments = "-c 'echo kernel=$(uname -r) host=$(hostname); cat /etc/sd-image; i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done; echo to-stderr >&2; exit 3'";"#,
    );
    let out = site.run(&jdl);
    let stdout = out.stdout.clone();
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {}\nstderr: {}",
        text(&stdout),
        text(&out.stderr)
    );
    let release = std::fs::read_to_string(repo().join("build/images/kernel-release")).unwrap();
    let head = text(&stdout[..stdout.len() - 256]);
    assert!(
        head.contains(&format!("kernel={} host=xen-guest", release.trim())),
        "{head}"
    );
    assert!(head.contains("busybox"), "the VO image's marker: {head}");
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    assert_eq!(
        &stdout[stdout.len() - 256..],
        &all_bytes[..],
        "the 256 byte values, in order"
    );
    assert_eq!(text(&out.stderr), "to-stderr\n");
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert_only_dom0();
}

#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_pv_hello_exit_code_and_bytes() {
    hello_exit_code_and_bytes(XenGuestType::Pv);
}

#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_pvh_hello_exit_code_and_bytes() {
    if let Some(why) = plain_xl_pvh_fails() {
        // Not ours to fix, and said loudly: the outer test prints it.
        println!("PVH UNAVAILABLE on this test host, PVH hello not run: {why}");
        return;
    }
    hello_exit_code_and_bytes(XenGuestType::Pvh);
}

/// Whether this test host can run a PVH guest at all, without SmartDomains:
/// `xl create` of our kernel and initramfs as PVH, with no disk (so no device
/// model), must print `Linux version` on its console within 60 s. Measured
/// 2026-12-02: with QEMU 10.0 (bookworm-backports) as the outer TCG emulator
/// and Xen 4.17.7, it does not (the domain vanishes with an empty console,
/// guest kernels 6.1.0-54 and -57 alike); with QEMU 7.2 it did.
fn plain_xl_pvh_fails() -> Option<String> {
    let images = repo().join("build/images");
    let dir = tempfile::tempdir().unwrap();
    let name = "sd-pvh-probe";
    let cfg = dir.path().join("pvh.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"{name}\"\ntype = \"pvh\"\nkernel = \"{k}\"\nramdisk = \"{r}\"\n\
             memory = 256\nvcpus = 1\ncpuid = \"host,rdtscp=0\"\nextra = \"console=hvc0 panic=-1\"\n",
            k = images.join("vmlinux").display(),
            r = images.join("initrd.img").display(),
        ),
    )
    .unwrap();
    let log = PathBuf::from(format!("/var/log/xen/console/guest-{name}.log"));
    let _ = std::fs::remove_file(&log);
    run_ok("xl", &["create", &cfg.display().to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let console = std::fs::read_to_string(&log).unwrap_or_default();
        if console.contains("Linux version") {
            break None;
        }
        if Instant::now() > deadline {
            break Some(format!(
                "a plain `xl create` PVH guest printed no `Linux version` in 60 s (console: {:?})",
                console.chars().take(200).collect::<String>()
            ));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let _ = Command::new("xl").args(["destroy", name]).status();
    let _ = std::fs::remove_file(&log);
    seen
}

#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_job_crash_leaves_nothing() {
    let site = Site::new(guest());
    let jdl = site.jdl(
        "segv.jdl",
        r#"Executable = "/bin/sh"; Arguments = "-c 'echo about-to-crash; kill -SEGV $$'";"#,
    );
    let out = site.run(&jdl);
    assert_eq!(
        out.status.code(),
        Some(128 + 11),
        "stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "about-to-crash\n");
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert_only_dom0();
}

/// The guest *kernel* dies (sysrq-c; the kernel's `panic=-1` would reboot
/// it, and a crashed Xen domain is not restarted): the job fails, and the
/// domain must not be left behind, nor the run hang.
#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_guest_kernel_crash_leaves_nothing() {
    let site = Site::new(guest());
    let jdl = site.jdl(
        "crash.jdl",
        r#"Executable = "/bin/sh"; Arguments = "-c 'echo crashing; echo c > /proc/sysrq-trigger; sleep 600'";"#,
    );
    let out = site.run(&jdl);
    assert!(!out.status.success(), "a crashed guest is a failed job");
    assert!(
        text(&out.stdout).contains("crashing"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert_only_dom0();
}

#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_killed_mid_boot_then_cleanup_leaves_nothing() {
    let site = Site::new(guest());
    // Killed once the domain exists, before its agent answers.
    site.kill_sd_run_once_its_domain_exists("victim");
    assert!(
        !domains_besides_dom0().0.is_empty(),
        "the domain outlives a killed sd run"
    );
    let out = site.sd().arg("cleanup").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("victim: cleaned up"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert_only_dom0();
}

#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_memory_target_change_is_seen_by_the_guest() {
    retried_on_emulator_crash(|site| {
        // The job reports MemTotal until it shrinks below 200 MiB.
        let jdl = site.jdl(
        "balloon.jdl",
        r#"Executable = "/bin/sh";
           Arguments = "-c 'i=0; while [ $i -lt 600 ]; do m=$(grep MemTotal /proc/meminfo | tr -s \" \" | cut -d\" \" -f2); echo mem=$m; [ $m -lt 204800 ] && exit 0; sleep 0.2; i=$((i+1)); done; exit 1'";"#,
    );
        let mut child = site
            .sd()
            .args(["-v", "run"])
            .arg(&jdl)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut v = vec![];
            let _ = stderr.read_to_end(&mut v);
            text(&v)
        });
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        // Wait for the job's first report, then lower the target to 192 MiB.
        while !text(&seen).contains("mem=") {
            let n = stdout.read(&mut buf).unwrap();
            if n == 0 {
                let status = child.wait();
                let out = Output {
                    status: status.unwrap(),
                    stdout: seen,
                    stderr: stderr.join().unwrap().into_bytes(),
                };
                site.diagnose(&out);
                panic!(
                    "sd run ended before the job's first report: {:?}",
                    out.status
                );
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let name = site.xen_domain_name();
        site.domain().set_memory_target(192).unwrap();
        let libxl = sd_xen::Libxl::open().unwrap();
        let domid = libxl.domid_of(&name).unwrap().expect("the domain");
        assert_eq!(
            libxl.memory_target(domid).unwrap(),
            192 * 1024,
            "libxl's target"
        );
        stdout.read_to_end(&mut seen).unwrap();
        let status = child.wait().unwrap();
        let stderr = stderr.join().unwrap();
        let reports: Vec<u64> = text(&seen)
            .lines()
            .filter_map(|l| l.strip_prefix("mem=")?.parse().ok())
            .collect();
        println!(
            "guest MemTotal (kB) before and after the change: {:?} … {:?}",
            reports.first(),
            reports.last()
        );
        if !status.success() {
            site.diagnose(&Output {
                status,
                stdout: seen.clone(),
                stderr: stderr.clone().into_bytes(),
            });
            panic!("the guest never saw its memory shrink, or sd run failed: {reports:?}");
        }
        assert!(
            reports[0] > 204800 && *reports.last().unwrap() < 204800,
            "{reports:?}"
        );
        assert_only_dom0();
    });
}

/// Pause and unpause at run time: while paused, Xen reports the domain
/// paused and the job makes no progress; unpaused, it finishes.
#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_pause_stops_the_guest_until_unpaused() {
    retried_on_emulator_crash(|site| {
        // Prints a tick every 0.1 s, 80 ticks.
        let jdl = site.jdl(
        "ticks.jdl",
        r#"Executable = "/bin/sh"; Arguments = "-c 'i=0; while [ $i -lt 80 ]; do echo tick=$i; sleep 0.1; i=$((i+1)); done'";"#,
    );
        let mut child = site
            .sd()
            .args(["-v", "run"])
            .arg(&jdl)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Reads stdout on a thread, so the test can look at what has come.
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
        let reader = {
            let seen = seen.clone();
            let mut stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                let mut buf = [0u8; 256];
                while let Ok(n) = stdout.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    seen.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            })
        };
        let ticks = || text(&seen.lock().unwrap()).matches("tick=").count();
        let deadline = Instant::now() + Duration::from_secs(180);
        while ticks() < 3 {
            assert!(Instant::now() < deadline, "the job never ticked");
            std::thread::sleep(Duration::from_millis(50));
        }
        let name = site.xen_domain_name();
        let domain = site.domain();
        domain.pause(true).unwrap();
        let domid = sd_xen::Libxl::open()
            .unwrap()
            .domid_of(&name)
            .unwrap()
            .expect("the domain");
        let state = sd_xen::XenCtrl::open()
            .unwrap()
            .domain(domid)
            .unwrap()
            .unwrap()
            .state;
        assert_eq!(state, sd_xen::DomainState::Paused);
        // What was in flight arrives; after that, nothing while paused.
        std::thread::sleep(Duration::from_millis(1000));
        let at_pause = ticks();
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(
            ticks(),
            at_pause,
            "the job ticked while its domain was paused"
        );
        domain.pause(false).unwrap();
        let status = child.wait().unwrap();
        reader.join().unwrap();
        println!("ticks before the pause: {at_pause}, in all: {}", ticks());
        assert!(status.success(), "{status:?}");
        assert_eq!(ticks(), 80, "every tick, after the unpause too");
        assert_only_dom0();
    });
}

impl Site {
    /// Starts `sd run --id ID` of a long job and SIGKILLs it as soon as its
    /// domain exists: the crash path of a prolog.
    fn kill_sd_run_once_its_domain_exists(&self, id: &str) {
        let jdl = self.jdl(
            "long.jdl",
            r#"Executable = "/bin/sh"; Arguments = "-c 'sleep 600'";"#,
        );
        let mut child = self
            .sd()
            .args(["run", "--id", id])
            .arg(&jdl)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let prefix = format!("sd-{id}-");
        let deadline = Instant::now() + Duration::from_secs(120);
        while !domains_besides_dom0()
            .0
            .iter()
            .any(|d| d.starts_with(&prefix))
        {
            assert!(Instant::now() < deadline, "no domain appeared");
            assert!(
                child.try_wait().unwrap().is_none(),
                "sd run ended before its domain existed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// The only domain of this site's state directory.
    fn xen_domain_name(&self) -> String {
        let libxl = sd_xen::Libxl::open().unwrap();
        let names: Vec<String> = libxl
            .list()
            .unwrap()
            .into_iter()
            .map(|d| d.name)
            .filter(|n| n.starts_with("sd-"))
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        names[0].clone()
    }
}

// ---- networks (issue 15): a vif on our bridge in dom0

impl Site {
    /// Declares the NAT network `nat` (10.213.0.0/24) and the private one
    /// `private` (10.214.0.0/24), and lets the VO use them.
    fn with_nat_network(self) -> Site {
        let path = self.path("site.yaml");
        let config = std::fs::read_to_string(&path).unwrap();
        let vo = "max_disk_mib: 1024 }";
        assert!(config.contains(vo), "{config}");
        let config = config.replace(vo, "max_disk_mib: 1024, networks: [nat, private] }")
            + "networks:\n  nat: { kind: nat, subnet: 10.213.0.0/24 }\n  \
               private: { kind: private, subnet: 10.214.0.0/24 }\n";
        std::fs::write(&path, config).unwrap();
        self
    }
}

/// Everything of ours in dom0's network: ports of our bridges, our
/// bridges and taps/vifs, our nft tables.
fn our_network_parts() -> Vec<String> {
    let links = run_ok("ip", &["-o", "link", "show"]);
    let tables = run_ok("nft", &["list", "tables"]);
    links
        .lines()
        .filter_map(|l| {
            l.split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap().to_string())
        })
        .filter(|n| n.starts_with("sdn-") || n.starts_with("sdp-") || n.starts_with("sdt"))
        .chain(
            tables
                .lines()
                .filter(|l| l.contains(" sd-"))
                .map(str::to_string),
        )
        .collect()
}

/// A NAT job on Xen: libxl makes the vif under our name, vif-bridge puts
/// it on our bridge, the port is isolated before the guest runs; the guest
/// (xen-netfront) gets its leased address from the agent and reaches the
/// gateway at L2 (ARP: the gateway's filter drops what the guest sends the
/// host, but ARP is below it). Afterwards no vif, bridge, nft table or
/// lease is left.
#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_nat_network_vif_on_our_bridge_and_nothing_left() {
    assert_eq!(our_network_parts(), Vec::<String>::new(), "clean before");
    let site = Site::new(guest()).with_nat_network();
    let jdl = site.jdl(
        "nat.jdl",
        r#"Executable = "/bin/sh";
           Arguments = "-c 'cat /proc/net/dev; ip addr; ip route; ping -c 1 -W 3 10.213.0.1; cat /proc/net/arp; sleep 2; exit 0'";
           VirtualEnvironment = [ Network = "nat"; ];"#,
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let (out, port) = std::thread::scope(|scope| {
        // The bridge's port while the job runs, as dom0 sees it.
        let watcher = scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let links = run_ok("ip", &["-d", "-o", "link", "show"]);
                if let Some(l) = links.lines().find(|l| l.contains("master sdn-nat")) {
                    // Its bridge_slave details are there once it is finished.
                    if l.contains("isolated on") {
                        return Some(l.to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            None
        });
        let out = site.run(&jdl);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, watcher.join().unwrap())
    });
    let stdout = text(&out.stdout);
    println!("--- the job's stdout:\n{stdout}");
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let port = port.expect("an isolated port on sdn-nat while the job ran");
    println!("--- the port: {port}");
    let name = port.split(':').nth(1).unwrap().trim().to_string();
    assert!(name.starts_with("sdt"), "the vif has our name: {port}");
    assert!(stdout.contains("eth0"), "{stdout}");
    assert!(
        stdout.contains("inet 10.213.0.2/24"),
        "the leased address on eth0: {stdout}"
    );
    assert!(
        stdout.contains("default via 10.213.0.1"),
        "the route: {stdout}"
    );
    let arp = stdout
        .lines()
        .find(|l| l.starts_with("10.213.0.1 "))
        .unwrap_or_else(|| panic!("no ARP entry for the gateway: {stdout}"));
    assert!(arp.contains("0x2"), "the gateway answered ARP: {arp}");

    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert_only_dom0();
    assert_eq!(our_network_parts(), Vec::<String>::new(), "left in dom0");
    let leases = site.path("state/network/leases/nat-nat.json");
    assert!(!leases.exists(), "{} left", leases.display());
}

/// Two networks, two vifs (libxl numbers them): the guest finds each NIC
/// by its MAC, eth0 on NAT with the gateway's route, eth1 on the job's own
/// private segment (a bridge of its own, nothing routed); both vifs are
/// ports of their bridges while the job runs, and nothing is left after.
#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_two_networks_two_vifs_and_nothing_left() {
    assert_eq!(our_network_parts(), Vec::<String>::new(), "clean before");
    let site = Site::new(guest()).with_nat_network();
    let jdl = site.jdl(
        "two.jdl",
        r#"Executable = "/bin/sh";
           Arguments = "-c 'ip addr; ip route; sleep 2; exit 0'";
           VirtualEnvironment = [ Network = {"nat", "private"}; ];"#,
    );
    let done = std::sync::atomic::AtomicBool::new(false);
    let (out, ports) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let links = run_ok("ip", &["-o", "link", "show"]);
                let ports: Vec<String> = links
                    .lines()
                    .filter(|l| l.contains("master sdn-nat") || l.contains("master sdp-"))
                    .map(str::to_string)
                    .collect();
                if ports.len() == 2 {
                    return ports;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            vec![]
        });
        let out = site.run(&jdl);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (out, watcher.join().unwrap())
    });
    let stdout = text(&out.stdout);
    println!(
        "--- the job's stdout:\n{stdout}\n--- the ports:\n{}",
        ports.join("\n")
    );
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(ports.len(), 2, "two vifs on our bridges while the job ran");
    assert!(ports
        .iter()
        .all(|p| p.split(':').nth(1).unwrap().trim().starts_with("sdt")));
    assert!(
        stdout.contains("inet 10.213.0.2/24 scope global eth0"),
        "NAT on eth0: {stdout}"
    );
    assert!(
        stdout.contains("inet 10.214.0.2/24 scope global eth1"),
        "the private segment on eth1: {stdout}"
    );
    assert!(
        stdout.contains("default via 10.213.0.1 dev eth0"),
        "{stdout}"
    );

    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert_only_dom0();
    assert_eq!(our_network_parts(), Vec::<String>::new(), "left in dom0");
    let leases: Vec<_> = std::fs::read_dir(site.path("state/network/leases"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(leases, Vec::<PathBuf>::new(), "lease files left");
}

// ---- LVM thin snapshots (issue 5)

/// Volume group, thin pool and base volume of the LVM tests in dom0.
const LVM_VG: &str = "sdxenvg";
const LVM_POOL: &str = "pool";
const LVM_BASE: &str = "busybox-base";

/// lvm2 for a read-only root without udev (dom0 of the test host): its
/// configuration in a writable directory (`LVM_SYSTEM_DIR`), no backups or
/// archives (they would go to /etc/lvm), no udev synchronisation (libdevmapper
/// makes the /dev nodes itself), only loop devices scanned. Site-specific
/// and test-only: the production code passes its environment on to lvm.
const LVM_CONF: &str = r#"
config { checks = 1 }
devices {
    global_filter = [ "a|^/dev/loop[0-9]+$|", "r|.*|" ]
    obtain_device_list_from_udev = 0
    external_device_info_source = "none"
    use_devicesfile = 0
    hints = "none"
}
activation {
    udev_sync = 0
    udev_rules = 0
    monitoring = 0
}
global { use_lvmpolld = 0 }
backup {
    backup = 0
    archive = 0
}
"#;

/// Runs `cmd args` (sbin on the PATH), panicking with its stderr on failure.
fn run_ok(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .env(
            "PATH",
            format!(
                "/usr/local/sbin:/usr/sbin:/sbin:{}",
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A thin pool on a loop device over a sparse file in dom0's /tmp, with a
/// base volume holding `build/images/busybox.qcow2` (as raw). Everything
/// (volume group, loop device, lvm2's environment) goes away when dropped,
/// also when the test panics.
struct ThinPool {
    dir: tempfile::TempDir,
    loop_dev: String,
}

impl ThinPool {
    fn new() -> ThinPool {
        let t = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("sd-lvm-")
            .tempdir()
            .unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("lvm.conf"), LVM_CONF).unwrap();
        std::fs::create_dir_all("/run/lock/lvm").unwrap();
        // Inherited by sd (and so by the lvm commands it runs).
        std::env::set_var("LVM_SYSTEM_DIR", &etc);
        std::env::set_var("DM_DISABLE_UDEV", "1");
        std::env::set_var("LVM_SUPPRESS_FD_WARNINGS", "1");
        let backing = dir.path().join("pv.img");
        std::fs::File::create(&backing)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        let loop_dev = run_ok("losetup", &["-f", "--show", backing.to_str().unwrap()])
            .trim()
            .to_string();
        let pool = ThinPool { dir, loop_dev };
        run_ok("lvm", &["pvcreate", "-q", &pool.loop_dev]);
        run_ok("lvm", &["vgcreate", "-q", LVM_VG, &pool.loop_dev]);
        run_ok(
            "lvm",
            &[
                "lvcreate",
                "-q",
                "--type",
                "thin-pool",
                "-L",
                "512M",
                "-Zy",
                "-n",
                LVM_POOL,
                LVM_VG,
            ],
        );
        run_ok(
            "lvm",
            &[
                "lvcreate",
                "-q",
                "-V",
                "64M",
                "-T",
                &format!("{LVM_VG}/{LVM_POOL}"),
                "-n",
                LVM_BASE,
            ],
        );
        // The catalogue's busybox disk, written into the base (a fresh thin
        // volume reads as zeros: only the data is written).
        let image = repo().join("build/images/busybox.qcow2");
        run_ok(
            "qemu-img",
            &[
                "convert",
                "-n",
                "--target-is-zero",
                "-f",
                "qcow2",
                "-O",
                "raw",
                image.to_str().unwrap(),
                &pool.device(LVM_BASE),
            ],
        );
        println!(
            "thin pool {LVM_VG}/{LVM_POOL} on {} with base {LVM_BASE}: {:.1} s",
            pool.loop_dev,
            t.elapsed().as_secs_f64()
        );
        pool
    }

    fn device(&self, lv: &str) -> String {
        format!("/dev/{LVM_VG}/{lv}")
    }

    fn thin(&self) -> sd_vmm::storage_lvm::LvmThin {
        sd_vmm::storage_lvm::LvmThin::new(LVM_VG, LVM_POOL).unwrap()
    }

    /// Names of the volume group's (visible) volumes, sorted.
    fn volumes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .thin()
            .list()
            .unwrap()
            .into_iter()
            .map(|l| l.name)
            .collect();
        v.sort();
        v
    }

    fn sha256(&self, lv: &str) -> String {
        run_ok("sha256sum", &[&self.device(lv)])[..64].to_string()
    }

    /// A site (`Site`'s directory and helpers) whose only image is the base
    /// volume, format lvm; jobs ask for 256 MiB, more than the base's 64.
    fn site(&self) -> Site {
        let site = Site::new(guest());
        let config = format!(
            "state_dir: {state}\nlog_dir: {log}\nimage_dir: {i}\nbackend: xen\n\
             boot_timeout_secs: 150\nshutdown_timeout_secs: 30\n\
             xen: {{ guest_type: {kind} }}\n\
             lvm: {{ vg: {LVM_VG}, thin_pool: {LVM_POOL} }}\n\
             defaults: {{ image: busybox-lvm, memory_mib: 256, vcpus: 1, disk_mib: 256, hostname: xen-guest }}\n\
             images:\n\
             \x20 busybox-lvm: {{ format: lvm, lv: {LVM_BASE}, kernel: vmlinux, initrd: initrd.img }}\n\
             vos:\n\
             \x20 demo: {{ images: [busybox-lvm], max_memory_mib: 512, max_vcpus: 2, max_disk_mib: 1024 }}\n\
             default_vo: demo\n",
            kind = guest_type_name(guest()),
            state = site.path("state").display(),
            log = site.path("log").display(),
            i = repo().join("build/images").display(),
        );
        std::fs::write(site.path("site.yaml"), config).unwrap();
        site
    }
}

impl Drop for ThinPool {
    fn drop(&mut self) {
        let quiet = |cmd: &str, args: &[&str]| {
            let _ = Command::new(cmd)
                .args(args)
                .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
                .stdin(Stdio::null())
                .output();
        };
        quiet("lvm", &["vgremove", "-q", "-ff", LVM_VG]);
        quiet("lvm", &["pvremove", "-q", "-ff", &self.loop_dev]);
        quiet("losetup", &["-d", &self.loop_dev]);
        std::env::remove_var("LVM_SYSTEM_DIR");
        std::env::remove_var("DM_DISABLE_UDEV");
        std::env::remove_var("LVM_SUPPRESS_FD_WARNINGS");
        let _ = &self.dir;
    }
}

/// `storage_lvm` itself against the real thin pool: snapshots are
/// copy-on-write (a write through one leaves the base and a second snapshot
/// as they were), the refusals are typed, and removal is idempotent.
#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_lvm_thin_roundtrip() {
    use sd_vmm::storage_lvm::LvmError;
    let pool = ThinPool::new();
    let lvm = pool.thin();
    assert!(lvm.base_exists(LVM_BASE).unwrap());
    assert!(!lvm.base_exists("no-such-base").unwrap());
    assert!(!lvm.base_exists(LVM_POOL).unwrap(), "the pool is no base");
    let base = pool.sha256(LVM_BASE);

    let t = Instant::now();
    let dev = lvm.snapshot(LVM_BASE, "job-1").unwrap();
    println!("snapshot in {} ms", t.elapsed().as_millis());
    assert_eq!(dev, Path::new("/dev").join(LVM_VG).join("job-1"));
    let lvs = lvm.list().unwrap();
    let snap = lvs.iter().find(|l| l.name == "job-1").unwrap();
    assert_eq!(snap.origin.as_deref(), Some(LVM_BASE));
    assert_eq!(snap.pool.as_deref(), Some(LVM_POOL));
    assert!(snap.is_thin() && snap.is_active(), "{snap:?}");
    assert_eq!(pool.sha256("job-1"), base, "a snapshot reads as its base");

    assert!(matches!(
        lvm.snapshot(LVM_BASE, "job-1"),
        Err(LvmError::Exists { .. })
    ));
    assert!(matches!(
        lvm.snapshot("no-such-base", "job-2"),
        Err(LvmError::BaseMissing { .. })
    ));
    assert!(matches!(
        lvm.snapshot(LVM_BASE, "job 2; reboot"),
        Err(LvmError::InvalidName { .. })
    ));
    assert!(matches!(lvm.remove(LVM_POOL), Err(LvmError::IsPool { .. })));
    assert_eq!(pool.volumes(), [LVM_BASE, "job-1", LVM_POOL]);

    // A job's write stays in its snapshot.
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&[0x5a; 4096]).unwrap();
        f.sync_all().unwrap();
    }
    assert_ne!(pool.sha256("job-1"), base, "the write reached the snapshot");
    assert_eq!(pool.sha256(LVM_BASE), base, "the base is unchanged");
    lvm.snapshot(LVM_BASE, "job-2").unwrap();
    assert_eq!(
        pool.sha256("job-2"),
        base,
        "a second snapshot sees the pristine base"
    );

    let t = Instant::now();
    lvm.remove("job-1").unwrap();
    println!("remove in {} ms", t.elapsed().as_millis());
    lvm.remove("job-1").unwrap();
    lvm.remove("job-2").unwrap();
    lvm.remove("never-existed").unwrap();
    assert!(!dev.exists(), "{} still there", dev.display());
    assert_eq!(pool.volumes(), [LVM_BASE, LVM_POOL]);
    assert_eq!(pool.sha256(LVM_BASE), base);

    // `list` is lvs --reportformat json as this lvm2 prints it, parsed.
    assert_eq!(lvm.list().unwrap().len(), 2);
}

/// The spine's hello job with backend xen on a thin snapshot of an LVM base
/// volume: the job reads the image, sees its disk grown to the 256 MiB asked
/// for, writes to it; afterwards the snapshot is gone and the base is
/// unchanged. The job asked for its disk to be saved: read from the volume
/// (raw) into the store, a second job boots from that image and finds the
/// file. Then a run killed (SIGKILL) with its domain up: the snapshot
/// outlives it, and `sd cleanup` removes it with the domain.
#[test]
#[ignore = "runs inside the Xen test host (xen_backend_on_real_xen)"]
fn dom0_lvm_snapshot_hello_and_cleanup() {
    let pool = ThinPool::new();
    let site = pool.site();
    let base_before = pool.sha256(LVM_BASE);
    assert_eq!(pool.volumes(), [LVM_BASE, LVM_POOL]);

    let out = site
        .sd()
        .arg("check-config")
        .arg(site.path("site.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check-config: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // 1. The hello job, its disk saved afterwards.
    let jdl = site.jdl(
        "hello.jdl",
        r#"Executable = "/bin/sh";
           Arguments = "-c 'echo hello from $(hostname); cat /etc/sd-image; echo sectors=$(cat /sys/block/xvda/size); echo written-by-the-job > /lvm-job-was-here && sync && cat /lvm-job-was-here; exit 3'";
           VirtualEnvironment = [ SaveAs = "lvm-saved"; ];"#,
    );
    let out = site.run(&jdl);
    let stdout = text(&out.stdout);
    println!("--- the job's stdout:\n{stdout}---");
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(stdout.contains("hello from xen-guest"), "{stdout}");
    assert!(stdout.contains("busybox"), "the image's marker: {stdout}");
    assert!(
        stdout.contains(&format!("sectors={}", 256 * 2048)),
        "the snapshot grown to the 256 MiB asked for: {stdout}"
    );
    assert!(stdout.contains("written-by-the-job"), "{stdout}");
    assert_eq!(
        pool.volumes(),
        [LVM_BASE, LVM_POOL],
        "the job's snapshot is removed"
    );
    assert_eq!(pool.sha256(LVM_BASE), base_before, "the base is unchanged");
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert_only_dom0();
    assert!(
        site.path("state/store/lvm-saved.qcow2.zst").exists(),
        "the snapshot was saved to the store"
    );

    // 2. A job of the saved image (a qcow2 overlay, no volume) sees the file.
    let reuse = site.jdl(
        "reuse.jdl",
        r#"Executable = "/bin/sh"; Arguments = "-c 'cat /lvm-job-was-here; cat /etc/sd-image'";
           VirtualEnvironment = [ Image = "lvm-saved"; ];"#,
    );
    let out = site.run(&reuse);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.starts_with("written-by-the-job\n") && stdout.contains("busybox"),
        "{stdout}"
    );
    assert_eq!(pool.volumes(), [LVM_BASE, LVM_POOL]);
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert_only_dom0();

    // 3. Killed with its domain running: the crash path.
    site.kill_sd_run_once_its_domain_exists("lvmvictim");
    let snapshots: Vec<String> = pool
        .volumes()
        .into_iter()
        .filter(|v| v.starts_with("sd-lvmvictim-"))
        .collect();
    assert_eq!(
        snapshots.len(),
        1,
        "the killed run's snapshot is still there"
    );
    println!("left by the killed run: {snapshots:?}");
    let t = Instant::now();
    let out = site.sd().arg("cleanup").output().unwrap();
    println!("sd cleanup: {:.1} s", t.elapsed().as_secs_f64());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("lvmvictim: cleaned up"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(pool.volumes(), [LVM_BASE, LVM_POOL], "cleanup removed it");
    assert_eq!(pool.sha256(LVM_BASE), base_before, "the base is unchanged");
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert_only_dom0();
}
