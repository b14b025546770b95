//! The spine, end to end: `sd run` boots real VMs (QEMU, Debian's kernel,
//! our initramfs and agent, the debian-minimal VO image built by
//! images/build) and we check what comes back and what is left behind.
//!
//! Needs `scripts/setup` to have run (images in build/images, qemu, the
//! sd-qemu user). Each test has its own state and log directories.

mod common;
use common::{guest_kernel, images, text};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A site of its own for one test: config, state, logs, job files.
struct Site(common::TestSite);

impl Site {
    fn new() -> Site {
        let config = format!(
            "{head}\
             defaults: {{ image: debian-minimal, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: sd-guest }}\n\
             images:\n\
             \x20 debian-minimal: {{ disk: debian-minimal.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             \x20 busybox-raw: {{ disk: {{dir}}/busybox.raw, format: raw, kernel: vmlinuz, initrd: initrd.img }}\n\
             vos:\n\
             \x20 demo: {{ images: [debian-minimal, busybox, busybox-raw], max_memory_mib: 1024, max_vcpus: 2, max_disk_mib: 4096 }}\n\
             \x20 atlas: {{ images: [busybox], max_memory_mib: 512, max_vcpus: 1, max_disk_mib: 2048 }}\n",
            head = common::qemu_site_head(),
        );
        let site = common::TestSite::new("sd-spine-", &config);
        std::fs::create_dir(site.path("job")).unwrap();
        std::fs::create_dir(site.path("out")).unwrap();
        Site(site)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path(rel)
    }

    /// Writes a JDL (and returns its path) in the job directory.
    fn jdl(&self, name: &str, body: &str) -> PathBuf {
        let p = self.path("job").join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    fn sd(&self) -> Command {
        self.0.sd()
    }

    fn run(&self, jdl: &Path) -> Output {
        self.sd()
            .arg("run")
            .arg(jdl)
            .arg("--output-dir")
            .arg(self.path("out"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Everything a deployment could leave on the host, listed.
    fn leftovers(&self) -> Vec<String> {
        self.0.leftovers(&["qemu-system"])
    }
}

#[test]
fn hello_runs_in_the_guest_with_requested_resources_and_sandboxes() {
    let site = Site::new();
    std::fs::write(site.path("job/data.txt"), "input sandbox content\n").unwrap();
    let jdl = site.jdl(
        "hello.jdl",
        r#"[
          Executable = "/bin/sh";
          Arguments = "-c 'echo kernel=$(uname -r) host=$(hostname) cpus=$(nproc); grep MemTotal /proc/meminfo; cat /etc/sd-image; cat data.txt; echo made-in-guest > result.txt'";
          InputSandbox = { "data.txt" };
          OutputSandbox = { "result.txt" };
          VirtualOrganisation = "demo";
          VirtualEnvironment = [ Image = "debian-minimal"; Memory = 768; VCPUs = 2; Hostname = "spine-guest"; ];
        ]"#,
    );
    let out = site.run(&jdl);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "status {:?}\nstdout: {stdout}\nstderr: {}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("kernel={}", guest_kernel())),
        "{stdout}"
    );
    assert!(stdout.contains("host=spine-guest"), "{stdout}");
    assert!(stdout.contains("cpus=2"), "{stdout}");
    assert!(
        stdout.contains("debian-minimal"),
        "the VO image's marker: {stdout}"
    );
    assert!(stdout.contains("input sandbox content"), "{stdout}");
    let mem_kib: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("MemTotal line");
    // The kernel reserves some of the RAM it is given; it never sees more.
    assert!(
        mem_kib > 600 * 1024 && mem_kib <= 768 * 1024,
        "MemTotal {mem_kib} kB for 768 MiB"
    );
    assert_eq!(
        std::fs::read_to_string(site.path("out/result.txt")).unwrap(),
        "made-in-guest\n"
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
    // The console was captured to the log directory.
    let logs: Vec<_> = std::fs::read_dir(site.path("log"))
        .unwrap()
        .flatten()
        .collect();
    assert!(logs
        .iter()
        .any(|e| e.file_name().to_string_lossy().ends_with(".console.log")));
}

#[test]
fn exit_code_and_separate_streams() {
    let site = Site::new();
    let jdl = site.jdl(
        "exit.jdl",
        r#"Executable = "/bin/sh";
           Arguments = "-c 'echo to-stdout; echo to-stderr >&2; exit 42'";
           VirtualOrganisation = "demo";"#,
    );
    let out = site.run(&jdl);
    assert_eq!(out.status.code(), Some(42), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "to-stdout\n");
    assert_eq!(text(&out.stderr), "to-stderr\n");
    assert_eq!(site.leftovers(), Vec::<String>::new());
}

#[test]
fn job_killed_by_a_signal_is_reported_as_such() {
    let site = Site::new();
    let jdl = site.jdl(
        "kill.jdl",
        r#"Executable = "/bin/sh"; Arguments = "-c 'kill -KILL $$'"; VirtualOrganisation = "demo";"#,
    );
    let out = site.run(&jdl);
    assert_eq!(out.status.code(), Some(128 + 9));
    assert!(
        text(&out.stderr).contains("killed by signal 9 (SIGKILL)"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
}

#[test]
fn one_mebibyte_of_binary_output_is_byte_exact() {
    let site = Site::new();
    // Every byte value, in an order that is not a simple pattern.
    let data: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(site.path("job/data.bin"), &data).unwrap();
    let jdl = site.jdl(
        "binary.jdl",
        r#"Executable = "/bin/sh";
           Arguments = "-c 'cat data.bin; cat data.bin >&2'";
           InputSandbox = "data.bin";
           VirtualOrganisation = "demo";"#,
    );
    let out = site.run(&jdl);
    assert!(
        out.status.success(),
        "{}",
        text(&out.stderr[..out.stderr.len().min(2000)])
    );
    assert!(
        out.stdout == data,
        "stdout differs ({} bytes)",
        out.stdout.len()
    );
    assert!(
        out.stderr == data,
        "stderr differs ({} bytes)",
        out.stderr.len()
    );
}

#[test]
fn malformed_jdl_is_refused_with_its_position_and_nothing_is_created() {
    let site = Site::new();
    let jdl = site.jdl(
        "bad.jdl",
        "[\n  Executable = \"/bin/true\"\n  Arguments = \"x\";\n]\n",
    );
    let out = site.run(&jdl);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{}:3:3:", jdl.display())), "{err}");
    assert_eq!(site.leftovers(), Vec::<String>::new());
    assert!(!site.path("state/journal").exists() || site.leftovers().is_empty());
}

#[test]
fn requests_outside_policy_name_the_limit_and_create_nothing() {
    let site = Site::new();
    let cases = [
        (r#"Image = "windows-xp";"#, "demo", "windows-xp"),
        (r#"Image = "debian-minimal";"#, "atlas", "atlas"),
        (r#"Memory = 4096;"#, "demo", "max_memory_mib"),
        (r#"VCPUs = 8;"#, "demo", "max_vcpus"),
        (r#"Image = "../../etc/shadow";"#, "demo", "shadow"),
    ];
    for (record, vo, expected) in cases {
        let jdl = site.jdl(
            "policy.jdl",
            &format!(r#"Executable = "/bin/true"; VirtualOrganisation = "{vo}"; VirtualEnvironment = [ {record} ];"#),
        );
        let out = site.run(&jdl);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{record}: {err}");
        assert!(
            err.contains(expected),
            "{record}: expected {expected:?} in: {err}"
        );
        if expected.starts_with("max_") {
            assert!(err.contains(vo), "the refusal names the VO: {err}");
        }
        assert_eq!(site.leftovers(), Vec::<String>::new(), "{record}");
    }
}

/// Waits until the job has printed `marker` on stdout, i.e. the domain is up
/// and the job runs.
/// `id` must be unique on the host: QEMU processes are found by domain name.
fn start_long_job(site: &Site, id: &str) -> (std::process::Child, String) {
    let jdl = site.jdl(
        "long.jdl",
        r#"Executable = "/bin/sh"; Arguments = "-c 'echo job-started; sleep 600'"; VirtualOrganisation = "demo";"#,
    );
    let mut child = site
        .sd()
        .args(["run", "--id", id])
        .arg(&jdl)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut buf = [0u8; 256];
    while !text(&seen).contains("job-started") {
        assert!(Instant::now() < deadline, "job never started");
        let n = stdout.read(&mut buf).unwrap();
        if n == 0 {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("sd run ended early: {:?}: {err}", child.wait());
        }
        seen.extend_from_slice(&buf[..n]);
    }
    (child, text(&seen))
}

/// What a running deployment keeps on the host is for no other local user:
/// journal, QMP socket, QEMU's log and the console log are 0600 (QEMU makes
/// the last three, under the umask we give it), the run directory 0700.
fn assert_private_while_running(site: &Site, id: &str) {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: PathBuf| {
        let m = std::fs::symlink_metadata(&p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode();
        (p.display().to_string(), m & 0o777)
    };
    let run = std::fs::read_dir(site.path("state/run"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(id))
        .expect("the run directory");
    let console = std::fs::read_dir(site.path("log"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(".console.log"))
        .expect("the console log");
    let journal = site.path(&format!("state/journal/{id}.json"));
    for (path, m) in [
        mode(journal),
        mode(run.join("qmp.sock")),
        mode(run.join("qemu.log")),
        mode(console),
    ] {
        assert_eq!(m & 0o077, 0, "{path} is mode {m:o}");
    }
    let (path, m) = mode(run);
    assert_eq!(m, 0o700, "{path}");
}

#[test]
fn sigkill_mid_job_then_cleanup_leaves_nothing() {
    let site = Site::new();
    let (mut child, _) = start_long_job(&site, "victim-kill");
    assert!(
        !site.leftovers().is_empty(),
        "a running job has its journal, disk and QEMU"
    );
    assert_private_while_running(&site, "victim-kill");
    child.kill().unwrap();
    child.wait().unwrap();
    // The domain outlives a killed `sd run`: that is what cleanup is for.
    assert!(!site.leftovers().is_empty());
    let out = site.sd().arg("cleanup").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("victim-kill: cleaned up"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
    // Idempotent.
    let again = site.sd().args(["cleanup", "victim-kill"]).output().unwrap();
    assert!(again.status.success());
    assert!(text(&again.stdout).contains("nothing to clean"));
}

#[test]
fn sigterm_destroys_the_domain_and_cleans_up() {
    let site = Site::new();
    let (mut child, _) = start_long_job(&site, "victim-term");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    assert_eq!(site.leftovers(), Vec::<String>::new());
}

#[test]
fn saved_image_is_reused_by_its_vo_and_a_corrupted_one_is_refused() {
    let site = Site::new();
    let job = |name: &str, vo: &str, env: &str, cmd: &str| {
        site.jdl(
            name,
            &format!(
                r#"Executable = "/bin/sh"; Arguments = "-c '{cmd}'"; VirtualOrganisation = "{vo}";
                   VirtualEnvironment = [ {env} ];"#
            ),
        )
    };
    let first = site.run(&job(
        "save.jdl",
        "demo",
        r#"Image = "busybox"; SaveAs = "spine-saved";"#,
        "echo kept-across-jobs > /root/note",
    ));
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert!(
        text(&first.stderr).contains("saved as image \"spine-saved\""),
        "{}",
        text(&first.stderr)
    );
    assert!(site.path("state/store/spine-saved.qcow2.zst").exists());
    let listing = site.sd().arg("images").output().unwrap();
    assert!(
        text(&listing.stdout).contains("spine-saved"),
        "{}",
        text(&listing.stdout)
    );

    // A later job of the same VO boots from it and sees the file.
    let second = site.run(&job(
        "reuse.jdl",
        "demo",
        r#"Image = "spine-saved";"#,
        "cat /root/note; cat /etc/sd-image",
    ));
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert!(
        text(&second.stdout).starts_with("kept-across-jobs\nname=busybox"),
        "{}",
        text(&second.stdout)
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());

    // Another VO may not.
    let other = site.run(&job(
        "other.jdl",
        "atlas",
        r#"Image = "spine-saved";"#,
        "true",
    ));
    assert_eq!(other.status.code(), Some(2));
    assert!(
        text(&other.stderr).contains("was saved by VO \"demo\""),
        "{}",
        text(&other.stderr)
    );

    // One flipped byte: refused with a checksum error, nothing booted.
    let stored = site.path("state/store/spine-saved.qcow2.zst");
    let mut bytes = std::fs::read(&stored).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&stored, bytes).unwrap();
    std::fs::remove_dir_all(site.path("state/store-cache")).unwrap();
    let corrupt = site
        .sd()
        .args(["run", "--id", "spine-corrupt"])
        .arg(job(
            "corrupt.jdl",
            "demo",
            r#"Image = "spine-saved";"#,
            "true",
        ))
        .output()
        .unwrap();
    assert_eq!(corrupt.status.code(), Some(125));
    assert!(
        text(&corrupt.stderr).contains("checksum"),
        "{}",
        text(&corrupt.stderr)
    );
    assert!(
        !site.path("log/spine-corrupt.console.log").exists(),
        "no domain was started"
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
}

#[test]
fn raw_catalogue_image_is_cloned_not_written() {
    let site = Site::new();
    let raw = site.path("busybox.raw");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(images().join("busybox.qcow2"))
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success());
    let before = std::fs::read(&raw).unwrap();
    let jdl = site.jdl(
        "raw.jdl",
        r#"Executable = "/bin/sh"; Arguments = "-c 'cat /etc/sd-image; echo scribble > /root/x; sync'";
           VirtualOrganisation = "demo"; VirtualEnvironment = [ Image = "busybox-raw"; ];"#,
    );
    let out = site.run(&jdl);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("name=busybox"),
        "{}",
        text(&out.stdout)
    );
    assert!(
        std::fs::read(&raw).unwrap() == before,
        "the raw base was written"
    );
    assert_eq!(site.leftovers(), Vec::<String>::new());
}
