//! Booted templates (issue 18): `sd template build`, jobs started as
//! clones, each clone's own identity, a rebuild on change, and nothing left
//! after `sd template rm` and `sd cleanup`. Real QEMU, our initrd and agent
//! (build it with `images/build initrd` into `$SD_IMAGE_DIR`).

mod common;
use common::text;
use std::path::PathBuf;
use std::process::{Output, Stdio};

struct Site(common::TestSite);

impl Site {
    fn new(templates: &str) -> Site {
        let config = format!(
            "{head}templates: {templates}\n\
             defaults: {{ image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: sd-guest }}\n\
             images:\n\
             \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             vos:\n\
             \x20 demo: {{ images: [busybox], max_memory_mib: 1024, max_vcpus: 2, max_disk_mib: 4096 }}\n",
            head = common::qemu_site_head(),
        );
        let site = common::TestSite::new("sd-template-", &config);
        std::fs::create_dir(site.path("out")).unwrap();
        Site(site)
    }

    /// `sd -v run` of a busybox job running `script` with `memory` MiB.
    fn run(&self, name: &str, script: &str, memory: u64) -> Output {
        let jdl = self.0.path(&format!("{name}.jdl"));
        std::fs::write(
            &jdl,
            format!(
                "[ Executable = \"/bin/sh\"; Arguments = \"-c '{script}'\";\n\
                 VirtualOrganisation = \"demo\";\n\
                 VirtualEnvironment = [ Image = \"busybox\"; Memory = {memory}; VCPUs = 1; Disk = 1024; Hostname = \"{name}\"; ]; ]"
            ),
        )
        .unwrap();
        self.0
            .sd()
            .arg("-v")
            .arg("run")
            .arg(&jdl)
            .arg("--output-dir")
            .arg(self.0.path("out"))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// This site's RAM files in /dev/shm.
    fn shm_files(&self) -> Vec<PathBuf> {
        let tag = sd_host::name_tag(self.0.path("state").as_os_str().as_encoded_bytes());
        let prefix = format!("sd-template-{tag:08x}-");
        std::fs::read_dir("/dev/shm")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect()
    }
}

fn ok(out: &Output) -> (String, String) {
    let (o, e) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "sd failed: {}\n{o}\n{e}", out.status);
    (o, e)
}

/// Build, clone, identity, rebuild on a different memory, rm, nothing left.
#[test]
fn clones_are_jobs_with_their_own_identity_and_leave_nothing() {
    let _serial = common::serial();
    let site = Site::new("auto");
    let built = site
        .0
        .sd()
        .args(["template", "build", "busybox", "--vo", "demo"])
        .output()
        .unwrap();
    let (said, _) = ok(&built);
    assert!(said.contains("built"), "{said}");
    assert_eq!(site.shm_files().len(), 1, "one RAM file in /dev/shm");
    let images = ok(&site.0.sd().arg("images").output().unwrap()).0;
    assert!(images.contains("busybox-256m-1c"), "{images}");

    // Two clones: each a job with its own disk, randomness, boot_id,
    // machine-id, host name, and the host's clock.
    let probe = "test ! -e /mine || exit 7; touch /mine; echo host=$(hostname); echo mid=$(cat /etc/machine-id); \
                 echo boot=$(cat /proc/sys/kernel/random/boot_id); \
                 echo rnd=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d [:space:]); echo now=$(date +%s)";
    let mut seen = vec![];
    for name in ["clone-a", "clone-b"] {
        let out = site.run(name, probe, 256);
        let (o, e) = ok(&out);
        assert!(e.contains("started as a clone of a template"), "{e}");
        let host_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let field = |k: &str| {
            o.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_else(|| panic!("no {k} in {o}"))
                .to_string()
        };
        assert_eq!(field("host"), name);
        let guest_now: i64 = field("now").parse().unwrap();
        // The job ran within a second or two before the host's reading.
        assert!(
            (host_now - guest_now).abs() <= 3,
            "guest {guest_now}, host {host_now}"
        );
        seen.push((field("mid"), field("boot"), field("rnd"), o.clone()));
    }
    let (a, b) = (&seen[0], &seen[1]);
    assert_ne!(a.0, b.0, "machine-id");
    assert_ne!(a.1, b.1, "boot_id");
    assert_ne!(a.2, b.2, "random output");
    // A clone's disk is its own: the second did not see the first's /mine
    // (its job would have exited 7).
    assert_eq!(
        site.shm_files().len(),
        1,
        "the clones left the RAM file alone"
    );

    // A different memory size: a template of its own is built, never a
    // clone of the 256 MiB one.
    let out = site.run("bigger", "grep MemTotal /proc/meminfo", 320);
    let (o, e) = ok(&out);
    assert!(e.contains("template busybox-320m-1c built"), "{e}");
    let kib: u64 = o.split_whitespace().nth(1).unwrap().parse().unwrap();
    // 256 MiB shows as ~204 MiB of MemTotal, 320 MiB as ~265 MiB.
    assert!(
        kib > 240 * 1024,
        "a 320 MiB guest, not a clone of the 256 MiB template: {o}"
    );
    assert_eq!(site.shm_files().len(), 2);

    let rm = ok(&site
        .0
        .sd()
        .args(["template", "rm", "busybox"])
        .output()
        .unwrap())
    .0;
    assert!(rm.contains("removed 2"), "{rm}");
    assert!(site.shm_files().is_empty(), "{:?}", site.shm_files());
    ok(&site.0.sd().arg("cleanup").output().unwrap());
    let left = site.0.leftovers(&["qemu-system"]);
    assert!(left.is_empty(), "{left:?}");
}

/// `templates: off` boots, and builds nothing.
#[test]
fn templates_off_boots() {
    let _serial = common::serial();
    let site = Site::new("off");
    let (_, e) = ok(&site.run("plain", "true", 256));
    assert!(e.contains("booted in"), "{e}");
    assert!(site.shm_files().is_empty());
    assert!(!site
        .0
        .path("state/templates")
        .join("busybox-256m-1c")
        .exists());
}
