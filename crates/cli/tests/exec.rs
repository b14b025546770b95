//! `sd exec` and `sd console` on a real VM: a pool member whose control
//! link the pool's monitor holds (its liveness beats) still runs a command
//! over the exec port, with stdin, stdout, stderr and the exit code passed
//! through; another uid is refused; the console is escaped.
//!
//! Needs what the pool tests need (`scripts/setup`: images in build/images,
//! qemu, the sd-qemu user), and the host side of the exec port (QEMU's
//! second virtio-serial port, `deployment::attach_exec`). One VM.

mod common;
use common::{serial, text};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};

const NOBODY: u32 = 65534;

struct Site(common::TestSite);

impl Site {
    fn new() -> Site {
        let config = format!(
            "{head}\
             default_vo: demo\n\
             defaults: {{ image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: sd-guest }}\n\
             images:\n\
             \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             vos:\n\
             \x20 demo: {{ images: [busybox], max_memory_mib: 512, max_vcpus: 2, max_disk_mib: 4096 }}\n",
            head = common::qemu_site_head(),
        );
        let site = Site(common::TestSite::new("sd-exec-", &config));
        // Another user reads the config (and is refused by what it names).
        let dir = site.0.dir.path();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(
            dir.join("site.yaml"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        site
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = self.0.sd();
        c.args(args);
        c
    }

    fn sd(&self, args: &[&str]) -> Output {
        self.command(args).stdin(Stdio::null()).output().unwrap()
    }

    fn sd_as(&self, uid: u32, args: &[&str]) -> Output {
        self.command(args)
            .uid(uid)
            .gid(uid)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn sd_with_stdin(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }
}

const POOL: &str = "\
sfConfig:
  extends: Sequence
  sfLivenessDelay: 1
  sfLivenessFactor: 5
  db: { extends: DefaultXenDomain, image: busybox, memory: 256, disk: 1024 }
";

#[test]
fn exec_into_a_pool_member_passes_streams_and_status_and_refuses_others() {
    let _serial = serial();
    let site = Site::new();
    let file = site.0.path("pool.yaml");
    std::fs::write(&file, POOL).unwrap();
    let out = site.sd(&["start", "farm", &file.display().to_string()]);
    assert!(out.status.success(), "sd start: {}", text(&out.stderr));

    let result = std::panic::catch_unwind(|| {
        // The monitor beats every second over the control link meanwhile.
        let out = site.sd(&[
            "exec",
            "farm/db",
            "--",
            "sh",
            "-c",
            "echo out; echo err >&2; exit 7",
        ]);
        assert_eq!(
            (out.status.code(), text(&out.stdout), text(&out.stderr)),
            (Some(7), "out\n".to_string(), "err\n".to_string())
        );
        // By its full path, or its deployment id; stdin goes through.
        let out = site.sd_with_stdin(&["exec", "farm/sfConfig:db", "--", "cat"], b"hello\0bytes");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert_eq!(out.stdout, b"hello\0bytes");
        let out = site.sd(&["exec", "pool-farm-db", "--", "true"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        // Two at once (the exec port serves one at a time; the second waits).
        let a = site
            .command(&["exec", "farm/db", "--", "sleep", "1"])
            .spawn()
            .unwrap();
        let out = site.sd(&["exec", "farm/db", "--", "sh", "-c", "exit 3"]);
        assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
        assert!(a.wait_with_output().unwrap().status.success());

        // Another uid is refused, by pool member or by id; nothing runs.
        for name in ["farm/db", "pool-farm-db"] {
            let out = site.sd_as(
                NOBODY,
                &["exec", name, "--", "touch", "/tmp/nobody-was-here"],
            );
            assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains("is not yours"),
                "{}",
                text(&out.stderr)
            );
            let out = site.sd_as(NOBODY, &["console", name]);
            assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        }
        let out = site.sd(&[
            "exec",
            "farm/db",
            "--",
            "test",
            "-e",
            "/tmp/nobody-was-here",
        ]);
        assert_eq!(out.status.code(), Some(1));

        // Missing: said so, with where to look.
        let out = site.sd(&["exec", "nosuch", "--", "true"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("sd status"),
            "{}",
            text(&out.stderr)
        );
        let out = site.sd(&["exec", "farm/nosuch", "--", "true"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("its members: db"),
            "{}",
            text(&out.stderr)
        );

        // The console: the guest's boot, escaped.
        let out = site.sd(&["console", "farm/db"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let log = text(&out.stdout);
        assert!(log.contains("sd-guest: serving"), "{log}");
        assert!(
            out.stdout
                .iter()
                .all(|&b| b == b'\n' || b == b'\t' || (0x20..0x7f).contains(&b)),
            "only printable bytes"
        );
    });
    let out = site.sd(&["terminate", "farm"]);
    assert!(out.status.success(), "sd terminate: {}", text(&out.stderr));
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
