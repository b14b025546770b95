//! Liveness: how often a member is beaten and how many beats it may miss
//! (`sfLivenessDelay`, `sfLivenessFactor`), and the monitor's report of
//! the last beats, `STATE_DIR/pools/NAME.liveness`.

use sd_host::atomic_file;
use sd_languages::description::ResolvedComponent;
use sd_site::SiteConfig;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::PathBuf;

use super::record::pools_dir;

/// `sfLivenessDelay` / `sfLivenessFactor` of the pool holding a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub(super) fn of(c: &ResolvedComponent, inherited: Liveness) -> Liveness {
        let positive = |attr: &str| c.get_int(attr).filter(|v| *v >= 1);
        Liveness {
            delay_secs: positive("sfLivenessDelay").map_or(inherited.delay_secs, |v| v as u64),
            factor: positive("sfLivenessFactor")
                .map_or(inherited.factor, |v| u32::try_from(v).unwrap_or(u32::MAX)),
        }
    }
}

/// The monitor's last view of the members' beats.
pub(super) fn liveness_path(site: &SiteConfig, name: &str) -> PathBuf {
    pools_dir(site).join(format!("{name}.liveness"))
}

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

/// A status snapshot, replaced atomically (`atomic_file`, like the
/// record); a failure is only logged: the record is what must survive.
pub(super) fn write_liveness(site: &SiteConfig, name: &str, report: &LivenessReport) {
    let path = liveness_path(site, name);
    let text = serde_json::to_vec_pretty(report).expect("liveness report serialises");
    if let Err(e) = atomic_file::write(&path, &text) {
        tracing::warn!("{}: {e}", path.display());
    }
}

/// Live changes of the members' liveness (`sd set POOL[/MEMBER]
/// liveness=SECONDS[,factor=N]`), `STATE_DIR/pools/NAME.liveness-settings`:
/// member id to its new delay and factor. The monitor rereads it every
/// second and beats at the new rate without a restart.
pub type LivenessOverrides = std::collections::BTreeMap<String, Liveness>;

fn overrides_path(site: &SiteConfig, name: &str) -> PathBuf {
    pools_dir(site).join(format!("{name}.liveness-settings"))
}

/// The live changes of pool `name`'s liveness (empty: none). A file that
/// is not there or is corrupt is none: the members keep their own.
pub fn read_liveness_overrides(site: &SiteConfig, name: &str) -> LivenessOverrides {
    fs::read(overrides_path(site, name))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default()
}

/// Replaces pool `name`'s live liveness changes (atomically).
pub fn write_liveness_overrides(
    site: &SiteConfig,
    name: &str,
    overrides: &LivenessOverrides,
) -> std::io::Result<()> {
    let text = serde_json::to_vec_pretty(overrides).expect("liveness settings serialise");
    atomic_file::write(&overrides_path(site, name), &text)
}
