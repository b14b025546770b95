//! Who is on the other end of a Unix socket, and which `condor_starter`
//! they run under — without races a client can steer.
//!
//! A pid alone names a process only while that process lives: once it has
//! exited, the number can be reused by anyone. So the caller is pinned at
//! accept by a pidfd (`SO_PEERPIDFD`: the kernel's own reference to the
//! process that called `connect()`), and every fact read from `/proc/PID`
//! counts only if that pidfd is still alive after the read. Ancestors are
//! walked the same way, each one pinned by a pidfd before its facts are read.
//! A process that outlives the walk (a starter a deployment belongs to) is
//! recorded as [`ProcessStamp`], its pid and start time: the pair is never
//! reused while the machine is up.

use serde::{Deserialize, Serialize};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// What `/proc/PID/stat` says that we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub comm: String,
    /// `R`, `S`, `Z` ...
    pub state: char,
    pub ppid: i32,
    /// Field 22, clock ticks after boot: with the pid, unique until reboot.
    pub start_time: u64,
}

/// Parses `/proc/PID/stat`: `pid (comm) state ppid ...`. `comm` may hold
/// spaces and parentheses, so the fields start after the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let (head, tail) = text.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let fields: Vec<&str> = tail.split_whitespace().collect();
    // fields[0] is field 3 (state): field N is fields[N - 3].
    Some(ProcStat {
        comm,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(22 - 3)?.parse().ok()?,
    })
}

pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The real uid of process `pid` (`Uid:` in /proc/PID/status).
pub fn real_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A process named by pid and start time: a later process with the same
/// pid is not it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessStamp {
    pub pid: i32,
    pub start_time: u64,
}

impl ProcessStamp {
    pub fn of(pid: i32) -> Option<ProcessStamp> {
        let s = stat(pid)?;
        Some(ProcessStamp {
            pid,
            start_time: s.start_time,
        })
    }

    /// Still running (a zombie has ended: its job is over). A process that
    /// exits with several threads shows its leader as a zombie first, while
    /// the others are still tearing down and holding its files (a QEMU's
    /// disk lock): it has ended only once its leader is the last thread.
    pub fn alive(&self) -> bool {
        stat(self.pid).is_some_and(|s| {
            s.start_time == self.start_time && (s.state != 'Z' || other_threads(self.pid))
        })
    }
}

/// Does process `pid` have threads besides its leader (`/proc/PID/task`)?
fn other_threads(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|d| d.count() > 1)
}

/// A pidfd: the process it was opened for, or nothing — never another one.
#[derive(Debug)]
pub struct Pidfd(OwnedFd);

impl Pidfd {
    pub fn open(pid: i32) -> std::io::Result<Pidfd> {
        // SAFETY: pidfd_open(2) takes a pid and flags and returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the fd is new and ours.
        Ok(Pidfd(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// True while the process has not exited (signal 0 checks, sends nothing).
    pub fn alive(&self) -> bool {
        // SAFETY: pidfd_send_signal(2) with signal 0 and no siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.as_raw_fd(),
                0,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }

    /// The pid of the process, as the kernel has it (`Pid:` of the fd's
    /// fdinfo); None once it has been reaped.
    pub fn pid(&self) -> Option<i32> {
        let info =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", self.0.as_raw_fd())).ok()?;
        let pid: i32 = info
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))?
            .trim()
            .parse()
            .ok()?;
        (pid > 0).then_some(pid)
    }
}

/// Why the kernel could not say who the peer is: not the caller's doing.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("SO_PEERCRED: {0}")]
    Credentials(nix::Error),
    #[error("the caller (pid {0}) exited before it was seen")]
    Gone(i32),
    #[error("no pidfd for the caller (pid {pid}): {error}")]
    Pidfd { pid: i32, error: std::io::Error },
}

/// The process that connected, as the kernel says, pinned at accept.
#[derive(Debug)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    pidfd: Pidfd,
}

impl Peer {
    /// Call right after `accept()`. `SO_PEERPIDFD` (Linux ≥ 6.5) is the
    /// process that called `connect()`, whatever became of its pid since.
    /// On older kernels, `pidfd_open` of the `SO_PEERCRED` pid, which a
    /// client that exits between its connect and our accept could still
    /// hand to another process: the fallback is as good as the kernel lets it.
    pub fn of(stream: &UnixStream) -> Result<Peer, PeerError> {
        use nix::sys::socket::{getsockopt, sockopt};
        let cred = getsockopt(stream, sockopt::PeerCredentials).map_err(PeerError::Credentials)?;
        let pid = cred.pid();
        let pidfd = match getsockopt(stream, sockopt::PeerPidfd) {
            Ok(fd) => Pidfd(fd),
            Err(nix::Error::ENOPROTOOPT | nix::Error::EINVAL) => {
                Pidfd::open(pid).map_err(|error| PeerError::Pidfd { pid, error })?
            }
            Err(nix::Error::ESRCH) => return Err(PeerError::Gone(pid)),
            Err(e) => {
                return Err(PeerError::Pidfd {
                    pid,
                    error: e.into(),
                })
            }
        };
        if pidfd.pid() != Some(pid) || !pidfd.alive() {
            return Err(PeerError::Gone(pid));
        }
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid,
            pidfd,
        })
    }

    /// The caller has not exited (it waits for our answer).
    pub fn alive(&self) -> bool {
        self.pidfd.alive()
    }

    /// The `condor_starter` started by root that the caller descends from
    /// (or is), None if there is none. Anyone can name a process
    /// condor_starter; only root can start one whose real uid is root's.
    pub fn starter(&self) -> Option<ProcessStamp> {
        let mut pid = self.pid;
        let mut pinned = Pidfd::open(pid).ok()?;
        for _ in 0..64 {
            let st = stat(pid)?;
            let is_starter = st.comm == "condor_starter" && real_uid(pid) == Some(0);
            // What we read was of this process only if it still lives.
            if !pinned.alive() || st.state == 'Z' {
                return None;
            }
            if is_starter {
                return Some(ProcessStamp {
                    pid,
                    start_time: st.start_time,
                });
            }
            if st.ppid <= 1 {
                return None;
            }
            let parent = Pidfd::open(st.ppid).ok()?;
            // The pidfd is of our parent only if we are still its child
            // now that it is open (an orphan is re-parented, never back).
            if stat(pid).map(|s| s.ppid) != Some(st.ppid) || !pinned.alive() {
                return None;
            }
            pid = st.ppid;
            pinned = parent;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_a_comm_with_parentheses() {
        let line =
            "4242 (a) b (c)) S 17 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1 2 3";
        let s = parse_stat(line).unwrap();
        assert_eq!(s.comm, "a) b (c)");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 17);
        assert_eq!(s.start_time, 987654);
        assert_eq!(parse_stat("4242 (x) S 1"), None);
    }

    #[test]
    fn our_own_process_is_stamped_and_pinned() {
        let me = std::process::id() as i32;
        let stamp = ProcessStamp::of(me).unwrap();
        assert!(stamp.alive());
        let other = ProcessStamp {
            start_time: stamp.start_time + 1,
            ..stamp
        };
        assert!(!other.alive(), "same pid, other start time: not us");
        let fd = Pidfd::open(me).unwrap();
        assert!(fd.alive());
        assert_eq!(fd.pid(), Some(me));
    }

    #[test]
    fn a_pidfd_of_an_exited_child_is_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = Pidfd::open(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(!fd.alive());
        assert_eq!(fd.pid(), None);
    }

    #[test]
    fn a_connected_peer_is_pinned_and_under_no_starter() {
        let (a, _b) = UnixStream::pair().unwrap();
        let peer = Peer::of(&a).unwrap();
        assert_eq!(peer.pid, std::process::id() as i32);
        assert!(peer.alive());
        assert_eq!(peer.starter(), None);
    }
}
