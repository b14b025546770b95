//! The Slurm allocation a pool runs in (`salloc -N2 sd start NAME desc`):
//! its nodes, each with the address the others reach it at, and the job
//! steps (`srun`) that put members on them. Slurm is the distributed
//! engine: its steps carry the members' accounting, limits, signals and
//! cleanup (each node's epilog), and no daemon of ours talks across nodes.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, ToSocketAddrs};
use std::process::{Command, Output, Stdio};

use super::PoolError;

/// How long one `scontrol`/`squeue`/`scancel` may take.
const SLURM_QUERY_SECS: u32 = 20;

/// One node of the allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// Its `NodeAddr`, resolved: where the other nodes' tunnels go.
    pub addr: Ipv4Addr,
}

/// A Slurm job's allocation, as Slurm itself describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub job_id: String,
    /// In Slurm's order: `@0` is the first.
    pub nodes: Vec<Node>,
}

fn slurm_error(message: impl Into<String>) -> PoolError {
    PoolError::Allocation(message.into())
}

/// Runs a Slurm client command, bounded in time; its output if it exits 0.
pub(super) fn query(program: &str, args: &[&str]) -> Result<String, PoolError> {
    let out = bounded(program, args, SLURM_QUERY_SECS)?;
    if !out.status.success() {
        return Err(slurm_error(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `program args` under coreutils' `timeout`, so that a hung Slurm client
/// never hangs the pool.
pub(super) fn bounded(program: &str, args: &[&str], secs: u32) -> Result<Output, PoolError> {
    Command::new("timeout")
        .arg("--kill-after=5")
        .arg(secs.to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| slurm_error(format!("cannot run {program}: {e} (is Slurm installed?)")))
}

impl Allocation {
    /// The allocation this process runs in (`SLURM_JOB_ID`, as `salloc`
    /// and `sbatch` set it), None outside one. The job must be the
    /// caller's own: its nodes and owner come from Slurm, not from us.
    pub fn current() -> Result<Option<Allocation>, PoolError> {
        let Some(job_id) = std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty()) else {
            return Ok(None);
        };
        if !job_id.bytes().all(|b| b.is_ascii_digit()) || job_id.len() > 12 {
            return Err(slurm_error(format!(
                "SLURM_JOB_ID {job_id:?} is not a job number"
            )));
        }
        let job = query("scontrol", &["show", "job", "-o", &job_id])?;
        let field = |name: &str| {
            job.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .map(str::to_string)
        };
        let uid = field("UserId")
            .and_then(|u| u.split_once('(')?.1.strip_suffix(')')?.parse::<u32>().ok())
            .ok_or_else(|| slurm_error(format!("job {job_id}: scontrol names no UserId")))?;
        let me = nix::unistd::getuid().as_raw();
        if uid != me {
            return Err(slurm_error(format!(
                "job {job_id} is uid {uid}'s, not yours (uid {me}): a pool runs in its own user's allocation"
            )));
        }
        if field("JobState").as_deref() != Some("RUNNING") {
            return Err(slurm_error(format!(
                "job {job_id} is {}, not RUNNING",
                field("JobState").unwrap_or_else(|| "in no known state".into())
            )));
        }
        let list = field("NodeList")
            .ok_or_else(|| slurm_error(format!("job {job_id}: scontrol names no NodeList")))?;
        let mut nodes = vec![];
        for name in query("scontrol", &["show", "hostnames", &list])?.split_whitespace() {
            nodes.push(Node {
                name: name.to_string(),
                addr: node_address(name)?,
            });
        }
        if nodes.is_empty() {
            return Err(slurm_error(format!("job {job_id} has no nodes")));
        }
        Ok(Some(Allocation { job_id, nodes }))
    }

    /// The node this process runs on, if it is one of the allocation's.
    pub fn this_node(&self) -> Option<&Node> {
        let here = std::env::var("SLURMD_NODENAME").ok()?;
        self.nodes.iter().find(|n| n.name == here)
    }

    /// A job step of one task on `node`, running `sd ARGS` there with the
    /// environment Slurm gives a step and nothing of ours: the node's sd
    /// reads the node's own site configuration. Steps overlap: members
    /// share the allocation's CPUs as domains share a host's.
    pub fn step(&self, node: &str, name: &str, sd_args: &[&str]) -> Command {
        let mut c = Command::new("srun");
        c.args([
            &format!("--jobid={}", self.job_id),
            "--nodes=1",
            "--ntasks=1",
            &format!("--nodelist={node}"),
            "--overlap",
            "--export=NONE",
            "--quiet",
            &format!("--job-name={name}"),
        ]);
        c.arg(sd_program()).args(sd_args);
        c
    }
}

/// Whether job `job_id` still runs (its steps can still be started);
/// false once it ended or Slurm forgot it.
pub fn job_running(job_id: &str) -> bool {
    match bounded(
        "squeue",
        &["-h", "-j", job_id, "-o", "%T"],
        SLURM_QUERY_SECS,
    ) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).trim() == "RUNNING",
        Err(_) => false,
    }
}

/// The sd the steps run: this one (installed at the same path on every
/// node, as a site installs it).
fn sd_program() -> std::path::PathBuf {
    std::env::current_exe().unwrap_or_else(|_| "sd".into())
}

/// `NodeAddr` of `name` (Slurm's, else the name itself), as an IPv4 address.
fn node_address(name: &str) -> Result<Ipv4Addr, PoolError> {
    let shown = query("scontrol", &["show", "node", "-o", name])?;
    let addr = shown
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("NodeAddr="))
        .unwrap_or(name)
        .to_string();
    if let Ok(ip) = addr.parse() {
        return Ok(ip);
    }
    (addr.as_str(), 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| {
            a.find_map(|s| match s.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                _ => None,
            })
        })
        .ok_or_else(|| {
            slurm_error(format!(
                "node {name}: its NodeAddr {addr:?} has no IPv4 address (the private network's tunnels need one)"
            ))
        })
}
