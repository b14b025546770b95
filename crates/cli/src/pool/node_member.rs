//! A member on a node of the allocation: deployed and held there by a Slurm
//! job step, `srun --nodelist=NODE sd pool-member run`, which the host that
//! ran `sd start` launches detached and then only watches.
//!
//! Both sides are here, with what passes between them:
//! * the **plan** ([`MemberPlan`], JSON on the step's stdin): the member's
//!   request as this host's planning resolved it (image, host name,
//!   addresses), its VO, its neighbours and the tunnel of its private
//!   segment. The step admits it again against its node's own site policy,
//!   as the caller's own uid: a node deploys only what it allows;
//! * the **reports** ([`Report`], one `sd-member JSON` line each on the
//!   step's stdout, which srun brings back to `STEPS_DIR/ID.step`): started,
//!   up, beats, a miss, dead, down, or why it failed.
//!
//! The step beats its member's agent itself, every `sfLivenessDelay`, and
//! ends when it misses `sfLivenessFactor` beats: liveness is checked where
//! the member runs. The pool's monitor counts a member dead when its step
//! reports it dead or its `srun` is gone (a killed step, a failed node).
//!
//! Stopping: `scancel --signal=USR1 JOB.STEP` (USR2: the pool failed) asks
//! the step to tear its member down gracefully (saving its disk if asked);
//! a step that cannot (killed, or gone with its node) leaves the journal,
//! which a cleanup step on that node undoes, or, once the allocation has
//! ended, that node's epilog (the journal names the job).

use nix::sys::signal::{SigSet, Signal};
use sd_host::owner::Owner;
use sd_host::peer::ProcessStamp;
use sd_request::EnvironmentRequest;
use sd_site::{Blame, SiteConfig};
use sd_vmm::deployment::{self, Deployment, Neighbourhood};
use sd_vmm::network::Tunnel;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{Read, Seek, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::allocation::{bounded, job_running, Allocation};
use super::record::{steps_dir, MemberRecord, StepRecord};
use super::PoolError;

/// What a step is to deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberPlan {
    pub pool: String,
    pub id: String,
    pub path: String,
    pub request: EnvironmentRequest,
    pub vo: Option<String>,
    pub segment: String,
    pub hosts: Vec<(String, Ipv4Addr)>,
    pub tunnel: Option<Tunnel>,
    pub liveness_delay_secs: u64,
    pub liveness_factor: u32,
}

/// A step's report, one per line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Report {
    /// The step runs: `JOB.STEP` on `node`.
    Started {
        step: String,
        node: String,
    },
    Up {
        boot_ms: u64,
        acceleration: String,
    },
    /// A beat answered (written at most every [`BEAT_REPORT_EVERY`]).
    Beat {
        rtt_us: u64,
    },
    Missed {
        error: String,
    },
    /// It missed `sfLivenessFactor` beats: the step ends, the domain stays
    /// for the pool's termination to clean up.
    Dead {
        reason: String,
    },
    Down {
        saved: Option<String>,
    },
    /// It could not be deployed; `users` when the request is at fault.
    Failed {
        error: String,
        users: bool,
    },
}

const REPORT_PREFIX: &str = "sd-member ";
/// A beat is reported after a miss, else at most this often.
const BEAT_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Largest plan a step reads, and how long it waits for it.
const MAX_PLAN_BYTES: u64 = 1 << 20;
const PLAN_DEADLINE: Duration = Duration::from_secs(30);
/// Largest step output read back.
const MAX_OUTPUT_BYTES: u64 = 8 << 20;

// ---------------------------------------------------------------------------
// The host that ran `sd start`
// ---------------------------------------------------------------------------

/// A launched step, until its member is up.
pub(super) struct Launched {
    pub(super) step: StepRecord,
    child: Child,
}

/// Launches the step deploying `plan` on `node`, detached (its own
/// session: it outlives `sd start`), reading the plan from a file and
/// writing to `STEPS_DIR/ID.step`.
pub(super) fn launch(
    site: &SiteConfig,
    alloc: &Allocation,
    node: &str,
    plan: &MemberPlan,
) -> Result<Launched, PoolError> {
    let dir = steps_dir(site, &plan.pool);
    let io = |what: &str, e: std::io::Error| PoolError::Internal {
        name: plan.pool.clone(),
        message: format!("{what} {}: {e}", dir.display()),
    };
    fs::create_dir_all(&dir).map_err(|e| io("cannot create", e))?;
    let plan_path = dir.join(format!("{}.plan.json", plan.id));
    let text = serde_json::to_vec(plan).expect("a plan serialises");
    sd_host::atomic_file::write(&plan_path, &text).map_err(|e| io("cannot write a plan in", e))?;
    let output = dir.join(format!("{}.step", plan.id));
    let out = fs::File::create(&output).map_err(|e| io("cannot create a step output in", e))?;
    let err = out.try_clone().map_err(|e| io("step output in", e))?;
    let input = fs::File::open(&plan_path).map_err(|e| io("cannot read a plan in", e))?;
    let mut command = alloc.step(
        node,
        &format!("sd-pool-{}", plan.pool),
        &["pool-member", "run"],
    );
    command.stdin(input).stdout(out).stderr(err);
    // SAFETY: setsid() is async-signal-safe; nothing else runs in the child.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid()
                .map(drop)
                .map_err(std::io::Error::from)
        });
    }
    let child = command.spawn().map_err(|e| {
        PoolError::Allocation(format!("cannot run srun (is Slurm installed?): {e}"))
    })?;
    let pid = child.id();
    let start_time = ProcessStamp::of(pid as i32)
        .map(|s| s.start_time)
        .unwrap_or(0);
    Ok(Launched {
        step: StepRecord {
            srun_pid: pid,
            srun_start_time: start_time,
            output,
        },
        child,
    })
}

impl Launched {
    /// Waits until the step reports its member up, failed, or ends; at most
    /// the boot timeout plus a minute for the step to start.
    /// Err: why, and whether the request is at fault.
    pub(super) fn wait_up(
        mut self,
        site: &SiteConfig,
        id: &str,
    ) -> Result<(u64, String), (String, bool)> {
        let deadline = Instant::now() + Duration::from_secs(site.boot_timeout_secs + 60);
        let mut reader = ReportReader::new(&self.step.output);
        loop {
            for r in reader.poll() {
                match r {
                    Report::Up {
                        boot_ms,
                        acceleration,
                    } => {
                        // Not waited for: it is the monitor's to watch now.
                        std::mem::forget(self.child);
                        return Ok((boot_ms, acceleration));
                    }
                    Report::Failed { error, users } => return Err((error, users)),
                    _ => {}
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Its last words may have come with its end.
                if let Some(Report::Up { .. }) = reader.poll().into_iter().last() {
                    continue;
                }
                return Err((
                    format!(
                        "its step ended ({status}) before it was up: {}",
                        reader.last_message().unwrap_or("no message")
                    ),
                    false,
                ));
            }
            if Instant::now() > deadline {
                return Err((
                    format!(
                        "{id}: not up after {} s; its step says: {}",
                        site.boot_timeout_secs + 60,
                        reader.last_message().unwrap_or("nothing")
                    ),
                    false,
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Whether member `m`'s step still runs.
pub(super) fn step_alive(step: &StepRecord) -> bool {
    ProcessStamp {
        pid: step.srun_pid as i32,
        start_time: step.srun_start_time,
    }
    .alive()
}

/// Stops member `m` on its node (see the module notes). `succeeded`: the
/// pool ends well (a save `on_success` happens).
pub(super) fn stop(
    site: &SiteConfig,
    alloc: &Allocation,
    m: &MemberRecord,
    succeeded: bool,
) -> Result<(), String> {
    let node = m.node.as_deref().unwrap_or("?");
    let Some(step) = &m.step else {
        // Recorded, never launched.
        return Ok(());
    };
    let reports = read_reports(&step.output);
    if reports.iter().any(|r| matches!(r, Report::Down { .. })) {
        return Ok(());
    }
    if !job_running(&alloc.job_id) {
        tracing::info!(
            "{}: allocation {} has ended: Slurm's epilog on {node} cleaned up what its step left",
            m.id,
            alloc.job_id
        );
        return Ok(());
    }
    let slurm_step = reports.iter().find_map(|r| match r {
        Report::Started { step, .. } => Some(step.clone()),
        _ => None,
    });
    if let (Some(slurm_step), true) = (&slurm_step, step_alive(step)) {
        let signal = if succeeded { "USR1" } else { "USR2" };
        let _ = bounded("scancel", &[&format!("--signal={signal}"), slurm_step], 20);
        // A step still deploying tears down once its member is up.
        let booting = !reports.iter().any(|r| matches!(r, Report::Up { .. }));
        let wait =
            site.shutdown_timeout_secs + 30 + if booting { site.boot_timeout_secs } else { 0 };
        let deadline = Instant::now() + Duration::from_secs(wait);
        while step_alive(step) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if read_reports(&step.output)
            .iter()
            .any(|r| matches!(r, Report::Down { .. }))
        {
            return Ok(());
        }
    }
    // No step to ask (killed, or it never got as far): undo its journal there.
    tracing::info!("{}: its step is gone; cleaning up on {node}", m.id);
    let mut clean = alloc.step(
        node,
        &format!("sd-clean-{}", m.id),
        &["pool-member", "clean", &m.id],
    );
    let out = clean
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run srun: {e}"))?;
    // A failed srun once the allocation ended: its epilog cleans up.
    if out.status.success() || !job_running(&alloc.job_id) {
        Ok(())
    } else {
        Err(format!(
            "the cleanup step on {node} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The reports a step's output holds so far, in order.
pub(super) fn read_reports(output: &Path) -> Vec<Report> {
    let mut reader = ReportReader::new(output);
    reader.poll()
}

/// Reads a step's output as it grows.
pub(super) struct ReportReader {
    path: std::path::PathBuf,
    offset: u64,
    partial: String,
    last_message: Option<String>,
}

impl ReportReader {
    pub(super) fn new(path: &Path) -> ReportReader {
        ReportReader {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
            last_message: None,
        }
    }

    /// The reports written since the last poll.
    pub(super) fn poll(&mut self) -> Vec<Report> {
        let mut out = vec![];
        let Ok(mut f) = fs::File::open(&self.path) else {
            return out;
        };
        if self.offset >= MAX_OUTPUT_BYTES || f.seek(std::io::SeekFrom::Start(self.offset)).is_err()
        {
            return out;
        }
        let mut text = String::new();
        let read = (&mut f)
            .take(MAX_OUTPUT_BYTES - self.offset)
            .read_to_string(&mut text);
        let Ok(n) = read else { return out };
        self.offset += n as u64;
        self.partial.push_str(&text);
        while let Some(end) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=end).collect();
            let line = line.trim_end();
            match line.strip_prefix(REPORT_PREFIX) {
                Some(json) => match serde_json::from_str::<Report>(json) {
                    Ok(r) => {
                        if let Report::Failed { error, .. }
                        | Report::Dead { reason: error }
                        | Report::Missed { error } = &r
                        {
                            self.last_message = Some(error.clone());
                        }
                        out.push(r)
                    }
                    Err(_) => self.last_message = Some(line.to_string()),
                },
                None if !line.is_empty() => self.last_message = Some(line.to_string()),
                None => {}
            }
        }
        out
    }

    /// The last thing the step (or srun) said that was not a report of
    /// good news.
    pub(super) fn last_message(&self) -> Option<&str> {
        self.last_message.as_deref()
    }
}

/// The monitor's beat of a member on a node: its step's reports since the
/// last one. Err when the step reported it dead, or is gone.
pub(super) struct StepWatch {
    step: StepRecord,
    node: String,
    reader: ReportReader,
    last_rtt: Duration,
    ended: Option<String>,
}

impl StepWatch {
    pub(super) fn new(m: &MemberRecord) -> Option<StepWatch> {
        let step = m.step.clone()?;
        Some(StepWatch {
            reader: ReportReader::new(&step.output),
            step,
            node: m.node.clone().unwrap_or_default(),
            last_rtt: Duration::ZERO,
            ended: None,
        })
    }

    pub(super) fn beat(&mut self) -> Result<Duration, String> {
        for r in self.reader.poll() {
            match r {
                Report::Beat { rtt_us } => self.last_rtt = Duration::from_micros(rtt_us),
                Report::Dead { reason } => {
                    self.ended = Some(format!("dead on {}: {reason}", self.node))
                }
                Report::Down { .. } => self.ended = Some(format!("stopped on {}", self.node)),
                _ => {}
            }
        }
        if let Some(why) = &self.ended {
            return Err(why.clone());
        }
        if !step_alive(&self.step) {
            // Read what it said last.
            self.reader.poll();
            return Err(format!(
                "its job step on {} ended: {}",
                self.node,
                self.reader.last_message().unwrap_or("no message")
            ));
        }
        Ok(self.last_rtt)
    }
}

// ---------------------------------------------------------------------------
// The step, on the node
// ---------------------------------------------------------------------------

fn report(r: &Report) {
    let line = format!(
        "{REPORT_PREFIX}{}\n",
        serde_json::to_string(r).expect("a report serialises")
    );
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}

fn read_plan() -> Result<MemberPlan, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let r = std::io::stdin()
            .lock()
            .take(MAX_PLAN_BYTES + 1)
            .read_to_end(&mut text);
        let _ = tx.send(r.map(|_| text));
    });
    let text = rx
        .recv_timeout(PLAN_DEADLINE)
        .map_err(|_| format!("no plan on stdin within {} s", PLAN_DEADLINE.as_secs()))?
        .map_err(|e| format!("cannot read the plan: {e}"))?;
    if text.len() as u64 > MAX_PLAN_BYTES {
        return Err(format!("the plan is over {MAX_PLAN_BYTES} bytes"));
    }
    serde_json::from_slice(&text).map_err(|e| format!("the plan is not valid: {e}"))
}

/// `sd pool-member run`, in a job step: deploys the plan on stdin on this
/// node, reports it up, beats it, and tears it down when asked (SIGUSR1:
/// the pool succeeded; SIGUSR2, SIGTERM, SIGINT, SIGHUP: it did not).
/// Exit status 0 once down, 2 if it could not be deployed, 3 if it died.
pub fn run_step(site: &SiteConfig) -> i32 {
    let env = |k: &str| std::env::var(k).unwrap_or_default();
    let (job, node) = (env("SLURM_JOB_ID"), env("SLURMD_NODENAME"));
    if job.is_empty() {
        eprintln!(
            "sd pool-member: not in a Slurm job step (SLURM_JOB_ID is not set); `sd start` runs it"
        );
        return 2;
    }
    report(&Report::Started {
        step: format!("{job}.{}", env("SLURM_STEP_ID")),
        node: node.clone(),
    });
    let failed = |error: String, users: bool| {
        tracing::error!("{error}");
        report(&Report::Failed { error, users });
        2
    };
    let mut signals = SigSet::empty();
    for s in [
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
    ] {
        signals.add(s);
    }
    if let Err(e) = signals.thread_block() {
        return failed(format!("cannot block signals: {e}"), false);
    }
    let (events, incoming) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = events.send(signals.wait().unwrap_or(Signal::SIGTERM));
    });
    let plan = match read_plan() {
        Ok(p) => p,
        Err(e) => return failed(e, false),
    };
    let owner = match Owner::current() {
        Ok(o) => o,
        Err(e) => return failed(e.to_string(), false),
    };
    let resolved = match sd_policy::admit(
        site,
        &owner,
        plan.vo.as_deref(),
        &plan.request,
        &sd_vmm::image_store::ImageStore::of_site(site),
    ) {
        Ok(r) => r,
        Err(e) => {
            let users = e.fault() == deployment::Fault::User;
            return failed(format!("{} on {node}: {e}", plan.path), users);
        }
    };
    let neighbours = Neighbourhood {
        segment: Some(plan.segment.clone()),
        hosts: plan.hosts.clone(),
        tunnel: plan.tunnel.clone(),
    };
    tracing::info!("{} ({}): deploying on {node}", plan.id, plan.path);
    let d = match Deployment::deploy_among(
        site,
        &plan.id,
        &resolved,
        owner.uid(),
        None,
        Some(&job),
        &neighbours,
    ) {
        Ok(d) => d,
        Err(e) => {
            let users = e.fault(&resolved) == deployment::Fault::User;
            return failed(format!("{} on {node}: {e}", plan.id), users);
        }
    };
    report(&Report::Up {
        boot_ms: d.boot_time.as_millis() as u64,
        acceleration: d.acceleration.clone(),
    });
    hold(site, d, &plan, &incoming)
}

/// Beats the member until a stop signal (then tears it down) or until it
/// misses its factor of beats.
fn hold(
    site: &SiteConfig,
    d: Deployment,
    plan: &MemberPlan,
    incoming: &mpsc::Receiver<Signal>,
) -> i32 {
    let delay = Duration::from_secs(plan.liveness_delay_secs.max(1));
    let timeout = delay.clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut missed = 0u32;
    let mut reported = Instant::now() - BEAT_REPORT_EVERY;
    loop {
        match incoming.recv_timeout(delay) {
            Ok(signal) => {
                let succeeded = signal == Signal::SIGUSR1;
                tracing::info!("{}: {}: tearing down", plan.id, signal.as_str());
                let saved = match d.teardown(site, succeeded) {
                    Ok(Some(Ok(image))) => Some(image.name),
                    Ok(Some(Err(e))) => {
                        tracing::warn!("{}: its disk was not saved: {e}", plan.id);
                        None
                    }
                    Ok(None) => None,
                    Err(e) => {
                        report(&Report::Failed {
                            error: format!("teardown: {e}"),
                            users: false,
                        });
                        return 1;
                    }
                };
                report(&Report::Down { saved });
                return 0;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => match d.link.ping(timeout) {
                Ok(rtt) => {
                    if missed > 0 || reported.elapsed() >= BEAT_REPORT_EVERY {
                        report(&Report::Beat {
                            rtt_us: rtt.as_micros() as u64,
                        });
                        reported = Instant::now();
                    }
                    missed = 0;
                }
                Err(e) => {
                    missed += 1;
                    report(&Report::Missed {
                        error: e.to_string(),
                    });
                    if missed >= plan.liveness_factor.max(1) {
                        report(&Report::Dead {
                            reason: format!(
                                "it missed {missed} beats in a row (sfLivenessDelay {} s, sfLivenessFactor {}); last: {e}",
                                plan.liveness_delay_secs, plan.liveness_factor
                            ),
                        });
                        // The domain stays for the pool's termination (or the
                        // epilog) to clean up: its journal says what it is.
                        drop(d);
                        return 3;
                    }
                }
            },
            Err(mpsc::RecvTimeoutError::Disconnected) => return 1,
        }
    }
}

/// `sd pool-member clean ID`, in a job step: undoes deployment ID on this
/// node from its journal (its own step could not).
pub fn clean_step(site: &SiteConfig, id: &str) -> i32 {
    if !sd_vmm::status::valid_id(id) {
        eprintln!("sd pool-member clean: {id:?} is not a deployment id");
        return 2;
    }
    match deployment::cleanup(site, id) {
        Ok(true) => {
            println!("{id}: cleaned up");
            0
        }
        Ok(false) => {
            println!("{id}: nothing to clean");
            0
        }
        Err(e) => {
            eprintln!("{id}: {e}");
            1
        }
    }
}
