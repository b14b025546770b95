//! Slurm integration, against a real one-node Slurm (`scripts/slurm-local`,
//! started here if it is not running) configured with our Prolog, Epilog
//! and SPANK plugin, and the site config the hooks read
//! (/etc/smartdomains/site.yaml, written by scripts/setup).
//!
//! Jobs run as `sdtest` (made by scripts/setup, in the demo VOs' groups), so
//! the hooks really act for another user; `nobody` is in no VO.

mod common;
use common::{guest_kernel, repo, text};
use sd_site::SiteConfig;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const USER: &str = "sdtest";

fn bin(name: &str) -> PathBuf {
    // The hooks Slurm runs are the release build that scripts/slurm-local configures.
    repo().join("target/release").join(name)
}

/// SLURM_CONF of the running local cluster.
fn slurm_conf() -> &'static str {
    static CONF: OnceLock<String> = OnceLock::new();
    CONF.get_or_init(|| {
        if let Ok(c) = std::env::var("SLURM_CONF") {
            return c;
        }
        let out = Command::new(repo().join("scripts/slurm-local"))
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/slurm-local start failed: {}",
            text(&out.stderr)
        );
        let line = text(&out.stdout);
        line.trim()
            .strip_prefix("export SLURM_CONF=")
            .expect("export line")
            .to_string()
    })
}

fn site() -> SiteConfig {
    SiteConfig::load(&SiteConfig::default_path())
        .expect("the site config the hooks read (scripts/setup writes it)")
}

/// One test at a time: a test drains and resumes the node, and the node
/// has two CPUs for the two-job test.
use common::serial;

fn slurm(cmd: &str) -> Command {
    let mut c = Command::new(cmd);
    c.env("SLURM_CONF", slurm_conf());
    c
}

fn run(mut c: Command) -> Output {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// A working directory any user can use, with the job files in it.
fn workdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("sd-slurm-")
        .tempdir()
        .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(dir.path().join("jobs")).unwrap();
    for f in ["hello.jdl", "hello.sh"] {
        std::fs::copy(repo().join("jobs").join(f), dir.path().join("jobs").join(f)).unwrap();
    }
    dir
}

fn sbatch(dir: &Path, args: &[&str]) -> String {
    sbatch_as(USER, dir, args)
}

/// `sbatch --sd-env=busybox --wrap SCRIPT`: the script runs in a busybox guest.
fn busybox_job(dir: &Path, script: &str) -> String {
    sbatch(dir, &["--sd-env=busybox", "--wrap", script])
}

fn sbatch_as(user: &str, dir: &Path, args: &[&str]) -> String {
    let mut c = slurm("sbatch");
    c.current_dir(dir)
        .args([
            "--parsable",
            "--uid",
            user,
            "-o",
            "job-%j.out",
            "-e",
            "job-%j.err",
        ])
        .args(args);
    text(&run(c).stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string()
}

fn job_field(id: &str, field: &str) -> String {
    let out = slurm("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .unwrap();
    text(&out.stdout)
        .split_whitespace()
        .find_map(|w| {
            w.strip_prefix(field)
                .and_then(|v| v.strip_prefix('='))
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Waits until the job is over, epilog included.
fn wait_done(id: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let state = job_field(id, "JobState");
        if matches!(
            state.as_str(),
            "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY"
        ) {
            return state;
        }
        assert!(Instant::now() < deadline, "job {id} still {state}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_state(id: &str, wanted: &str) {
    let deadline = Instant::now() + Duration::from_secs(240);
    while job_field(id, "JobState") != wanted {
        assert!(
            Instant::now() < deadline,
            "job {id} never {wanted}: {}",
            job_field(id, "JobState")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn output(dir: &Path, id: &str) -> (String, String) {
    let read = |ext: &str| {
        std::fs::read_to_string(dir.join(format!("job-{id}.{ext}"))).unwrap_or_default()
    };
    (read("out"), read("err"))
}

/// What a job's deployment could leave on this node.
fn leftovers(id: &str) -> Vec<String> {
    let site = site();
    let dep = format!("slurm-{id}");
    let mut found = vec![];
    for p in [
        site.state_dir.join("journal").join(format!("{dep}.json")),
        site.state_dir.join("run").join(&dep),
        site.state_dir.join("refused").join(&dep),
    ] {
        if p.exists() {
            found.push(p.display().to_string());
        }
    }
    let name = format!("guest=sd-{dep}-");
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

/// The epilog finishes shortly after the job's state says it is over.
fn assert_no_leftovers(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !leftovers(id).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(leftovers(id), Vec::<String>::new());
}

fn node_state() -> String {
    let out = run({
        let mut c = slurm("sinfo");
        c.args(["-h", "-o", "%T"]);
        c
    });
    text(&out.stdout).trim().to_string()
}

#[test]
fn batch_script_and_srun_run_inside_the_guest() {
    let _serial = serial();
    let dir = workdir();
    let id = sbatch(
        dir.path(),
        &[
            "--sd-env=jobs/hello.jdl",
            "--wrap",
            "echo kernel=$(uname -r) host=$(hostname); cat /etc/sd-image; id -u",
        ],
    );
    assert_eq!(wait_done(&id), "COMPLETED", "{:?}", output(dir.path(), &id));
    let (out, err) = output(dir.path(), &id);
    assert!(
        out.contains(&format!("kernel={}", guest_kernel())),
        "{out}{err}"
    );
    assert!(
        out.contains("host=hello-vm"),
        "the JDL's hostname: {out}{err}"
    );
    assert!(out.contains("name=debian-minimal"), "{out}{err}");
    assert_no_leftovers(&id);

    // As the user itself: `srun --uid` from root cannot wait in the queue.
    let srun = run({
        let mut c = slurm("runuser");
        c.current_dir(dir.path()).args([
            "-u",
            USER,
            "--",
            "srun",
            "--sd-env=busybox",
            "uname",
            "-r",
        ]);
        c
    });
    assert_eq!(text(&srun.stdout).trim(), guest_kernel());
}

#[test]
fn exit_code_from_the_guest_is_the_jobs() {
    let _serial = serial();
    let dir = workdir();
    let id = busybox_job(dir.path(), "echo in-guest; exit 3");
    assert_eq!(wait_done(&id), "FAILED");
    assert_eq!(job_field(&id, "ExitCode"), "3:0");
    assert!(output(dir.path(), &id).0.contains("in-guest"));
    assert_no_leftovers(&id);
}

/// An image and its network in the option, as a JDL's `Network` says:
/// the job's domain has its NAT address, and nothing is left after it.
#[test]
fn an_image_on_a_network_gets_its_address() {
    let _serial = serial();
    let dir = workdir();
    let id = sbatch(
        dir.path(),
        &[
            "--sd-env=busybox:nat",
            "--wrap",
            "ip -o -4 addr show dev eth0",
        ],
    );
    assert_eq!(wait_done(&id), "COMPLETED");
    let (out, err) = output(dir.path(), &id);
    // config/site.yaml's nat network, which the demo VO may use.
    assert!(out.contains("inet 10.213.0."), "{out}{err}");
    assert_no_leftovers(&id);
}

#[test]
fn two_jobs_at_once_get_their_own_domains() {
    let _serial = serial();
    let dir = workdir();
    let script = "echo $SLURM_JOB_ID > /root/mine; sleep 6; echo seen: $(cat /root/mine)";
    let a = busybox_job(dir.path(), script);
    let b = busybox_job(dir.path(), script);
    // Both domains exist at the same time.
    let site = site();
    let journal = |id: &str| {
        site.state_dir
            .join("journal")
            .join(format!("slurm-{id}.json"))
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !(journal(&a).exists() && journal(&b).exists()) {
        assert!(
            Instant::now() < deadline,
            "the two jobs never ran at the same time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for id in [&a, &b] {
        assert_eq!(wait_done(id), "COMPLETED");
        let (out, err) = output(dir.path(), id);
        assert_eq!(out.trim(), format!("seen: {id}"), "{err}");
        assert_no_leftovers(id);
    }
}

/// Submits, as `user`, a job whose request (`spec`, an `--sd-env=` value)
/// SmartDomains refuses: the job fails without running, its stderr says
/// `reasons`, nothing is left, and the node stays in service.
fn assert_refused_and_node_up(
    user: &str,
    dir: &Path,
    spec: &str,
    extra: &[&str],
    reasons: &[&str],
) {
    let sd_env = format!("--sd-env={spec}");
    let mut args = vec![sd_env.as_str()];
    args.extend_from_slice(extra);
    args.extend(["--wrap", "echo should-not-run"]);
    let id = sbatch_as(user, dir, &args);
    let state = wait_done(&id);
    let (out, err) = output(dir, &id);
    assert_eq!(state, "FAILED", "{spec}: {out}{err}");
    assert!(!out.contains("should-not-run"), "{spec}: {out}");
    for reason in reasons {
        assert!(
            err.contains(reason),
            "{spec}: {reason:?} in the job's stderr: {err}"
        );
    }
    assert_no_leftovers(&id);
    let state = node_state();
    assert!(
        state == "idle" || state == "mixed" || state == "allocated",
        "node state {state}"
    );
}

#[test]
fn forbidden_image_fails_the_job_and_keeps_the_node() {
    let _serial = serial();
    let dir = workdir();
    std::fs::write(
        dir.path().join("jobs/forbidden.jdl"),
        "[ Executable = \"/bin/true\"; VirtualOrganisation = \"atlas\";\n  VirtualEnvironment = [ Image = \"busybox\"; ]; ]\n",
    )
    .unwrap();
    assert_refused_and_node_up(
        USER,
        dir.path(),
        "jobs/forbidden.jdl",
        &[],
        &["atlas", "busybox"],
    );
}

/// VO membership is the site's (site.yaml's unix_groups, the user
/// database), never the request's: `nobody` naming the demo VO is refused,
/// with the reason in the job's stderr, and the node stays up.
#[test]
fn a_vo_the_owner_is_not_a_member_of_is_refused() {
    let _serial = serial();
    let dir = workdir();
    std::fs::write(
        dir.path().join("jobs/claims-demo.jdl"),
        "[ Executable = \"/bin/true\"; VirtualOrganisation = \"demo\";\n  VirtualEnvironment = [ Image = \"busybox\"; ]; ]\n",
    )
    .unwrap();
    // By the JDL, and by a bare image with the VO's name as Slurm account.
    for spec in ["jobs/claims-demo.jdl", "busybox"] {
        assert_refused_and_node_up(
            "nobody",
            dir.path(),
            spec,
            &["--account=demo"],
            &["user nobody (uid 65534) is not a member of VO \"demo\""],
        );
    }
}

/// An image a user saved is the user's: one that cannot boot (here its
/// disk is all zeros, as after a job wiped its own disk and saved it) fails
/// the jobs that name it, with the guest's reason, and the node stays up.
#[test]
fn an_unbootable_image_a_user_saved_fails_the_job_not_the_node() {
    use sd_vmm::image_store::{DiskToSave, ImageStore, SaveMeta};
    let _serial = serial();
    let dir = workdir();
    let name = format!("wiped-{}", std::process::id());
    let zeros = dir.path().join("zeros.raw");
    std::fs::File::create(&zeros)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let store = ImageStore::of_site(&site());
    let disk = DiskToSave {
        path: zeros,
        format: sd_site::DiskFormat::Raw,
        allocated: None,
        backing: None,
    };
    let meta = SaveMeta {
        source_job: "slurm-test".into(),
        vo: "demo".into(),
        base_image: "busybox".into(),
        saved_by_uid: 4242,
        vo_quota_bytes: None,
    };
    store
        .save_disk(&disk, &name, meta, &sd_vmm::image_store::NoProgress)
        .unwrap();
    std::fs::write(
        dir.path().join("jobs/wiped.jdl"),
        format!("[ Executable = \"/bin/true\"; VirtualEnvironment = [ Image = \"{name}\"; ]; ]\n"),
    )
    .unwrap();
    let refused = std::panic::catch_unwind(|| {
        assert_refused_and_node_up(
            USER,
            dir.path(),
            "jobs/wiped.jdl",
            &[],
            &["cannot start the domain", "sd-init: FATAL"],
        )
    });
    let _ = store.remove(&name);
    if let Err(panic) = refused {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn scancel_of_a_running_job_cleans_up() {
    let _serial = serial();
    let dir = workdir();
    let id = busybox_job(dir.path(), "echo started; sleep 300");
    wait_state(&id, "RUNNING");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !output(dir.path(), &id).0.contains("started") {
        assert!(Instant::now() < deadline, "the job never printed");
        std::thread::sleep(Duration::from_millis(100));
    }
    run({
        let mut c = slurm("scancel");
        c.arg(&id);
        c
    });
    assert_eq!(wait_done(&id), "CANCELLED");
    assert_no_leftovers(&id);
}

#[test]
fn prolog_killed_mid_boot_then_epilog_cleans_up() {
    let _serial = serial();
    let dir = workdir();
    let id = busybox_job(dir.path(), "true");
    // Wait until the prolog has started QEMU, then SIGKILL the prolog.
    let site = site();
    let run_dir = site.state_dir.join("run").join(format!("slurm-{id}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run_dir.join("qmp.sock").exists() {
        assert!(Instant::now() < deadline, "the prolog never started QEMU");
        std::thread::sleep(Duration::from_millis(20));
    }
    let prolog = prolog_of(&id).expect("the job's sd-prolog process");
    nix::sys::signal::kill(prolog, nix::sys::signal::Signal::SIGKILL).unwrap();
    // A killed prolog is a failed prolog: Slurm runs the epilog, requeues
    // and holds the batch job, and drains the node.
    assert_no_leftovers(&id);
    let _ = slurm("scancel").arg(&id).status();
    let node = text(
        &run({
            let mut c = slurm("sinfo");
            c.args(["-h", "-o", "%n"]);
            c
        })
        .stdout,
    )
    .trim()
    .to_string();
    run({
        let mut c = slurm("scontrol");
        c.args(["update", &format!("nodename={node}"), "state=resume"]);
        c
    });
}

/// The sd-prolog process working for job `id`.
fn prolog_of(id: &str) -> Option<nix::unistd::Pid> {
    let wanted = format!("SLURM_JOB_ID={id}");
    std::fs::read_dir("/proc").unwrap().flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let mine = environ.split(|b| *b == 0).any(|v| v == wanted.as_bytes());
        (comm.trim() == "sd-prolog" && mine).then(|| nix::unistd::Pid::from_raw(pid))
    })
}

#[test]
fn job_without_a_request_is_untouched() {
    let _serial = serial();
    let dir = workdir();
    let id = sbatch(
        dir.path(),
        &["--wrap", "uname -r; echo SPANK=${SPANK_SD_ENV:-none}"],
    );
    assert_eq!(wait_done(&id), "COMPLETED");
    let host = text(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .trim()
        .to_string();
    let (out, _) = output(dir.path(), &id);
    assert_eq!(out, format!("{host}\nSPANK=none\n"));
    assert_no_leftovers(&id);
}

#[test]
fn comment_request_without_the_plugin_option() {
    let _serial = serial();
    let dir = workdir();
    let sd_exec = bin("sd-exec");
    let id = sbatch(
        dir.path(),
        &[
            "--comment=sd-env:busybox",
            "--wrap",
            &format!("{} -- cat /etc/sd-image", sd_exec.display()),
        ],
    );
    assert_eq!(wait_done(&id), "COMPLETED", "{:?}", output(dir.path(), &id));
    assert!(output(dir.path(), &id).0.contains("name=busybox"));
    assert_no_leftovers(&id);
}

// ---- The domain in the job's resource container (cgroup v1, as
// scripts/slurm-local configures Slurm: proctrack/cgroup, task/cgroup with
// ConstrainCores and ConstrainRAMSpace, PrologFlags=Contain).

/// The job's cgroup directory under `controller` (`slurm_<node>` on
/// Debian's multiple-slurmd build, else `slurm`).
fn job_cgroup(controller: &str, uid: u32, id: &str) -> Option<PathBuf> {
    let base = Path::new("/sys/fs/cgroup").join(controller);
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .split('.')
        .next()
        .unwrap()
        .to_string();
    [format!("slurm_{host}"), "slurm".to_string()]
        .into_iter()
        .map(|r| base.join(r).join(format!("uid_{uid}/job_{id}")))
        .find(|d| d.is_dir())
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn sdtest_uid() -> u32 {
    text(
        &run({
            let mut c = Command::new("id");
            c.args(["-u", USER]);
            c
        })
        .stdout,
    )
    .trim()
    .parse()
    .unwrap()
}

/// The QEMU process of job `id`'s domain, once it is in the job's cgroups
/// (memory, cpuset, cpuacct; it boots in them) and Slurm has configured them.
fn placed_qemu(id: &str) -> u32 {
    let name = format!("guest=sd-slurm-{id}-");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if !text(&cmdline).contains(&name) {
                continue;
            }
            let cg = read_trim(&entry.path().join("cgroup"));
            let job = format!("/job_{id}");
            let placed = ["memory", "cpuset", "cpuacct"].iter().all(|c| {
                cg.lines()
                    .any(|l| l.contains(&format!(":{c}:")) && l.ends_with(&job))
            });
            // Slurm sets the job's cores and limits once the prolog is done
            // and its extern step made.
            let configured = ["memory", "cpuset"].iter().all(|c| {
                job_cgroup(c, sdtest_uid(), id).is_some_and(|d| d.join("step_extern").is_dir())
            });
            if placed && configured {
                return pid;
            }
        }
        assert!(
            Instant::now() < deadline,
            "job {id}: its QEMU never in the job's cgroups ({})",
            job_field(id, "JobState")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status_field(pid: u32, task: Option<&str>, field: &str) -> String {
    let path = match task {
        Some(t) => format!("/proc/{pid}/task/{t}/status"),
        None => format!("/proc/{pid}/status"),
    };
    read_trim(Path::new(&path))
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// utime + stime of a process (all its threads), in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = read_trim(Path::new(&format!("/proc/{pid}/stat")));
    let f: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    // Fields 14 and 15 of stat(5); f[0] is field 3.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks
        / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .unwrap()
            .unwrap() as f64
}

fn two_vcpu_jdl(dir: &Path) {
    std::fs::write(
        dir.join("jobs/two.jdl"),
        "[ Executable = \"/bin/true\";\n  VirtualEnvironment = [ Image = \"busybox\"; VCPUs = 2; Memory = 256; ]; ]\n",
    )
    .unwrap();
}

/// A 2-vCPU guest in a 1-core, 512 MiB allocation: QEMU (every thread of
/// it) runs only on the job's core, within the job's memory limit.
#[test]
fn the_domain_runs_on_the_jobs_cores_within_its_memory() {
    let _serial = serial();
    let dir = workdir();
    two_vcpu_jdl(dir.path());
    let id = sbatch(
        dir.path(),
        &[
            "--sd-env=jobs/two.jdl",
            "-c1",
            "--mem=512M",
            "--wrap",
            "echo vcpus=$(nproc); sleep 8",
        ],
    );
    let qemu = placed_qemu(&id);
    let uid = sdtest_uid();
    let cpuset = job_cgroup("cpuset", uid, &id).expect("the job's cpuset cgroup");
    let cpus = read_trim(&cpuset.join("cpuset.cpus"));
    assert!(
        !cpus.contains(',') && !cpus.contains('-'),
        "one core: {cpus}"
    );
    assert_eq!(status_field(qemu, None, "Cpus_allowed_list"), cpus);
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{qemu}/task"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    assert!(tasks.len() >= 3, "QEMU's threads: {tasks:?}");
    for t in &tasks {
        assert_eq!(
            status_field(qemu, Some(t), "Cpus_allowed_list"),
            cpus,
            "thread {t} of QEMU {qemu}"
        );
    }
    let memory = job_cgroup("memory", uid, &id).expect("the job's memory cgroup");
    assert_eq!(
        read_trim(&memory.join("memory.limit_in_bytes")),
        (512u64 << 20).to_string()
    );
    // QEMU booted in the job's cgroups (the prolog made and joined them):
    // the guest RAM it touched while booting is the job's.
    let usage: u64 = read_trim(&memory.join("memory.usage_in_bytes"))
        .parse()
        .unwrap();
    assert!(
        usage > 32 << 20,
        "the job's memory holds only {} MiB: the domain's RAM is not charged to it",
        usage >> 20
    );
    eprintln!(
        "job {id}: QEMU {qemu} ({} threads) on CPU {cpus}; job memory {} MiB of 512",
        tasks.len(),
        usage >> 20
    );
    assert!(usage < 512 << 20, "job memory usage {usage}");
    assert_eq!(wait_done(&id), "COMPLETED", "{:?}", output(dir.path(), &id));
    assert!(output(dir.path(), &id).0.contains("vcpus=2"));
    assert_no_leftovers(&id);
    // The job's cgroups, which held QEMU after its steps ended, are gone
    // (the epilog removes them right after the journal).
    let deadline = Instant::now() + Duration::from_secs(20);
    while ["memory", "cpuset", "cpuacct", "devices"]
        .iter()
        .any(|c| job_cgroup(c, uid, &id).is_some())
    {
        assert!(
            Instant::now() < deadline,
            "job {id}'s cgroups left: {:?}",
            job_cgroup("memory", uid, &id)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A guest burning one vCPU for 20 s: the job's CPU accounting
/// (`cpuacct.usage` of its cgroup) holds QEMU's CPU time.
#[test]
fn the_guests_cpu_time_is_the_jobs() {
    let _serial = serial();
    let dir = workdir();
    let id = busybox_job(
        dir.path(),
        "end=$(($(date +%s) + 20)); while [ $(date +%s) -lt $end ]; do :; done; echo burnt",
    );
    let qemu = placed_qemu(&id);
    let uid = sdtest_uid();
    let cpuacct = job_cgroup("cpuacct", uid, &id).expect("the job's cpuacct cgroup");
    let usage = || -> f64 {
        read_trim(&cpuacct.join("cpuacct.usage"))
            .parse::<f64>()
            .unwrap_or(0.0)
            / 1e9
    };
    // From QEMU's start: it booted in the job's cgroups, so its boot's CPU is the job's too.
    let (q0, u0) = (0.0, 0.0);
    let started = Instant::now();
    let mut last = (q0, u0);
    while Path::new(&format!("/proc/{qemu}")).exists() && job_field(&id, "JobState") == "RUNNING" {
        last = (cpu_seconds(qemu), usage());
        std::thread::sleep(Duration::from_millis(500));
    }
    let (qemu_cpu, job_cpu) = (last.0 - q0, last.1 - u0);
    eprintln!(
        "job {id}: QEMU used {qemu_cpu:.1} s of CPU in all (boot included, {:.1} s watched); \
         the job's cgroup counted {job_cpu:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(wait_done(&id), "COMPLETED", "{:?}", output(dir.path(), &id));
    assert!(output(dir.path(), &id).0.contains("burnt"));
    assert!(qemu_cpu > 5.0, "the guest burnt only {qemu_cpu:.1} s");
    assert!(
        job_cpu >= 0.95 * qemu_cpu,
        "the job's cgroup counts {job_cpu:.1} s of QEMU's {qemu_cpu:.1} s"
    );
    assert_no_leftovers(&id);
}

/// QMP `query-status` of job `id`'s domain: "running", "paused", ...
fn qmp_status(id: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let sock = site()
        .state_dir
        .join("run")
        .join(format!("slurm-{id}"))
        .join("qmp.sock");
    let s = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n")
        .unwrap();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if let Some(rest) = line.split("\"status\": \"").nth(1) {
            return rest.split('"').next().unwrap().to_string();
        }
        assert!(!line.is_empty(), "QMP closed");
    }
}

/// `scontrol suspend` pauses the domain (the watcher sees Slurm stop the
/// job's extern task, and sends QMP `stop`); `scontrol resume` continues
/// it: a ticking job loses no tick.
#[test]
fn scontrol_suspend_pauses_the_domain_and_resume_continues_it() {
    let _serial = serial();
    let dir = workdir();
    let id = busybox_job(dir.path(), "i=0; while [ $i -lt 15 ]; do i=$((i+1)); echo tick $i $(cut -d' ' -f1 /proc/uptime); sleep 1; done");
    placed_qemu(&id);
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(qmp_status(&id), "running");
    run({
        let mut c = slurm("scontrol");
        c.args(["suspend", &id]);
        c
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while qmp_status(&id) != "paused" {
        assert!(Instant::now() < deadline, "the domain never paused");
        std::thread::sleep(Duration::from_millis(100));
    }
    let paused_at = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    assert_eq!(qmp_status(&id), "paused");
    assert_eq!(job_field(&id, "JobState"), "SUSPENDED");
    run({
        let mut c = slurm("scontrol");
        c.args(["resume", &id]);
        c
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while qmp_status(&id) != "running" {
        assert!(Instant::now() < deadline, "the domain never continued");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!(
        "job {id}: domain paused for {:.1} s",
        paused_at.elapsed().as_secs_f64()
    );
    assert_eq!(wait_done(&id), "COMPLETED", "{:?}", output(dir.path(), &id));
    let (out, err) = output(dir.path(), &id);
    let ticks: Vec<u32> = out
        .lines()
        .filter_map(|l| l.strip_prefix("tick ")?.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(ticks, (1..=15).collect::<Vec<_>>(), "{out}{err}");
    // The guest's clock stood still while it was paused: no jump between ticks.
    let uptimes: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split(' ').nth(2)?.parse().ok())
        .collect();
    let gap = uptimes.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    eprintln!("job {id}: largest gap between ticks in guest time {gap:.1} s");
    assert_no_leftovers(&id);
}

/// A domain that cannot fit the job's memory allocation is the user's
/// mistake: refused with the limit and the values, the node stays up.
#[test]
fn a_domain_larger_than_the_jobs_memory_is_refused() {
    let _serial = serial();
    let dir = workdir();
    assert_refused_and_node_up(
        USER,
        dir.path(),
        "busybox",
        &["--mem=300M"],
        &["job's memory limit is 300 MiB", "608 MiB", "--mem=608M"],
    );
}

/// A guest that outgrows the job's memory limit is stopped by that limit
/// (the kernel's OOM kill inside the job's memory cgroup, not the node's
/// OOM killer), and the job fails saying so. Admission leaves room for
/// QEMU's overhead, so the test makes the limit tighter than that, as a
/// site's could be: the job's usage after boot plus 48 MiB; then the guest
/// fills 300 MiB of tmpfs.
#[test]
fn a_guest_outgrowing_the_jobs_memory_is_stopped_by_its_limit_and_the_job_says_why() {
    let _serial = serial();
    let dir = workdir();
    let id = sbatch(
        dir.path(),
        &[
            "--sd-env=busybox",
            "--mem=700M",
            "--wrap",
            "sleep 15; mkdir -p /fill; mount -t tmpfs -o size=400m tmpfs /fill; \
             dd if=/dev/zero of=/fill/x bs=1M count=300; echo filled; sleep 20",
        ],
    );
    let qemu = placed_qemu(&id);
    let memory = job_cgroup("memory", sdtest_uid(), &id).expect("the job's memory cgroup");
    let usage: u64 = read_trim(&memory.join("memory.usage_in_bytes"))
        .parse()
        .unwrap();
    let limit = usage + (48 << 20);
    std::fs::write(memory.join("memory.limit_in_bytes"), limit.to_string()).unwrap();
    eprintln!(
        "job {id}: QEMU {qemu}; usage {} MiB, limit now {} MiB",
        usage >> 20,
        limit >> 20
    );
    assert_eq!(wait_done(&id), "FAILED");
    let (out, err) = output(dir.path(), &id);
    assert!(!out.contains("filled"), "the guest filled its tmpfs: {out}");
    eprintln!("job {id}'s stderr: {err}");
    assert!(
        err.contains("killed by the job's memory limit")
            && err.contains(&format!("{} MiB", limit >> 20)),
        "stderr: {err}"
    );
    // Killed, not left running: gone once the kernel has reaped it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{qemu}")).exists() {
        assert!(Instant::now() < deadline, "QEMU {qemu} still runs");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The kernel says whose limit it was: the job's memory cgroup.
    let dmesg = text(&Command::new("dmesg").output().unwrap().stdout);
    assert!(
        dmesg
            .lines()
            .any(|l| l.contains("oom-kill:") && l.contains(&format!("job_{id}"))),
        "no OOM kill in job {id}'s memory cgroup in the kernel log"
    );
    assert_no_leftovers(&id);
}
