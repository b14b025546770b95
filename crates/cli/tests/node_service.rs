//! The node service as a real process on a socket of its own (no HTCondor,
//! no VM): what any local user can do to it, callers whose pid is reused,
//! hooks under a starter, and what `sd cleanup` and the service reap.
//!
//! Needs root (another uid for the callers, ns_last_pid, a starter whose
//! real uid is root's). The HTCondor side is in tests/condor.rs.

mod common;

use sd_vmm::journal::{Journal, Resource};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USER: u32 = 4242;

/// The ns_last_pid test and the 1100 connections must not overlap with
/// each other's forks and fds.
use common::serial;

/// A site of its own (the catalogue's files need not exist: nothing boots).
struct Site(common::TestSite);

impl Site {
    fn new() -> Site {
        let site = common::TestSite::new(
            "sd-node-service-",
            "image_dir: {dir}\n\
             images:\n  busybox: { disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }\n\
             vos:\n  demo: { images: [busybox] }\ndefault_vo: demo\n",
        );
        // The callers run as USER: they must reach the socket.
        std::fs::set_permissions(
            site.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        Site(site)
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path(rel)
    }

    fn config(&self) -> sd_site::SiteConfig {
        sd_site::SiteConfig::load(&self.path("site.yaml")).unwrap()
    }

    fn sd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
        c.arg("--config").arg(self.path("site.yaml"));
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("log/sd-hooks.log")).unwrap_or_default()
    }
}

/// `sd-node-service` on the site's own socket, stopped when dropped.
struct Service {
    child: Child,
    socket: PathBuf,
}

impl Service {
    fn start(site: &Site, args: &[&str]) -> Service {
        let socket = site.path("node.sock");
        let child = Command::new(common::workspace_bin("sd-node-service"))
            .arg("--config")
            .arg(site.path("site.yaml"))
            .arg("--socket")
            .arg(&socket)
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&socket).is_err() {
            assert!(Instant::now() < deadline, "the node service did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Service { child, socket }
    }

    fn status(&self, key: &str) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends one request line on `stream`, returns the reply line ("" if the
/// service closed without one).
fn ask(stream: &UnixStream, line: &str, timeout: Duration) -> std::io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    (&*stream).write_all(format!("{line}\n").as_bytes())?;
    let mut reply = String::new();
    match (&*stream).read_to_string(&mut reply) {
        Ok(_) => Ok(reply),
        // A reset after the service answered and closed.
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(reply),
        Err(e) => Err(e),
    }
}

const TEARDOWN: &str =
    r#"{"op":"teardown","job":"1.0","how":"exit","succeeded":true,"outcome":"test"}"#;

fn sockaddr(path: &Path) -> libc::sockaddr_un {
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (i, b) in path.as_os_str().as_encoded_bytes().iter().enumerate() {
        addr.sun_path[i] = *b as libc::c_char;
    }
    addr
}

/// A child process of uid USER that opens `n` connections to `socket` and
/// keeps them, idle, until killed. Returns its pid and how many connected.
fn idle_connections(socket: &Path, n: usize) -> (nix::unistd::Pid, usize) {
    let addr = sockaddr(socket);
    let (read, write) = nix::unistd::pipe().unwrap();
    // SAFETY: the child makes system calls only (no allocation, no locks).
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => unsafe {
            let limit = libc::rlimit {
                rlim_cur: n as u64 + 64,
                rlim_max: n as u64 + 64,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::setgid(USER);
            libc::setuid(USER);
            let mut connected: u32 = 0;
            for _ in 0..n {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0);
                let r = libc::connect(
                    fd,
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_un>() as u32,
                );
                if r == 0 {
                    connected += 1;
                } else {
                    libc::close(fd);
                }
            }
            libc::write(
                std::os::fd::AsRawFd::as_raw_fd(&write),
                &connected as *const u32 as *const libc::c_void,
                4,
            );
            loop {
                libc::pause();
            }
        },
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut buf = [0u8; 4];
            std::fs::File::from(read).read_exact(&mut buf).unwrap();
            (child, u32::from_ne_bytes(buf) as usize)
        }
    }
}

#[test]
fn root_is_served_past_1100_idle_connections_and_threads_and_memory_stay_bounded() {
    let _serial = serial();
    let site = Site::new();
    // --any-caller: the idle callers are not refused at accept, so they
    // really hold places; the limits must still leave root its own.
    let service = Service::start(&site, &["--any-caller"]);
    let (client, connected) = idle_connections(&service.socket, 1100);
    std::thread::sleep(Duration::from_millis(500));
    let threads = service.status("Threads:");
    let rss_kib = service.status("VmRSS:");
    let started = Instant::now();
    let reply = UnixStream::connect(&service.socket)
        .and_then(|s| ask(&s, TEARDOWN, Duration::from_secs(5)));
    let took = started.elapsed();
    nix::sys::signal::kill(client, nix::sys::signal::Signal::SIGKILL).unwrap();
    nix::sys::wait::waitpid(client, None).unwrap();
    eprintln!(
        "{connected} idle connections: {threads} threads, {} MiB RSS; root's request {took:?}",
        rss_kib / 1024
    );
    let reply = reply.expect("root's request is answered");
    assert!(reply.contains("finished"), "{reply:?}");
    assert!(took < Duration::from_secs(2), "root waited {took:?}");
    let bound =
        (sd_batch::node_service::MAX_CONNECTIONS + sd_batch::node_service::ROOT_RESERVE + 8) as u64;
    assert!(threads <= bound, "{threads} threads (bound {bound})");
    assert!(rss_kib < 64 * 1024, "{rss_kib} KiB resident");
}

#[test]
fn a_caller_that_stays_silent_is_dropped_after_the_deadline() {
    let _serial = serial();
    let site = Site::new();
    let service = Service::start(&site, &["--any-caller"]);
    let stream = UnixStream::connect(&service.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let started = Instant::now();
    let mut rest = String::new();
    let _ = (&stream).read_to_string(&mut rest);
    let waited = started.elapsed();
    assert!(
        waited >= sd_batch::node_service::REQUEST_DEADLINE - Duration::from_secs(1)
            && waited < sd_batch::node_service::REQUEST_DEADLINE + Duration::from_secs(5),
        "closed after {waited:?}"
    );
}

/// A copy of `program` named `condor_starter` (its comm), in `dir`.
fn fake_starter_binary(dir: &Path, program: &str) -> PathBuf {
    let path = dir.join("condor_starter");
    std::fs::copy(program, &path).unwrap();
    path
}

#[test]
fn a_caller_whose_pid_a_starter_takes_after_connect_is_not_served() {
    let _serial = serial();
    let site = Site::new();
    let service = Service::start(&site, &[]);
    let starter = fake_starter_binary(site.0.dir.path(), "/bin/sleep");
    let addr = sockaddr(&service.socket);
    for attempt in 0..10 {
        // A process of USER under no starter connects and exits; its socket
        // stays open here (the same open file).
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        let stream = unsafe { <UnixStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: the child makes system calls only.
        let pid = match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => unsafe {
                libc::setgid(USER);
                libc::setuid(USER);
                let r = libc::connect(
                    fd,
                    &addr as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_un>() as u32,
                );
                libc::_exit(if r == 0 { 0 } else { 1 });
            },
            nix::unistd::ForkResult::Parent { child } => child,
        };
        let status = nix::sys::wait::waitpid(pid, None).unwrap();
        assert_eq!(status, nix::sys::wait::WaitStatus::Exited(pid, 0));
        // Its pid goes to a condor_starter of root's (ns_last_pid: the next
        // pid is the one after what it says).
        std::fs::write(
            "/proc/sys/kernel/ns_last_pid",
            format!("{}", pid.as_raw() - 1),
        )
        .unwrap();
        let mut fake = Command::new(&starter).arg("60").spawn().unwrap();
        if fake.id() as i32 != pid.as_raw() {
            // Another process took the pid first: try again.
            let _ = fake.kill();
            let _ = fake.wait();
            assert!(attempt < 9, "never got pid {pid} back");
            continue;
        }
        std::thread::sleep(Duration::from_millis(100));
        let reply = ask(&stream, TEARDOWN, Duration::from_secs(5)).unwrap_or_default();
        let _ = fake.kill();
        let _ = fake.wait();
        assert!(
            !reply.contains("finished"),
            "pid {pid}, now a condor_starter's, was served for the process that connected: {reply:?}"
        );
        return;
    }
}

/// A root "condor_starter" (a shell of that name) with the scratch
/// directory HTCondor 23.9 makes (`execute/dir_<pid>`, the user's, holding
/// a `.job.ad` of condor's, here root's), which runs `command` as USER there.
fn under_fake_starter(site: &Site, job_ad: &str, command: &str) -> std::process::Output {
    let execute = site.path("execute");
    std::fs::create_dir_all(&execute).unwrap();
    std::fs::write(site.path("job.ad"), job_ad).unwrap();
    let sh = fake_starter_binary(site.0.dir.path(), "/bin/sh");
    // `; true`: the shell must not exec the command (it is the starter).
    let script = format!(
        "d={execute}/dir_$$; mkdir \"$d\" && cp {ad} \"$d/.job.ad\" && chown {USER}:{USER} \"$d\" && cd \"$d\" \
         && setpriv --reuid={USER} --regid={USER} --clear-groups sh -c '{command}'; status=$?; true; exit $status",
        execute = execute.display(),
        ad = site.path("job.ad").display(),
    );
    Command::new(sh)
        .args(["-c", &script])
        .env("SD_NODE_SOCKET", site.path("node.sock"))
        .output()
        .unwrap()
}

#[test]
fn a_hook_under_a_starter_is_served_for_the_starters_job_not_the_one_it_names() {
    let _serial = serial();
    let site = Site::new();
    let _service = Service::start(&site, &[]);
    let exit_hook = common::workspace_bin("sd-condor-exit");
    let exit_hook = exit_hook.display();
    let out = under_fake_starter(
        &site,
        "ClusterId = 12\nProcId = 0\nGlobalJobId = \"vm#12.0#1\"\nSDEnvironment = \"busybox\"\n",
        &format!(
            "printf \"ClusterId = 999\\nProcId = 0\\nSDEnvironment = \\\"busybox\\\"\\n\" | {exit_hook} exit"
        ),
    );
    assert!(
        out.status.success(),
        "the hook was not served: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = site.log();
    assert!(
        log.contains("named job 999.0") && log.contains("runs 12.0 (vm#12.0#1): that one it is"),
        "{log}"
    );
}

#[test]
fn a_job_ad_the_user_wrote_is_not_believed() {
    let _serial = serial();
    let site = Site::new();
    let _service = Service::start(&site, &[]);
    let exit_hook = common::workspace_bin("sd-condor-exit");
    let exit_hook = exit_hook.display();
    // The user replaces HTCondor's .job.ad (their scratch directory is theirs).
    let out = under_fake_starter(
        &site,
        "ClusterId = 12\nProcId = 0\n",
        &format!(
            "rm -f .job.ad && printf \"ClusterId = 999\\nProcId = 0\\n\" > .job.ad && \
             printf \"ClusterId = 999\\nProcId = 0\\nSDEnvironment = \\\"busybox\\\"\\n\" | {exit_hook} exit"
        ),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is not HTCondor's"),
        "{err}"
    );
}

/// A journal of deployment `id` owned by `owner` (pid, start time), with a
/// directory to clean up.
fn journal_owned_by(site: &Site, id: &str, owner: Option<(u32, u64)>) -> PathBuf {
    let state = site.path("state");
    let dir = state.join("run").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut j = Journal::create(&state, id).unwrap();
    j.record(Resource::Directory { path: dir.clone() }).unwrap();
    j.update_details(|f| {
        f.uid = Some(USER);
        f.owner_pid = owner.map(|o| o.0);
        f.owner_start_time = owner.map(|o| o.1);
    })
    .unwrap();
    dir
}

fn start_time(pid: u32) -> u64 {
    sd_host::peer::ProcessStamp::of(pid as i32)
        .unwrap()
        .start_time
}

#[test]
fn sd_cleanup_reaps_deployments_whose_owner_is_gone_or_whose_pid_was_reused() {
    let site = Site::new();
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let me = std::process::id();
    let gone = journal_owned_by(&site, "gone", Some((dead_pid, 1)));
    // Our pid, another start time: the owner died and its pid is ours now.
    let reused = journal_owned_by(&site, "reused", Some((me, start_time(me) + 1)));
    let alive = journal_owned_by(&site, "alive", Some((me, start_time(me))));
    let slurm = journal_owned_by(&site, "slurm", None);
    let out = site.sd().arg("cleanup").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!gone.exists() && !reused.exists(), "{stdout}");
    assert!(alive.exists() && slurm.exists(), "{stdout}");
    let state = site.path("state");
    assert_eq!(Journal::list(&state).unwrap(), ["alive", "slurm"]);
}

#[test]
fn the_service_reaps_a_deployment_whose_starter_is_gone() {
    let _serial = serial();
    let site = Site::new();
    let _service = Service::start(&site, &[]);
    let mut starter = Command::new("sleep").arg("60").spawn().unwrap();
    let stamp = (starter.id(), start_time(starter.id()));
    let dir = journal_owned_by(&site, "condor-5.0-0000abcd", Some(stamp));
    std::thread::sleep(sd_batch::node_service::REAP_INTERVAL + Duration::from_secs(1));
    assert!(dir.exists(), "reaped while its starter runs");
    starter.kill().unwrap();
    starter.wait().unwrap();
    let deadline = Instant::now() + sd_batch::node_service::REAP_INTERVAL * 3;
    while dir.exists() {
        assert!(Instant::now() < deadline, "not reaped: {}", site.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(Journal::list(&site.config().state_dir).unwrap().is_empty());
}
