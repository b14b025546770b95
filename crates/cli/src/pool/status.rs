//! What each member of a pool is doing now (`sd status`).

use sd_site::SiteConfig;
use sd_vmm::status;
use serde::Serialize;

use super::record::PoolRecord;

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
