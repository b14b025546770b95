//! Pools: the on/off button for a whole described set of domains.
//!
//! [`start`] deploys every domain of a resolved description (`sd describe`)
//! in the described order: a `Sequence` starts each member once the previous
//! one's agent answered; a `Compound` deploys all its members and then counts
//! as started (for now its members are deployed one after another too). If a
//! member fails, the members already up are terminated in reverse creation
//! order and the error is returned: all or nothing.
//!
//! [`terminate`] stops the members in reverse creation order, gracefully
//! (the agent powers the guest off, the journal is undone); a `Compound`
//! with `sfSyncTerminate false` stops its members concurrently. It is
//! idempotent.
//!
//! The pool record, `STATE_DIR/pools/NAME.json`, lists the members in
//! creation order, each written *before* the member is deployed (atomically:
//! temporary file, fsync, rename), with the time each came up and went down.
//! So `terminate` finds everything after a crash at any point; the members
//! themselves are found again through their deployment journals. The record
//! is removed last; its final state (with every up and down time) is kept in
//! `LOG_DIR/pool-NAME.pool.json`.
//!
//! Members are deployments `pool-NAME-MEMBER` (`MEMBER` is the member's path
//! below `sfConfig`, `:` written `.` for nested pools), owned by nobody's
//! process (like a batch system's): `sd start` returns once all are up and
//! the domains run on.

use crate::atomic_file;
use crate::deployment::{self, DeployError, Deployment};
use crate::description::{Kind, ResolvedComponent, ResolvedDescription, ResolvedValue};
use crate::journal::{self, JournalError};
use crate::policy::{self, PolicyError, ResolvedEnvironment};
use crate::request::EnvironmentRequest;
use crate::site::SiteConfig;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("pool name {0:?} is not valid: use letters, digits, '.', '_' and '-' (at most 40)")]
    BadName(String),
    #[error("member {path}: deployment id {id:?} is not valid (letters, digits, '.', '_', '-'; at most 64)")]
    BadMemberId { path: String, id: String },
    #[error("a pool named {0:?} already exists (stop it with `sd terminate {0}`)")]
    Exists(String),
    #[error("the description deploys no domain")]
    NoDomains,
    #[error("member {path}: {message}")]
    Attribute { path: String, message: String },
    #[error("member {path}: {error}")]
    Policy { path: String, error: PolicyError },
    #[error("the pool needs {needed} MiB of guest memory, the host has {available} MiB available")]
    Memory { needed: u64, available: u64 },
    #[error("member {id}: {error}")]
    Deploy { id: String, error: DeployError },
    #[error("pool record {path}: {message}")]
    Record { path: PathBuf, message: String },
    #[error("{cause}; the rollback failed too: {rollback} (run `sd terminate {name}`)")]
    RollbackFailed {
        name: String,
        cause: Box<PoolError>,
        rollback: Box<PoolError>,
    },
    #[error("pool {name}: {} member(s) could not be terminated: {}", errors.len(), errors.join("; "))]
    Terminate { name: String, errors: Vec<String> },
}

impl PoolError {
    /// The description or the request is at fault (not the site).
    pub fn is_user_error(&self) -> bool {
        match self {
            PoolError::BadName(_)
            | PoolError::BadMemberId { .. }
            | PoolError::Exists(_)
            | PoolError::NoDomains
            | PoolError::Attribute { .. }
            | PoolError::Memory { .. } => true,
            PoolError::Policy { error, .. } => error.is_user_error(),
            PoolError::Deploy { error, .. } => {
                matches!(
                    error,
                    DeployError::Journal(JournalError::Exists(_) | JournalError::BadId(_))
                )
            }
            PoolError::Record { .. }
            | PoolError::RollbackFailed { .. }
            | PoolError::Terminate { .. } => false,
        }
    }
}

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

fn record_path(site: &SiteConfig, name: &str) -> PathBuf {
    pools_dir(site).join(format!("{name}.json"))
}

/// Where the final record of a terminated pool is kept.
pub fn final_record_path(site: &SiteConfig, name: &str) -> PathBuf {
    site.log_dir.join(format!("pool-{name}.pool.json"))
}

/// A pool name makes deployment ids `pool-NAME-MEMBER`: journal-id rules,
/// shorter, so that member names fit.
pub fn valid_name(name: &str) -> bool {
    name.len() <= 40 && journal::valid_id(name)
}

fn record_error(path: &Path, message: impl ToString) -> PoolError {
    PoolError::Record {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Writes `value` as JSON to `path` atomically. With `exclusive`, fails with
/// `AlreadyExists` if `path` exists.
fn write_atomic(path: &Path, value: &PoolRecord, exclusive: bool) -> std::io::Result<()> {
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

fn save(site: &SiteConfig, record: &PoolRecord) -> Result<(), PoolError> {
    let path = record_path(site, &record.name);
    write_atomic(&path, record, false).map_err(|e| record_error(&path, e))
}

/// The record of pool `name`, None if there is no such pool.
pub fn load(site: &SiteConfig, name: &str) -> Result<Option<PoolRecord>, PoolError> {
    if !valid_name(name) {
        return Err(PoolError::BadName(name.into()));
    }
    let path = record_path(site, name);
    match fs::read(&path) {
        Ok(text) => serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| record_error(&path, format!("corrupt: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(record_error(&path, e)),
    }
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

/// One domain to deploy, admitted by policy.
struct Plan {
    id: String,
    path: String,
    env: ResolvedEnvironment,
}

/// The deployment id of a domain of pool `name`.
fn member_id(name: &str, member: &ResolvedComponent) -> String {
    let below = member
        .path
        .strip_prefix("sfConfig:")
        .map(|p| p.replace(':', "."))
        .unwrap_or_else(|| member.name.clone());
    format!("pool-{name}-{below}")
}

/// A domain's attributes as a request (`vo` attribute, else `default_vo`).
fn request_of(
    member: &ResolvedComponent,
) -> Result<(EnvironmentRequest, Option<String>), PoolError> {
    let attribute = |message: String| PoolError::Attribute {
        path: member.path.clone(),
        message,
    };
    let count = |attr: &str| -> Result<Option<u64>, PoolError> {
        match member.get(attr) {
            None => Ok(None),
            Some(ResolvedValue::Int(i)) if *i >= 0 => Ok(Some(*i as u64)),
            Some(other) => Err(attribute(format!(
                "{attr} must be a non-negative integer, not {other:?}"
            ))),
        }
    };
    let text = |attr: &str| member.get_str(attr).filter(|s| !s.is_empty());
    if let Some(kernel) = text("kernel").filter(|k| *k != "default") {
        tracing::warn!(
            "{}: kernel {kernel:?} is not used: the image's kernel boots",
            member.path
        );
    }
    match member.get("storageBackend") {
        None => {}
        Some(ResolvedValue::Str(s)) if s == "overlay" || s == "default" => {}
        Some(other) => tracing::warn!(
            "{}: storageBackend {other:?}: the site's copy-on-write overlay is used",
            member.path
        ),
    }
    let vcpus = count("vcpus")?
        .map(|v| u32::try_from(v).map_err(|_| attribute(format!("vcpus {v} is too large"))))
        .transpose()?;
    let request = EnvironmentRequest {
        image: text("image").map(str::to_string),
        memory_mib: count("memory")?,
        vcpus,
        disk_mib: count("disk")?,
        save_image: member.get_bool("saveImage"),
        save_as: text("saveAs").map(str::to_string),
        hostname: text("hostname").map(str::to_string),
    };
    Ok((request, text("vo").map(str::to_string)))
}

/// Every domain of the description, admitted, in deployment order.
fn plan(
    site: &SiteConfig,
    name: &str,
    description: &ResolvedDescription,
    vo: Option<&str>,
) -> Result<Vec<Plan>, PoolError> {
    let mut plans: Vec<Plan> = Vec::new();
    for member in description.root.domains() {
        let id = member_id(name, member);
        if !journal::valid_id(&id) || plans.iter().any(|p| p.id == id) {
            return Err(PoolError::BadMemberId {
                path: member.path.clone(),
                id,
            });
        }
        let (request, own_vo) = request_of(member)?;
        let env = policy::admit(site, own_vo.as_deref().or(vo), &request).map_err(|error| {
            PoolError::Policy {
                path: member.path.clone(),
                error,
            }
        })?;
        plans.push(Plan {
            id,
            path: member.path.clone(),
            env,
        });
    }
    if plans.is_empty() {
        return Err(PoolError::NoDomains);
    }
    Ok(plans)
}

/// Every pool in the tree is a Compound that terminates concurrently.
fn terminates_concurrently(c: &ResolvedComponent) -> bool {
    let own = match c.kind {
        Kind::Compound => c.get_bool("sfSyncTerminate") == Some(false),
        Kind::Sequence => false,
        _ => true,
    };
    own && c
        .members
        .iter()
        .filter(|m| m.kind.is_pool())
        .all(terminates_concurrently)
}

/// MiB of memory the host can still give (MemAvailable), if known.
fn available_memory_mib() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

/// Deploys pool `name` from `description`, with the site's default VO for
/// members that name none. See [`start_as`].
pub fn start(
    site: &SiteConfig,
    name: &str,
    description: &ResolvedDescription,
) -> Result<PoolRecord, PoolError> {
    start_as(site, name, description, None)
}

/// Deploys pool `name`: every domain admitted by policy first (nothing is
/// created for a refused description), the host's free memory checked, then
/// each domain deployed in order, recorded before it is made. Returns when
/// every member's agent answered; on any failure the members already made
/// are terminated in reverse order and the error is returned.
pub fn start_as(
    site: &SiteConfig,
    name: &str,
    description: &ResolvedDescription,
    vo: Option<&str>,
) -> Result<PoolRecord, PoolError> {
    if !valid_name(name) {
        return Err(PoolError::BadName(name.into()));
    }
    if load(site, name)?.is_some() {
        return Err(PoolError::Exists(name.into()));
    }
    let plans = plan(site, name, description, vo)?;
    let needed: u64 = plans.iter().map(|p| p.env.memory_mib).sum();
    if let Some(available) = available_memory_mib() {
        if needed > available {
            return Err(PoolError::Memory { needed, available });
        }
    }
    let mut record = PoolRecord {
        name: name.to_string(),
        source: description.source.clone(),
        kind: format!("{:?}", description.root.kind),
        concurrent_terminate: terminates_concurrently(&description.root),
        started_unix_ms: now_unix_ms(),
        members: vec![],
    };
    let path = record_path(site, name);
    match write_atomic(&path, &record, true) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PoolError::Exists(name.into()))
        }
        Err(e) => return Err(record_error(&path, e)),
    }
    let uid = nix::unistd::getuid().as_raw();
    for plan in &plans {
        record.members.push(MemberRecord {
            id: plan.id.clone(),
            path: plan.path.clone(),
            image: plan.env.image.name.clone(),
            memory_mib: plan.env.memory_mib,
            vcpus: plan.env.vcpus,
            up_unix_ms: None,
            down_unix_ms: None,
        });
        let deployed = save(site, &record).and_then(|()| {
            tracing::info!("pool {name}: deploying {} ({})", plan.id, plan.path);
            Deployment::deploy(site, &plan.id, &plan.env, uid, None).map_err(|error| {
                PoolError::Deploy {
                    id: plan.id.clone(),
                    error,
                }
            })
        });
        match deployed {
            Ok(d) => {
                tracing::info!(
                    "pool {name}: {} up in {:.1} s under {}",
                    d.id,
                    d.boot_time.as_secs_f64(),
                    d.acceleration
                );
                // The domain runs on without this link; it is found again
                // through its journal.
                drop(d);
                record.members.last_mut().expect("pushed").up_unix_ms = Some(now_unix_ms());
                if let Err(e) = save(site, &record) {
                    return Err(rollback(site, record, e));
                }
            }
            Err(e) => return Err(rollback(site, record, e)),
        }
    }
    Ok(record)
}

fn rollback(site: &SiteConfig, record: PoolRecord, cause: PoolError) -> PoolError {
    tracing::warn!("pool {}: {cause}; rolling back", record.name);
    let name = record.name.clone();
    match stop(site, record, false) {
        Ok(_) => cause,
        Err(rollback) => PoolError::RollbackFailed {
            name,
            cause: Box::new(cause),
            rollback: Box::new(rollback),
        },
    }
}

/// Stops pool `name`: its members in reverse creation order (concurrently
/// for a Compound with `sfSyncTerminate false`), each powered off through
/// its agent and its journal undone; then the record is removed. Returns the
/// final record, or None if there was no such pool (idempotent).
pub fn terminate(site: &SiteConfig, name: &str) -> Result<Option<PoolRecord>, PoolError> {
    match load(site, name)? {
        None => Ok(None),
        Some(record) => stop(site, record, true).map(Some),
    }
}

fn stop(site: &SiteConfig, record: PoolRecord, graceful: bool) -> Result<PoolRecord, PoolError> {
    let name = record.name.clone();
    let concurrent = record.concurrent_terminate;
    let record = Mutex::new(record);
    let errors = Mutex::new(Vec::new());
    let pending: Vec<usize> = {
        let r = lock(&record);
        (0..r.members.len())
            .rev()
            .filter(|&i| r.members[i].down_unix_ms.is_none())
            .collect()
    };
    let stop_one = |i: usize| {
        let id = lock(&record).members[i].id.clone();
        let result = if graceful {
            deployment::finish(site, &id, true).map(|saved| match saved {
                Some(Some(Err(e))) => {
                    tracing::warn!("pool {name}: {id}: its disk was not saved: {e}")
                }
                Some(Some(Ok(image))) => {
                    tracing::info!("pool {name}: {id}: disk saved as image {}", image.name)
                }
                _ => {}
            })
        } else {
            deployment::cleanup(site, &id).map(|_| ())
        };
        match result {
            Ok(()) => {
                tracing::info!("pool {name}: {id} down");
                let mut r = lock(&record);
                r.members[i].down_unix_ms = Some(now_unix_ms());
                if let Err(e) = save(site, &r) {
                    lock(&errors).push(e.to_string());
                }
            }
            Err(e) => lock(&errors).push(format!("{id}: {e}")),
        }
    };
    let stop_one = &stop_one;
    if concurrent {
        std::thread::scope(|s| {
            for &i in &pending {
                s.spawn(move || stop_one(i));
            }
        });
    } else {
        for &i in &pending {
            stop_one(i);
        }
    }
    let record = record.into_inner().unwrap_or_else(|e| e.into_inner());
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    if !errors.is_empty() {
        return Err(PoolError::Terminate { name, errors });
    }
    let last = final_record_path(site, &name);
    if let Err(e) = write_atomic(&last, &record, false) {
        tracing::warn!("pool {name}: cannot keep its final record: {e}");
    }
    let path = record_path(site, &name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(record_error(&path, e)),
        _ => Ok(record),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a member is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MemberState {
    /// Recorded, its agent has not answered yet.
    Booting,
    /// Up: its journal is there and its domain runs.
    Up,
    /// Recorded up, but its domain is gone (it died or was killed).
    Dead,
    /// Terminated and cleaned up.
    Down,
}

/// The state of each member of a pool record, in creation order.
pub fn member_states(site: &SiteConfig, record: &PoolRecord) -> Vec<MemberState> {
    record
        .members
        .iter()
        .map(|m| {
            if m.down_unix_ms.is_some() {
                return MemberState::Down;
            }
            let journal = match journal::Journal::open(&site.state_dir, &m.id) {
                Ok(Some(j)) => j,
                _ => return MemberState::Dead,
            };
            let running = deployment::backend_for(site, journal.facts().backend.as_deref())
                .map(|b| b.is_running(&deployment::domain_name(site, &m.id)))
                .unwrap_or(false);
            match (m.up_unix_ms, running) {
                (None, _) => MemberState::Booting,
                (Some(_), true) => MemberState::Up,
                (Some(_), false) => MemberState::Dead,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> PoolRecord {
        PoolRecord {
            name: name.into(),
            source: "x.yaml".into(),
            kind: "Sequence".into(),
            concurrent_terminate: false,
            started_unix_ms: 1,
            members: vec![MemberRecord {
                id: format!("pool-{name}-db"),
                path: "sfConfig:db".into(),
                image: "busybox".into(),
                memory_mib: 256,
                vcpus: 1,
                up_unix_ms: Some(2),
                down_unix_ms: None,
            }],
        }
    }

    #[test]
    fn exclusive_record_write_refuses_a_second_pool_of_that_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pools/p.json");
        write_atomic(&path, &record("p"), true).unwrap();
        let again = write_atomic(&path, &record("p"), true).unwrap_err();
        assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
        write_atomic(&path, &record("p"), false).unwrap();
        let back: PoolRecord = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, record("p"));
        let left: Vec<_> = fs::read_dir(dir.path().join("pools"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left.len(), 1, "no temporary file is left: {left:?}");
    }

    #[test]
    fn members_get_journal_ids_and_pools_know_their_terminate_order() {
        use crate::description::{resolve_str, Format};
        let d = resolve_str(
            "p.yaml",
            "sfConfig:\n  extends: Compound\n  sfSyncTerminate: false\n  \
             db: { extends: DefaultXenDomain, image: busybox }\n  \
             inner:\n    extends: Compound\n    sfSyncTerminate: false\n    \
             w1: { extends: DefaultXenDomain }\n",
            Format::Yaml,
        )
        .unwrap();
        let ids: Vec<String> = d.root.domains().iter().map(|m| member_id("p", m)).collect();
        assert_eq!(ids, ["pool-p-db", "pool-p-inner.w1"]);
        assert!(ids.iter().all(|i| journal::valid_id(i)));
        assert!(terminates_concurrently(&d.root));
        let (req, vo) = request_of(d.root.domains()[0]).unwrap();
        assert_eq!(req.image.as_deref(), Some("busybox"));
        assert_eq!(req.memory_mib, Some(256));
        assert_eq!(req.hostname.as_deref(), Some("db"));
        assert_eq!(req.save_as, None);
        assert_eq!(vo, None);

        let seq = resolve_str(
            "s.yaml",
            "sfConfig:\n  extends: Sequence\n  db: { extends: DefaultXenDomain }\n",
            Format::Yaml,
        )
        .unwrap();
        assert!(!terminates_concurrently(&seq.root));
        assert!(!valid_name("../x") && !valid_name(&"a".repeat(41)) && valid_name("p-1"));
    }
}
