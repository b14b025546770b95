use super::cache::*;
use super::error::bytes;
use super::files::*;
use super::locking::*;
use super::progress::progress_step;
use super::save::*;
use super::*;
use crate::test_images::noise;
use sd_site::DiskFormat;
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Seek};
use std::process::Command;
use std::time::UNIX_EPOCH;
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup installs qemu-utils)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn qemu_img_create(path: &Path, size: &str, backing: Option<&Path>) {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", "qcow2"]);
    if let Some(b) = backing {
        cmd.args(["-F", "qcow2", "-b"]).arg(b);
    }
    run(cmd.arg(path).arg(size));
}

fn qemu_io_write(path: &Path, pattern: u8, offset: &str, len: &str) {
    run(Command::new("qemu-io").args([
        "-f".as_ref(),
        "qcow2".as_ref(),
        "-c".as_ref(),
        format!("write -q -P {pattern:#x} {offset} {len}").as_ref(),
        path.as_os_str(),
    ]));
}

/// The guest-visible contents of an image (its backing chain included).
fn raw_contents(path: &Path) -> Vec<u8> {
    let out = tempfile::NamedTempFile::new().unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(path)
        .arg(out.path()));
    fs::read(out.path()).unwrap()
}

/// A base (8 MiB, 0x11 in its first MiB) and an overlay on it (0x5a in
/// its second MiB), in `dir`.
fn job_disk(dir: &Path) -> PathBuf {
    let base = dir.join("base.qcow2");
    qemu_img_create(&base, "8M", None);
    qemu_io_write(&base, 0x11, "0", "1M");
    let overlay = dir.join("overlay.qcow2");
    qemu_img_create(&overlay, "8M", Some(&base));
    qemu_io_write(&overlay, 0x5a, "1M", "1M");
    overlay
}

fn meta(vo: &str, quota: Option<u64>) -> SaveMeta {
    SaveMeta {
        source_job: "slurm-9001".into(),
        vo: vo.into(),
        base_image: "debian-minimal".into(),
        saved_by_uid: 1000,
        vo_quota_bytes: quota,
    }
}

fn store_in(dir: &Path) -> ImageStore {
    ImageStore::new(dir.join("store"), dir.join("store-cache"))
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = entries(dir)
        .unwrap()
        .iter()
        .map(|p| file_name(p).unwrap().to_string())
        .filter(|f| f != LOCK_FILE)
        .collect();
    v.sort();
    v
}

/// Records what it is told, as `(done, total)`.
#[derive(Default)]
struct Recorder {
    total: Cell<u64>,
    calls: Cell<Vec<(u64, u64)>>,
}

impl Recorder {
    fn push(&self, done: u64) {
        let mut v = self.calls.take();
        v.push((done, self.total.get()));
        self.calls.set(v);
    }
}

/// Fails the test if anything is reported.
struct Panics(&'static str);

impl Progress for Panics {
    fn started(&self, _: u64) {
        panic!("{}", self.0)
    }
    fn advanced_to(&self, _: u64) {
        panic!("{}", self.0)
    }
    fn finished(&self) {
        panic!("{}", self.0)
    }
}

impl Progress for Recorder {
    fn started(&self, total: u64) {
        self.total.set(total);
        self.push(0);
    }
    fn advanced_to(&self, done: u64) {
        self.push(done);
    }
    fn finished(&self) {}
}

/// A guest that escaped into its QEMU may rewrite its overlay's header to
/// name any host file as the backing file; the save reads the recorded
/// base, never that name, and refuses an external data file.
#[test]
fn a_save_reads_the_recorded_base_not_the_backing_file_the_header_names() {
    let tmp = tempfile::tempdir().unwrap();
    let overlay = job_disk(tmp.path());
    let base = tmp.path().join("base.qcow2");
    let expected = raw_contents(&overlay);
    let secret = tmp.path().join("secret.qcow2");
    qemu_img_create(&secret, "8M", None);
    qemu_io_write(&secret, 0x77, "0", "1M");
    run(Command::new("qemu-img")
        .args(["rebase", "-u", "-F", "qcow2", "-b"])
        .arg(&secret)
        .arg(&overlay));
    let store = store_in(tmp.path());
    let disk = DiskToSave {
        backing: Some(base),
        ..DiskToSave::file(&overlay)
    };
    store
        .save_disk(&disk, "honest", meta("demo", None), &NoProgress)
        .unwrap();
    let saved = store.open_for_use("honest", &NoProgress).unwrap();
    assert_eq!(raw_contents(&saved), expected, "the recorded base's data");
    // Trusting the header (as before) would have copied the secret.
    store
        .save(&overlay, "trusting", meta("demo", None), &NoProgress)
        .unwrap();
    let trusting = store.open_for_use("trusting", &NoProgress).unwrap();
    assert_eq!(raw_contents(&trusting)[..4], [0x77; 4]);

    // An external data file in the header: refused, whatever the backing.
    let with_data_file = tmp.path().join("data-file.qcow2");
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o"])
        .arg(format!(
            "data_file={}",
            secret.with_extension("data").display()
        ))
        .arg(&with_data_file)
        .arg("8M"));
    let e = store
        .save_disk(
            &DiskToSave::file(&with_data_file),
            "df",
            meta("demo", None),
            &NoProgress,
        )
        .unwrap_err();
    assert!(e.to_string().contains("external data file"), "{e}");
}

#[test]
fn save_list_use_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let overlay = job_disk(tmp.path());
    let overlay_before = fs::read(&overlay).unwrap();
    let store = store_in(tmp.path());
    assert_eq!(store.list().unwrap(), []);

    let progress = Recorder::default();
    let m = store
        .save(&overlay, "atlas-sim.v1", meta("atlas", None), &progress)
        .unwrap();
    assert_eq!(
        fs::read(&overlay).unwrap(),
        overlay_before,
        "overlay untouched"
    );
    let calls = progress.calls.take();
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));
    assert_eq!(calls.last(), Some(&(m.size, m.size)));

    assert_eq!(m.name, "atlas-sim.v1");
    assert_eq!(
        (m.source_job.as_str(), m.vo.as_str(), m.base_image.as_str()),
        ("slurm-9001", "atlas", "debian-minimal")
    );
    assert_eq!((m.format.as_str(), m.saved_by_uid), ("qcow2", 1000));
    let zst = store.dir().join("atlas-sim.v1.qcow2.zst");
    assert_eq!(m.compressed_size, fs::metadata(&zst).unwrap().len());
    assert!(m.compressed_size < m.size);
    assert_eq!(m.sha256, sha256_of(&mut File::open(&zst).unwrap()).unwrap());
    assert_eq!(m.created.len(), 20, "{}", m.created);
    assert_eq!(
        files_in(store.dir()),
        ["atlas-sim.v1.json", "atlas-sim.v1.qcow2.zst"]
    );
    assert_eq!(store.list().unwrap(), std::slice::from_ref(&m));

    let used = store.open_for_use("atlas-sim.v1", &NoProgress).unwrap();
    assert_eq!(
        used,
        store
            .cache_dir()
            .join(format!("atlas-sim.v1-{}.qcow2", &m.sha256[..16]))
    );
    assert_eq!(fs::metadata(&used).unwrap().len(), m.size);
    // A standalone qcow2 with the job's disk in it.
    let info = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(&used)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["format"], "qcow2");
    assert!(info.get("backing-filename").is_none());
    let contents = raw_contents(&used);
    assert_eq!(contents, raw_contents(&overlay));
    assert!(contents[..1 << 20].iter().all(|&b| b == 0x11));
    assert!(contents[1 << 20..2 << 20].iter().all(|&b| b == 0x5a));
    assert!(contents[2 << 20..].iter().all(|&b| b == 0));
    run(Command::new("qemu-img")
        .arg("compare")
        .arg(&overlay)
        .arg(&used));

    // Decompressed once: the second use finds it.
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let first = inode(&used);
    let again = store
        .open_for_use("atlas-sim.v1", &Panics("decompressed again"))
        .unwrap();
    assert_eq!((again.clone(), inode(&again)), (used.clone(), first));

    // The name is taken.
    let e = store
        .save(&overlay, "atlas-sim.v1", meta("atlas", None), &NoProgress)
        .unwrap_err();
    assert!(matches!(e, StoreError::Exists { .. }), "{e}");

    // Removed: gone from the list, the store and the cache.
    store.remove("atlas-sim.v1").unwrap();
    assert_eq!(store.list().unwrap(), []);
    assert_eq!(files_in(store.dir()), Vec::<String>::new());
    assert_eq!(files_in(store.cache_dir()), Vec::<String>::new());
    let e = store.remove("atlas-sim.v1").unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
    let e = store.open_for_use("atlas-sim.v1", &NoProgress).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "no saved image \"atlas-sim.v1\" in {}; saved images: none",
            store.dir().display()
        )
    );
}

/// A raw disk (a cloned raw image, or an LVM snapshot's block device)
/// is read as raw, never probed, and saved as a standalone qcow2 like
/// an overlay; a caller's allocation figure (a thin volume's) is the
/// one the free-space check uses.
#[test]
fn a_raw_disk_is_saved_as_qcow2() {
    let tmp = tempfile::tempdir().unwrap();
    let disk = tmp.path().join("disk.raw");
    let mut data = vec![0u8; 4 << 20];
    data[..1 << 20].fill(0x33);
    // A qcow2 magic at its start must not make it a qcow2.
    data[..4].copy_from_slice(b"QFI\xfb");
    fs::write(&disk, &data).unwrap();
    let store = store_in(tmp.path());

    let m = store
        .save(&disk, "raw-file", meta("demo", None), &NoProgress)
        .unwrap();
    assert_eq!(m.format, "qcow2");
    let used = store.open_for_use("raw-file", &NoProgress).unwrap();
    assert_eq!(raw_contents(&used), data);

    // As for a block device: no extension, format and allocation given.
    let dev = tmp.path().join("lvm-volume");
    fs::copy(&disk, &dev).unwrap();
    let to_save = DiskToSave {
        path: dev.clone(),
        format: DiskFormat::Lvm,
        allocated: Some(1 << 20),
        backing: None,
    };
    store
        .save_disk(&to_save, "from-lvm", meta("demo", None), &NoProgress)
        .unwrap();
    let used = store.open_for_use("from-lvm", &NoProgress).unwrap();
    assert_eq!(raw_contents(&used), data);
    // A figure larger than the free space is refused before anything is written.
    let huge = DiskToSave {
        allocated: Some(u64::MAX / 2),
        backing: None,
        ..to_save
    };
    let e = store
        .save_disk(&huge, "too-big", meta("demo", None), &NoProgress)
        .unwrap_err();
    assert!(matches!(e, StoreError::NoSpace { .. }), "{e}");
    assert_eq!(fs::read(&dev).unwrap(), data, "the disk is only read");
}

#[test]
fn a_flipped_byte_is_a_checksum_error() {
    let tmp = tempfile::tempdir().unwrap();
    let overlay = job_disk(tmp.path());
    let store = store_in(tmp.path());
    let m = store
        .save(&overlay, "img", meta("demo", None), &NoProgress)
        .unwrap();
    let zst = store.dir().join("img.qcow2.zst");
    let mut data = fs::read(&zst).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x01;
    fs::write(&zst, &data).unwrap();

    let e = store
        .open_for_use("img", &Panics("decompressed a corrupt image"))
        .unwrap_err();
    let StoreError::Checksum { file, expected, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!((file, expected), (&zst, &m.sha256));
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "{} is corrupt (checksum mismatch): its sha256 is ",
            zst.display()
        )),
        "{msg}"
    );
    assert!(msg.ends_with("Remove the image (it cannot be repaired) and save it again"));
    // Nothing else done: no decompressed copy, no temporary.
    assert_eq!(files_in(store.cache_dir()), Vec::<String>::new());
    assert!(!store
        .cache_dir()
        .join(format!("img-{}.qcow2", &m.sha256[..16]))
        .exists());
}

fn dead_pid() -> u32 {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[test]
fn cleanup_removes_temporaries_of_dead_processes_only() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_in(tmp.path());
    assert_eq!(store.cleanup_temporaries().unwrap(), Vec::<PathBuf>::new());
    fs::create_dir_all(store.dir()).unwrap();
    fs::create_dir_all(store.cache_dir()).unwrap();
    let (dead, live) = (dead_pid(), std::process::id());
    let write = |dir: &Path, f: &str| fs::write(dir.join(f), b"x").unwrap();
    for f in [
        format!("a.qcow2.zst.tmp-{dead}"),
        format!("a.qcow2.tmp-{dead}"),
        format!("a.json.tmp-{dead}"),
        format!("b.qcow2.zst.tmp-{live}"),
        format!("b.json.tmp-{live}"),
        "c.qcow2.zst".into(), // a crash between the renames: no manifest
        "d.qcow2.zst".into(),
        "d.json".into(),
        "notes.tmp-x".into(),
        "e.tmp-".into(),
    ] {
        write(store.dir(), &f);
    }
    write(
        store.cache_dir(),
        &format!("d-0123456789abcdef.qcow2.tmp-{dead}"),
    );
    write(
        store.cache_dir(),
        &format!("d-fedcba9876543210.qcow2.tmp-{live}"),
    );

    let removed = store.cleanup_temporaries().unwrap();
    let mut expected = vec![
        store.dir().join(format!("a.qcow2.zst.tmp-{dead}")),
        store.dir().join(format!("a.qcow2.tmp-{dead}")),
        store.dir().join(format!("a.json.tmp-{dead}")),
        store.dir().join("c.qcow2.zst"),
        store
            .cache_dir()
            .join(format!("d-0123456789abcdef.qcow2.tmp-{dead}")),
    ];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(
        files_in(store.dir()),
        [
            format!("b.json.tmp-{live}"),
            format!("b.qcow2.zst.tmp-{live}"),
            "d.json".into(),
            "d.qcow2.zst".into(),
            "e.tmp-".into(),
            "notes.tmp-x".into(),
        ]
    );
    assert_eq!(
        files_in(store.cache_dir()),
        [format!("d-fedcba9876543210.qcow2.tmp-{live}")]
    );
}

#[test]
fn quota_counts_the_vo_images_and_the_new_one() {
    let tmp = tempfile::tempdir().unwrap();
    let overlay = job_disk(tmp.path());
    let store = store_in(tmp.path());
    let first = store
        .save(&overlay, "one", meta("atlas", None), &NoProgress)
        .unwrap();
    let c = first.compressed_size;
    // Another VO's images do not count.
    store
        .save(&overlay, "cms-one", meta("cms", Some(c + 10)), &NoProgress)
        .unwrap();

    // Room for part of a second image: refused after compressing it.
    let quota = c + c / 2;
    let e = store
        .save(&overlay, "two", meta("atlas", Some(quota)), &NoProgress)
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Quota { usage, new: Some(n), .. } if usage == c && n == c),
        "{e}"
    );
    assert_eq!(
        e.to_string(),
        format!(
            "saving \"two\" would exceed VO \"atlas\"'s image store quota of {}: its saved \
             images use {} and this one needs {}; remove some of them",
            bytes(quota),
            bytes(c),
            bytes(c)
        )
    );
    // Quota already used up: refused before anything is written.
    let e = store
        .save(&overlay, "three", meta("atlas", Some(c)), &NoProgress)
        .unwrap_err();
    assert!(matches!(e, StoreError::Quota { new: None, .. }), "{e}");
    assert!(e
        .to_string()
        .contains("VO \"atlas\"'s image store quota of"));
    assert_eq!(
        files_in(store.dir()),
        [
            "cms-one.json",
            "cms-one.qcow2.zst",
            "one.json",
            "one.qcow2.zst"
        ]
    );
    // Room for both.
    store
        .save(&overlay, "two", meta("atlas", Some(2 * c)), &NoProgress)
        .unwrap();
}

/// A tmpfs of `size` mounted at `dir` while it lives (root only).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        sd_host::needs_root("mounting a small tmpfs");
        fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("size={size},mode=0700").as_str()),
        )
        .expect("mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn refused_when_the_store_has_too_little_free_space() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.qcow2");
    qemu_img_create(&base, "16M", None);
    qemu_io_write(&base, 0x11, "0", "4M");
    let overlay = tmp.path().join("overlay.qcow2");
    qemu_img_create(&overlay, "16M", Some(&base));
    qemu_io_write(&overlay, 0x5a, "4M", "1M");
    let _fs = Tmpfs::mount(&tmp.path().join("small"), "2m");
    let store = ImageStore::new(tmp.path().join("small/store"), tmp.path().join("cache"));
    let e = store
        .save(&overlay, "big", meta("demo", None), &NoProgress)
        .unwrap_err();
    let StoreError::NoSpace { needed, free, .. } = e else {
        panic!("{e}")
    };
    assert!(needed > 5 << 20 && free <= 2 << 20, "{needed} {free}");
    let msg = e.to_string();
    assert!(
        msg.starts_with(&format!(
            "not enough free space in the image store {}: saving needs about {needed} bytes",
            store.dir().display()
        )),
        "{msg}"
    );
    assert!(msg.contains(&format!("{free} bytes (")), "{msg}");
    assert_eq!(files_in(store.dir()), Vec::<String>::new());
}

#[test]
fn disk_full_while_saving_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    // 3 MiB that do not compress: the estimate (~3 MiB) fits in 5 MiB,
    // the flattened copy and the compressed one together (~6 MiB) do not.
    let raw = tmp.path().join("base.raw");
    fs::write(&raw, noise(3 << 20)).unwrap();
    let base = tmp.path().join("base.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&base));
    let overlay = tmp.path().join("overlay.qcow2");
    qemu_img_create(&overlay, "4M", Some(&base));
    qemu_io_write(&overlay, 0x5a, "3M", "64k");
    let overlay_before = fs::read(&overlay).unwrap();
    let _fs = Tmpfs::mount(&tmp.path().join("small"), "5m");
    let store = ImageStore::new(tmp.path().join("small/store"), tmp.path().join("cache"));
    let e = store
        .save(&overlay, "full", meta("demo", None), &NoProgress)
        .unwrap_err();
    assert!(matches!(e, StoreError::Full { .. }), "{e}");
    assert!(
        e.to_string().starts_with(&format!(
            "the image store {} is full (no space left on device)",
            store.dir().display()
        )),
        "{e}"
    );
    assert_eq!(files_in(store.dir()), Vec::<String>::new());
    assert_eq!(store.list().unwrap(), []);
    assert_eq!(fs::read(&overlay).unwrap(), overlay_before);
}

#[test]
fn names_are_checked_like_catalogue_names() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_in(tmp.path());
    let overlay = tmp.path().join("none.qcow2");
    for bad in ["", "../etc", "a/b", "Atlas", ".hidden", "-x", "a b"] {
        let e = store
            .save(&overlay, bad, meta("demo", None), &NoProgress)
            .unwrap_err();
        assert!(matches!(e, StoreError::InvalidName { .. }), "{bad}: {e}");
        let e = store.open_for_use(bad, &NoProgress).unwrap_err();
        assert!(matches!(e, StoreError::InvalidName { .. }), "{bad}: {e}");
        let e = store.remove(bad).unwrap_err();
        assert!(matches!(e, StoreError::InvalidName { .. }), "{bad}: {e}");
    }
    assert_eq!(
        store.remove("../etc").unwrap_err().to_string(),
        "invalid image name \"../etc\": an image is named by its catalogue name, never by a path"
    );
    assert!(!store.dir().exists() && !store.cache_dir().exists());
}

#[test]
fn a_disk_in_use_or_missing_is_not_saved() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_in(tmp.path());
    let e = store
        .save(
            &tmp.path().join("none.qcow2"),
            "x",
            meta("demo", None),
            &NoProgress,
        )
        .unwrap_err();
    assert!(
        matches!(e, StoreError::QemuImg { action: "read", .. }),
        "{e}"
    );
    assert!(!store.dir().exists());

    // A process that has the disk open for writing (as a running
    // domain's QEMU does) holds its lock: refused, nothing written.
    let overlay = job_disk(tmp.path());
    let mut holder = Command::new("qemu-io")
        .args(["-f", "qcow2"])
        .arg(&overlay)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Its prompt says the image is open.
    let mut prompt = [0u8; 9];
    holder
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut prompt)
        .unwrap();
    assert_eq!(&prompt, b"qemu-io> ");
    let e = store
        .save(&overlay, "x", meta("demo", None), &NoProgress)
        .unwrap_err();
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert!(
        matches!(e, StoreError::QemuImg { action: "read", .. }),
        "{e}"
    );
    assert!(
        e.to_string()
            .ends_with("(is its domain still running? save it after the domain is off)"),
        "{e}"
    );
    assert!(!store.dir().exists());
    store
        .save(&overlay, "x", meta("demo", None), &NoProgress)
        .unwrap();
}

#[test]
fn refused_when_the_cache_has_too_little_free_space() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base.qcow2");
    qemu_img_create(&base, "16M", None);
    qemu_io_write(&base, 0x11, "0", "4M");
    let store = ImageStore::new(tmp.path().join("store"), tmp.path().join("small/cache"));
    let m = store
        .save(&base, "big", meta("demo", None), &NoProgress)
        .unwrap();
    let _fs = Tmpfs::mount(&tmp.path().join("small"), "2m");
    let e = store.open_for_use("big", &NoProgress).unwrap_err();
    assert!(
        matches!(e, StoreError::CacheNoSpace { needed, .. } if needed == m.size),
        "{e}"
    );
    assert!(
        e.to_string().starts_with(&format!(
            "not enough free space in the image cache {} to decompress the image",
            store.cache_dir().display()
        )),
        "{e}"
    );
    assert_eq!(files_in(store.cache_dir()), Vec::<String>::new());
}

#[test]
fn a_bad_manifest_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let store = store_in(tmp.path());
    fs::create_dir_all(store.dir()).unwrap();
    fs::write(store.dir().join("x.json"), b"{").unwrap();
    let e = store.list().unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "manifest {} is unreadable (",
            store.dir().join("x.json").display()
        )),
        "{e}"
    );
}

#[test]
fn sparse_writes_and_timestamps() {
    let tmp = tempfile::tempdir().unwrap();
    let f = File::create(tmp.path().join("s")).unwrap();
    let mut data = vec![0u8; 4 * SPARSE_BLOCK];
    data[SPARSE_BLOCK + 3] = 7;
    data[4 * SPARSE_BLOCK - 1] = 9;
    write_sparse(&f, &data, 0).unwrap();
    write_sparse(&f, &vec![0u8; SPARSE_BLOCK], data.len() as u64).unwrap();
    f.set_len((data.len() + SPARSE_BLOCK) as u64).unwrap();
    let back = fs::read(tmp.path().join("s")).unwrap();
    assert_eq!(&back[..data.len()], &data[..]);
    assert!(back[data.len()..].iter().all(|&b| b == 0));

    let t = |s| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
    assert_eq!(t(0), "1970-01-01T00:00:00Z");
    assert_eq!(t(951_825_600), "2000-02-29T12:00:00Z");
    assert_eq!(t(1_795_538_775), "2026-11-24T16:46:15Z");
    assert_eq!(t(4_107_542_399), "2100-02-28T23:59:59Z");
    assert_eq!(temporary_pid("a.json.tmp-42"), Some(42));
    assert_eq!(temporary_pid("a.json.tmp-4x"), None);
    assert!(is_cache_entry_of("a-b-0123456789abcdef.qcow2", "a-b"));
    assert!(!is_cache_entry_of("a-b-0123456789abcdef.qcow2", "a"));
}

#[test]
fn progress_is_logged_every_tenth() {
    let steps: Vec<u64> = [0, 5, 9, 10, 19, 20, 55, 99, 100]
        .iter()
        .map(|&d| progress_step(d, 100))
        .collect();
    assert_eq!(steps, [0, 0, 0, 1, 1, 2, 5, 9, 10]);
    assert_eq!(progress_step(0, 0), 10);
    assert_eq!(progress_step(u64::MAX, u64::MAX), 10);
    assert_eq!(progress_step(7, 3), 10);
    // The log and the default (no UI installed) take what save and
    // open_for_use report.
    let tmp = tempfile::tempdir().unwrap();
    let store = store_in(tmp.path());
    let overlay = job_disk(tmp.path());
    let log = LogProgress::new("saving x");
    store.save(&overlay, "x", meta("demo", None), &log).unwrap();
    store
        .open_for_use("x", &*progress("decompressing x"))
        .unwrap();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Timings for `scripts/bench-storage`: `SD_BENCH_INPUT` is a
/// standalone qcow2 (a flattened disk), `SD_BENCH_DIR` a directory to
/// work in, `SD_BENCH_N` the runs (default 1). Prints one `bench` line
/// of medians in milliseconds.
#[test]
#[ignore]
fn bench_save_and_decompress() {
    let input = PathBuf::from(std::env::var_os("SD_BENCH_INPUT").expect("SD_BENCH_INPUT"));
    let dir = PathBuf::from(std::env::var_os("SD_BENCH_DIR").expect("SD_BENCH_DIR"));
    let n: usize = std::env::var("SD_BENCH_N").map_or(1, |v| v.parse().unwrap());
    let size = fs::metadata(&input).unwrap().len();
    let ms = |t: Instant| t.elapsed().as_secs_f64() * 1e3;
    let mut t_ms: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut time = |what, t: Instant| t_ms.entry(what).or_default().push(ms(t));
    // Each timed part starts with nothing dirty in the page cache (as
    // the script's zstd runs do): writeback of earlier parts would slow
    // it down by up to 3x on a VM's disk.
    let settle = nix::unistd::sync;
    let mut compressed = 0;
    for _ in 0..n {
        // The compression part of save, alone: from the flattened file
        // (in the page cache) to a .zst, then its fsync.
        let out_path = dir.join("bench.zst");
        let out = File::create(&out_path).unwrap();
        let mut src = File::open(&input).unwrap();
        settle();
        let t = Instant::now();
        compressed = compress(&mut src, size, &out, &NoProgress).unwrap().0;
        time("compress_ms", t);
        let t = Instant::now();
        out.sync_all().unwrap();
        time("compress_fsync_ms", t);
        drop(out);
        fs::remove_file(&out_path).unwrap();

        // The whole of save (flattening included).
        let store = ImageStore::new(dir.join("store"), dir.join("store-cache"));
        let _ = store.remove("bench");
        settle();
        let t = Instant::now();
        let m = store
            .save(&input, "bench", meta("bench", None), &NoProgress)
            .unwrap();
        time("save_ms", t);

        // The parts of the first use: checksum, decompression, fsync.
        let t = Instant::now();
        let mut f = File::open(store.image_path("bench")).unwrap();
        assert_eq!(sha256_of(&mut f).unwrap(), m.sha256);
        time("verify_ms", t);
        f.rewind().unwrap();
        let out_path = dir.join("bench.qcow2");
        let out = File::create(&out_path).unwrap();
        settle();
        let t = Instant::now();
        assert_eq!(decompress(f, &out, m.size, &NoProgress).unwrap(), m.size);
        time("decompress_ms", t);
        let t = Instant::now();
        out.sync_all().unwrap();
        time("decompress_fsync_ms", t);
        drop(out);
        fs::remove_file(&out_path).unwrap();

        // The whole of the first use.
        settle();
        let t = Instant::now();
        store.open_for_use("bench", &NoProgress).unwrap();
        time("open_for_use_ms", t);
        store.remove("bench").unwrap();
    }
    let mut line = format!("bench size={size} compressed={compressed}");
    for (what, v) in &mut t_ms {
        line += &format!(" {what}={:.1}", median(v));
        eprintln!("{what}: {v:.0?}");
    }
    println!("{line}");
}
