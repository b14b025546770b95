//! The pool record, `STATE_DIR/pools/NAME.json`, and where a pool's files
//! are: written atomically, each member before it is made.

use sd_host::atomic_file;
use sd_site::SiteConfig;
use sd_vmm::status;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

use super::allocation::Allocation;
use super::liveness::Liveness;
use super::PoolError;

/// One member of a pool, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Its deployment id (its journal's name).
    pub id: String,
    /// Its path in the description, e.g. `sfConfig:worker1`.
    pub path: String,
    pub image: String,
    pub memory_mib: u64,
    pub vcpus: u32,
    /// When its agent answered (Unix time, milliseconds); None while booting.
    pub up_unix_ms: Option<u64>,
    /// When it was down and cleaned up (Unix time, milliseconds).
    pub down_unix_ms: Option<u64>,
    /// How long its boot took, until its agent answered (milliseconds).
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// Seconds between liveness beats (0: a record from before liveness).
    #[serde(default)]
    pub liveness_delay_secs: u64,
    /// Missed beats before it counts as dead.
    #[serde(default)]
    pub liveness_factor: u32,
    /// The allocation's node it runs on; None: on the host of the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The job step that deployed it there and holds it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<StepRecord>,
}

/// The Slurm job step holding a member on a node: the `srun` that started
/// it (on the host of the record, detached), and what the step reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    pub srun_pid: u32,
    /// Field 22 of /proc/PID/stat: a later process with that pid is not it.
    pub srun_start_time: u64,
    /// The step's output (its reports, and srun's own messages).
    pub output: PathBuf,
}

impl MemberRecord {
    pub fn liveness(&self) -> Liveness {
        if self.liveness_delay_secs == 0 || self.liveness_factor == 0 {
            Liveness::DEFAULT
        } else {
            Liveness {
                delay_secs: self.liveness_delay_secs,
                factor: self.liveness_factor,
            }
        }
    }
}

/// `STATE_DIR/pools/NAME.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRecord {
    pub name: String,
    /// The description it was started from.
    pub source: String,
    /// `Sequence`, `Compound` (or `Domain` for a lone domain).
    pub kind: String,
    /// Members stop concurrently (every pool in it is a Compound with
    /// `sfSyncTerminate false`), else one after another.
    pub concurrent_terminate: bool,
    pub started_unix_ms: u64,
    /// In creation order.
    pub members: Vec<MemberRecord>,
    /// The liveness monitor (`sd pool-monitor NAME`), once started.
    #[serde(default)]
    pub monitor_pid: Option<u32>,
    /// Why the pool ended other than by `sd terminate` (a dead member).
    #[serde(default)]
    pub terminated_because: Option<String>,
    /// When its termination began (Unix time, milliseconds).
    #[serde(default)]
    pub terminated_unix_ms: Option<u64>,
    /// The Slurm allocation its members run in, when it was started in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<Allocation>,
}

pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn pools_dir(site: &SiteConfig) -> PathBuf {
    site.state_dir.join("pools")
}

pub(super) fn record_path(site: &SiteConfig, name: &str) -> PathBuf {
    pools_dir(site).join(format!("{name}.json"))
}

/// Where the final record of a terminated pool is kept.
pub fn final_record_path(site: &SiteConfig, name: &str) -> PathBuf {
    site.log_dir.join(format!("pool-{name}.pool.json"))
}

/// Where the job steps of pool `name`'s members write (`ID.step`) and
/// read their plans (`ID.plan.json`).
pub(super) fn steps_dir(site: &SiteConfig, name: &str) -> PathBuf {
    pools_dir(site).join(format!("{name}.steps"))
}

/// The log of the pool's monitor.
pub fn monitor_log_path(site: &SiteConfig, name: &str) -> PathBuf {
    site.log_dir.join(format!("pool-{name}.log"))
}

/// A pool name makes deployment ids `pool-NAME-MEMBER`: journal-id rules,
/// shorter, so that member names fit.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 40 && status::valid_id(name)
}

pub(super) fn record_error(path: &Path, message: impl ToString) -> PoolError {
    PoolError::Record {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Writes `value` as JSON to `path` atomically. With `exclusive`, fails with
/// `AlreadyExists` if `path` exists.
pub(super) fn write_atomic(
    path: &Path,
    value: &PoolRecord,
    exclusive: bool,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let text = serde_json::to_vec_pretty(value).expect("pool record serialises");
    if exclusive {
        atomic_file::create_new(path, &text)
    } else {
        atomic_file::write(path, &text)
    }
}

pub(super) fn save(site: &SiteConfig, record: &PoolRecord) -> Result<(), PoolError> {
    let path = record_path(site, &record.name);
    write_atomic(&path, record, false).map_err(|e| record_error(&path, e))
}

pub(super) fn read_record(path: &Path) -> Result<Option<PoolRecord>, PoolError> {
    match fs::read(path) {
        Ok(text) => serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| record_error(path, format!("corrupt: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(record_error(path, e)),
    }
}

/// The record of pool `name`, None if there is no such pool.
pub fn load(site: &SiteConfig, name: &str) -> Result<Option<PoolRecord>, PoolError> {
    if !valid_name(name) {
        return Err(PoolError::BadName(name.into()));
    }
    read_record(&record_path(site, name))
}

/// The final record of pool `name` once it is gone (the last one of that
/// name), None if there is none.
pub fn load_final(site: &SiteConfig, name: &str) -> Result<Option<PoolRecord>, PoolError> {
    if !valid_name(name) {
        return Err(PoolError::BadName(name.into()));
    }
    read_record(&final_record_path(site, name))
}

/// Names of the pools on this host.
pub fn list(site: &SiteConfig) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(pools_dir(site))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".json")
                        .filter(|n| valid_name(n))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
