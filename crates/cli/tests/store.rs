//! The image store when things go wrong for real: a file system that fills
//! up under a save, and a save killed with SIGKILL. Root only (a loop
//! device and a mount); skipped with a message otherwise.

mod common;

use common::loop_device::{loop_devices_of, LoopDevice};
use sd_vmm::image_store::{ImageStore, NoProgress, SaveMeta, StoreError};
use sd_vmm::test_images::sparse_raw;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A root-only test that returned early would pass without testing
/// anything: these fail unless run as root, as scripts/test does.
fn needs_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (a loop device and a mount): run it as root, as scripts/test does"
    );
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `len` bytes that do not compress (xorshift), written to `path`.
fn write_noise(path: &Path, len: u64, seed: u64) {
    let mut x = seed | 1;
    let mut f = std::io::BufWriter::with_capacity(1 << 20, File::create(path).unwrap());
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.into_inner().unwrap().sync_all().unwrap();
}

/// A qcow2 base of `len` bytes of noise and a qcow2 overlay over it with a
/// little more written: a job's disk. Returns (base, overlay).
fn job_disk(dir: &Path, len: u64, seed: u64) -> (PathBuf, PathBuf) {
    let raw = dir.join("noise.raw");
    write_noise(&raw, len, seed);
    let base = dir.join("base.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&base));
    fs::remove_file(&raw).unwrap();
    let overlay = dir.join("overlay.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
        .arg(&base)
        .arg(&overlay));
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", "write -P 0x5a 0 64k"])
        .arg(&overlay));
    (base, overlay)
}

fn sha256(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

fn meta() -> SaveMeta {
    SaveMeta {
        source_job: "4242".into(),
        vo: "demo".into(),
        base_image: "debian-minimal".into(),
        saved_by_uid: 0,
        vo_quota_bytes: None,
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let st = nix::sys::statvfs::statvfs(dir).unwrap();
    #[allow(clippy::unnecessary_cast)]
    let free = st.blocks_available() as u64 * st.fragment_size() as u64;
    free
}

/// An ext4 file system of `size_mib` in `image`, on a loop device, mounted
/// at `dir` while it lives: unmounted and detached when dropped, whatever
/// the test did.
struct SmallFs {
    dir: PathBuf,
    dev: Option<LoopDevice>,
}

impl SmallFs {
    fn new(image: &Path, dir: &Path, size_mib: u64) -> SmallFs {
        File::create(image)
            .unwrap()
            .set_len(size_mib << 20)
            .unwrap();
        // -m 0: no blocks reserved for root (the tests run as root, and
        // the store's free-space check counts what anyone may use).
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-m", "0"])
            .arg(image));
        fs::create_dir_all(dir).unwrap();
        let dev = LoopDevice::attach(image, false).expect("attach a loop device");
        // Built before the mount: a failing mount still detaches.
        let fs = SmallFs {
            dir: dir.to_path_buf(),
            dev: Some(dev),
        };
        nix::mount::mount(
            Some(fs.dev.as_ref().unwrap().path()),
            dir,
            Some("ext4"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            None::<&str>,
        )
        .expect("mount the small ext4");
        fs
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        if nix::mount::umount2(&self.dir, nix::mount::MntFlags::empty()).is_err() {
            let _ = nix::mount::umount2(&self.dir, nix::mount::MntFlags::MNT_DETACH);
        }
        drop(self.dev.take());
    }
}

/// Waits up to 5 s for `file` to be on no loop device.
fn wait_unbound(file: &Path) -> Vec<PathBuf> {
    for _ in 0..100 {
        if loop_devices_of(file).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    loop_devices_of(file)
}

#[test]
fn disk_full_on_a_real_file_system_leaves_nothing_and_the_disk_untouched() {
    needs_root();
    let tmp = tempfile::tempdir().unwrap();
    let fs_image = tmp.path().join("small.ext4");
    {
        let small = SmallFs::new(&fs_image, &tmp.path().join("small"), 24);
        let store_dir = small.dir.join("store");
        let store = ImageStore::new(&store_dir, tmp.path().join("cache"));
        let free = free_bytes(&small.dir);
        assert!(free > 12 << 20 && free <= 24 << 20, "{free}");

        // ~60% of the free space in noise: the estimate (the disk's
        // allocation) fits, the flattened copy and its compressed copy
        // (together ~120%) do not: the store fills up in the middle.
        let work = tmp.path().join("fits");
        fs::create_dir(&work).unwrap();
        let len = (free * 3 / 5) & !((1 << 20) - 1);
        let (base, overlay) = job_disk(&work, len, 0x1234_5678);
        let (base_hash, overlay_hash) = (sha256(&base), sha256(&overlay));
        let e = store
            .save(&overlay, "full", meta(), &NoProgress)
            .unwrap_err();
        assert!(matches!(e, StoreError::Full { .. }), "{e}");
        assert!(
            e.to_string().starts_with(&format!(
                "the image store {} is full (no space left on device): nothing was saved and \
                 the job's disk is untouched",
                store_dir.display()
            )),
            "{e}"
        );
        assert_eq!(files_in(&store_dir), Vec::<String>::new());
        assert!(store.list().unwrap().is_empty());
        assert!(store.find("full").unwrap().is_none());
        assert_eq!(sha256(&overlay), overlay_hash);
        assert_eq!(sha256(&base), base_hash);
        // All the space came back.
        assert!(free_bytes(&small.dir) + (1 << 20) >= free);

        // ~40 MiB of noise: more than the whole file system, refused
        // before anything is written.
        let work = tmp.path().join("big");
        fs::create_dir(&work).unwrap();
        let (base, overlay) = job_disk(&work, 40 << 20, 0x9abc_def0);
        let (base_hash, overlay_hash) = (sha256(&base), sha256(&overlay));
        let e = store
            .save(&overlay, "big", meta(), &NoProgress)
            .unwrap_err();
        let StoreError::NoSpace { needed, .. } = e else {
            panic!("{e}")
        };
        assert!(needed >= 40 << 20, "{needed}");
        assert!(
            e.to_string().starts_with(&format!(
                "not enough free space in the image store {}",
                store_dir.display()
            )),
            "{e}"
        );
        assert_eq!(files_in(&store_dir), Vec::<String>::new());
        assert!(store.list().unwrap().is_empty());
        assert_eq!(sha256(&overlay), overlay_hash);
        assert_eq!(sha256(&base), base_hash);
    }
    // Unmounted and detached.
    assert_eq!(wait_unbound(&fs_image), Vec::<PathBuf>::new());
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(&*tmp.path().join("small").to_string_lossy()),
        "still mounted"
    );
}

const HELPER_OVERLAY: &str = "SD_STORE_TEST_OVERLAY";
const HELPER_STORE: &str = "SD_STORE_TEST_STORE";

/// Not a test: the process `a_save_killed_with_sigkill_...` starts and
/// kills. Saves the overlay `$SD_STORE_TEST_OVERLAY` into the store
/// `$SD_STORE_TEST_STORE` (cache beside it).
#[test]
#[ignore]
fn helper_save_forever() {
    let (Some(overlay), Some(store)) = (
        std::env::var_os(HELPER_OVERLAY),
        std::env::var_os(HELPER_STORE),
    ) else {
        eprintln!("a helper of a_save_killed_with_sigkill_leaves_only_temporaries: not run alone");
        return;
    };
    let store = PathBuf::from(store);
    let store = ImageStore::new(&store, store.with_extension("cache"));
    let t = Instant::now();
    store
        .save(Path::new(&overlay), "killed", meta(), &NoProgress)
        .unwrap();
    eprintln!("helper: save finished after {:?}", t.elapsed());
}

#[test]
fn a_save_killed_with_sigkill_leaves_only_temporaries_that_cleanup_removes() {
    needs_root();
    let tmp = tempfile::tempdir().unwrap();
    let (base, overlay) = job_disk(tmp.path(), 300 << 20, 0x0fed_cba9);
    let (base_hash, overlay_hash) = (sha256(&base), sha256(&overlay));
    let store_dir = tmp.path().join("store");
    let store = ImageStore::new(&store_dir, tmp.path().join("store.cache"));

    // Its own process group: the SIGKILL takes its qemu-img too, as a
    // batch system's kill of the job's processes does.
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "helper_save_forever", "--ignored", "--nocapture"])
        .env(HELPER_OVERLAY, &overlay)
        .env(HELPER_STORE, &store_dir)
        .process_group(0)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    let has_temporary = |dir: &Path| files_in(dir).iter().any(|f| f.contains(".tmp-"));
    while !has_temporary(&store_dir) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the helper ended before it wrote a temporary"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no temporary after 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the helper finished its save within 300 ms of starting it: make the disk larger"
    );
    nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    // The rest of the group (qemu-img) is gone as well.
    for _ in 0..100 {
        if nix::sys::signal::killpg(pid, None).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let left = files_in(&store_dir);
    eprintln!("after SIGKILL at {:?}: {left:?}", started.elapsed());
    assert!(store.list().unwrap().is_empty(), "{left:?}");
    assert!(store.find("killed").unwrap().is_none());
    assert!(
        left.iter()
            .all(|f| f.contains(&format!(".tmp-{pid}")) || f == ".lock"),
        "{left:?}"
    );
    assert!(
        left.iter()
            .any(|f| f == &format!("killed.qcow2.zst.tmp-{pid}")),
        "{left:?}"
    );

    let removed = store.cleanup_temporaries().unwrap();
    let expected: Vec<PathBuf> = left
        .iter()
        .filter(|f| f.contains(".tmp-"))
        .map(|f| store_dir.join(f))
        .collect();
    assert_eq!(removed, expected);
    let rest: Vec<String> = files_in(&store_dir)
        .into_iter()
        .filter(|f| f != ".lock")
        .collect();
    assert_eq!(rest, Vec::<String>::new());
    assert_eq!(
        files_in(&tmp.path().join("store.cache")),
        Vec::<String>::new()
    );
    assert_eq!(sha256(&overlay), overlay_hash);
    assert_eq!(sha256(&base), base_hash);
}

#[test]
fn loop_device_shows_the_file_and_is_detached() {
    use std::fs::OpenOptions;
    use std::os::unix::fs::FileExt;
    needs_root();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base.raw");
    let data = sparse_raw(&base);
    let dev = LoopDevice::attach(&base, true).unwrap();
    assert!(dev.path().to_str().unwrap().starts_with("/dev/loop"));
    assert_eq!(dev.backing(), base);
    assert_eq!(loop_devices_of(&base), [dev.path().to_path_buf()]);
    let got = std::fs::read(dev.path()).unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the loop device does not read back the file");
    // Read-only: writes are refused.
    let written = OpenOptions::new()
        .write(true)
        .open(dev.path())
        .and_then(|f| f.write_all_at(b"x", 0).and_then(|_| f.sync_all()));
    assert!(written.is_err(), "a read-only loop device was written");
    dev.detach().unwrap();
    assert_eq!(wait_unbound(&base), Vec::<PathBuf>::new());

    // Dropping it detaches too, and a writable one writes through.
    {
        let dev = LoopDevice::attach(&base, false).unwrap();
        let f = OpenOptions::new().write(true).open(dev.path()).unwrap();
        f.write_all_at(b"through", 5 << 20).unwrap();
        f.sync_all().unwrap();
    }
    assert_eq!(wait_unbound(&base), Vec::<PathBuf>::new());
    let after = std::fs::read(&base).unwrap();
    assert_eq!(&after[5 << 20..(5 << 20) + 7], b"through");
}
