//! Files that are either wholly there or not at all: written to a temporary
//! name beside the target, fsynced, then renamed (or hard-linked, to refuse
//! an existing target). A crash leaves at most a `*.PID.tmp` file. They are
//! private (0600) unless [`Readers`] says who else may read them.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

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
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, bytes, false, Readers::Root)
}

/// Replaces `path` with `bytes`, readable by user `uid` only (and root).
pub fn write_for(path: &Path, bytes: &[u8], uid: u32) -> std::io::Result<()> {
    write_with(path, bytes, false, Readers::User(uid))
}

/// Replaces `path` with `bytes` for `readers`.
pub fn write_readable(path: &Path, bytes: &[u8], readers: Readers) -> std::io::Result<()> {
    write_with(path, bytes, false, readers)
}

/// Creates `path` with `bytes`; `AlreadyExists` if it is there.
pub fn create_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_with(path, bytes, true, Readers::Root)
}

fn write_with(path: &Path, bytes: &[u8], exclusive: bool, readers: Readers) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!("{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        match readers {
            Readers::Root => {}
            Readers::User(uid) => std::os::unix::fs::fchown(&f, Some(uid), None)?,
            Readers::Group(gid) => {
                std::os::unix::fs::fchown(&f, None, Some(gid))?;
                f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o640))?;
            }
        }
        f.write_all(bytes)?;
        f.sync_all()?;
        if exclusive {
            fs::hard_link(&tmp, path)?;
            fs::remove_file(&tmp)
        } else {
            fs::rename(&tmp, path)
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
