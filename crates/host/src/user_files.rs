//! Files a user names (the JDL, sandbox files, output files), opened with
//! that user's rights even when we run as root.
//!
//! Linux checks file access against the *filesystem* uid/gid, which
//! `setfsuid`/`setfsgid` change for the calling thread only. So each open
//! runs on a short-lived thread that first becomes the user for the file
//! system, and the open file is handed back. Files created this way belong
//! to the user. The thread also takes the user's own supplementary groups
//! (the raw `setgroups` system call changes only the calling thread; glibc's
//! wrapper would change every thread), so a file readable through one of
//! root's groups is not readable through it for the user.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::owner::Owner;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct UserFileError {
    pub path: PathBuf,
    pub reason: String,
}

/// The identity whose rights apply to the files it opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFiles {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (from the user database, see [`Owner`]).
    pub groups: Vec<u32>,
}

impl UserFiles {
    /// The user who runs this process (`sd run` acts for its caller).
    pub fn caller() -> Self {
        UserFiles {
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            groups: nix::unistd::getgroups()
                .map(|g| g.into_iter().map(|g| g.as_raw()).collect())
                .unwrap_or_default(),
        }
    }

    /// The rights of `owner`: uid, primary group and every group it is in.
    /// `gid` is the job's group as the batch system gave it (Slurm's
    /// `SLURM_JOB_GID`, which may differ from the user's primary group).
    pub fn of(owner: &Owner, gid: u32) -> Self {
        match owner {
            Owner::Root => UserFiles {
                uid: 0,
                gid,
                groups: vec![],
            },
            Owner::User(u) => UserFiles {
                uid: u.uid,
                gid,
                groups: u.gids.clone(),
            },
        }
    }

    /// Opens a regular file for reading; refuses devices, FIFOs, directories.
    pub fn open_read(&self, path: &Path) -> Result<File, UserFileError> {
        let mut opts = OpenOptions::new();
        // O_NONBLOCK: opening a FIFO must not hang us; we refuse it below.
        opts.read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC);
        let file = self.open_as_user(path, opts)?;
        let meta = file.metadata().map_err(|e| err(path, e.to_string()))?;
        if !meta.is_file() {
            return Err(err(path, "not a regular file".into()));
        }
        Ok(file)
    }

    /// Reads a small text file (a request) as the user, refusing one over
    /// `max_bytes` from its size on the open descriptor, before reading: a
    /// sparse 4 GiB file must cost root nothing. `limit_name` is the site
    /// setting, for the message.
    pub fn read_text(
        &self,
        path: &Path,
        max_bytes: u64,
        limit_name: &str,
    ) -> Result<String, UserFileError> {
        let file = self.open_read(path)?;
        let too_big = |size: &str| {
            err(
                path,
                format!("is {size}, more than the site's limit of {max_bytes} ({limit_name})"),
            )
        };
        let size = file.metadata().map_err(|e| err(path, e.to_string()))?.len();
        if size > max_bytes {
            return Err(too_big(&format!("{size} bytes")));
        }
        // The file may grow after the check: read one byte past the limit at most.
        let mut bytes = Vec::with_capacity(size as usize);
        file.take(max_bytes + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| err(path, e.to_string()))?;
        if bytes.len() as u64 > max_bytes {
            return Err(too_big("growing while read"));
        }
        String::from_utf8(bytes).map_err(|_| err(path, "is not UTF-8 text".into()))
    }

    /// Creates (or truncates) a file for writing, as the user.
    pub fn create(&self, path: &Path, mode: u32) -> Result<File, UserFileError> {
        let mut opts = OpenOptions::new();
        opts.write(true)
            .create(true)
            .truncate(true)
            .mode(mode & 0o777)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
        self.open_as_user(path, opts)
    }

    /// Creates a directory (and its parents) as the user.
    pub fn create_dir_all(&self, path: &Path) -> Result<(), UserFileError> {
        let p = path.to_path_buf();
        self.run_as(move || std::fs::create_dir_all(&p))
            .map_err(|e| err(path, e.to_string()))
    }

    fn open_as_user(&self, path: &Path, opts: OpenOptions) -> Result<File, UserFileError> {
        let p = path.to_path_buf();
        self.run_as(move || opts.open(&p))
            .map_err(|e| err(path, e.to_string()))
    }

    /// Runs `f` on a thread whose file-system identity is this user's.
    fn run_as<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let (uid, gid) = (self.uid, self.gid);
        let same = nix::unistd::geteuid().as_raw() == uid && nix::unistd::getegid().as_raw() == gid;
        if same {
            return f();
        }
        let groups: Vec<libc::gid_t> = self.groups.clone();
        std::thread::spawn(move || {
            // SAFETY: plain system calls affecting only this thread (raw
            // syscalls, not glibc's process-wide setxid broadcast); `groups`
            // outlives the call.
            unsafe {
                // Groups first: setgroups needs CAP_SETGID, which we still have.
                if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::syscall(libc::SYS_setfsgid, gid);
                libc::syscall(libc::SYS_setfsuid, uid);
                if libc::syscall(libc::SYS_setfsuid, -1i32) as u32 != uid {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::PermissionDenied,
                        "cannot take the user's identity",
                    ));
                }
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("file access thread panicked")))
    }
}

fn err(path: &Path, reason: String) -> UserFileError {
    UserFileError {
        path: path.to_path_buf(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_request_over_the_limit_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let sparse = dir.path().join("huge.jdl");
        // 4 GiB that cost no disk: read, it would cost root 4 GiB or more of RAM.
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(4 << 30)
            .unwrap();
        let me = UserFiles::caller();
        let e = me
            .read_text(&sparse, 1 << 20, "max_request_bytes")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: is 4294967296 bytes, more than the site's limit of 1048576 (max_request_bytes)",
                sparse.display()
            )
        );
        let small = dir.path().join("small.jdl");
        std::fs::write(&small, "[ Executable = \"x\"; ]").unwrap();
        assert_eq!(
            me.read_text(&small, 1 << 20, "max_request_bytes").unwrap(),
            "[ Executable = \"x\"; ]"
        );
        assert!(me.read_text(&small, 4, "max_request_bytes").is_err());
    }

    #[test]
    fn refuses_what_the_user_may_not_read_and_non_files() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "x").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let me = UserFiles::caller();
        assert!(me.open_read(&secret).is_ok());
        assert!(me
            .open_read(dir.path())
            .unwrap_err()
            .reason
            .contains("not a regular file"));
        if nix::unistd::geteuid().is_root() {
            let nobody = UserFiles {
                uid: 65534,
                gid: 65534,
                groups: vec![65534],
            };
            let e = nobody.open_read(&secret).unwrap_err();
            assert!(e.reason.contains("ermission denied"), "{e}");
            // A file created for the user belongs to the user.
            let out = dir.path().join("out");
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
            nobody.create(&out, 0o644).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(std::fs::metadata(&out).unwrap().uid(), 65534);
        }
    }

    #[test]
    fn a_user_reads_with_its_own_groups_not_roots() {
        crate::needs_root("acting for another user");
        use std::os::unix::fs::chown;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        // root:root 0640: root's group may read it, "nobody" may not …
        let roots = dir.path().join("roots-group");
        std::fs::write(&roots, "secret-token rest").unwrap();
        std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o640)).unwrap();
        // … and a file of group 4243 (one nobody is given here) only through it.
        let shared = dir.path().join("vo-group");
        std::fs::write(&shared, "shared").unwrap();
        chown(&shared, Some(0), Some(4243)).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o640)).unwrap();
        fn nobody(groups: Vec<u32>) -> UserFiles {
            UserFiles {
                uid: 65534,
                gid: 65534,
                groups,
            }
        }
        // Root with supplementary group 0 (as under sudo or slurmd), on this thread
        // only: the file thread inherits it, and with root's groups leaking through,
        // reading `roots` would succeed.
        let e = std::thread::spawn(move || {
            let root_groups: [libc::gid_t; 1] = [0];
            // SAFETY: changes this test thread's credentials only.
            assert_eq!(
                unsafe { libc::syscall(libc::SYS_setgroups, 1, root_groups.as_ptr()) },
                0
            );
            nobody(vec![65534])
                .read_text(&roots, 100, "max")
                .unwrap_err()
        })
        .join()
        .unwrap();
        assert!(e.reason.contains("ermission denied"), "{e}");
        assert!(!e.to_string().contains("secret-token"), "{e}");
        assert_eq!(
            nobody(vec![65534, 4243])
                .read_text(&shared, 100, "max")
                .unwrap(),
            "shared"
        );
        assert!(nobody(vec![65534]).read_text(&shared, 100, "max").is_err());
    }
}
