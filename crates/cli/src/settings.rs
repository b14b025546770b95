//! Live changes of running domains: `sd set NAME[/MEMBER] memory=MiB
//! liveness=SECONDS[,factor=N] save=true|false [save_as=NAME]`, and the
//! console API's PATCH, both through [`apply`].
//!
//! The target is a deployment id, `POOL/MEMBER`, or a whole `POOL` (every
//! member not down). The caller (its uid from the kernel: `getuid` for `sd
//! set`, `SO_PEERCRED` or the token's owner for the API) must own every
//! deployment it names, or be root. Every change is checked (policy's
//! [`sd_policy::live`]) for every target before any is made:
//! * memory: the balloon target (QMP `balloon`, libxl's memory target),
//!   within the VO's `max_memory_mib` and never above the domain's memory
//!   at boot; the answer carries what the guest then reports (`actual`);
//! * liveness: a pool member's beat interval and factor, in the pool's
//!   `NAME.liveness-settings`, which its monitor rereads every second;
//! * save, save_as: in the deployment's journal, which the teardown reads.

use crate::exec::{self, ExecError};
use crate::pool;
use sd_policy::live::{self, LiveChangeError, SaveSetting};
use sd_site::{Blame, Fault, SiteConfig};
use sd_vmm::deployment;
use sd_vmm::image_store::ImageStore;
use sd_vmm::journal::Journal;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Longest a liveness interval may be set to, in seconds.
pub const MAX_LIVENESS_SECS: u64 = 3600;
/// Most missed beats a liveness factor may allow.
pub const MAX_LIVENESS_FACTOR: u32 = 100;
/// How long [`apply`] waits for the guest to reach a new memory target.
const BALLOON_WAIT: Duration = Duration::from_secs(20);

/// The changes asked for; None: unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Changes {
    /// New memory target, MiB (at most the memory at boot).
    pub memory_mib: Option<u64>,
    /// New liveness interval, seconds (pool members only).
    pub liveness_secs: Option<u64>,
    /// New number of missed beats before a member counts as dead.
    pub liveness_factor: Option<u32>,
    /// Whether the teardown saves the disk as a new image.
    pub save: Option<bool>,
    /// The saved image's name (implies save).
    pub save_as: Option<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }
}

/// What changed in one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Applied {
    pub id: String,
    /// The memory target set, MiB.
    pub memory_target_mib: Option<u64>,
    /// What the guest reports after it (query-balloon's `actual`), MiB;
    /// None when the backend does not report it.
    pub memory_actual_mib: Option<u64>,
    /// The liveness now: interval in seconds, factor.
    pub liveness_secs: Option<u64>,
    pub liveness_factor: Option<u32>,
    /// The save flag now (with its name, if one).
    pub save: Option<bool>,
    pub save_as: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(transparent)]
    Target(#[from] ExecError),
    #[error(
        "{0:?}: expected SETTING=VALUE with SETTING one of memory, liveness, save, save_as ({1})"
    )]
    BadAssignment(String, String),
    #[error("nothing to change: give memory=MiB, liveness=SECONDS[,factor=N], save=true|false or save_as=NAME")]
    Nothing,
    #[error(
        "liveness {0}: the interval is 1 to {MAX_LIVENESS_SECS} s and the factor 1 to {MAX_LIVENESS_FACTOR}"
    )]
    BadLiveness(String),
    #[error("deployment {0} is not a pool member: only a pool's monitor beats its domains, so liveness applies to pool members")]
    NotAPoolMember(String),
    #[error("deployment {0} is still being created: try again once it is up")]
    NotReady(String),
    #[error("deployment {0}'s domain is not running: its memory cannot be changed")]
    NotRunning(String),
    #[error("pool {0} has no member up")]
    NoMembers(String),
    #[error("deployment {id}: {error}")]
    Refused { id: String, error: LiveChangeError },
    #[error("deployment {id}: the hypervisor could not change it: {message} (the site's fault: see the host's logs)")]
    Backend { id: String, message: String },
    #[error("{0} (the site's fault)")]
    Site(String),
}

impl Blame for SettingsError {
    fn fault(&self) -> Fault {
        match self {
            SettingsError::Target(e) if e.exit_code() == sd_site::ExitCode::SITE => Fault::Site,
            SettingsError::Refused { error, .. } => error.fault(),
            SettingsError::Backend { .. } | SettingsError::Site(_) => Fault::Site,
            _ => Fault::User,
        }
    }
}

impl SettingsError {
    /// Whether it is a refusal for lack of rights (the API's 403).
    pub fn is_forbidden(&self) -> bool {
        matches!(
            self,
            SettingsError::Target(ExecError::NotYours(_) | ExecError::PoolNotYours(_))
        )
    }

    /// Whether the thing named does not exist (the API's 404).
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            SettingsError::Target(
                ExecError::NoSuchDeployment(_)
                    | ExecError::NoSuchPool(_)
                    | ExecError::NoSuchMember { .. }
            )
        )
    }
}

/// `memory=512 liveness=2,factor=3 save=false save_as=NAME` into [`Changes`].
pub fn parse_assignments(args: &[String]) -> Result<Changes, SettingsError> {
    let mut c = Changes::default();
    for arg in args {
        let bad = |why: &str| SettingsError::BadAssignment(arg.clone(), why.to_string());
        let (key, value) = arg.split_once('=').ok_or_else(|| bad("no '='"))?;
        match key {
            "memory" => {
                let v = value.strip_suffix("MiB").unwrap_or(value);
                c.memory_mib = Some(
                    v.parse()
                        .map_err(|_| bad("memory is in MiB, e.g. memory=512"))?,
                );
            }
            "liveness" => {
                let (secs, factor) = match value.split_once(',') {
                    Some((s, f)) => (s, Some(f)),
                    None => (value, None),
                };
                c.liveness_secs = Some(
                    secs.parse()
                        .map_err(|_| bad("liveness is in seconds, e.g. liveness=5,factor=3"))?,
                );
                if let Some(f) = factor {
                    let n = f
                        .strip_prefix("factor=")
                        .ok_or_else(|| bad("expected ,factor=N"))?;
                    c.liveness_factor = Some(n.parse().map_err(|_| bad("factor is a count"))?);
                }
            }
            "save" => {
                c.save = Some(match value {
                    "true" | "yes" | "on" => true,
                    "false" | "no" | "off" => false,
                    _ => return Err(bad("save is true or false")),
                })
            }
            "save_as" => c.save_as = Some(value.to_string()),
            _ => return Err(bad("unknown setting")),
        }
    }
    if c.is_empty() {
        return Err(SettingsError::Nothing);
    }
    Ok(c)
}

/// One deployment the change is for, checked.
struct Target {
    id: String,
    pool: Option<String>,
    status: sd_vmm::status::DeploymentStatus,
}

/// The deployments `name` stands for: `POOL` (every member not down),
/// `POOL/MEMBER` or a deployment id, each owned by `caller` (or root).
fn targets(site: &SiteConfig, name: &str, caller: u32) -> Result<Vec<Target>, SettingsError> {
    let ids: Vec<(String, Option<String>)> = if let Some((p, _)) = name.split_once('/') {
        vec![(exec::resolve(site, name)?, Some(p.to_string()))]
    } else if let Ok(Some(record)) = pool::load(site, name) {
        let ids: Vec<_> = record
            .members
            .iter()
            .filter(|m| m.down_unix_ms.is_none())
            .map(|m| (m.id.clone(), Some(name.to_string())))
            .collect();
        if ids.is_empty() {
            return Err(SettingsError::NoMembers(name.into()));
        }
        ids
    } else {
        let id = exec::resolve(site, name)?;
        let pool = pool_of(site, &id);
        vec![(id, pool)]
    };
    ids.into_iter()
        .map(|(id, pool)| {
            let status = exec::owned(site, &id, caller)?;
            Ok(Target { id, pool, status })
        })
        .collect()
}

/// The pool deployment `id` is a member of, if any.
fn pool_of(site: &SiteConfig, id: &str) -> Option<String> {
    pool::list(site).into_iter().find(|p| {
        pool::load(site, p)
            .ok()
            .flatten()
            .is_some_and(|r| r.members.iter().any(|m| m.id == id))
    })
}

/// Makes `changes` to what `name` stands for, as `caller`: all checked
/// first, then made in order. Returns what changed in each deployment.
pub fn apply(
    site: &SiteConfig,
    name: &str,
    caller: u32,
    changes: &Changes,
) -> Result<Vec<Applied>, SettingsError> {
    if changes.is_empty() {
        return Err(SettingsError::Nothing);
    }
    if let (Some(s), f) = (changes.liveness_secs, changes.liveness_factor) {
        if !(1..=MAX_LIVENESS_SECS).contains(&s)
            || f.is_some_and(|f| !(1..=MAX_LIVENESS_FACTOR).contains(&f))
        {
            return Err(SettingsError::BadLiveness(format!("{s} s, factor {f:?}")));
        }
    } else if let Some(f) = changes.liveness_factor {
        if !(1..=MAX_LIVENESS_FACTOR).contains(&f) {
            return Err(SettingsError::BadLiveness(format!("factor {f}")));
        }
    }
    let targets = targets(site, name, caller)?;
    let store = ImageStore::of_site(site);
    // Everything checked before anything is changed.
    let mut saves = vec![];
    for t in &targets {
        let refused = |error| SettingsError::Refused {
            id: t.id.clone(),
            error,
        };
        let env = t
            .status
            .environment
            .as_ref()
            .ok_or_else(|| SettingsError::NotReady(t.id.clone()))?;
        if let Some(mib) = changes.memory_mib {
            live::check_memory(site, env, mib).map_err(refused)?;
        }
        let wants_liveness = changes.liveness_secs.is_some() || changes.liveness_factor.is_some();
        if wants_liveness && t.pool.is_none() {
            return Err(SettingsError::NotAPoolMember(t.id.clone()));
        }
        if changes.save.is_some() || changes.save_as.is_some() {
            let current = current_save(site, &t.id, env);
            let setting = live::check_save(
                site,
                changes.save,
                changes.save_as.as_deref(),
                &current,
                &store,
            )
            .map_err(refused)?;
            saves.push(Some(setting));
        } else {
            saves.push(None);
        }
    }
    if changes.save_as.is_some() && targets.len() > 1 {
        return Err(SettingsError::BadAssignment(
            format!("save_as={}", changes.save_as.as_deref().unwrap_or("")),
            "save_as names one image: give POOL/MEMBER, not a whole pool".into(),
        ));
    }
    let mut applied = vec![];
    for (t, save) in targets.iter().zip(saves) {
        let mut a = Applied {
            id: t.id.clone(),
            memory_target_mib: None,
            memory_actual_mib: None,
            liveness_secs: None,
            liveness_factor: None,
            save: None,
            save_as: None,
        };
        if let Some(mib) = changes.memory_mib {
            a.memory_actual_mib = set_memory(site, t, mib)?;
            a.memory_target_mib = Some(mib);
            Journal::set_memory_target(&site.state_dir, &t.id, mib)
                .map_err(|e| SettingsError::Site(e.to_string()))?;
        }
        if let Some(pool_name) = &t.pool {
            if changes.liveness_secs.is_some() || changes.liveness_factor.is_some() {
                let l = set_liveness(site, pool_name, &t.id, changes)?;
                a.liveness_secs = Some(l.delay_secs);
                a.liveness_factor = Some(l.factor);
            }
        }
        if let Some(setting) = save {
            Journal::set_save(&site.state_dir, &t.id, setting.clone())
                .map_err(|e| SettingsError::Site(e.to_string()))?;
            a.save = Some(setting.save_image);
            a.save_as = setting.save_as;
        }
        tracing::info!("{}: changed by uid {caller}: {changes:?}", t.id);
        applied.push(a);
    }
    Ok(applied)
}

/// The save flag the teardown would act on now.
pub fn current_save(
    site: &SiteConfig,
    id: &str,
    env: &sd_policy::ResolvedEnvironment,
) -> SaveSetting {
    Journal::open(&site.state_dir, id)
        .ok()
        .flatten()
        .and_then(|j| j.details().save.clone())
        .unwrap_or(SaveSetting {
            save_image: env.save_image,
            save_as: env.save_as.clone(),
        })
}

/// Sets the balloon target and waits (bounded) for the guest to get there;
/// what the guest then reports.
fn set_memory(site: &SiteConfig, t: &Target, mib: u64) -> Result<Option<u64>, SettingsError> {
    let backend_error = |e: &dyn std::fmt::Display| SettingsError::Backend {
        id: t.id.clone(),
        message: e.to_string(),
    };
    let domain = deployment::running_domain(site, t.status.backend.as_deref(), &t.id)
        .map_err(|e| backend_error(&e))?
        .ok_or_else(|| SettingsError::NotRunning(t.id.clone()))?;
    domain
        .set_memory_target(mib)
        .map_err(|e| backend_error(&e))?;
    let deadline = Instant::now() + BALLOON_WAIT;
    loop {
        match domain.memory_actual_mib() {
            Ok(actual) if actual == mib || Instant::now() > deadline => return Ok(Some(actual)),
            Ok(_) => std::thread::sleep(Duration::from_millis(200)),
            Err(sd_vmm::hypervisor::HypervisorError::Unsupported { .. }) => return Ok(None),
            Err(e) => return Err(backend_error(&e)),
        }
    }
}

fn set_liveness(
    site: &SiteConfig,
    pool_name: &str,
    id: &str,
    changes: &Changes,
) -> Result<pool::Liveness, SettingsError> {
    let mut overrides = pool::read_liveness_overrides(site, pool_name);
    let recorded = pool::load(site, pool_name)
        .ok()
        .flatten()
        .and_then(|r| r.members.iter().find(|m| m.id == id).map(|m| m.liveness()))
        .unwrap_or(pool::Liveness::DEFAULT);
    let current = overrides.get(id).copied().unwrap_or(recorded);
    let new = pool::Liveness {
        delay_secs: changes.liveness_secs.unwrap_or(current.delay_secs),
        factor: changes.liveness_factor.unwrap_or(current.factor),
    };
    overrides.insert(id.to_string(), new);
    pool::write_liveness_overrides(site, pool_name, &overrides)
        .map_err(|e| SettingsError::Site(format!("pool {pool_name}'s liveness settings: {e}")))?;
    Ok(new)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn assignments_parse_and_bad_ones_say_why() {
        let c = parse_assignments(&args(&[
            "memory=256",
            "liveness=2,factor=3",
            "save=false",
            "save_as=x",
        ]))
        .unwrap();
        assert_eq!(
            c,
            Changes {
                memory_mib: Some(256),
                liveness_secs: Some(2),
                liveness_factor: Some(3),
                save: Some(false),
                save_as: Some("x".into()),
            }
        );
        let c = parse_assignments(&args(&["liveness=5"])).unwrap();
        assert_eq!(c.liveness_factor, None);
        for bad in [
            "memory=lots",
            "colour=red",
            "save=maybe",
            "memory",
            "liveness=1,f=2",
        ] {
            let e = parse_assignments(&args(&[bad])).unwrap_err();
            assert!(matches!(e, SettingsError::BadAssignment(..)), "{bad}: {e}");
        }
        assert!(matches!(
            parse_assignments(&[]),
            Err(SettingsError::Nothing)
        ));
    }
}
