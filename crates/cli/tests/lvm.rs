//! `storage_lvm` for real: LVM thin snapshots in a QEMU VM.
//!
//! The host kernel may have no device-mapper, so `lvm_thin_snapshots_in_vm`
//! runs `scripts/test-lvm`, which boots Debian's kernel (TCG) with lvm2 and
//! this very test binary (built static) inside; there, `guest_roundtrip`
//! (ignored on the host, a no-op without its environment) drives our code
//! against a real thin pool. Needs root, qemu-system-x86_64, debootstrap (the
//! first run builds build/lvm-test/, about a minute) and the kernel that
//! images/build fetches.

mod common;
use common::repo;
use sd_vmm::storage_lvm::{LvmError, LvmThin, LVS_FIELDS};
use std::path::Path;
use std::process::Command;

#[test]
fn lvm_thin_snapshots_in_vm() {
    if std::env::var_os("SD_LVM_GUEST_VG").is_some() {
        return; // we are the guest binary
    }
    let out = Command::new(repo().join("scripts/test-lvm"))
        .output()
        .expect("run scripts/test-lvm");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- scripts/test-lvm stdout\n{stdout}--- stderr\n{stderr}");
    assert!(
        out.status.success(),
        "scripts/test-lvm failed: {}",
        out.status
    );
    assert!(stdout.contains("LVM-TEST: PASS"));
    assert!(stdout.contains("guest: roundtrip OK"));
}

fn sh(cmd: &str, args: &[&str]) {
    let st = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(st.success(), "{cmd} {args:?}: {st}");
}

fn names(lvm: &LvmThin) -> Vec<String> {
    lvm.list().unwrap().into_iter().map(|l| l.name).collect()
}

/// Inside the VM only (guest.sh sets the environment): the thin pool
/// `VG/POOL` holds `BASE`, an ext4 file system with a file `marker`.
#[test]
#[ignore = "runs inside the LVM test VM (scripts/test-lvm)"]
fn guest_roundtrip() {
    let (Ok(vg), Ok(pool), Ok(base)) = (
        std::env::var("SD_LVM_GUEST_VG"),
        std::env::var("SD_LVM_GUEST_POOL"),
        std::env::var("SD_LVM_GUEST_BASE"),
    ) else {
        eprintln!("not in the LVM test VM: nothing to do");
        return;
    };
    let step = |s: &str| println!("guest: {s}");
    let lvm = LvmThin::new(&vg, &pool).unwrap();

    assert!(lvm.base_exists(&base).unwrap());
    assert!(!lvm.base_exists("no-such-base").unwrap());
    assert!(!lvm.base_exists(&pool).unwrap(), "the pool is no base");
    step(&format!("base_exists ok; list: {:?}", names(&lvm)));

    let t = std::time::Instant::now();
    let dev = lvm.snapshot(&base, "job-1").unwrap();
    step(&format!(
        "snapshot {base} -> {} in {} ms",
        dev.display(),
        t.elapsed().as_millis()
    ));
    assert_eq!(dev, Path::new("/dev").join(&vg).join("job-1"));
    assert!(dev.exists(), "{} missing", dev.display());
    let lvs = lvm.list().unwrap();
    let snap = lvs.iter().find(|l| l.name == "job-1").unwrap();
    assert_eq!(snap.origin.as_deref(), Some(base.as_str()));
    assert_eq!(snap.pool.as_deref(), Some(pool.as_str()));
    assert!(snap.is_thin() && snap.is_active(), "{snap:?}");

    // The raw report, as captured for the unit tests' sample.
    let raw = Command::new("lvs")
        .args([
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            LVS_FIELDS,
            &vg,
        ])
        .output()
        .unwrap();
    println!(
        "guest: lvs-json-begin\n{}guest: lvs-json-end",
        String::from_utf8_lossy(&raw.stdout)
    );

    // Refusals: an existing name, a missing base, a bad name, the pool.
    assert!(matches!(
        lvm.snapshot(&base, "job-1"),
        Err(LvmError::Exists { .. })
    ));
    assert!(matches!(
        lvm.snapshot("no-such-base", "job-2"),
        Err(LvmError::BaseMissing { .. })
    ));
    assert!(matches!(
        lvm.snapshot(&base, "job 2; reboot"),
        Err(LvmError::InvalidName { .. })
    ));
    assert!(matches!(lvm.remove(&pool), Err(LvmError::IsPool { .. })));
    assert!(!names(&lvm).contains(&"job-2".to_string()));
    step("refusals ok");

    // The snapshot holds the base's files; what the job writes stays in it.
    std::fs::create_dir_all("/mnt/snap").unwrap();
    std::fs::create_dir_all("/mnt/base").unwrap();
    sh("mount", &[dev.to_str().unwrap(), "/mnt/snap"]);
    let marker = std::fs::read_to_string("/mnt/snap/marker").unwrap();
    assert!(marker.starts_with("base marker"), "{marker:?}");
    std::fs::write("/mnt/snap/marker", "changed by the job\n").unwrap();
    std::fs::write("/mnt/snap/job-output", "job wrote this\n").unwrap();
    sh("umount", &["/mnt/snap"]);
    sh("sync", &[]);
    let base_dev = lvm.device_path(&base);
    sh(
        "mount",
        &["-o", "ro", base_dev.to_str().unwrap(), "/mnt/base"],
    );
    assert_eq!(
        std::fs::read_to_string("/mnt/base/marker").unwrap(),
        marker,
        "the base changed"
    );
    assert!(!Path::new("/mnt/base/job-output").exists());
    sh("umount", &["/mnt/base"]);
    sh("mount", &[dev.to_str().unwrap(), "/mnt/snap"]);
    assert_eq!(
        std::fs::read_to_string("/mnt/snap/marker").unwrap(),
        "changed by the job\n"
    );
    assert!(Path::new("/mnt/snap/job-output").exists());
    sh("umount", &["/mnt/snap"]);
    step(&format!(
        "marker {:?} read through the snapshot; writes stay in the snapshot, base unchanged",
        marker.trim()
    ));

    // A second snapshot of the same base is independent of the first.
    let dev2 = lvm.snapshot(&base, "job-2").unwrap();
    sh("mount", &["-o", "ro", dev2.to_str().unwrap(), "/mnt/snap"]);
    assert_eq!(std::fs::read_to_string("/mnt/snap/marker").unwrap(), marker);
    sh("umount", &["/mnt/snap"]);
    step("second snapshot sees the pristine base");

    // Removal: idempotent, and the base survives it.
    let t = std::time::Instant::now();
    lvm.remove("job-1").unwrap();
    step(&format!("remove job-1 in {} ms", t.elapsed().as_millis()));
    lvm.remove("job-1").unwrap();
    lvm.remove("job-2").unwrap();
    lvm.remove("never-existed").unwrap();
    assert!(!dev.exists(), "{} still there", dev.display());
    let left = names(&lvm);
    assert!(!left.contains(&"job-1".to_string()) && !left.contains(&"job-2".to_string()));
    assert!(lvm.base_exists(&base).unwrap());
    step(&format!("removed (twice: idempotent); list: {left:?}"));
    step("roundtrip OK");
}
