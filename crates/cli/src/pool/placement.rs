//! Where each member runs: the node its `sfProcessHost` names, else the
//! one the scheduler picks.
//!
//! `sfProcessHost` (a member's own, else its nearest pool's; `localhost`
//! when none sets it) is first looked up in the site's `hosts:` (so that
//! the paper's `PhysHost01.cern.ch` can stand for a node here), then read
//! as a node of the allocation: `@N` (the N-th, from 0), a node's name, or
//! a name whose first label is one (`node1.cluster.example` is `node1`).
//! `localhost` leaves the member to the scheduler: of the nodes, the one
//! with the least guest memory placed on it so far (members placed by name
//! count first), the first such node on a tie.
//!
//! Outside an allocation every member runs here: a description naming
//! another host is refused rather than silently run on this one, unless
//! the site maps that name to `localhost`.

use sd_site::SiteConfig;

use super::allocation::Allocation;
use super::planning::PlannedMember;
use super::PoolError;

/// The node index (into the allocation's nodes) of each plan, in plan
/// order; all None outside an allocation.
pub(super) fn place(
    site: &SiteConfig,
    allocation: Option<&Allocation>,
    plans: &[PlannedMember],
) -> Result<Vec<Option<usize>>, PoolError> {
    let here = this_host();
    let mut placed: Vec<Option<usize>> = Vec::with_capacity(plans.len());
    for p in plans {
        let named = site.hosts.get(&p.host).unwrap_or(&p.host);
        let refused = |message: String| PoolError::Placement {
            path: p.path.clone(),
            message,
        };
        let mapped = if named != &p.host {
            format!("{:?} (the site's hosts: maps {:?})", named, p.host)
        } else {
            format!("{named:?}")
        };
        let Some(alloc) = allocation else {
            if named == "localhost" || same_host(named, &here) {
                if p.host != "localhost" {
                    tracing::warn!(
                        "{}: sfProcessHost {mapped} is this host ({here}): it runs here",
                        p.path
                    );
                }
                placed.push(None);
                continue;
            }
            return Err(refused(format!(
                "sfProcessHost {mapped} is not this host ({here}): a pool over several hosts runs in a Slurm allocation (e.g. `salloc -N2 sd start NAME FILE`); to run it here, map the name to localhost in the site's hosts:"
            )));
        };
        if named == "localhost" {
            placed.push(None);
            continue;
        }
        let names = || {
            alloc
                .nodes
                .iter()
                .enumerate()
                .map(|(i, n)| format!("@{i} {}", n.name))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let index = match named.strip_prefix('@') {
            Some(n) => n
                .parse::<usize>()
                .ok()
                .filter(|&i| i < alloc.nodes.len())
                .ok_or_else(|| {
                    refused(format!(
                        "sfProcessHost {mapped}: allocation {} has {} node(s): {}",
                        alloc.job_id,
                        alloc.nodes.len(),
                        names()
                    ))
                })?,
            None => alloc
                .nodes
                .iter()
                .position(|n| same_host(named, &n.name))
                .ok_or_else(|| {
                    refused(format!(
                        "sfProcessHost {mapped} is not a node of allocation {} ({}): name one of them, or map the name in the site's hosts:",
                        alloc.job_id,
                        names()
                    ))
                })?,
        };
        placed.push(Some(index));
    }
    if let Some(alloc) = allocation {
        schedule(alloc, plans, &mut placed);
    }
    Ok(placed)
}

/// The scheduler: each member left to it goes, in description order, to
/// the node with the least guest memory placed so far.
fn schedule(alloc: &Allocation, plans: &[PlannedMember], placed: &mut [Option<usize>]) {
    let mut memory = vec![0u64; alloc.nodes.len()];
    for (p, node) in plans.iter().zip(placed.iter()) {
        if let Some(i) = node {
            memory[*i] += p.env.memory_mib;
        }
    }
    for (p, node) in plans.iter().zip(placed.iter_mut()) {
        if node.is_none() {
            let least = (0..memory.len())
                .min_by_key(|&i| (memory[i], i))
                .expect("an allocation has nodes");
            memory[least] += p.env.memory_mib;
            *node = Some(least);
        }
    }
}

/// Whether host names `a` and `b` name one host: equal, or equal in their
/// first label (`node1` and `node1.cluster.example`).
fn same_host(a: &str, b: &str) -> bool {
    let short = |s: &str| s.split('.').next().unwrap_or(s).to_ascii_lowercase();
    a.eq_ignore_ascii_case(b) || short(a) == short(b)
}

fn this_host() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_compare_by_their_first_label() {
        assert!(same_host("node1", "node1.cluster.example"));
        assert!(same_host("NODE1", "node1"));
        assert!(!same_host("node1", "node10"));
    }
}
