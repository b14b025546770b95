//! Starting a pool: its members launched as planned (a Sequence in order, a
//! Compound all at once), each recorded before it is made; all or nothing.

use sd_host::owner::Owner;
use sd_languages::description::ResolvedDescription;
use sd_site::SiteConfig;
use sd_vmm::deployment::{Deployment, Neighbourhood};
use sd_vmm::network::Tunnel;
use std::path::Path;
use std::sync::Mutex;

use super::allocation::Allocation;
use super::monitor::spawn_monitor;
use super::node_member::{self, MemberPlan};
use super::placement::place;
use super::planning::{
    available_memory_mib, plan_members, terminates_concurrently, PlannedMember, StartOrder,
};
use super::record::{
    load, now_unix_ms, record_error, record_path, save, valid_name, write_atomic, PoolRecord,
};
use super::stopping::stop;
use super::{lock, PoolError};

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
    let (mut plans, shape) = plan_members(site, &owner, name, description, vo)?;
    let allocation = Allocation::current()?;
    let placed = place(site, allocation.as_ref(), &plans)?;
    for (plan, node) in plans.iter_mut().zip(placed) {
        plan.node = node;
    }
    if let Some(alloc) = &allocation {
        tracing::info!(
            "pool {name}: in allocation {}: {}",
            alloc.job_id,
            plans
                .iter()
                .map(|p| format!(
                    "{} on {}",
                    p.id,
                    p.node.map_or("?", |n| &alloc.nodes[n].name)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    } else {
        // Each node checks its own memory as its step deploys.
        let needed: u64 = plans.iter().map(|p| p.env.memory_mib).sum();
        if let Some(available) = available_memory_mib() {
            if needed > available {
                return Err(PoolError::Memory { needed, available });
            }
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
        allocation: allocation.clone(),
    };
    let path = record_path(site, name);
    match write_atomic(&path, &record, true) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(PoolError::Exists(name.into()))
        }
        Err(e) => return Err(record_error(&path, e)),
    }
    let launcher = Launcher {
        site,
        name,
        uid: owner.uid(),
        plans: &plans,
        allocation: allocation.as_ref(),
        record: Mutex::new(record),
    };
    let result = launcher.launch(&shape);
    let record = launcher
        .record
        .into_inner()
        .unwrap_or_else(|e| e.into_inner());
    match result {
        Ok(()) => Ok(record),
        Err(e) => Err(rollback(site, record, e)),
    }
}

/// Launches the planned members of one pool in their start order,
/// recording each member before it is made.
pub(super) struct Launcher<'a> {
    site: &'a SiteConfig,
    name: &'a str,
    uid: u32,
    plans: &'a [PlannedMember],
    allocation: Option<&'a Allocation>,
    record: Mutex<PoolRecord>,
}

impl Launcher<'_> {
    fn launch(&self, order: &StartOrder) -> Result<(), PoolError> {
        match order {
            StartOrder::Member(i) => {
                self.enrol(&[*i])?;
                self.boot(*i)
            }
            StartOrder::Sequence(children) => children.iter().try_for_each(|c| self.launch(c)),
            StartOrder::Compound(children) => {
                // Its own domains are created in description order: that is
                // the order they are terminated in, reversed.
                let own: Vec<usize> = children
                    .iter()
                    .filter_map(|c| match c {
                        StartOrder::Member(i) => Some(*i),
                        _ => None,
                    })
                    .collect();
                self.enrol(&own)?;
                let results: Vec<Result<(), PoolError>> = std::thread::scope(|s| {
                    let threads: Vec<_> = children
                        .iter()
                        .map(|c| {
                            s.spawn(move || match c {
                                StartOrder::Member(i) => self.boot(*i),
                                nested => self.launch(nested),
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
            let mut member = self.plans[i].record();
            member.node = self.node_name(i).map(str::to_string);
            record.members.push(member);
        }
        save(self.site, &record)
    }

    fn node_name(&self, i: usize) -> Option<&str> {
        Some(&self.allocation?.nodes[self.plans[i].node?].name)
    }

    fn neighbours(&self) -> Neighbourhood {
        Neighbourhood {
            segment: Some(format!("pool-{}", self.name)),
            hosts: self.plans.iter().flat_map(PlannedMember::hosts).collect(),
            tunnel: None,
        }
    }

    fn boot(&self, i: usize) -> Result<(), PoolError> {
        let plan = &self.plans[i];
        if let (Some(alloc), Some(node)) = (self.allocation, plan.node) {
            return self.boot_on_node(alloc, i, node);
        }
        tracing::info!("pool {}: deploying {} ({})", self.name, plan.id, plan.path);
        let d = Deployment::deploy_among(
            self.site,
            &plan.id,
            &plan.env,
            self.uid,
            None,
            None,
            &self.neighbours(),
        )
        .map_err(|error| PoolError::Deploy {
            id: plan.id.clone(),
            fault: error.fault(&plan.env),
            error,
        })?;
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

    /// Member `i` on node `node` of the allocation, through a job step
    /// there (see [`super::node_member`]), recorded before it is launched.
    fn boot_on_node(&self, alloc: &Allocation, i: usize, node: usize) -> Result<(), PoolError> {
        let plan = &self.plans[i];
        let node_name = &alloc.nodes[node].name;
        tracing::info!(
            "pool {}: deploying {} ({}) on {node_name}",
            self.name,
            plan.id,
            plan.path
        );
        // The segment's tunnel goes to every other node holding a member.
        let mut peers: Vec<_> = self
            .plans
            .iter()
            .filter_map(|p| p.node)
            .filter(|&n| n != node)
            .map(|n| alloc.nodes[n].addr)
            .collect();
        peers.sort();
        peers.dedup();
        let neighbours = self.neighbours();
        let member_plan = MemberPlan {
            pool: self.name.to_string(),
            id: plan.id.clone(),
            path: plan.path.clone(),
            request: plan.request_for_node(),
            vo: plan.vo.clone(),
            segment: neighbours.segment.clone().unwrap_or_default(),
            hosts: neighbours.hosts,
            tunnel: (!peers.is_empty()).then(|| Tunnel {
                key: format!("slurm-{}/pool-{}", alloc.job_id, self.name),
                peers,
            }),
            liveness_delay_secs: plan.liveness.delay_secs,
            liveness_factor: plan.liveness.factor,
        };
        let launched = node_member::launch(self.site, alloc, node_name, &member_plan)?;
        {
            let mut record = lock(&self.record);
            if let Some(m) = record.members.iter_mut().find(|m| m.id == plan.id) {
                m.step = Some(launched.step.clone());
            }
            save(self.site, &record)?;
        }
        let (boot_ms, acceleration) =
            launched
                .wait_up(self.site, &plan.id)
                .map_err(|(message, users)| PoolError::OnNode {
                    id: plan.id.clone(),
                    node: node_name.clone(),
                    message,
                    users,
                })?;
        tracing::info!(
            "pool {}: {} up on {node_name} in {:.1} s under {acceleration}",
            self.name,
            plan.id,
            boot_ms as f64 / 1000.0,
        );
        let mut record = lock(&self.record);
        if let Some(m) = record.members.iter_mut().find(|m| m.id == plan.id) {
            m.up_unix_ms = Some(now_unix_ms());
            m.boot_ms = Some(boot_ms);
        }
        save(self.site, &record)
    }
}

pub(super) fn rollback(site: &SiteConfig, mut record: PoolRecord, cause: PoolError) -> PoolError {
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
