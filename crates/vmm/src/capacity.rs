//! What one node takes: the `node_limits:` of the site, checked for every
//! deployment of every front end before anything is made.
//!
//! The check and the journal that makes a deployment count are done under
//! one lock file in the state directory (`admission.lock`, `flock`), so two
//! deployments of two processes (two hooks, a prolog and an `sd run`) never
//! both see the last free place.

use crate::journal::{Journal, JournalError};
use sd_host::peer::ProcessStamp;
use sd_site::NodeLimits;
use std::os::fd::AsRawFd;
use std::path::Path;

/// Why a deployment is not admitted: the user's limit, or a full node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error(
        "uid {uid} already has {running} domain(s) on this node, the most one user may \
         (node_limits.max_domains_per_user: {limit})"
    )]
    PerUser { uid: u32, running: u32, limit: u32 },
    #[error("this job already has its domain {0} on this node (one per job)")]
    OnePerJob(String),
    #[error("node full: {running} domains run here, the most it takes (node_limits.max_domains)")]
    NodeDomains { running: u32 },
    #[error(
        "node full: its domains have {used} MiB, {asked} MiB more were asked, and domains may \
         have {available} MiB (MemTotal {total} MiB minus node_limits.memory_reserve_mib {reserve} MiB)"
    )]
    NodeMemory {
        used: u64,
        asked: u64,
        available: u64,
        total: u64,
        reserve: u64,
    },
}

impl LimitError {
    /// A full node: neither the user's fault nor the site's; the job may
    /// run elsewhere or later. (Otherwise the user is over a limit.)
    pub fn node_full(&self) -> bool {
        matches!(
            self,
            LimitError::NodeDomains { .. } | LimitError::NodeMemory { .. }
        )
    }
}

/// A deployment that counts against the limits (it has a journal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub id: String,
    pub uid: Option<u32>,
    pub memory_mib: u64,
    pub owner: Option<ProcessStamp>,
}

/// Whether one more domain of `memory_mib` for `uid` (owned by `owner`) fits.
/// `mem_total_mib` is the memory guests share (MemTotal for QEMU); None where
/// the host's memory is not theirs (Xen: dom0's MemTotal is dom0's own, and
/// libxl itself refuses a domain the hypervisor cannot hold).
pub fn check(
    limits: &NodeLimits,
    mem_total_mib: Option<u64>,
    running: &[Running],
    uid: u32,
    memory_mib: u64,
    owner: Option<ProcessStamp>,
) -> Result<(), LimitError> {
    if let Some(r) = owner.and_then(|o| running.iter().find(|r| r.owner == Some(o))) {
        return Err(LimitError::OnePerJob(r.id.clone()));
    }
    let mine = running.iter().filter(|r| r.uid == Some(uid)).count() as u32;
    if mine >= limits.max_domains_per_user {
        return Err(LimitError::PerUser {
            uid,
            running: mine,
            limit: limits.max_domains_per_user,
        });
    }
    if running.len() as u32 >= limits.max_domains {
        return Err(LimitError::NodeDomains {
            running: running.len() as u32,
        });
    }
    let Some(mem_total_mib) = mem_total_mib else {
        return Ok(());
    };
    let used: u64 = running.iter().map(|r| r.memory_mib).sum();
    let available = mem_total_mib.saturating_sub(limits.memory_reserve_mib);
    if used + memory_mib > available {
        return Err(LimitError::NodeMemory {
            used,
            asked: memory_mib,
            available,
            total: mem_total_mib,
            reserve: limits.memory_reserve_mib,
        });
    }
    Ok(())
}

/// Every deployment with a journal in `state_dir`, whatever made it.
pub fn running(state_dir: &Path) -> Result<Vec<Running>, JournalError> {
    let mut out = vec![];
    for id in Journal::list(state_dir)? {
        let Some(j) = Journal::open(state_dir, &id)? else {
            continue;
        };
        let f = j.details();
        out.push(Running {
            id,
            uid: f.uid,
            memory_mib: f.environment.as_ref().map_or(0, |e| e.memory_mib),
            owner: match (f.owner_pid, f.owner_start_time) {
                (Some(pid), Some(start_time)) => Some(ProcessStamp {
                    pid: pid as i32,
                    start_time,
                }),
                _ => None,
            },
        });
    }
    Ok(out)
}

/// `MemTotal` of /proc/meminfo, in MiB.
pub fn mem_total_mib() -> std::io::Result<u64> {
    let info = std::fs::read_to_string("/proc/meminfo")?;
    info.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kib| kib / 1024)
        .ok_or_else(|| std::io::Error::other("/proc/meminfo has no MemTotal"))
}

/// Held while a deployment is admitted and its journal made.
pub struct AdmissionLock(#[allow(dead_code)] std::fs::File);

/// Waits for the node-wide admission lock (`STATE_DIR/admission.lock`).
pub fn lock(state_dir: &Path) -> std::io::Result<AdmissionLock> {
    std::fs::create_dir_all(state_dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(state_dir.join("admission.lock"))?;
    // SAFETY: flock(2) on a file we own; released when it is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(AdmissionLock(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> NodeLimits {
        NodeLimits {
            max_domains: 3,
            max_domains_per_user: 2,
            memory_reserve_mib: 1024,
        }
    }

    fn run(id: &str, uid: u32, memory_mib: u64, owner: Option<ProcessStamp>) -> Running {
        Running {
            id: id.into(),
            uid: Some(uid),
            memory_mib,
            owner,
        }
    }

    const STARTER: ProcessStamp = ProcessStamp {
        pid: 4000,
        start_time: 77,
    };

    #[test]
    fn users_limits_are_theirs_a_full_node_is_nobodys() {
        let l = limits();
        assert_eq!(check(&l, Some(8192), &[], 1, 512, None), Ok(()));
        let one = [run("a", 1, 512, Some(STARTER))];
        // The same starter (the same job) never gets a second domain.
        let e = check(&l, Some(8192), &one, 1, 512, Some(STARTER)).unwrap_err();
        assert_eq!(e, LimitError::OnePerJob("a".into()));
        assert!(!e.node_full());
        // The same pid but another start time is another process.
        let later = ProcessStamp {
            start_time: 78,
            ..STARTER
        };
        assert_eq!(check(&l, Some(8192), &one, 1, 512, Some(later)), Ok(()));
        let two = [run("a", 1, 512, None), run("b", 1, 512, None)];
        let e = check(&l, Some(8192), &two, 1, 512, None).unwrap_err();
        assert!(
            matches!(
                e,
                LimitError::PerUser {
                    uid: 1,
                    running: 2,
                    limit: 2
                }
            ),
            "{e}"
        );
        assert!(!e.node_full());
        assert_eq!(check(&l, Some(8192), &two, 2, 512, None), Ok(()));
        let three = [
            run("a", 1, 512, None),
            run("b", 2, 512, None),
            run("c", 3, 512, None),
        ];
        let e = check(&l, Some(8192), &three, 4, 512, None).unwrap_err();
        assert_eq!(e, LimitError::NodeDomains { running: 3 });
        assert!(e.node_full());
    }

    #[test]
    fn memory_counts_against_memtotal_minus_the_reserve() {
        let l = limits();
        let one = [run("a", 1, 3072, None)];
        assert_eq!(check(&l, Some(8192), &one, 2, 4096, None), Ok(()));
        // Under Xen the guests' memory is the hypervisor's: not counted here.
        assert_eq!(check(&l, None, &one, 2, 1 << 30, None), Ok(()));
        let e = check(&l, Some(8192), &one, 2, 4097, None).unwrap_err();
        assert!(e.node_full());
        let text = e.to_string();
        assert!(
            text.contains("7168 MiB") && text.contains("memory_reserve_mib 1024"),
            "{text}"
        );
    }

    fn env_of_256_mib() -> sd_policy::ResolvedEnvironment {
        let site = sd_site::SiteConfig::from_str(
            "images:\n  busybox: { disk: b.qcow2, kernel: k, initrd: i }\n\
             vos:\n  demo: { images: \"*\" }\ndefault_vo: demo\n",
            std::path::Path::new("/etc/sd/site.yaml"),
        )
        .unwrap();
        let request = sd_request::EnvironmentRequest {
            memory_mib: Some(256),
            ..sd_request::EnvironmentRequest::image_only("busybox")
        };
        sd_policy::admit(
            &site,
            &sd_host::owner::Owner::Root,
            None,
            &request,
            &sd_policy::NoSavedImages,
        )
        .unwrap()
    }

    #[test]
    fn journals_are_what_runs() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "x").unwrap();
        j.update_details(|f| {
            f.uid = Some(7);
            f.owner_pid = Some(4000);
            f.owner_start_time = Some(77);
            f.environment = Some(env_of_256_mib());
        })
        .unwrap();
        assert_eq!(
            running(dir.path()).unwrap(),
            vec![run("x", 7, 256, Some(STARTER))]
        );
        let _held = lock(dir.path()).unwrap();
        assert!(mem_total_mib().unwrap() > 0);
    }
}
