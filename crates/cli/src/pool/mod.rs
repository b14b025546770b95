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
//!
//! The module by concept: [`record`] (the pool record and where pools
//! live), [`planning`] (every member admitted, and the order they start
//! in), [`starting`] (the members launched, all or nothing), [`monitor`]
//! (`sd pool-monitor`), [`liveness`] (what the monitor reports),
//! [`stopping`] (`sd terminate`, and a dead member's end of the pool),
//! [`status`] (what each member is doing now).

use sd_host::owner::OwnerError;
use sd_policy::PolicyError;
use sd_site::Blame;
use sd_vmm::deployment::{DeployError, Fault};
use sd_vmm::journal::JournalError;
use std::path::PathBuf;
use std::sync::Mutex;

mod allocation;
mod liveness;
mod monitor;
mod node_member;
mod placement;
mod planning;
mod record;
mod starting;
mod status;
mod stopping;

pub use allocation::{job_running, Allocation, Node};
pub use liveness::{
    read_liveness, read_liveness_overrides, write_liveness_overrides, Beat, Liveness,
    LivenessOverrides, LivenessReport,
};
pub use monitor::{monitor_alive, run_monitor, spawn_monitor};
pub use node_member::{clean_step, run_step, MemberPlan, Report};
pub use record::{
    final_record_path, list, load, load_final, monitor_log_path, now_unix_ms, pools_dir,
    valid_name, MemberRecord, PoolRecord, StepRecord,
};
pub use starting::{start, start_as, start_monitored};
pub use status::{member_states, MemberState};
pub use stopping::terminate;

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
    #[error("member {path}: {message}")]
    Placement { path: String, message: String },
    #[error("the Slurm allocation: {0}")]
    Allocation(String),
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
    #[error("member {id} on node {node}: {message}")]
    OnNode {
        id: String,
        node: String,
        message: String,
        users: bool,
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
            | PoolError::Placement { .. }
            | PoolError::Owner(_)
            | PoolError::Memory { .. } => true,
            PoolError::Policy { error, .. } => error.fault() == Fault::User,
            PoolError::OnNode { users, .. } => *users,
            PoolError::Deploy { error, fault, .. } => {
                *fault == Fault::User
                    || matches!(
                        error,
                        DeployError::Journal(JournalError::Exists(_) | JournalError::BadId(_))
                    )
            }
            PoolError::Record { .. }
            | PoolError::Allocation(_)
            | PoolError::Monitor { .. }
            | PoolError::Internal { .. }
            | PoolError::RollbackFailed { .. }
            | PoolError::Terminate { .. } => false,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests;
