//! The node service's messages: one JSON line from a job's hook (run as the
//! job's owner, so untrusted) to the root `sd-node-service`, and its answer.

use crate::carried::Request;
use serde::{Deserialize, Serialize};

/// What a hook asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServiceRequest {
    /// PREPARE_JOB: boot the domain of job `job` (`CLUSTER.PROC`).
    Deploy {
        job: String,
        /// `GlobalJobId` (schedd, job, time): two schedds' jobs 11.0 differ.
        #[serde(default)]
        global_id: String,
        request: Request,
        /// The job's accounting group: the VO of a bare image request, if
        /// the site knows it as one.
        account: Option<String>,
    },
    /// JOB_EXIT: power the domain off, save its disk per policy, undo the
    /// journal. `how` is HTCondor's reason (exit, evict, remove, hold);
    /// `outcome` is what the hook saw of the job's end, for the log.
    Teardown {
        job: String,
        #[serde(default)]
        global_id: String,
        how: String,
        succeeded: bool,
        outcome: String,
    },
}

/// What the service answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceReply {
    Deployed {
        deployment: String,
        domain: String,
        backend: String,
        acceleration: String,
        boot_secs: f64,
    },
    /// Teardown done; `found` false if there was nothing to tear down.
    Finished { found: bool },
    /// The user's error (request, policy): the job is held with this.
    Refused(String),
    /// The site's fault: the job is held with this, for the admin.
    Fault(String),
    /// The node has no room now (`node_limits`): nobody's fault; the job
    /// may run elsewhere or later.
    NodeFull(String),
}

/// `CLUSTER.PROC`, digits only.
pub fn valid_job_id(job: &str) -> bool {
    match job.split_once('.') {
        Some((c, p)) => {
            !c.is_empty()
                && !p.is_empty()
                && c.len() <= 12
                && p.len() <= 12
                && c.chars().chain(p.chars()).all(|ch| ch.is_ascii_digit())
        }
        None => false,
    }
}
