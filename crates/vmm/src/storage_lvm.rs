//! The job's disk as an LVM thin snapshot of a catalogue base volume.
//!
//! The alternative to `storage`'s qcow2 overlays for hosts whose images live
//! in an LVM thin pool (the classic Xen dom0 set-up): every catalogue image is
//! a thin LV (the *base*), and every job gets a thin snapshot of it, which
//! costs no space until the job writes and never changes the base.
//!
//! We drive lvm2 through its command-line tools (`lvcreate`, `lvchange`,
//! `lvremove`, `lvs --reportformat json`), run as `lvm SUBCOMMAND ...` so one
//! binary (configurable, for tests) does everything. Every volume name is
//! checked by [`validate_name`] before it reaches a command line.

use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

pub use sd_site::MAX_VOLUME_NAME_LEN as MAX_NAME_LEN;

pub use sd_site::volume_device_path as device_path;

/// The columns [`LvmThin::list`] asks `lvs` for (sizes in bytes, no suffix).
pub const LVS_FIELDS: &str = "lv_name,vg_name,lv_attr,lv_size,pool_lv,origin,data_percent";

#[derive(Debug, thiserror::Error)]
pub enum LvmError {
    #[error("invalid volume name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("cannot run {tool}: {source} (install lvm2)")]
    Tool {
        tool: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("cannot parse `lvs --reportformat json` output: {0}")]
    Parse(String),
    #[error("base volume {vg}/{lv} does not exist as a thin volume of pool {pool}")]
    BaseMissing {
        vg: String,
        pool: String,
        lv: String,
    },
    #[error("volume {vg}/{lv} already exists")]
    Exists { vg: String, lv: String },
    #[error("refusing to remove {vg}/{lv}: it is the thin pool itself")]
    IsPool { vg: String, lv: String },
}

/// Checks a VG or LV name (the rules are the site's: [`sd_site::validate_volume_name`]).
pub fn validate_name(name: &str) -> Result<(), LvmError> {
    sd_site::validate_volume_name(name).map_err(|reason| LvmError::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// Why a catalogue image's base volume cannot be snapshotted (asks lvm2),
/// or None: `sd check-config`'s probe for [`sd_site::SiteConfig::check_files`].
pub fn base_problem(base: &sd_site::LvmBase) -> Option<String> {
    let pool = match LvmThin::new(&base.vg, &base.thin_pool) {
        Ok(p) => p,
        Err(e) => return Some(e.to_string()),
    };
    match pool.base_exists(&base.lv) {
        Ok(true) => None,
        Ok(false) => Some(format!(
            "base volume {}/{} is not a thin volume of pool {}/{}",
            base.vg, base.lv, base.vg, base.thin_pool
        )),
        Err(e) => Some(format!("base volume {}/{}: {e}", base.vg, base.lv)),
    }
}

/// One logical volume, as `lvs` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct LvInfo {
    pub name: String,
    pub vg: String,
    /// `lv_attr`, e.g. `Vwi-a-tz--` (thin, active) or `twi-aotz--` (thin pool).
    pub attr: String,
    pub size_bytes: u64,
    /// The thin pool this LV lives in (`None` for a pool or a non-thin LV).
    pub pool: Option<String>,
    /// The LV this one is a snapshot of.
    pub origin: Option<String>,
    /// Per cent of the (virtual) size allocated in the pool, for thin LVs and pools.
    pub data_percent: Option<f64>,
}

impl LvInfo {
    /// Thin volume (`V` in the first attribute column).
    pub fn is_thin(&self) -> bool {
        self.attr.starts_with('V')
    }
    /// Active (`a` in the fifth attribute column).
    pub fn is_active(&self) -> bool {
        self.attr.as_bytes().get(4) == Some(&b'a')
    }
    /// Thin pool (`t` in the first attribute column).
    pub fn is_pool(&self) -> bool {
        self.attr.starts_with('t')
    }
    /// Open by someone (`o` in the sixth attribute column): a hypervisor
    /// still holds it.
    pub fn is_open(&self) -> bool {
        self.attr.as_bytes().get(5) == Some(&b'o')
    }
    /// A thin pool that zeroes newly provisioned blocks (`z` in the eighth
    /// column): without that, a volume can read what a removed one left.
    pub fn zeroes_new_blocks(&self) -> bool {
        self.attr.as_bytes().get(7) == Some(&b'z')
    }
    /// Bytes of data it holds: `data_percent` of its size (thin volumes).
    pub fn allocated_bytes(&self) -> Option<u64> {
        let p = self.data_percent?;
        Some(((self.size_bytes as f64) * p / 100.0).ceil() as u64)
    }
}

/// The `lvm` binary: the first `lvm` on `PATH`, else `/usr/sbin/lvm` or
/// `/sbin/lvm` (a batch system's prolog may run with a `PATH` without sbin),
/// else plain `lvm` (whose absence is then reported as [`LvmError::Tool`]).
pub fn default_lvm_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .map(|d| d.join("lvm"))
        .chain(["/usr/sbin/lvm".into(), "/sbin/lvm".into()])
        .find(|p| p.is_absolute() && p.is_file())
        .unwrap_or_else(|| PathBuf::from("lvm"))
}

#[derive(Deserialize)]
struct Report {
    report: Vec<ReportSection>,
}

#[derive(Deserialize)]
struct ReportSection {
    #[serde(default)]
    lv: Vec<RawLv>,
}

#[derive(Deserialize)]
struct RawLv {
    lv_name: String,
    vg_name: String,
    #[serde(default)]
    lv_attr: String,
    #[serde(default)]
    lv_size: String,
    #[serde(default)]
    pool_lv: String,
    #[serde(default)]
    origin: String,
    #[serde(default)]
    data_percent: String,
}

fn non_empty(s: String) -> Option<String> {
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// Parses the output of `lvs --reportformat json --units b --nosuffix -o LVS_FIELDS`.
/// Hidden volumes (`[pool_tdata]`, shown only with `-a`) are left out.
pub fn parse_lvs_json(text: &str) -> Result<Vec<LvInfo>, LvmError> {
    let report: Report = serde_json::from_str(text).map_err(|e| LvmError::Parse(e.to_string()))?;
    let mut out = Vec::new();
    for raw in report.report.into_iter().flat_map(|s| s.lv) {
        if raw.lv_name.starts_with('[') {
            continue;
        }
        let size = raw.lv_size.trim();
        // Without --nosuffix lvs says "67108864B"; accept both.
        let size_bytes = size
            .trim_end_matches(['B', 'b'])
            .parse::<u64>()
            .map_err(|_| {
                LvmError::Parse(format!(
                    "lv_size {size:?} of {}/{} is not a number of bytes (run lvs with --units b --nosuffix)",
                    raw.vg_name, raw.lv_name
                ))
            })?;
        let data_percent = match raw.data_percent.trim() {
            "" => None,
            p => Some(p.parse::<f64>().map_err(|_| {
                LvmError::Parse(format!(
                    "data_percent {p:?} of {}/{}",
                    raw.vg_name, raw.lv_name
                ))
            })?),
        };
        out.push(LvInfo {
            name: raw.lv_name,
            vg: raw.vg_name,
            attr: raw.lv_attr,
            size_bytes,
            pool: non_empty(raw.pool_lv),
            origin: non_empty(raw.origin),
            data_percent,
        });
    }
    Ok(out)
}

/// A thin pool `vg/pool` whose thin volumes are catalogue bases and job snapshots.
#[derive(Debug, Clone)]
pub struct LvmThin {
    vg: String,
    pool: String,
    lvm: PathBuf,
}

impl LvmThin {
    /// The pool `vg/pool`, driven by [`default_lvm_binary`].
    pub fn new(vg: &str, pool: &str) -> Result<Self, LvmError> {
        Self::with_lvm_binary(vg, pool, default_lvm_binary())
    }

    /// Same, with another `lvm` binary (a full path, or a fake one in tests).
    pub fn with_lvm_binary(vg: &str, pool: &str, lvm: impl AsRef<Path>) -> Result<Self, LvmError> {
        validate_name(vg)?;
        validate_name(pool)?;
        Ok(LvmThin {
            vg: vg.to_string(),
            pool: pool.to_string(),
            lvm: lvm.as_ref().to_path_buf(),
        })
    }

    pub fn vg(&self) -> &str {
        &self.vg
    }

    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// The block device of `lv`: `/dev/VG/LV`.
    pub fn device_path(&self, lv: &str) -> PathBuf {
        device_path(&self.vg, lv)
    }

    /// Runs `lvm ARGS...`; its stdout on success.
    fn run(&self, args: &[&str]) -> Result<String, LvmError> {
        let out = Command::new(&self.lvm)
            .args(args)
            .env("LC_ALL", "C")
            // lvm complains about every inherited file descriptor otherwise.
            .env("LVM_SUPPRESS_FD_WARNINGS", "1")
            .output()
            .map_err(|source| LvmError::Tool {
                tool: self.lvm.display().to_string(),
                source,
            })?;
        if !out.status.success() {
            return Err(LvmError::Command {
                command: format!("{} {}", self.lvm.display(), args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every (visible) LV of the volume group: the pool, bases, snapshots, others.
    pub fn list(&self) -> Result<Vec<LvInfo>, LvmError> {
        let text = self.run(&[
            "lvs",
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            LVS_FIELDS,
            &self.vg,
        ])?;
        parse_lvs_json(&text)
    }

    /// `lv` as `lvs` reports it, if it exists.
    pub fn info(&self, lv: &str) -> Result<Option<LvInfo>, LvmError> {
        validate_name(lv)?;
        Ok(self.list()?.into_iter().find(|l| l.name == lv))
    }

    /// Grows `lv` to at least `size_bytes` (`lvextend`; lvm2 rounds up to
    /// its extent size). A thin volume's size is virtual: the pool gives it
    /// blocks only when they are written. Never shrinks.
    pub fn extend(&self, lv: &str, size_bytes: u64) -> Result<(), LvmError> {
        validate_name(lv)?;
        let target = format!("{}/{}", self.vg, lv);
        self.run(&["lvextend", "-q", "-L", &format!("{size_bytes}b"), &target])?;
        Ok(())
    }

    /// Whether `name` is a thin volume of this pool (so it can be snapshotted).
    pub fn base_exists(&self, name: &str) -> Result<bool, LvmError> {
        Ok(self
            .info(name)?
            .is_some_and(|l| l.is_thin() && l.pool.as_deref() == Some(self.pool.as_str())))
    }

    /// Creates `new_lv`, a thin snapshot of `base_lv`, activates it (thin
    /// snapshots are created with the activation-skip flag, hence `-K`) and
    /// returns its device, `/dev/VG/NEW`. On failure nothing is left behind.
    pub fn snapshot(&self, base_lv: &str, new_lv: &str) -> Result<PathBuf, LvmError> {
        validate_name(base_lv)?;
        validate_name(new_lv)?;
        let lvs = self.list()?;
        if lvs.iter().any(|l| l.name == new_lv) {
            return Err(LvmError::Exists {
                vg: self.vg.clone(),
                lv: new_lv.to_string(),
            });
        }
        if !lvs
            .iter()
            .any(|l| l.name == base_lv && l.is_thin() && l.pool.as_deref() == Some(&*self.pool))
        {
            return Err(LvmError::BaseMissing {
                vg: self.vg.clone(),
                pool: self.pool.clone(),
                lv: base_lv.to_string(),
            });
        }
        let base = format!("{}/{}", self.vg, base_lv);
        let new = format!("{}/{}", self.vg, new_lv);
        self.run(&["lvcreate", "-q", "-s", "-n", new_lv, &base])?;
        if let Err(e) = self.run(&["lvchange", "-q", "-ay", "-K", &new]) {
            let _ = self.run(&["lvremove", "-q", "-f", &new]);
            return Err(e);
        }
        Ok(self.device_path(new_lv))
    }

    /// Removes `lv` (deactivating it first). Absent is fine, so this is
    /// idempotent, as a journal's undo must be. Never removes the pool.
    pub fn remove(&self, lv: &str) -> Result<(), LvmError> {
        validate_name(lv)?;
        if lv == self.pool {
            return Err(LvmError::IsPool {
                vg: self.vg.clone(),
                lv: lv.to_string(),
            });
        }
        if self.info(lv)?.is_none() {
            return Ok(());
        }
        let target = format!("{}/{}", self.vg, lv);
        match self.run(&["lvremove", "-q", "-f", &target]) {
            Ok(_) => Ok(()),
            // Someone else removed it between our look and our lvremove.
            Err(e) => match self.info(lv) {
                Ok(None) => Ok(()),
                _ => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in [
            "base",
            "debian-minimal",
            "job-1234.5",
            "a",
            "0",
            "sd_vg",
            &"a".repeat(64),
        ] {
            validate_name(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "",
            &"a".repeat(65),
            "-base",
            ".hidden",
            "_x",
            "..",
            "Base",
            "a b",
            "a/b",
            "a+b",
            "a;rm -rf /",
            "é",
            "pool_tmeta",
            "x_rimage_0",
            "pvmove0",
            "snapshot1",
        ] {
            assert!(
                matches!(validate_name(bad), Err(LvmError::InvalidName { .. })),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn constructor_and_methods_validate_before_running_anything() {
        // A binary that does not exist: any attempt to run it would be a Tool error.
        let lvm = LvmThin::with_lvm_binary("sdvg", "pool", "/nonexistent/lvm").unwrap();
        assert!(matches!(
            LvmThin::new("sd vg", "pool"),
            Err(LvmError::InvalidName { .. })
        ));
        assert!(matches!(
            LvmThin::new("sdvg", "--pool"),
            Err(LvmError::InvalidName { .. })
        ));
        assert!(matches!(
            lvm.snapshot("base", "-n"),
            Err(LvmError::InvalidName { .. })
        ));
        assert!(matches!(
            lvm.base_exists("../x"),
            Err(LvmError::InvalidName { .. })
        ));
        assert!(matches!(lvm.remove("pool"), Err(LvmError::IsPool { .. })));
        assert!(matches!(lvm.list(), Err(LvmError::Tool { .. })));
        assert_eq!(lvm.device_path("job-1"), Path::new("/dev/sdvg/job-1"));
    }

    /// Captured in the Xen test host's dom0 (lvm2 2.03.16, Debian 12) with
    /// a snapshot in place: `lvs --reportformat json --units b --nosuffix -o LVS_FIELDS sdvg`.
    /// (`job-1`'s attr ends in `k`: the activation-skip flag thin snapshots get.)
    const SAMPLE: &str = include_str!("../testdata/lvs-sample.json");

    #[test]
    fn parses_real_lvs_json() {
        let lvs = parse_lvs_json(SAMPLE).unwrap();
        let names: Vec<_> = lvs.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["base", "job-1", "pool"]);
        let base = &lvs[0];
        assert_eq!(base.vg, "sdvg");
        assert!(base.is_thin() && base.is_active());
        assert_eq!(base.pool.as_deref(), Some("pool"));
        assert_eq!(base.origin, None);
        assert_eq!(base.size_bytes, 64 << 20);
        assert!(base.data_percent.unwrap() > 0.0);
        let snap = &lvs[1];
        assert!(snap.is_thin() && snap.is_active());
        assert_eq!(snap.origin.as_deref(), Some("base"));
        assert_eq!(snap.pool.as_deref(), Some("pool"));
        let pool = &lvs[2];
        assert!(pool.attr.starts_with('t') && !pool.is_thin());
        assert_eq!(pool.pool, None);
    }

    #[test]
    fn attribute_columns() {
        let lvs = parse_lvs_json(SAMPLE).unwrap();
        let pool = lvs.iter().find(|l| l.name == "pool").unwrap();
        assert!(pool.is_pool() && pool.zeroes_new_blocks());
        let snap = lvs.iter().find(|l| l.name == "job-1").unwrap();
        assert!(!snap.is_pool());
        let lv = |attr: &str, pct: Option<f64>| LvInfo {
            name: "x".into(),
            vg: "v".into(),
            attr: attr.into(),
            size_bytes: 64 << 20,
            pool: None,
            origin: None,
            data_percent: pct,
        };
        assert!(lv("Vwi-aotz--", None).is_open());
        assert!(!lv("Vwi-a-tz--", None).is_open());
        assert!(!lv("twi-aot---", None).zeroes_new_blocks());
        assert_eq!(
            lv("Vwi-a-tz--", Some(50.0)).allocated_bytes(),
            Some(32 << 20)
        );
        assert_eq!(lv("Vwi-a-tz--", None).allocated_bytes(), None);
    }

    #[test]
    fn parse_edge_cases() {
        // An empty VG, the "log" section newer lvm2 adds, hidden LVs, suffixed sizes.
        let text = r#"{"report":[{"lv":[
            {"lv_name":"[pool_tdata]","vg_name":"v","lv_attr":"Twi-ao----","lv_size":"1","pool_lv":"","origin":"","data_percent":""},
            {"lv_name":"x","vg_name":"v","lv_attr":"-wi-------","lv_size":"4194304B","pool_lv":"","origin":"","data_percent":""}
        ]}],"log":[]}"#;
        let lvs = parse_lvs_json(text).unwrap();
        assert_eq!(lvs.len(), 1);
        assert_eq!(lvs[0].size_bytes, 4 << 20);
        assert!(!lvs[0].is_thin() && !lvs[0].is_active());
        assert_eq!(lvs[0].data_percent, None);
        assert!(parse_lvs_json(r#"{"report":[{"lv":[]}]}"#)
            .unwrap()
            .is_empty());
        assert!(matches!(
            parse_lvs_json("  No volume groups found"),
            Err(LvmError::Parse(_))
        ));
        assert!(matches!(
            parse_lvs_json(
                r#"{"report":[{"lv":[{"lv_name":"x","vg_name":"v","lv_size":"64.00m"}]}]}"#
            ),
            Err(LvmError::Parse(_))
        ));
    }
}
