//! What each member of a pool is doing now (`sd status`).

use sd_site::SiteConfig;
use sd_vmm::status;
use serde::Serialize;

use super::node_member::{read_reports, step_alive, Report};
use super::record::{MemberRecord, PoolRecord};

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
            if m.node.is_some() {
                return on_node(m);
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

/// A member on a node: what its job step reports, and whether it runs.
fn on_node(m: &MemberRecord) -> MemberState {
    let Some(step) = &m.step else {
        return MemberState::Booting;
    };
    let reports = read_reports(&step.output);
    let ended = reports.iter().any(|r| {
        matches!(
            r,
            Report::Dead { .. } | Report::Down { .. } | Report::Failed { .. }
        )
    });
    let up = reports.iter().any(|r| matches!(r, Report::Up { .. }));
    match (ended || !step_alive(step), up) {
        (true, _) => MemberState::Dead,
        (false, true) => MemberState::Up,
        (false, false) => MemberState::Booting,
    }
}
