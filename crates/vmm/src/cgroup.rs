//! The batch job's resource container (cgroup v1, as Slurm's `cgroup/v1`
//! plugin makes it): the domain's hypervisor processes are placed in it,
//! so that the job's CPU accounting, allocated cores and memory limit
//! cover the domain.
//!
//! Slurm (22.05, `task/cgroup`, `proctrack/cgroup`, `PrologFlags=Contain`)
//! makes, per controller, `/sys/fs/cgroup/<controller>/slurm[_<node>]/uid_<U>/job_<J>`
//! with one child per step (`step_extern`, `step_batch`, `step_<N>`). It
//! makes them only after the prolog has returned, so the prolog makes the
//! job's directories itself and boots the domain in them ([`prepare_slurm`]);
//! a watcher (`sd_batch::slurm::contain`) then checks the placement and
//! follows suspend.
//!
//! Where QEMU goes: the **job's** cgroup in `cpuset`, `memory`, `cpuacct`
//! and `devices` (its cores, its memory limit, its CPU time), not a step's,
//! and **not** the `freezer` one. The freezer step cgroup is proctrack's
//! container: Slurm SIGKILLs whatever is in it when the job ends, before
//! the epilog runs, which would take away the domain's graceful shutdown
//! (and a wanted disk save). Suspend is done by the watcher instead (QMP
//! `stop`/`cont` when Slurm stops and continues the extern step's task).
//!
//! Nothing here has any effect when the job has no such cgroups (no Slurm,
//! or Slurm without cgroups): [`JobContainer::slurm`] finds none.

use std::path::{Path, PathBuf};

/// The cgroup v1 controllers a domain's processes are placed in.
pub const PLACED: [&str; 4] = ["cpuset", "memory", "cpuacct", "devices"];

/// Root of the cgroup v1 hierarchies.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// QEMU's own memory beyond the guest's RAM (its code, heap, device
/// emulation, TCG's translation cache of 32 MiB by default under TCG):
/// admission counts the guest's RAM plus this against the job's limit.
pub const QEMU_OVERHEAD_MIB: u64 = 96;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "cannot place process {pid} in the job's cgroup {}: {source} \
         (a site fault: is the cgroup v1 hierarchy writable by root?)",
        dir.display()
    )]
    Place {
        pid: u32,
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// [`JobContainer::memory_verdict`]: bytes, and processes killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryVerdict {
    pub oom_kills: u64,
    pub limit: Option<u64>,
    pub max_usage: Option<u64>,
}

/// One Slurm job's cgroups on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobContainer {
    /// The job's directory under each controller it has, in [`PLACED`] order.
    pub jobs: Vec<(&'static str, PathBuf)>,
    /// The extern step's freezer cgroup (proctrack's container of the
    /// extern step), whose task Slurm stops on `scontrol suspend`.
    pub extern_freezer: Option<PathBuf>,
}

/// The job directory `slurm[_<node>]/uid_<U>/job_<J>` under `controller_dir`,
/// if it exists. Debian builds Slurm with multiple-slurmd support, whose root
/// is `slurm_<node>`; other builds use `slurm`.
fn job_dir(controller_dir: &Path, node: Option<&str>, uid: u32, job: &str) -> Option<PathBuf> {
    let roots = node
        .map(|n| format!("slurm_{n}"))
        .into_iter()
        .chain(["slurm".to_string()]);
    for root in roots {
        let dir = controller_dir
            .join(root)
            .join(format!("uid_{uid}"))
            .join(format!("job_{job}"));
        if dir.is_dir() {
            return Some(dir);
        }
    }
    None
}

impl JobContainer {
    /// Slurm job `job` of `uid` on node `node` (`SLURMD_NODENAME`), under
    /// the cgroup root `root` ([`CGROUP_ROOT`]); None if it has no cgroup
    /// in any controller (not under Slurm with cgroups, or not yet made).
    pub fn slurm(root: &Path, node: Option<&str>, uid: u32, job: &str) -> Option<JobContainer> {
        let jobs: Vec<_> = PLACED
            .iter()
            .filter_map(|c| job_dir(&root.join(c), node, uid, job).map(|d| (*c, d)))
            .collect();
        let extern_freezer = job_dir(&root.join("freezer"), node, uid, job)
            .map(|d| d.join("step_extern"))
            .filter(|d| d.is_dir());
        (!jobs.is_empty() || extern_freezer.is_some()).then_some(JobContainer {
            jobs,
            extern_freezer,
        })
    }

    /// The job's memory limit (`memory.limit_in_bytes` of its memory cgroup), if any.
    pub fn memory_limit(&self) -> Option<u64> {
        let (_, dir) = self.jobs.iter().find(|(c, _)| *c == "memory")?;
        read_u64(&dir.join("memory.limit_in_bytes"))
    }

    /// What the job's memory limit did so far: the processes the kernel
    /// killed in the job's memory cgroup or its steps' (each has its own
    /// `memory.oom_control`, and Slurm sets a limit on both), and the peak.
    /// A kill here is the job's limit at work, never the node's OOM killer.
    pub fn memory_verdict(&self) -> Option<MemoryVerdict> {
        let (_, dir) = self.jobs.iter().find(|(c, _)| *c == "memory")?;
        let mut oom_kills = 0;
        let mut dirs = vec![dir.clone()];
        while let Some(d) = dirs.pop() {
            let control = std::fs::read_to_string(d.join("memory.oom_control")).unwrap_or_default();
            oom_kills += control
                .lines()
                .find_map(|l| l.strip_prefix("oom_kill "))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
            dirs.extend(
                std::fs::read_dir(&d)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        Some(MemoryVerdict {
            oom_kills,
            limit: read_u64(&dir.join("memory.limit_in_bytes")),
            max_usage: read_u64(&dir.join("memory.max_usage_in_bytes")),
        })
    }

    /// The CPU time the job's processes used, in ns (`cpuacct.usage`).
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        let (_, dir) = self.jobs.iter().find(|(c, _)| *c == "cpuacct")?;
        read_u64(&dir.join("cpuacct.usage"))
    }

    /// Moves process `pid` (all its threads) into the job's cgroups, every
    /// controller even if one fails (the first error is returned). The
    /// memory it already uses moves with it where the kernel still can
    /// (`memory.move_charge_at_immigrate`, gone since Linux 6.x: there only
    /// what it touches from now on is the job's).
    pub fn place(&self, pid: u32) -> Result<(), CgroupError> {
        let mut first = None;
        for (controller, dir) in &self.jobs {
            if *controller == "memory" {
                // Anonymous and file pages both (bits 0 and 1); best effort.
                if let Err(e) = std::fs::write(dir.join("memory.move_charge_at_immigrate"), "3") {
                    tracing::info!(
                        "the memory process {pid} already uses stays charged where it was \
                         (memory.move_charge_at_immigrate: {e})"
                    );
                }
            }
            if let Err(source) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
                first.get_or_insert(CgroupError::Place {
                    pid,
                    dir: dir.clone(),
                    source,
                });
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Whether Slurm has suspended the job: one of its steps' freezer
    /// cgroups is frozen, or a task of a step is stopped (proctrack/cgroup
    /// suspends a job by stopping every task of its steps, the extern step's
    /// `sleep` included, then freezing the steps' cgroups; the steps' tasks are
    /// host-side helpers only, the job's own commands run in the guest).
    /// None if that cannot be told (no step is left: the job is ending).
    pub fn suspended(&self) -> Option<bool> {
        let job = self.extern_freezer.as_ref()?.parent()?;
        let mut seen = false;
        for step in std::fs::read_dir(job).ok()?.flatten() {
            if !step.file_name().to_string_lossy().starts_with("step_") {
                continue;
            }
            // Slurm stops the tasks (SIGTSTP), then freezes the step's cgroup.
            let frozen = std::fs::read_to_string(step.path().join("freezer.state"))
                .is_ok_and(|f| f.trim() != "THAWED" && !f.trim().is_empty());
            if frozen {
                return Some(true);
            }
            let Ok(procs) = std::fs::read_to_string(step.path().join("cgroup.procs")) else {
                continue;
            };
            for pid in procs.lines() {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", pid.trim())) else {
                    continue;
                };
                seen = true;
                if process_stopped(&stat) == Some(true) {
                    return Some(true);
                }
            }
        }
        seen.then_some(false)
    }

    /// The extern step's task (Slurm's `sleep` that holds the step), if it runs.
    pub fn extern_task(&self) -> Option<u32> {
        let procs =
            std::fs::read_to_string(self.extern_freezer.as_ref()?.join("cgroup.procs")).ok()?;
        procs.lines().next()?.trim().parse().ok()
    }

    /// Whether `pid` is in all of the job's placed cgroups.
    pub fn holds(&self, pid: u32) -> bool {
        self.jobs.iter().all(|(_, dir)| {
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .is_ok_and(|p| p.lines().any(|l| l.trim() == pid.to_string()))
        })
    }
}

/// The job's cgroups, made by the prolog before the domain boots (Slurm
/// makes them only after the prolog, and Linux 6.x no longer moves a
/// process's memory charges with it): the prolog joins them, so QEMU, its
/// child, is the job's from its first page and its first CPU second. Slurm
/// takes the directories as they are (`mkdir` of an existing cgroup is no
/// error to it) and sets their limits and cores as for any job.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Directories made here, parents first.
    made: Vec<PathBuf>,
    /// The controllers' roots this process left to join the job's.
    joined: Vec<PathBuf>,
}

/// Makes `slurm[_<node>]/uid_<U>/job_<J>` in every [`PLACED`] controller
/// whose Slurm root exists (none: Slurm runs without cgroups, nothing is
/// made) and moves this process into them. A `cpuset` cgroup takes its
/// parent's cores and memory nodes (a new one has none, and takes no task).
/// On an error, what was made is removed again.
pub fn prepare_slurm(
    root: &Path,
    node: Option<&str>,
    uid: u32,
    job: &str,
) -> Result<Prepared, CgroupError> {
    let mut prepared = Prepared::default();
    match prepare_into(&mut prepared, root, node, uid, job) {
        Ok(()) => Ok(prepared),
        Err(e) => {
            prepared.undo();
            Err(e)
        }
    }
}

fn prepare_into(
    prepared: &mut Prepared,
    root: &Path,
    node: Option<&str>,
    uid: u32,
    job: &str,
) -> Result<(), CgroupError> {
    let pid = std::process::id();
    for controller in PLACED {
        let base = root.join(controller);
        let Some(slurm) = node
            .map(|n| base.join(format!("slurm_{n}")))
            .into_iter()
            .chain([base.join("slurm")])
            .find(|d| d.is_dir())
        else {
            continue;
        };
        let uid_dir = slurm.join(format!("uid_{uid}"));
        let job_dir = uid_dir.join(format!("job_{job}"));
        let fail = |dir: &Path, source| CgroupError::Place {
            pid,
            dir: dir.to_path_buf(),
            source,
        };
        for dir in [&uid_dir, &job_dir] {
            if dir.is_dir() {
                continue;
            }
            match std::fs::create_dir(dir) {
                Ok(()) => prepared.made.push(dir.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(fail(dir, e)),
            }
            if controller == "cpuset" {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let parent = dir.parent().unwrap_or(dir).join(file);
                    let value = std::fs::read_to_string(parent).map_err(|e| fail(dir, e))?;
                    if std::fs::read_to_string(dir.join(file)).map_or(true, |v| v.trim().is_empty())
                    {
                        std::fs::write(dir.join(file), value.trim()).map_err(|e| fail(dir, e))?;
                    }
                }
            }
        }
        std::fs::write(job_dir.join("cgroup.procs"), pid.to_string())
            .map_err(|e| fail(&job_dir, e))?;
        prepared.joined.push(base);
    }
    Ok(())
}

impl Prepared {
    /// Whether anything was joined (Slurm runs with cgroups here).
    pub fn is_empty(&self) -> bool {
        self.joined.is_empty()
    }

    /// Moves this process back to the controllers' roots; what it started
    /// (the domain) stays in the job's cgroups.
    pub fn leave(&self) {
        for base in &self.joined {
            if let Err(e) =
                std::fs::write(base.join("cgroup.procs"), std::process::id().to_string())
            {
                tracing::warn!(
                    "cannot leave the job's cgroup under {}: {e}",
                    base.display()
                );
            }
        }
    }

    /// [`Prepared::leave`], then removes what was made (the domain did not
    /// start: nothing of it is left in them).
    pub fn undo(&self) {
        self.leave();
        for dir in self.made.iter().rev() {
            if let Err(e) = remove_tree(dir) {
                tracing::warn!("job cgroup {} not removed: {e}", dir.display());
            }
        }
    }
}

/// Removes cgroup `dir` and its children, deepest first (a cgroup directory
/// goes with `rmdir` once it holds no process). NotFound is no error.
pub fn remove_tree(dir: &Path) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_tree(&entry.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Is the process of this `/proc/PID/stat` line stopped (state `T`)?
fn process_stopped(stat: &str) -> Option<bool> {
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses.
    let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
    Some(state == "T")
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Admission against the job's memory limit: guest RAM plus QEMU's overhead
/// must fit. The error names the limit and both values.
pub fn check_memory(limit_bytes: u64, memory_mib: u64) -> Result<(), String> {
    let need = memory_mib + QEMU_OVERHEAD_MIB;
    let limit_mib = limit_bytes >> 20;
    if need > limit_mib {
        return Err(format!(
            "the domain needs {need} MiB ({memory_mib} MiB of guest memory + {QEMU_OVERHEAD_MIB} MiB \
             for QEMU) but the job's memory limit is {limit_mib} MiB: ask for more memory \
             (sbatch --mem={need}M or more) or a smaller guest (Memory in the request)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_job(root: &Path, base: &str, with_extern: bool) {
        for c in PLACED.iter().chain(["freezer"].iter()) {
            let d = root.join(c).join(base).join("uid_1000/job_42");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("cgroup.procs"), "").unwrap();
            if with_extern {
                std::fs::create_dir_all(d.join("step_extern")).unwrap();
            }
        }
        let m = root.join("memory").join(base).join("uid_1000/job_42");
        std::fs::write(m.join("memory.limit_in_bytes"), "1073741824\n").unwrap();
    }

    #[test]
    fn finds_a_jobs_cgroups_of_a_multiple_slurmd_build_and_a_plain_one() {
        for base in ["slurm_node1", "slurm"] {
            let t = tempfile::tempdir().unwrap();
            fake_job(t.path(), base, true);
            let c = JobContainer::slurm(t.path(), Some("node1"), 1000, "42").unwrap();
            assert_eq!(c.jobs.len(), 4);
            assert_eq!(c.memory_limit(), Some(1 << 30));
            assert!(c.extern_freezer.unwrap().ends_with("job_42/step_extern"));
        }
    }

    #[test]
    fn nothing_is_prepared_without_slurms_roots_and_a_cpuset_takes_its_parents_cores() {
        let t = tempfile::tempdir().unwrap();
        let p = prepare_slurm(t.path(), Some("n"), 1000, "42").unwrap();
        assert!(p.is_empty());
        assert!(std::fs::read_dir(t.path()).unwrap().next().is_none());
        // A cpuset as the kernel has one: the user's directory, there from an
        // earlier job, keeps its cores; the job's new one takes them (a new
        // cpuset has none and takes no task).
        let slurm = t.path().join("cpuset/slurm_n");
        std::fs::create_dir_all(&slurm).unwrap();
        std::fs::write(slurm.join("cpuset.cpus"), "0-1\n").unwrap();
        std::fs::write(slurm.join("cpuset.mems"), "0\n").unwrap();
        let uid = slurm.join("uid_1000");
        std::fs::create_dir(&uid).unwrap();
        std::fs::write(uid.join("cpuset.cpus"), "1\n").unwrap();
        std::fs::write(uid.join("cpuset.mems"), "0\n").unwrap();
        let p = prepare_slurm(t.path(), Some("n"), 1000, "42").unwrap();
        assert!(!p.is_empty());
        let read = |f: &Path| {
            std::fs::read_to_string(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()))
        };
        assert_eq!(read(&uid.join("cpuset.cpus")), "1\n");
        let job = uid.join("job_42");
        assert_eq!(read(&job.join("cpuset.cpus")), "1");
        assert_eq!(read(&job.join("cpuset.mems")), "0");
        assert_eq!(
            read(&job.join("cgroup.procs")),
            std::process::id().to_string()
        );
        // Only what it made goes (the user's directory was there before);
        // cgroupfs removes a cgroup's files with it, a test's tmpfs does not.
        for f in ["cgroup.procs", "cpuset.cpus", "cpuset.mems"] {
            std::fs::remove_file(job.join(f)).unwrap();
        }
        p.undo();
        assert!(!job.exists() && uid.exists());
    }

    #[test]
    fn no_cgroups_no_container() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(JobContainer::slurm(t.path(), Some("n"), 1000, "42"), None);
        fake_job(t.path(), "slurm_other", true);
        assert_eq!(JobContainer::slurm(t.path(), Some("n"), 1000, "42"), None);
        assert_eq!(JobContainer::slurm(t.path(), Some("n"), 1000, "43"), None);
    }

    #[test]
    fn stopped_state_is_read_past_a_command_with_parentheses() {
        assert_eq!(process_stopped("12 (a) b) T 1 2"), Some(true));
        assert_eq!(process_stopped("12 (sleep) S 1 2"), Some(false));
        assert_eq!(process_stopped("garbage"), None);
    }

    #[test]
    fn memory_admission_names_the_limit_and_the_values() {
        assert!(check_memory(1 << 30, 512).is_ok());
        let e = check_memory(512 << 20, 512).unwrap_err();
        assert!(e.contains("608 MiB"), "{e}");
        assert!(e.contains("memory limit is 512 MiB"), "{e}");
        assert!(e.contains("--mem="), "{e}");
    }
}
