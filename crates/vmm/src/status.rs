//! What the node knows of its deployments, for `sd status`, pools and the
//! node service: read from the journals, never changed here. Front ends see
//! this, not the journal's own records.

use crate::deployment::domain_running;
use crate::journal::{Journal, JournalError};
use sd_policy::ResolvedEnvironment;
use sd_site::SiteConfig;

pub use crate::journal::valid_id;

/// One deployment on this node.
#[derive(Debug, Clone)]
pub struct DeploymentStatus {
    pub id: String,
    /// The job's user.
    pub uid: Option<u32>,
    /// The process whose end tears it down (a job's `sd run`, a starter).
    pub owner_pid: Option<u32>,
    pub backend: Option<String>,
    pub acceleration: Option<String>,
    /// `boot`, or `clone` of a template (None: not started yet, or an older journal).
    pub start: Option<String>,
    /// What it was admitted as (None while it was being created).
    pub environment: Option<ResolvedEnvironment>,
    pub created_unix: u64,
}

impl DeploymentStatus {
    /// Whether its domain runs now (asks the hypervisor).
    pub fn is_running(&self, site: &SiteConfig) -> bool {
        domain_running(site, self.backend.as_deref(), &self.id)
    }

    pub fn uptime_secs(&self) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        now.saturating_sub(self.created_unix)
    }
}

/// Deployment `id`, if there is one.
pub fn of(site: &SiteConfig, id: &str) -> Result<Option<DeploymentStatus>, JournalError> {
    let Some(journal) = Journal::open(&site.state_dir, id)? else {
        return Ok(None);
    };
    let details = journal.details();
    Ok(Some(DeploymentStatus {
        id: id.to_string(),
        uid: details.uid,
        owner_pid: details.owner_pid,
        backend: details.backend.clone(),
        acceleration: details.acceleration.clone(),
        start: details.start.clone(),
        environment: details.environment.clone(),
        created_unix: journal.data().created_unix,
    }))
}

/// The ids of every deployment on this node.
pub fn list(site: &SiteConfig) -> Result<Vec<String>, JournalError> {
    Journal::list(&site.state_dir)
}
