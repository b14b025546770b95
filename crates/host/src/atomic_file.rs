//! Files that are either wholly there or not at all, the one temporary-file
//! scheme of the workspace: written to a temporary name beside the target
//! (`<name>.tmp-<pid>`, see [`temporary_path`]), fsynced, renamed into
//! place (or hard-linked, to refuse an existing target), and the directory
//! fsynced. A crash leaves at most a `*.tmp-<pid>` file, which
//! [`temporary_pid`] recognises. They are private (0600) unless
//! [`Readers`] says who else may read them.
//!
//! [`write`] and its siblings write bytes; [`TempFile`] is the same scheme
//! for a file written as a stream (a saved image, a file from a guest).

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Who may read a file besides root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readers {
    /// Root only (0600).
    Root,
    /// The user `uid`, who owns it (0600): what is written for that user.
    User(u32),
    /// Group `gid` (0640, root's): the user may read it, never change it.
    Group(u32),
}

/// Replaces `path` with `bytes` (root's alone).
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, bytes, false, Readers::Root)
}

/// Replaces `path` with `bytes`, readable by user `uid` only (and root).
pub fn write_for(path: &Path, bytes: &[u8], uid: u32) -> io::Result<()> {
    write_with(path, bytes, false, Readers::User(uid))
}

/// Replaces `path` with `bytes` for `readers`.
pub fn write_readable(path: &Path, bytes: &[u8], readers: Readers) -> io::Result<()> {
    write_with(path, bytes, false, readers)
}

/// Creates `path` with `bytes`; `AlreadyExists` if it is there.
pub fn create_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    write_with(path, bytes, true, Readers::Root)
}

fn write_with(path: &Path, bytes: &[u8], exclusive: bool, readers: Readers) -> io::Result<()> {
    let mut tmp = TempFile::create(path)?;
    match readers {
        Readers::Root => {}
        Readers::User(uid) => std::os::unix::fs::fchown(tmp.file(), Some(uid), None)?,
        Readers::Group(gid) => {
            std::os::unix::fs::fchown(tmp.file(), None, Some(gid))?;
            tmp.file()
                .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))?;
        }
    }
    tmp.file_mut().write_all(bytes)?;
    if exclusive {
        tmp.commit_new()
    } else {
        tmp.commit()
    }
}

/// `<dir>/<name>.tmp-<pid>`: the temporary name of `target` in this process.
pub fn temporary_path(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!("{name}.tmp-{}", std::process::id()))
}

/// The pid in a temporary's file name (`<anything>.tmp-<pid>`), to tell the
/// work in progress of a live process from what a dead one left.
pub fn temporary_pid(file_name: &str) -> Option<i32> {
    let (_, pid) = file_name.rsplit_once(".tmp-")?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok().filter(|&p| p > 0)
}

/// Removes the temporaries of `target` that a dead process left (a writer
/// killed between its write and its rename); a live writer's stay.
pub fn remove_stale_temporaries(target: &Path) -> io::Result<()> {
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Ok(());
    };
    let prefix = format!("{}.tmp-", name.to_string_lossy());
    let entries = match std::fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        other => other?,
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = file.strip_prefix(&prefix).and(temporary_pid(&file)) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            match std::fs::remove_file(entry.path()) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
    }
    Ok(())
}

/// fsyncs directory `dir`: what was renamed into it stays after a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file written under its temporary name ([`temporary_path`]) beside
/// `target`, private (0600) until its owner says otherwise; removed when
/// dropped unless committed.
#[derive(Debug)]
pub struct TempFile {
    file: File,
    path: PathBuf,
    target: PathBuf,
    armed: bool,
}

impl TempFile {
    /// The temporary of `target`, created (or emptied, if a process of
    /// this pid left one).
    pub fn create(target: &Path) -> io::Result<TempFile> {
        Self::open(target, false)
    }

    /// The temporary of `target`, which must not exist (`AlreadyExists`):
    /// it claims the name against another writer of `target` in this
    /// process.
    pub fn create_new(target: &Path) -> io::Result<TempFile> {
        Self::open(target, true)
    }

    fn open(target: &Path, exclusive: bool) -> io::Result<TempFile> {
        let path = temporary_path(target);
        let mut options = File::options();
        options.write(true).mode(0o600);
        if exclusive {
            options.create_new(true);
        } else {
            options.create(true).truncate(true);
        }
        Ok(TempFile {
            file: options.open(&path)?,
            path,
            target: target.to_path_buf(),
            armed: true,
        })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    /// The temporary's own path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where it goes.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// fsyncs the file (what [`TempFile::persist`] and
    /// [`TempFile::commit`] do first), e.g. before more work is done.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
    }

    /// fsyncs the file and renames it over the target, leaving the
    /// directory's fsync to the caller ([`sync_dir`]), who may have more
    /// to put in place first.
    pub fn persist(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        fs::rename(&self.path, &self.target)?;
        self.armed = false;
        Ok(())
    }

    /// fsyncs the file, renames it over the target, fsyncs the directory.
    pub fn commit(self) -> io::Result<()> {
        let dir = parent_of(&self.target);
        self.persist()?;
        sync_dir(&dir)
    }

    /// [`TempFile::commit`] that refuses an existing target
    /// (`AlreadyExists`): hard-linked into place, then unlinked.
    pub fn commit_new(self) -> io::Result<()> {
        self.file.sync_all()?;
        fs::hard_link(&self.path, &self.target)?;
        // Dropped (armed): the temporary name is removed.
        let dir = parent_of(&self.target);
        drop(self);
        sync_dir(&dir)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The directory `path` is in (`.` for a bare name).
fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_writers_temporary_is_removed_a_live_ones_stays() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("j.json");
        // A pid that runs no process: beyond the kernel's pid_max.
        let dead = dir.path().join("j.json.tmp-99999999");
        let live = temporary_path(&target);
        let other = dir.path().join("k.json.tmp-99999999");
        for p in [&dead, &live, &other] {
            std::fs::write(p, b"{").unwrap();
        }
        remove_stale_temporaries(&target).unwrap();
        assert!(!dead.exists());
        assert!(live.exists(), "ours: this process is alive");
        assert!(other.exists(), "another target's");
    }

    #[test]
    fn files_are_private() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("journal.json");
        write(&p, b"{}").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        if nix::unistd::geteuid().is_root() {
            write_for(&p, b"refused", 65534).unwrap();
            let m = fs::metadata(&p).unwrap();
            assert_eq!((m.uid(), m.permissions().mode() & 0o777), (65534, 0o600));
            write_readable(&p, b"{}", Readers::Group(65534)).unwrap();
            let m = fs::metadata(&p).unwrap();
            assert_eq!(
                (m.uid(), m.gid(), m.permissions().mode() & 0o777),
                (0, 65534, 0o640)
            );
        }
    }

    #[test]
    fn replaces_or_refuses_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        create_new(&p, b"one").unwrap();
        assert_eq!(
            create_new(&p, b"two").unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write(&p, b"three").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"three");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.json")]);
    }

    #[test]
    fn a_stream_is_in_place_once_committed_and_gone_if_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("image.qcow2");
        let mut t = TempFile::create_new(&target).unwrap();
        assert_eq!(
            t.path().file_name().unwrap().to_str().unwrap(),
            format!("image.qcow2.tmp-{}", std::process::id())
        );
        assert_eq!(
            TempFile::create_new(&target).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists,
            "claimed"
        );
        t.file_mut().write_all(b"data").unwrap();
        t.commit().unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"data");
        let dropped = TempFile::create(&dir.path().join("other")).unwrap();
        let tmp = dropped.path().to_path_buf();
        assert!(tmp.exists());
        drop(dropped);
        assert!(!tmp.exists());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("image.qcow2")]);
        assert_eq!(temporary_pid("a.json.tmp-42"), Some(42));
        assert_eq!(temporary_pid("a.json.tmp-4x"), None);
        assert_eq!(temporary_pid("e.tmp-"), None);
    }
}
