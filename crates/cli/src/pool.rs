//! Pools: the on/off button for a whole described set of domains, with
//! SmartFrog's semantics.
//!
//! [`start_as`] deploys every domain of a resolved description (`sd describe`)
//! as the description says, recursively (pools nest):
//! * a `Sequence` starts its members in order, each once the previous one
//!   (a domain, or a whole nested pool) is up — for a domain, its agent
//!   answered;
//! * a `Compound` deploys all its members at once, each in its own thread,
//!   and counts as started when all are up. There is no fixed limit on
//!   simultaneous boots: the limit is the host's memory, checked for the
//!   whole pool before anything is booted.
//!
//! If a member fails, the members already up are terminated in reverse
//! creation order and the error is returned: all or nothing.
//!
//! **Liveness.** [`start_monitored`] (what `sd start` runs) then spawns the
//! pool's monitor, a detached process (`sd pool-monitor NAME`, its own
//! session, logging to `LOG_DIR/pool-NAME.log`, its pid in the pool record)
//! that runs [`run_monitor`]: it beats every member every `sfLivenessDelay`
//! seconds — a ping through the member's guest agent, over a link it keeps
//! open — and a member that misses `sfLivenessFactor` beats in a row counts
//! as dead. A member's delay and factor are those of the pool that holds it
//! (in SmartFrog the parent pings its children); a pool that sets none has
//! the prelude's `Compound` values (10 s, 2). The last beats are in
//! `STATE_DIR/pools/NAME.liveness` (see [`read_liveness`]).
//!
//! **A dead member ends the pool.** In SmartFrog a `Compound` whose child
//! dies terminates all its children in reverse creation order and then
//! itself, which its own parent sees as a child's death in turn; a
//! `Sequence`'s child terminating abnormally terminates the Sequence the
//! same way. So whether the dead member sits in a Compound or a Sequence,
//! at any depth, the whole pool is terminated: the monitor records why
//! (`terminated_because` in the pool record), stops every member in
//! reverse creation order — one after another, or concurrently when every
//! pool in the tree is a Compound with `sfSyncTerminate false` — and exits.
//! A member whose domain powered itself off counts as dead too: a pool
//! member is a service, not a workflow step.
//!
//! [`terminate`] stops the monitor first, then the members in reverse
//! creation order, gracefully (the agent powers the guest off, the journal
//! is undone). It is idempotent.
//!
//! The pool record, `STATE_DIR/pools/NAME.json`, lists the members in
//! creation order, each written *before* the member is deployed (atomically:
//! temporary file, fsync, rename), with the time each came up and went down.
//! A Compound records all its own domains, in description order, before
//! booting them together. So `terminate` finds everything after a crash at
//! any point; the members themselves are found again through their
//! deployment journals. The record is removed last; its final state (with
//! every up and down time, and why the pool ended) is kept in
//! `LOG_DIR/pool-NAME.pool.json`.
//!
//! Members are deployments `pool-NAME-MEMBER` (`MEMBER` is the member's path
//! below `sfConfig`, `:` written `.` for nested pools), owned by nobody's
//! process (like a batch system's): `sd start` returns once all are up and
//! the domains run on, watched by the monitor.

use sd_host::atomic_file;
use sd_host::owner::{Owner, OwnerError};
use sd_languages::description::{Kind, ResolvedComponent, ResolvedDescription, ResolvedValue};
use sd_policy::{self as policy, PolicyError, ResolvedEnvironment};
use sd_request::EnvironmentRequest;
use sd_site::Blame;
use sd_site::SiteConfig;
use sd_vmm::deployment::{self, DeployError, Deployment, Fault};
use sd_vmm::guest_link::GuestLink;
use sd_vmm::journal::JournalError;
use sd_vmm::status;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

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
    #[error("{0}")]
    Owner(OwnerError),
    #[error("the pool needs {needed} MiB of guest memory, the host has {available} MiB available")]
    Memory { needed: u64, available: u64 },
    #[error("member {id}: {error}")]
    Deploy {
        id: String,
        error: DeployError,
        fault: Fault,
    },
    #[error("pool record {path}: {message}")]
    Record { path: PathBuf, message: String },
    #[error("pool {name}: cannot start its liveness monitor: {message}")]
    Monitor { name: String, message: String },
    #[error("pool {name}: {message}")]
    Internal { name: String, message: String },
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
            | PoolError::Owner(_)
            | PoolError::Memory { .. } => true,
            PoolError::Policy { error, .. } => error.fault() == Fault::User,
            PoolError::Deploy { error, fault, .. } => {
                *fault == Fault::User
                    || matches!(
                        error,
                        DeployError::Journal(JournalError::Exists(_) | JournalError::BadId(_))
                    )
            }
            PoolError::Record { .. }
            | PoolError::Monitor { .. }
            | PoolError::Internal { .. }
            | PoolError::RollbackFailed { .. }
            | PoolError::Terminate { .. } => false,
        }
    }
}

/// `sfLivenessDelay` / `sfLivenessFactor` of the pool holding a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Liveness {
    /// Seconds between beats.
    pub delay_secs: u64,
    /// Missed beats in a row before the member counts as dead.
    pub factor: u32,
}

impl Liveness {
    /// The prelude's `Compound` defaults.
    pub const DEFAULT: Liveness = Liveness {
        delay_secs: 10,
        factor: 2,
    };

    /// `c`'s own values, else `inherited`.
    fn of(c: &ResolvedComponent, inherited: Liveness) -> Liveness {
        let positive = |attr: &str| c.get_int(attr).filter(|v| *v >= 1);
        Liveness {
            delay_secs: positive("sfLivenessDelay").map_or(inherited.delay_secs, |v| v as u64),
            factor: positive("sfLivenessFactor")
                .map_or(inherited.factor, |v| u32::try_from(v).unwrap_or(u32::MAX)),
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
    /// How long its boot took, until its agent answered (milliseconds).
    #[serde(default)]
    pub boot_ms: Option<u64>,
    /// Seconds between liveness beats (0: a record from before liveness).
    #[serde(default)]
    pub liveness_delay_secs: u64,
    /// Missed beats before it counts as dead.
    #[serde(default)]
    pub liveness_factor: u32,
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

/// The monitor's last view of the members' beats.
fn liveness_path(site: &SiteConfig, name: &str) -> PathBuf {
    pools_dir(site).join(format!("{name}.liveness"))
}

/// Where the final record of a terminated pool is kept.
pub fn final_record_path(site: &SiteConfig, name: &str) -> PathBuf {
    site.log_dir.join(format!("pool-{name}.pool.json"))
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

fn read_record(path: &Path) -> Result<Option<PoolRecord>, PoolError> {
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

/// One domain to deploy, admitted by policy.
struct Plan {
    id: String,
    path: String,
    env: ResolvedEnvironment,
    liveness: Liveness,
}

impl Plan {
    fn record(&self) -> MemberRecord {
        MemberRecord {
            id: self.id.clone(),
            path: self.path.clone(),
            image: self.env.image.name.clone(),
            memory_mib: self.env.memory_mib,
            vcpus: self.env.vcpus,
            up_unix_ms: None,
            down_unix_ms: None,
            boot_ms: None,
            liveness_delay_secs: self.liveness.delay_secs,
            liveness_factor: self.liveness.factor,
        }
    }
}

/// The shape of the deployment: which plans go one after another, which
/// together.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    /// `plans[i]`.
    Domain(usize),
    /// One after another, each once the previous one is up.
    Sequence(Vec<Node>),
    /// All at once.
    Compound(Vec<Node>),
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
        networks: member.network_requests(),
    };
    Ok((request, text("vo").map(str::to_string)))
}

/// Admits every domain under `c` (in description order, appended to
/// `plans`) and returns how they are to be deployed; None if `c` holds no
/// domain. `liveness` is that of the pool holding `c`.
fn walk(
    site: &SiteConfig,
    owner: &Owner,
    name: &str,
    vo: Option<&str>,
    c: &ResolvedComponent,
    liveness: Liveness,
    plans: &mut Vec<Plan>,
) -> Result<Option<Node>, PoolError> {
    if c.kind == Kind::Domain {
        let id = member_id(name, c);
        if !status::valid_id(&id) || plans.iter().any(|p| p.id == id) {
            return Err(PoolError::BadMemberId {
                path: c.path.clone(),
                id,
            });
        }
        let (request, own_vo) = request_of(c)?;
        let env = policy::admit(
            site,
            owner,
            own_vo.as_deref().or(vo),
            &request,
            &sd_vmm::image_store::ImageStore::of_site(site),
        )
        .map_err(|error| PoolError::Policy {
            path: c.path.clone(),
            error,
        })?;
        plans.push(Plan {
            id,
            path: c.path.clone(),
            env,
            liveness,
        });
        return Ok(Some(Node::Domain(plans.len() - 1)));
    }
    let own = if c.kind.is_pool() {
        Liveness::of(c, liveness)
    } else {
        liveness
    };
    let mut children = Vec::new();
    for m in &c.members {
        if let Some(node) = walk(site, owner, name, vo, m, own, plans)? {
            children.push(node);
        }
    }
    Ok(match (c.kind, children.is_empty()) {
        (_, true) => None,
        (Kind::Compound, false) => Some(Node::Compound(children)),
        // A Sequence, or a plain component holding domains: in order.
        (_, false) => Some(Node::Sequence(children)),
    })
}

/// Every domain of the description, admitted, in description order, and
/// the shape of their deployment.
fn plan(
    site: &SiteConfig,
    owner: &Owner,
    name: &str,
    description: &ResolvedDescription,
    vo: Option<&str>,
) -> Result<(Vec<Plan>, Node), PoolError> {
    let mut plans: Vec<Plan> = Vec::new();
    let root = &description.root;
    // A lone domain beats by its own attributes.
    let top = Liveness::of(root, Liveness::DEFAULT);
    match walk(site, owner, name, vo, root, top, &mut plans)? {
        Some(node) => {
            // Static addresses: no two members on one address of a network.
            let members: Vec<_> = plans.iter().map(|p| (p.path.as_str(), &p.env)).collect();
            policy::check_pool_addresses(&members).map_err(|error| PoolError::Policy {
                path: root.path.clone(),
                error,
            })?;
            Ok((plans, node))
        }
        None => Err(PoolError::NoDomains),
    }
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
/// created for a refused description), the host's free memory checked
/// against the whole pool, then the domains deployed as the description
/// says (Sequence: in order; Compound: all at once), each recorded before
/// it is made. Returns when every member's agent answered; on any failure
/// the members already made are terminated in reverse order and the error
/// is returned. Starts no monitor: see [`start_monitored`].
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
    // The caller: members it may admit are those of its VOs (root: any).
    let owner = Owner::current().map_err(PoolError::Owner)?;
    let (plans, shape) = plan(site, &owner, name, description, vo)?;
    let needed: u64 = plans.iter().map(|p| p.env.memory_mib).sum();
    if let Some(available) = available_memory_mib() {
        if needed > available {
            return Err(PoolError::Memory { needed, available });
        }
    }
    let record = PoolRecord {
        name: name.to_string(),
        source: description.source.clone(),
        kind: format!("{:?}", description.root.kind),
        concurrent_terminate: terminates_concurrently(&description.root),
        started_unix_ms: now_unix_ms(),
        members: vec![],
        monitor_pid: None,
        terminated_because: None,
        terminated_unix_ms: None,
    };
    let path = record_path(site, name);
    match write_atomic(&path, &record, true) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PoolError::Exists(name.into()))
        }
        Err(e) => return Err(record_error(&path, e)),
    }
    let starter = Starter {
        site,
        name,
        uid: owner.uid(),
        plans: &plans,
        record: Mutex::new(record),
    };
    let result = starter.deploy(&shape);
    let record = starter
        .record
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(()) => Ok(record),
        Err(e) => Err(rollback(site, record, e)),
    }
}

/// Deploys the nodes of one pool, recording each member before it is made.
struct Starter<'a> {
    site: &'a SiteConfig,
    name: &'a str,
    uid: u32,
    plans: &'a [Plan],
    record: Mutex<PoolRecord>,
}

impl Starter<'_> {
    fn deploy(&self, node: &Node) -> Result<(), PoolError> {
        match node {
            Node::Domain(i) => {
                self.enrol(&[*i])?;
                self.boot(*i)
            }
            Node::Sequence(children) => children.iter().try_for_each(|c| self.deploy(c)),
            Node::Compound(children) => {
                // Its own domains are created in description order: that is
                // the order they are terminated in, reversed.
                let own: Vec<usize> = children
                    .iter()
                    .filter_map(|c| match c {
                        Node::Domain(i) => Some(*i),
                        _ => None,
                    })
                    .collect();
                self.enrol(&own)?;
                let results: Vec<Result<(), PoolError>> = std::thread::scope(|s| {
                    let threads: Vec<_> = children
                        .iter()
                        .map(|c| {
                            s.spawn(move || match c {
                                Node::Domain(i) => self.boot(*i),
                                nested => self.deploy(nested),
                            })
                        })
                        .collect();
                    threads
                        .into_iter()
                        .map(|t| {
                            t.join().unwrap_or_else(|_| {
                                Err(PoolError::Internal {
                                    name: self.name.into(),
                                    message: "a deploying thread panicked".into(),
                                })
                            })
                        })
                        .collect()
                });
                // The first failure, once every boot of this Compound ended.
                results.into_iter().collect()
            }
        }
    }

    /// Records members before they are made.
    fn enrol(&self, plans: &[usize]) -> Result<(), PoolError> {
        if plans.is_empty() {
            return Ok(());
        }
        let mut record = lock(&self.record);
        for &i in plans {
            record.members.push(self.plans[i].record());
        }
        save(self.site, &record)
    }

    fn boot(&self, i: usize) -> Result<(), PoolError> {
        let plan = &self.plans[i];
        tracing::info!("pool {}: deploying {} ({})", self.name, plan.id, plan.path);
        let d = Deployment::deploy(self.site, &plan.id, &plan.env, self.uid, None).map_err(
            |error| PoolError::Deploy {
                id: plan.id.clone(),
                fault: error.fault(&plan.env),
                error,
            },
        )?;
        tracing::info!(
            "pool {}: {} up in {:.1} s under {}",
            self.name,
            d.id,
            d.boot_time.as_secs_f64(),
            d.acceleration
        );
        let mut record = lock(&self.record);
        if let Some(m) = record.members.iter_mut().find(|m| m.id == plan.id) {
            m.up_unix_ms = Some(now_unix_ms());
            m.boot_ms = Some(d.boot_time.as_millis() as u64);
        }
        save(self.site, &record)?;
        // The domain runs on without this link; it is found again through
        // its journal.
        drop(d);
        Ok(())
    }
}

fn rollback(site: &SiteConfig, mut record: PoolRecord, cause: PoolError) -> PoolError {
    tracing::warn!("pool {}: {cause}; rolling back", record.name);
    record.terminated_because = Some(format!("its start failed and was rolled back: {cause}"));
    record.terminated_unix_ms = Some(now_unix_ms());
    let name = record.name.clone();
    match stop(site, record, false, false) {
        Ok(_) => cause,
        Err(rollback) => PoolError::RollbackFailed {
            name,
            cause: Box::new(cause),
            rollback: Box::new(rollback),
        },
    }
}

/// What `sd start` does: [`start_as`], then the pool's liveness monitor,
/// `program pool-monitor NAME` (see [`spawn_monitor`]). If the monitor
/// cannot be started, the pool is terminated: a pool nobody watches is not
/// a SmartFrog pool.
pub fn start_monitored(
    site: &SiteConfig,
    name: &str,
    description: &ResolvedDescription,
    vo: Option<&str>,
    program: &Path,
) -> Result<PoolRecord, PoolError> {
    let mut record = start_as(site, name, description, vo)?;
    match spawn_monitor(site, &mut record, program) {
        Ok(()) => Ok(record),
        Err(e) => Err(rollback(site, record, e)),
    }
}

/// Starts `program --config SITE --verbose pool-monitor NAME` detached: its
/// own session, stdin a pipe, stdout and stderr appended to
/// `LOG_DIR/pool-NAME.log`, working directory `/`. Its pid is recorded
/// before it begins: it waits for its stdin to close, which happens once
/// the record names it, so it never races `sd start` for the record.
pub fn spawn_monitor(
    site: &SiteConfig,
    record: &mut PoolRecord,
    program: &Path,
) -> Result<(), PoolError> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let name = record.name.clone();
    let failed = |message: String| PoolError::Monitor {
        name: name.clone(),
        message,
    };
    let log_path = monitor_log_path(site, &name);
    let log = fs::create_dir_all(&site.log_dir)
        .and_then(|()| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
        })
        .map_err(|e| failed(format!("{}: {e}", log_path.display())))?;
    let mut cmd = Command::new(program);
    cmd.arg("--config")
        .arg(&site.path)
        .arg("--verbose")
        .arg("pool-monitor")
        .arg(&name)
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(log.try_clone().map_err(|e| failed(e.to_string()))?)
        .stderr(log);
    // Its own session: the terminal's and the batch system's signals for
    // `sd start` are not for it.
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(drop).map_err(Into::into));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| failed(format!("{}: {e}", program.display())))?;
    record.monitor_pid = Some(child.id());
    if let Err(e) = save(site, record) {
        let _ = child.kill();
        let _ = child.wait();
        record.monitor_pid = None;
        return Err(e);
    }
    // Go: the record names it.
    drop(child.stdin.take());
    tracing::info!(
        "pool {name}: monitor {} started, log {}",
        child.id(),
        log_path.display()
    );
    Ok(())
}

/// Is `pid` (still) the monitor of pool `name`? A zombie is not.
pub fn monitor_alive(pid: u32, name: &str) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return false;
    }
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"pool-monitor" && w[1] == name.as_bytes())
}

/// Stops the monitor of a pool and waits for it to be gone. A monitor that
/// is terminating the pool itself (a member died) finishes that first.
fn stop_monitor(pid: u32, name: &str) {
    use nix::sys::signal::{kill, Signal};
    let target = nix::unistd::Pid::from_raw(pid as i32);
    if !monitor_alive(pid, name) {
        return;
    }
    tracing::info!("pool {name}: stopping its monitor {pid}");
    let _ = kill(target, Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(900);
    while monitor_alive(pid, name) {
        if Instant::now() > deadline {
            tracing::warn!("pool {name}: monitor {pid} does not stop; killing it");
            let _ = kill(target, Signal::SIGKILL);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops pool `name`: its monitor first, then its members in reverse
/// creation order (concurrently for a Compound with `sfSyncTerminate
/// false`), each powered off through its agent and its journal undone; then
/// the record is removed. Returns the final record, or None if there was no
/// such pool (idempotent) — or its monitor ended it meanwhile.
pub fn terminate(site: &SiteConfig, name: &str) -> Result<Option<PoolRecord>, PoolError> {
    let Some(record) = load(site, name)? else {
        return Ok(None);
    };
    if let Some(pid) = record.monitor_pid {
        stop_monitor(pid, name);
    }
    match load(site, name)? {
        None => Ok(None),
        Some(record) => stop(site, record, true, true).map(Some),
    }
}

fn stop(
    site: &SiteConfig,
    record: PoolRecord,
    graceful: bool,
    succeeded: bool,
) -> Result<PoolRecord, PoolError> {
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
            deployment::finish(site, &id, succeeded).map(|saved| match saved {
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
    let _ = fs::remove_file(liveness_path(site, &name));
    let path = record_path(site, &name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(record_error(&path, e)),
        _ => Ok(record),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// liveness
// ---------------------------------------------------------------------------

/// The liveness of one member, as its pool's monitor last saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beat {
    pub id: String,
    pub delay_secs: u64,
    pub factor: u32,
    /// The last answered beat (Unix time, milliseconds).
    pub last_beat_unix_ms: Option<u64>,
    /// Its round trip, in microseconds.
    pub last_rtt_us: Option<u64>,
    /// Beats missed in a row.
    pub missed: u32,
    /// Why the last missed beat was missed.
    pub last_error: Option<String>,
}

/// `STATE_DIR/pools/NAME.liveness`, rewritten by the monitor as beats come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LivenessReport {
    pub monitor_pid: u32,
    pub written_unix_ms: u64,
    pub members: Vec<Beat>,
}

/// The monitor's last report on pool `name`, if any.
pub fn read_liveness(site: &SiteConfig, name: &str) -> Option<LivenessReport> {
    serde_json::from_slice(&fs::read(liveness_path(site, name)).ok()?).ok()
}

/// A status snapshot: a crash loses at most one, so no fsync (the record is
/// what must survive).
fn write_liveness(site: &SiteConfig, name: &str, report: &LivenessReport) {
    let path = liveness_path(site, name);
    let tmp = path.with_extension(format!("liveness.{}.tmp", std::process::id()));
    let text = serde_json::to_vec_pretty(report).expect("liveness report serialises");
    if let Err(e) = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, &path)) {
        tracing::warn!("{}: {e}", path.display());
        let _ = fs::remove_file(&tmp);
    }
}

enum Event {
    /// Member `i`'s beat: its round trip, or why it was missed.
    Beat(usize, Result<Duration, String>),
    /// SIGTERM, SIGINT or SIGHUP: `sd terminate` stops the monitor.
    Stop(nix::sys::signal::Signal),
}

/// One beat: a ping through the member's agent, over a link kept open
/// between beats (opened again after any failure).
fn beat(
    site: &SiteConfig,
    id: &str,
    link: &mut Option<GuestLink>,
    timeout: Duration,
) -> Result<Duration, String> {
    if link.is_none() {
        *link = Some(deployment::attach(site, id, timeout).map_err(|e| e.to_string())?);
    }
    let result = link.as_ref().expect("just set").ping(timeout);
    result.map_err(|e| {
        // A late answer must not be taken for the next beat's.
        *link = None;
        e.to_string()
    })
}

/// Beats member `i` every `delay` until `stop`.
fn beat_member(
    site: &SiteConfig,
    i: usize,
    id: &str,
    delay: Duration,
    stop: &AtomicBool,
    events: &mpsc::Sender<Event>,
) {
    let timeout = delay.clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut link = None;
    let mut next = Instant::now();
    loop {
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
        }
        next += delay;
        let result = beat(site, id, &mut link, timeout);
        if stop.load(Ordering::Relaxed) || events.send(Event::Beat(i, result)).is_err() {
            return;
        }
        // After a slow beat, the next one is due a whole delay later.
        next = next.max(Instant::now());
    }
}

/// The body of `sd pool-monitor NAME`: waits until `sd start` recorded it
/// (its stdin closes), then beats every member (see the module notes)
/// until `sd terminate` sends SIGTERM, or until a member misses its
/// `sfLivenessFactor` beats: then the pool is terminated (reverse creation
/// order; sync or concurrent), the reason kept in its final record, and the
/// monitor returns.
pub fn run_monitor(site: &SiteConfig, name: &str) -> Result<(), PoolError> {
    use nix::sys::signal::{SigSet, Signal};
    // Before any thread exists, so that all inherit the mask: the signals
    // are taken by one thread, as events.
    let mut signals = SigSet::empty();
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        signals.add(s);
    }
    signals.thread_block().map_err(|e| PoolError::Monitor {
        name: name.into(),
        message: format!("cannot block signals: {e}"),
    })?;
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
    let me = std::process::id();
    let record = match load(site, name)? {
        Some(r) if r.monitor_pid == Some(me) => r,
        _ => {
            tracing::info!("pool {name}: not (or no longer) this monitor's pool; exiting");
            return Ok(());
        }
    };
    let (events, incoming) = mpsc::channel();
    {
        let events = events.clone();
        std::thread::spawn(move || {
            let signal = signals.wait().unwrap_or(Signal::SIGTERM);
            let _ = events.send(Event::Stop(signal));
        });
    }
    let watched: Vec<&MemberRecord> = record
        .members
        .iter()
        .filter(|m| m.down_unix_ms.is_none())
        .collect();
    let mut beats: Vec<Beat> = watched
        .iter()
        .map(|m| Beat {
            id: m.id.clone(),
            delay_secs: m.liveness().delay_secs,
            factor: m.liveness().factor,
            last_beat_unix_ms: None,
            last_rtt_us: None,
            missed: 0,
            last_error: None,
        })
        .collect();
    let quit = Arc::new(AtomicBool::new(false));
    let site_shared = Arc::new(site.clone());
    let threads: Vec<_> = watched
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let (site, quit, events) = (site_shared.clone(), quit.clone(), events.clone());
            let id = m.id.clone();
            let delay = Duration::from_secs(m.liveness().delay_secs);
            std::thread::spawn(move || beat_member(&site, i, &id, delay, &quit, &events))
        })
        .collect();
    drop(events);
    tracing::info!(
        "pool {name}: monitor {me} beating {} member(s): {}",
        beats.len(),
        beats
            .iter()
            .map(|b| format!(
                "{} every {} s, dead after {} missed",
                b.id, b.delay_secs, b.factor
            ))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let report = |beats: &[Beat]| LivenessReport {
        monitor_pid: me,
        written_unix_ms: now_unix_ms(),
        members: beats.to_vec(),
    };
    write_liveness(site, name, &report(&beats));
    let mut written = Instant::now();
    let mut dirty = false;
    let dead = loop {
        let mut urgent = false;
        match incoming.recv_timeout(Duration::from_millis(500)) {
            Ok(Event::Stop(signal)) => {
                tracing::info!("pool {name}: {}: monitor {me} stops", signal.as_str());
                // Let the beats under way finish: an agent whose client
                // vanished in mid-exchange would answer the next client
                // (`sd terminate`'s) with what was meant for us.
                quit.store(true, Ordering::Relaxed);
                for t in threads {
                    let _ = t.join();
                }
                return Ok(());
            }
            Ok(Event::Beat(i, result)) => {
                let b = &mut beats[i];
                match result {
                    Ok(rtt) => {
                        urgent = b.missed > 0;
                        b.missed = 0;
                        b.last_beat_unix_ms = Some(now_unix_ms());
                        b.last_rtt_us = Some(rtt.as_micros() as u64);
                    }
                    Err(e) => {
                        b.missed += 1;
                        tracing::warn!(
                            "pool {name}: {} missed beat {} of {}: {e}",
                            b.id,
                            b.missed,
                            b.factor
                        );
                        b.last_error = Some(e);
                        urgent = true;
                    }
                }
                dirty = true;
                if b.missed >= b.factor {
                    break i;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(PoolError::Internal {
                    name: name.into(),
                    message: "every beating thread ended".into(),
                })
            }
        }
        if dirty && (urgent || written.elapsed() >= Duration::from_secs(1)) {
            write_liveness(site, name, &report(&beats));
            written = Instant::now();
            dirty = false;
            // Terminated behind our back (an `sd terminate` that did not
            // know about monitors): nothing left to watch.
            match load(site, name) {
                Ok(Some(r)) if r.monitor_pid == Some(me) => {}
                _ => {
                    tracing::info!("pool {name}: its record is gone; monitor {me} exits");
                    quit.store(true, Ordering::Relaxed);
                    return Ok(());
                }
            }
        }
    };
    write_liveness(site, name, &report(&beats));
    let b = &beats[dead];
    let path = watched[dead].path.clone();
    let reason = format!(
        "member {} ({path}) is dead: it missed {} beats in a row (sfLivenessDelay {} s, sfLivenessFactor {}); last: {}",
        b.id,
        b.missed,
        b.delay_secs,
        b.factor,
        b.last_error.as_deref().unwrap_or("?")
    );
    tracing::error!("pool {name}: {reason}; terminating every member in reverse creation order");
    // Free the agents' links (one client at a time) for the graceful stops.
    quit.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let Some(mut record) = load(site, name)? else {
        return Ok(());
    };
    record.terminated_because = Some(reason);
    record.terminated_unix_ms = Some(now_unix_ms());
    save(site, &record)?;
    let started = Instant::now();
    let record = stop(site, record, true, false)?;
    tracing::info!(
        "pool {name}: terminated in {:.1} s: {}",
        started.elapsed().as_secs_f64(),
        record
            .members
            .iter()
            .rev()
            .map(|m| m.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
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
            let running = match status::of(site, &m.id) {
                Ok(Some(s)) => s.is_running(site),
                _ => return MemberState::Dead,
            };
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
                boot_ms: Some(1),
                liveness_delay_secs: 5,
                liveness_factor: 3,
            }],
            monitor_pid: Some(42),
            terminated_because: None,
            terminated_unix_ms: None,
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
        use sd_languages::description::{resolve_str, Format};
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
        assert!(ids.iter().all(|i| status::valid_id(i)));
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

    #[test]
    fn a_record_from_before_liveness_still_loads() {
        let old = r#"{"name":"p","source":"x.yaml","kind":"Sequence","concurrent_terminate":false,
            "started_unix_ms":1,"members":[{"id":"pool-p-db","path":"sfConfig:db","image":"busybox",
            "memory_mib":256,"vcpus":1,"up_unix_ms":2,"down_unix_ms":null}]}"#;
        let r: PoolRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.monitor_pid, None);
        assert_eq!(r.members[0].liveness(), Liveness::DEFAULT);
    }

    fn site() -> SiteConfig {
        SiteConfig::from_str(
            "state_dir: /nonexistent/state\nlog_dir: /nonexistent/log\nimage_dir: /nonexistent\n\
             backend: qemu\ndefault_vo: demo\n\
             defaults: { image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: g }\n\
             images:\n  busybox: { disk: b.qcow2, format: qcow2, kernel: k, initrd: i }\n\
             vos:\n  demo: { images: [busybox], max_memory_mib: 512, max_vcpus: 2, max_disk_mib: 4096 }\n  \
             atlas: { images: [busybox], max_memory_mib: 256, max_vcpus: 1, max_disk_mib: 4096 }\n",
            Path::new("site.yaml"),
        )
        .unwrap()
    }

    #[test]
    fn pools_nest_compounds_boot_together_and_liveness_is_the_holding_pools() {
        use sd_languages::description::{resolve_str, Format};
        let d = resolve_str(
            "p.yaml",
            "D: { extends: DefaultXenDomain, image: busybox, memory: 128 }\n\
             sfConfig:\n  extends: Sequence\n  sfLivenessDelay: 4\n  sfLivenessFactor: 3\n  \
             db: { extends: D }\n  \
             farm:\n    extends: Compound\n    sfLivenessDelay: 1\n    \
             w1: { extends: D }\n    w2: { extends: D, vo: atlas }\n    \
             inner: { extends: Sequence, x: { extends: D } }\n  \
             last: { extends: D }\n",
            Format::Yaml,
        )
        .unwrap();
        let (plans, shape) = plan(&site(), &Owner::Root, "p", &d, None).unwrap();
        let ids: Vec<&str> = plans.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "pool-p-db",
                "pool-p-farm.w1",
                "pool-p-farm.w2",
                "pool-p-farm.inner.x",
                "pool-p-last"
            ]
        );
        assert_eq!(
            shape,
            Node::Sequence(vec![
                Node::Domain(0),
                Node::Compound(vec![
                    Node::Domain(1),
                    Node::Domain(2),
                    Node::Sequence(vec![Node::Domain(3)]),
                ]),
                Node::Domain(4),
            ])
        );
        let l = |p: &Plan| (p.liveness.delay_secs, p.liveness.factor);
        // The holding pool's own values; a pool that sets none has the
        // prelude's (Compound: 10 s, 2), like `inner`.
        assert_eq!(
            plans.iter().map(l).collect::<Vec<_>>(),
            [(4, 3), (1, 2), (1, 2), (10, 2), (4, 3)]
        );
        // A member's own `vo` is the one it is admitted for.
        assert_eq!(plans[2].env.vo, "atlas");
        assert_eq!(plans[1].env.vo, "demo");
        let over = resolve_str(
            "q.yaml",
            "sfConfig:\n  extends: Compound\n  w: { extends: DefaultXenDomain, image: busybox, vcpus: 2, vo: atlas }\n",
            Format::Yaml,
        )
        .unwrap();
        let e = plan(&site(), &Owner::Root, "q", &over, None)
            .err()
            .expect("refused");
        assert!(
            e.is_user_error() && e.to_string().contains("sfConfig:w"),
            "{e}"
        );
    }

    #[test]
    fn a_process_that_is_not_the_monitor_is_not_taken_for_it() {
        assert!(!monitor_alive(std::process::id(), "p"));
        assert!(!monitor_alive(u32::MAX, "p"));
        // A stand-in whose command line holds `pool-monitor p` is one, for
        // pool p only, and no longer once it has exited.
        let mut stand_in = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30; :", "pool-monitor", "p"])
            .spawn()
            .unwrap();
        let pid = stand_in.id();
        // Its command line is the test's own until it has exec'd.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !monitor_alive(pid, "p") {
            assert!(
                std::time::Instant::now() < deadline,
                "the stand-in is not seen"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!monitor_alive(pid, "q"));
        stand_in.kill().unwrap();
        stand_in.wait().unwrap();
        assert!(!monitor_alive(pid, "p"));
    }

    #[test]
    fn members_get_their_networks_and_no_address_twice() {
        use sd_languages::description::{resolve_str, Format};
        let site = SiteConfig::from_str(
            "images:\n  busybox: { disk: b.qcow2, kernel: k, initrd: i }\n\
             vos:\n  demo: { images: \"*\", networks: [lab] }\ndefault_vo: demo\n\
             networks:\n  lab: { kind: private, subnet: 10.214.0.0/24 }\n",
            Path::new("site.yaml"),
        )
        .unwrap();
        let pool = |b_ip: &str| {
            let d = resolve_str(
                "p.yaml",
                &format!(
                    "D: {{ extends: DefaultXenDomain, image: busybox, network: lab }}\n\
                     sfConfig:\n  extends: Sequence\n  \
                     a: {{ extends: D, ip: 10.214.0.10 }}\n  b: {{ extends: D, ip: {b_ip} }}\n"
                ),
                Format::Yaml,
            )
            .unwrap();
            plan(&site, &Owner::Root, "p", &d, None)
        };
        let (plans, _) = pool("dhcp").unwrap();
        assert_eq!(plans[0].env.networks[0].network, "lab");
        assert_eq!(plans[0].env.networks[0].ip, Some([10, 214, 0, 10].into()));
        assert_eq!(plans[1].env.networks[0].ip, None);
        let e = pool("10.214.0.10").err().unwrap().to_string();
        assert_eq!(
            e,
            "member sfConfig: members \"sfConfig:a\" and \"sfConfig:b\" both ask for address \
             10.214.0.10 on network \"lab\""
        );
    }
}
