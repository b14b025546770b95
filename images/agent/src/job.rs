//! The job's process inside the VO image: spawn (chrooted, own process
//! group), stream its output, report how it ended.
//!
//! As PID 1 we inherit every orphan of the guest, so one reaper thread owns
//! `waitpid(-1)` and hands each status to whoever waits for that pid: with
//! two sessions (the control port and the exec port) each running a job,
//! each job's waiter gets its own child's status, never the other's.

use crate::session::{in_root, Writer};
use sd_proto::{GuestMsg, RunRequest, StdinSource};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

pub struct RunningJob {
    pub pid: u32,
    stdin: Option<Sender<Vec<u8>>>,
}

/// Exit statuses the reaper collected, and the pids someone will wait for
/// (the jobs of every session: each waits for its own pid only).
#[derive(Default)]
struct Reaped {
    statuses: HashMap<u32, i32>,
    expected: HashSet<u32>,
}

/// More unclaimed statuses than this and those of orphans (pids nobody
/// expects) are dropped.
const MAX_UNCLAIMED: usize = 1024;

impl Reaped {
    fn record(&mut self, pid: u32, status: i32) {
        self.statuses.insert(pid, status);
        // Orphans nobody waits for would pile up; a job's status is kept
        // until its session takes it.
        if self.statuses.len() > MAX_UNCLAIMED {
            let expected = &self.expected;
            self.statuses.retain(|pid, _| expected.contains(pid));
        }
    }

    fn take(&mut self, pid: u32) -> Option<i32> {
        let status = self.statuses.remove(&pid)?;
        self.expected.remove(&pid);
        Some(status)
    }
}

type Statuses = (Mutex<Reaped>, Condvar);

fn statuses() -> &'static Statuses {
    static S: OnceLock<Statuses> = OnceLock::new();
    S.get_or_init(|| (Mutex::new(Reaped::default()), Condvar::new()))
}

fn lock_statuses() -> std::sync::MutexGuard<'static, Reaped> {
    statuses().0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the one reaper of the guest. It waits for any child without
/// reaping it (`WNOWAIT`), then reaps it only under the statuses lock: so
/// code that waits for a child of its own through the standard library
/// (a spawn whose exec failed, a helper's `output()`) runs under
/// [`children_waited_here`] and the reaper never steals that child
/// (the library's `waitpid` would fail with ECHILD, and a failed spawn panics).
pub fn start_reaper() {
    std::thread::spawn(|| loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r != 0 {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        // SAFETY: waitid filled in a child's state.
        let pid = unsafe { info.si_pid() };
        let mut reaped = lock_statuses();
        let mut status = 0;
        // Gone already if whoever held the lock waited for it itself.
        if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
            reaped.record(pid as u32, status);
            drop(reaped);
            statuses().1.notify_all();
        }
    });
}

/// Runs `f`, which waits for children of its own (`Command::output`), with
/// the reaper held off them.
pub fn children_waited_here<T>(f: impl FnOnce() -> T) -> T {
    let _reaped = lock_statuses();
    f()
}

fn wait_for(pid: u32) -> i32 {
    let mut reaped = lock_statuses();
    loop {
        if let Some(status) = reaped.take(pid) {
            return status;
        }
        reaped = statuses().1.wait(reaped).unwrap_or_else(|e| e.into_inner());
    }
}

pub fn spawn(
    req: &RunRequest,
    root: &Path,
    out: Writer,
    running: Arc<Mutex<Option<RunningJob>>>,
) -> Result<RunningJob, String> {
    let program = req.argv.first().ok_or("empty command")?;
    let cwd_on_host = crate::session::dir_in_root(root, &req.cwd)?;
    std::fs::create_dir_all(&cwd_on_host).map_err(|e| format!("mkdir {}: {e}", req.cwd))?;

    let mut cmd = Command::new(program);
    cmd.args(&req.argv[1..]).env_clear().process_group(0);
    if !req.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    cmd.envs(req.env.iter().map(|(k, v)| (k, v)));
    cmd.stdin(match &req.stdin {
        StdinSource::Null => Stdio::null(),
        StdinSource::Stream => Stdio::piped(),
        StdinSource::File(name) => {
            let path = if name.starts_with('/') {
                in_root(root, name)?
            } else {
                in_root(&cwd_on_host, name)?
            };
            Stdio::from(std::fs::File::open(&path).map_err(|e| format!("StdInput {name}: {e}"))?)
        }
    });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let (root_c, cwd_c) = (root.to_path_buf(), req.cwd.clone());
    // SAFETY: chroot/chdir are async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(move || {
            nix::unistd::chroot(&root_c)?;
            nix::unistd::chdir(cwd_c.as_str())?;
            Ok(())
        });
    }
    // The lock is held across the fork: the reaper records the child's
    // status only once it is expected, and does not reap a child whose exec
    // failed (the standard library waits for that one itself).
    let mut reaped = lock_statuses();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let pid = child.id();
    reaped.expected.insert(pid);
    drop(reaped);

    let pumps = [
        pump(child.stdout.take().unwrap(), out.clone(), GuestMsg::Stdout),
        pump(child.stderr.take().unwrap(), out.clone(), GuestMsg::Stderr),
    ];
    let stdin = child.stdin.take().map(stdin_feeder);
    // The reaper owns waitpid; `child` must not be waited on (dropping it does not wait).
    drop(child);

    std::thread::spawn(move || {
        let status = wait_for(pid);
        // Whatever the job left behind in its group (daemons holding the pipes) goes too.
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::SIGKILL,
        );
        for p in pumps {
            let _ = p.join();
        }
        let status = std::process::ExitStatus::from_raw(status);
        let msg = match (status.code(), status.signal()) {
            (Some(code), _) => GuestMsg::Exited { code },
            (None, Some(signal)) => GuestMsg::Killed { signal },
            _ => GuestMsg::Exited { code: 255 },
        };
        *running.lock().unwrap() = None;
        out.send(&msg);
    });
    Ok(RunningJob { pid, stdin })
}

fn pump<R: Read + Send + 'static>(
    mut from: R,
    out: Writer,
    wrap: fn(Vec<u8>) -> GuestMsg,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; sd_proto::CHUNK];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.send(&wrap(buf[..n].to_vec()));
        }
    })
}

/// Writes stdin on its own thread: a job that does not read must not block the link.
fn stdin_feeder(mut to: ChildStdin) -> Sender<Vec<u8>> {
    let (tx, rx) = channel::<Vec<u8>>();
    std::thread::spawn(move || {
        for data in rx {
            if data.is_empty() || to.write_all(&data).is_err() {
                break;
            }
        }
    });
    tx
}

pub fn feed_stdin(running: &Mutex<Option<RunningJob>>, data: Vec<u8>) {
    if let Some(job) = running.lock().unwrap().as_mut() {
        let eof = data.is_empty();
        if let Some(tx) = &job.stdin {
            let _ = tx.send(data);
        }
        if eof {
            job.stdin = None;
        }
    }
}

pub fn signal_running(running: &Mutex<Option<RunningJob>>, sig: i32) {
    if let Some(job) = running.lock().unwrap().as_ref() {
        if let Ok(sig) = nix::sys::signal::Signal::try_from(sig) {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(job.pid as i32), sig);
        }
    }
}

pub fn kill_running(running: &Mutex<Option<RunningJob>>) {
    signal_running(running, libc::SIGKILL);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_waiter_gets_its_own_childs_status_and_orphans_do_not_evict_jobs() {
        let mut r = Reaped::default();
        r.expected.extend([10, 20]);
        r.record(20, 2 << 8);
        assert_eq!(r.take(10), None, "10 has not exited yet");
        // A flood of orphans: the jobs' statuses stay.
        for orphan in 1000..1000 + MAX_UNCLAIMED as u32 + 5 {
            r.record(orphan, 0);
        }
        r.record(10, 1 << 8);
        assert!(r.statuses.len() <= MAX_UNCLAIMED + 1);
        assert_eq!(r.take(10), Some(1 << 8));
        assert_eq!(r.take(20), Some(2 << 8));
        assert_eq!(r.take(20), None, "taken once");
        assert!(r.expected.is_empty());
    }

    /// With the real reaper: two sessions' jobs at once each get their own
    /// exit; a failed exec and a helper's `output()` are never reaped from
    /// under the standard library. Needs root (the job is chrooted, here to /).
    #[test]
    fn the_reaper_hands_each_session_its_own_job_and_leaves_library_waits_alone() {
        use std::os::unix::net::UnixStream;
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        start_reaper();
        let run = |script: &str| {
            let (host, guest) = UnixStream::pair().unwrap();
            let out = Writer::for_test(std::fs::File::from(std::os::fd::OwnedFd::from(guest)));
            let slot = Arc::new(Mutex::new(None));
            let req = RunRequest {
                argv: vec!["/bin/sh".into(), "-c".into(), script.into()],
                env: vec![],
                cwd: "/tmp".into(),
                stdin: StdinSource::Null,
            };
            let job = spawn(&req, Path::new("/"), out, slot.clone()).unwrap();
            *slot.lock().unwrap() = Some(job);
            host
        };
        let exit_of = |mut host: UnixStream| loop {
            match sd_proto::read_msg::<_, GuestMsg>(&mut host).unwrap() {
                GuestMsg::Exited { code } => return code,
                GuestMsg::Stdout(_) | GuestMsg::Stderr(_) => {}
                other => panic!("{other:?}"),
            }
        };
        let slow = run("sleep 0.3; exit 3");
        let fast = run("exit 5");
        for _ in 0..50 {
            let req = RunRequest {
                argv: vec!["/nonexistent/program".into()],
                env: vec![],
                cwd: "/tmp".into(),
                stdin: StdinSource::Null,
            };
            let (_h, g) = UnixStream::pair().unwrap();
            let out = Writer::for_test(std::fs::File::from(std::os::fd::OwnedFd::from(g)));
            let e = spawn(&req, Path::new("/"), out, Arc::new(Mutex::new(None))).err();
            assert!(e.unwrap().contains("cannot start"));
            let status = children_waited_here(|| Command::new("/bin/true").output());
            assert!(status.unwrap().status.success());
        }
        assert_eq!(exit_of(fast), 5);
        assert_eq!(exit_of(slow), 3);
    }

    #[test]
    fn concurrent_waiters_are_each_woken_with_their_pid() {
        // Two sessions' job threads wait at once; statuses arrive in the
        // other order.
        lock_statuses().expected.extend([900_001, 900_002]);
        let a = std::thread::spawn(|| wait_for(900_001));
        let b = std::thread::spawn(|| wait_for(900_002));
        std::thread::sleep(Duration::from_millis(50));
        lock_statuses().record(900_002, 7);
        statuses().1.notify_all();
        std::thread::sleep(Duration::from_millis(20));
        lock_statuses().record(900_001, 3);
        statuses().1.notify_all();
        assert_eq!(a.join().unwrap(), 3);
        assert_eq!(b.join().unwrap(), 7);
    }
}
