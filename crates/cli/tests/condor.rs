//! HTCondor integration, against a real personal HTCondor (minicondor 23.9 in
//! a Debian 13 root, `scripts/condor-local`, started here if it is not
//! running) configured with our PREPARE_JOB and JOB_EXIT hooks and
//! USER_JOB_WRAPPER, and the node service on the host reading the site
//! config the hooks read (/etc/smartdomains/site.yaml, written by
//! scripts/setup).
//!
//! Jobs are submitted inside the root by an ordinary user (`sdtest`, uid
//! 4242), so the hooks really run as the job's owner and go through the
//! node service for everything privileged.

mod common;
use common::{guest_kernel, repo, text};
use sd_site::SiteConfig;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const USER: &str = "sdtest";
const UID: u32 = 4242;

fn root() -> PathBuf {
    PathBuf::from(std::env::var("SD_CONDOR_ROOT").unwrap_or_else(|_| "/srv/sd-trixie".into()))
}

/// Starts the local pool once (idempotent when it already runs).
fn pool() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        let out = Command::new(repo().join("scripts/condor-local"))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/condor-local start failed: {}",
            text(&out.stderr)
        );
    });
}

/// One test at a time: the node has two cores, and the two-job test needs both.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    let guard = common::serial();
    pool();
    guard
}

fn site() -> SiteConfig {
    SiteConfig::load(&SiteConfig::default_path())
        .expect("the site config the node service reads (scripts/setup writes it)")
}

/// A command inside HTCondor's root, as `user` (None: root).
fn in_root(user: Option<&str>, dir: Option<&str>, cmd: &str) -> Output {
    let mut c = Command::new("chroot");
    c.arg(root());
    match user {
        Some(u) => c.args(["runuser", "-u", u, "--", "sh", "-c"]),
        None => c.args(["sh", "-c"]),
    };
    let script = match dir {
        Some(d) => format!("cd '{d}' && {cmd}"),
        None => cmd.to_string(),
    };
    c.arg(script);
    c.output().unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A submit directory of the test user, inside the root; its path in the
/// root, and on the host.
struct JobDir {
    inner: String,
    host: PathBuf,
}

impl JobDir {
    fn new(name: &str) -> JobDir {
        let inner = format!(
            "/home/{USER}/sd-tests/{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos()
                ^ (std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos())
        );
        let host = root().join(inner.trim_start_matches('/'));
        std::fs::create_dir_all(host.join("jobs")).unwrap();
        for f in ["hello.jdl", "hello.sh"] {
            std::fs::copy(repo().join("jobs").join(f), host.join("jobs").join(f)).unwrap();
        }
        let dir = JobDir { inner, host };
        dir.chown();
        dir
    }

    fn chown(&self) {
        let status = Command::new("chown")
            .args(["-R", &format!("{UID}:{UID}")])
            .arg(self.host.parent().unwrap())
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn write(&self, name: &str, content: &str) {
        std::fs::write(self.host.join(name), content).unwrap();
        self.chown();
    }

    fn read(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.host.join(name)).unwrap_or_default()
    }

    /// Submits `body` (a submit description without `queue`); the job id.
    fn submit(&self, name: &str, body: &str) -> String {
        self.write(
            &format!("{name}.sub"),
            &format!("output = {name}.out\nerror = {name}.err\nlog = {name}.log\n{body}\nqueue\n"),
        );
        let out = ok(
            in_root(
                Some(USER),
                Some(&self.inner),
                &format!("condor_submit -terse {name}.sub"),
            ),
            "condor_submit",
        );
        // "12.0 - 12.0"
        out.split_whitespace().next().unwrap().to_string()
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.host);
    }
}

/// An attribute of a job still in the queue (None once it left it).
fn queue_attr(id: &str, attr: &str) -> Option<String> {
    let out = in_root(None, None, &format!("condor_q {id} -af {attr}"));
    let v = text(&out.stdout).trim().to_string();
    (!v.is_empty()).then_some(v)
}

fn history_attr(id: &str, attr: &str) -> String {
    let out = in_root(
        None,
        None,
        &format!("condor_history {id} -limit 1 -af {attr}"),
    );
    text(&out.stdout).trim().to_string()
}

/// Waits until the job left the queue (completed or removed); JOB_EXIT ran.
fn wait_gone(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while let Some(status) = queue_attr(id, "JobStatus") {
        assert_ne!(
            status,
            "5",
            "job {id} held: {:?}",
            queue_attr(id, "HoldReason")
        );
        assert!(
            Instant::now() < deadline,
            "job {id} still in the queue ({status})"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_status(id: &str, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let status = queue_attr(id, "JobStatus");
        if status.as_deref() == Some(wanted) {
            return;
        }
        assert!(
            Instant::now() < deadline && status.is_some(),
            "job {id} never reached status {wanted} (now {status:?})"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Names in `dir` that start with `prefix`.
fn starting_with(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

/// Deployment `condor-ID-TAG` of job `id` (TAG: the owner and GlobalJobId).
fn journal_of(id: &str) -> Option<PathBuf> {
    starting_with(&site().state_dir.join("journal"), &format!("condor-{id}-"))
        .into_iter()
        .next()
}

/// What job `id`'s deployment could leave on this node: journal, run
/// directory (overlay, agent and QMP sockets), QEMU process.
fn leftovers(id: &str) -> Vec<String> {
    let site = site();
    let dep = format!("condor-{id}-");
    let mut found: Vec<String> = starting_with(&site.state_dir.join("journal"), &dep)
        .into_iter()
        .chain(starting_with(&site.state_dir.join("run"), &dep))
        .map(|p| p.display().to_string())
        .collect();
    let name = format!("guest=sd-{dep}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            if text(&cmdline).contains(&name) {
                found.push(format!(
                    "QEMU process {}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

fn assert_no_leftovers(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leftovers(id).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(leftovers(id), Vec::<String>::new());
}

fn host_kernel() -> String {
    text(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .trim()
        .to_string()
}

#[test]
fn job_runs_in_the_guest_and_its_exit_code_is_the_jobs() {
    let _serial = serial();
    let dir = JobDir::new("guest");
    // A script transferred with the job: the wrapper copies it into the guest.
    dir.write(
        "job.sh",
        "#!/bin/sh\necho kernel=$(uname -r) host=$(cat /proc/sys/kernel/hostname)\n\
         cat /etc/sd-image\nprintf '\\001\\000\\377err' >&2\nexit 5\n",
    );
    let id = dir.submit(
        "guest",
        "executable = job.sh\nshould_transfer_files = YES\n\
         +SDEnvironment = \"jobs/hello.jdl\"",
    );
    wait_gone(&id);
    let out = text(&dir.read("guest.out"));
    let err = dir.read("guest.err");
    assert!(
        out.contains(&format!("kernel={}", guest_kernel())),
        "not the guest's kernel: {out}{}",
        text(&err)
    );
    assert_ne!(guest_kernel(), host_kernel());
    assert!(out.contains("host=hello-vm"), "the JDL's hostname: {out}");
    assert!(
        out.contains("name=debian-minimal"),
        "the JDL's image: {out}"
    );
    assert_eq!(err, b"\x01\x00\xfferr", "stderr byte for byte");
    assert_eq!(history_attr(&id, "ExitCode"), "5");
    // PREPARE_JOB's SDDomain reached the job ad that JOB_EXIT got (the node
    // service logs it with the job's end).
    let log = std::fs::read_to_string(site().log_dir.join("sd-hooks.log")).unwrap();
    let ended = format!("job={id}}}: job ended (exit): exit code 5, domain sd-condor-{id}-");
    assert!(log.contains(&ended), "no {ended:?} in sd-hooks.log");
    assert_eq!(history_attr(&id, "JobStatus"), "4", "completed");
    let log = text(&dir.read("guest.log"));
    assert!(log.contains("Normal termination (return value 5)"), "{log}");
    assert_no_leftovers(&id);
}

#[test]
fn two_jobs_at_once_get_their_own_domains() {
    let _serial = serial();
    let dir = JobDir::new("two");
    let job = |token: &str| {
        format!(
            "executable = /bin/sh\ntransfer_executable = false\n\
             arguments = \"-c 'echo {token} > /root/mine; sleep 6; echo seen: $(cat /root/mine)'\"\n\
             +SDEnvironment = \"busybox\""
        )
    };
    let a = dir.submit("a", &job("job-a"));
    let b = dir.submit("b", &job("job-b"));
    let deadline = Instant::now() + Duration::from_secs(180);
    while !(journal_of(&a).is_some() && journal_of(&b).is_some()) {
        assert!(
            Instant::now() < deadline,
            "the two jobs never had their domains at the same time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    wait_gone(&a);
    wait_gone(&b);
    for (id, name, token) in [(&a, "a", "job-a"), (&b, "b", "job-b")] {
        assert_eq!(
            text(&dir.read(&format!("{name}.out"))),
            format!("seen: {token}\n"),
            "{}",
            text(&dir.read(&format!("{name}.err")))
        );
        assert_eq!(history_attr(id, "ExitCode"), "0");
        assert_no_leftovers(id);
    }
}

#[test]
fn forbidden_image_is_held_with_the_refusal_and_leaves_nothing() {
    let _serial = serial();
    let dir = JobDir::new("forbidden");
    dir.write(
        "jobs/forbidden.jdl",
        "[ Executable = \"/bin/true\"; VirtualOrganisation = \"atlas\";\n  VirtualEnvironment = [ Image = \"busybox\"; ]; ]\n",
    );
    let id = dir.submit(
        "forbidden",
        "executable = /bin/echo\ntransfer_executable = false\narguments = should-not-run\n\
         +SDEnvironment = \"jobs/forbidden.jdl\"",
    );
    wait_status(&id, "5");
    let reason = queue_attr(&id, "HoldReason").unwrap_or_default();
    assert!(
        reason.contains("SmartDomains refused this job's environment request")
            && reason.contains("atlas")
            && reason.contains("busybox"),
        "the refusal in the hold reason: {reason}"
    );
    assert_eq!(queue_attr(&id, "HoldReasonCode").as_deref(), Some("19"));
    assert_eq!(queue_attr(&id, "HoldReasonSubCode").as_deref(), Some("2"));
    assert!(!text(&dir.read("forbidden.out")).contains("should-not-run"));
    assert_no_leftovers(&id);
    ok(in_root(None, None, &format!("condor_rm {id}")), "condor_rm");
}

#[test]
fn malformed_jdl_is_held_with_its_line_and_column() {
    let _serial = serial();
    let dir = JobDir::new("malformed");
    dir.write(
        "jobs/bad.jdl",
        "[ Executable = \"/bin/true\";\n  VirtualEnvironment = [ Image = ; ]; ]\n",
    );
    let id = dir.submit(
        "bad",
        "executable = /bin/true\ntransfer_executable = false\n+SDEnvironment = \"jobs/bad.jdl\"",
    );
    wait_status(&id, "5");
    let reason = queue_attr(&id, "HoldReason").unwrap_or_default();
    assert!(
        reason.contains("SmartDomains refused") && reason.contains("bad.jdl:2:"),
        "file:line:column in the hold reason: {reason}"
    );
    assert_no_leftovers(&id);
    ok(in_root(None, None, &format!("condor_rm {id}")), "condor_rm");
}

#[test]
fn condor_rm_of_a_running_job_cleans_up() {
    let _serial = serial();
    let dir = JobDir::new("rm");
    // No file transfer: the output file fills while the job runs.
    let id = dir.submit(
        "rm",
        "executable = /bin/sh\ntransfer_executable = false\n\
         arguments = \"-c 'echo started; sleep 300'\"\nshould_transfer_files = NO\n\
         +SDEnvironment = \"busybox\"",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !text(&dir.read("rm.out")).contains("started") {
        assert!(
            Instant::now() < deadline,
            "the job never printed: {:?} {:?}",
            queue_attr(&id, "JobStatus"),
            queue_attr(&id, "HoldReason")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!leftovers(&id).is_empty(), "the job runs in a domain");
    ok(in_root(None, None, &format!("condor_rm {id}")), "condor_rm");
    wait_gone(&id);
    assert_eq!(history_attr(&id, "JobStatus"), "3", "removed");
    assert_no_leftovers(&id);
}

#[test]
fn job_without_sdenvironment_is_untouched() {
    let _serial = serial();
    let dir = JobDir::new("plain");
    let id = dir.submit(
        "plain",
        "executable = /bin/sh\ntransfer_executable = false\n\
         arguments = \"-c 'uname -r; echo SD=$SDDomain; exit 3'\"",
    );
    wait_gone(&id);
    assert_eq!(
        text(&dir.read("plain.out")),
        format!("{}\nSD=\n", host_kernel())
    );
    assert_eq!(history_attr(&id, "ExitCode"), "3");
    assert_no_leftovers(&id);
}

/// Restarts what `scripts/condor-local start` runs, even if the test fails.
struct RestartPool;

impl Drop for RestartPool {
    fn drop(&mut self) {
        let out = Command::new(repo().join("scripts/condor-local"))
            .arg("start")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

#[test]
fn site_fault_holds_the_job_with_a_reason_for_the_admin() {
    let _serial = serial();
    let _restart = RestartPool;
    // The node service is down: a fault of the site, not of the job.
    let pid: i32 = std::fs::read_to_string("/run/sd-condor-local/node-service.pid")
        .expect("the node service's PID file (scripts/condor-local)")
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new("/run/smartdomains/node.sock").exists() {
        assert!(Instant::now() < deadline, "the node service did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dir = JobDir::new("fault");
    let id = dir.submit(
        "fault",
        "executable = /bin/true\ntransfer_executable = false\n+SDEnvironment = \"busybox\"",
    );
    wait_status(&id, "5");
    let reason = queue_attr(&id, "HoldReason").unwrap_or_default();
    assert!(
        reason.contains("SmartDomains site fault on")
            && reason.contains("for the site admin")
            && reason.contains("node service"),
        "an admin's hold reason: {reason}"
    );
    assert_eq!(queue_attr(&id, "HoldReasonSubCode").as_deref(), Some("1"));
    assert_no_leftovers(&id);
    ok(in_root(None, None, &format!("condor_rm {id}")), "condor_rm");
}

#[test]
fn transferred_files_go_into_the_guest_and_outputs_come_back() {
    let _serial = serial();
    let dir = JobDir::new("files");
    dir.write("data.txt", "input from the submit side\n");
    let id = dir.submit(
        "files",
        "executable = /bin/sh\ntransfer_executable = false\n\
         arguments = \"-c 'cat data.txt; uname -r > result.txt'\"\n\
         should_transfer_files = YES\ntransfer_input_files = data.txt\n\
         transfer_output_files = result.txt\n\
         +SDEnvironment = \"busybox\"",
    );
    wait_gone(&id);
    assert_eq!(
        text(&dir.read("files.out")),
        "input from the submit side\n",
        "{}",
        text(&dir.read("files.err"))
    );
    assert_eq!(
        text(&dir.read("result.txt")).trim(),
        guest_kernel(),
        "the output file the job wrote in the guest"
    );
    assert_eq!(history_attr(&id, "ExitCode"), "0");
    assert_no_leftovers(&id);
}

#[test]
fn condor_hold_of_a_running_job_cleans_up() {
    let _serial = serial();
    let dir = JobDir::new("hold");
    let id = dir.submit(
        "hold",
        "executable = /bin/sh\ntransfer_executable = false\n\
         arguments = \"-c 'echo started; sleep 300'\"\nshould_transfer_files = NO\n\
         +SDEnvironment = \"busybox\"",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    while !text(&dir.read("hold.out")).contains("started") {
        assert!(Instant::now() < deadline, "the job never printed");
        std::thread::sleep(Duration::from_millis(100));
    }
    ok(
        in_root(None, None, &format!("condor_hold {id}")),
        "condor_hold",
    );
    wait_status(&id, "5");
    // JOB_EXIT ran with "hold": the domain is gone while the job waits, held.
    assert_no_leftovers(&id);
    ok(in_root(None, None, &format!("condor_rm {id}")), "condor_rm");
}

#[test]
fn a_wrapper_without_its_domain_fails_the_job_with_a_site_fault() {
    let _serial = serial();
    let dir = JobDir::new("nohook");
    // A hook keyword the node has no hooks for: PREPARE_JOB never runs, and
    // the wrapper finds no domain. The job must not run on the host.
    let id = dir.submit(
        "nohook",
        "executable = /bin/echo\ntransfer_executable = false\narguments = should-not-run\n\
         +HookKeyword = \"NONE\"\n+SDEnvironment = \"busybox\"",
    );
    wait_gone(&id);
    let err = text(&dir.read("nohook.err"));
    assert!(
        err.contains("SmartDomains site fault") && err.contains("has no domain"),
        "{err}"
    );
    assert!(!text(&dir.read("nohook.out")).contains("should-not-run"));
    assert_eq!(history_attr(&id, "ExitCode"), "125");
    assert_no_leftovers(&id);
}

#[test]
fn a_job_gets_one_domain_of_its_own_job_whatever_job_its_hook_names() {
    let _serial = serial();
    let dir = JobDir::new("forge");
    // A plain job (no SDEnvironment: it runs on the host, under its starter)
    // calls the PREPARE_JOB hook itself, twice, with an ad of another job.
    dir.write(
        "forge.sh",
        "printf 'ClusterId = 999\\nProcId = 0\\nGlobalJobId = \"forged#999.0#1\"\\nSDEnvironment = \"busybox\"\\n' > forged.ad\n\
         /opt/smartdomains/sd-condor-prepare < forged.ad > first.txt 2>&1; echo first=$?\n\
         /opt/smartdomains/sd-condor-prepare < forged.ad > second.txt 2>&1; echo second=$?\n\
         cat first.txt second.txt\n",
    );
    let id = dir.submit(
        "forge",
        "executable = /bin/sh\ntransfer_executable = false\narguments = forge.sh\n\
         should_transfer_files = YES\ntransfer_input_files = forge.sh",
    );
    wait_gone(&id);
    let out = text(&dir.read("forge.out"));
    assert!(
        out.contains("first=0"),
        "{out}{}",
        text(&dir.read("forge.err"))
    );
    assert!(
        out.contains(&format!("SDDeployment = \"condor-{id}-")) && !out.contains("999.0"),
        "the domain is the real job's ({id}), not the one the hook named: {out}"
    );
    assert!(
        out.contains("second=2") && out.contains("already has its domain"),
        "one domain per job: {out}"
    );
    // No JOB_EXIT tore it down (the job asked for nothing): it goes with
    // the job's starter.
    assert_no_leftovers(&id);
    assert_eq!(journal_of("999.0"), None);
}
