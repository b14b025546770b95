//! `sd exec NAME -- CMD ARGS...` and `sd console NAME [--follow]`: into a
//! running domain of one's own.
//!
//! NAME is a deployment id (`sd run --id ID`, a Slurm job's `slurm-JOBID`,
//! an HTCondor job's `condor-…`, as `sd status` lists them) or
//! `POOL/MEMBER`, resolved through the pool's record ([`resolve`]).
//!
//! Only the deployment's user (its journal's `uid`) and root may: the
//! journal is readable by the user's group only, the agent socket is the
//! user's, the console log root's; a permission error is "not yours", and
//! so is a readable journal of another uid ([`owned`]).
//!
//! `sd exec` talks over the domain's exec port (a second agent channel) so
//! that it does not wait for the control link that `sd run` or a pool's
//! monitor holds; the command runs in the guest as it is there (no host
//! script is copied in: `sd_batch::frontend::run_streamed`).

use crate::pool;
use sd_site::SiteConfig;
use sd_vmm::deployment::{self, DeployError};
use sd_vmm::guest_link::{JobOutcome, LinkError};
use sd_vmm::journal::JournalError;
use sd_vmm::status::{self, DeploymentStatus};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no deployment {0:?} on this host (`sd status` lists the deployments and pools, `sd status POOL` a pool's members)")]
    NoSuchDeployment(String),
    #[error("no pool {0:?} on this host (`sd status` lists the pools)")]
    NoSuchPool(String),
    #[error("pool {pool} has no member {member:?}; its members: {members}")]
    NoSuchMember {
        pool: String,
        member: String,
        members: String,
    },
    #[error("pool {pool}: {member:?} names several members ({candidates}): give its full path")]
    Ambiguous {
        pool: String,
        member: String,
        candidates: String,
    },
    #[error("pool {0} is not yours: only its owner and root may use its members")]
    PoolNotYours(String),
    #[error("deployment {0} is not yours: only its owner and root may use it")]
    NotYours(String),
    #[error("deployment {id}: its console log {path} is not readable by you: {source}")]
    ConsoleUnreadable {
        id: String,
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Site(String),
}

impl ExecError {
    /// `sd`'s exit status for it: the user's mistake or a refusal, else the site's fault.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExecError::Site(_) => sd_site::ExitCode::SITE,
            _ => sd_site::ExitCode::REFUSED,
        }
    }
}

/// The deployment id NAME stands for: `POOL/MEMBER` through the pool's
/// record, anything else as it is. MEMBER is the member's name in the
/// description (the last component of its path, e.g. `worker1`), or its
/// full path (`sfConfig:inner:worker1`, or `inner:worker1` below
/// `sfConfig`), or its deployment id.
pub fn resolve(site: &SiteConfig, name: &str) -> Result<String, ExecError> {
    let Some((pool_name, member)) = name.split_once('/') else {
        if !status::valid_id(name) {
            return Err(ExecError::NoSuchDeployment(name.to_string()));
        }
        return Ok(name.to_string());
    };
    let record = match pool::load(site, pool_name) {
        Ok(Some(r)) => r,
        Ok(None) | Err(pool::PoolError::BadName(_)) => {
            return Err(ExecError::NoSuchPool(pool_name.to_string()))
        }
        // The record is root's: a permission error is someone else's pool.
        Err(e) => {
            let path = pool::pools_dir(site).join(format!("{pool_name}.json"));
            return Err(match std::fs::File::open(path) {
                Err(o) if o.kind() == ErrorKind::PermissionDenied => {
                    ExecError::PoolNotYours(pool_name.to_string())
                }
                _ => ExecError::Site(e.to_string()),
            });
        }
    };
    member_id(&record, member)
}

/// For `POOL/MEMBER` naming a member on a node of the pool's allocation:
/// a job step there running `sd SD_ARGS… ID REST…` (the node's own sd,
/// which checks ownership there), with this process's stdio. None for
/// anything on this host.
pub fn on_node(
    site: &SiteConfig,
    name: &str,
    sd_args: &[&str],
    rest: &[String],
) -> Result<Option<std::process::Command>, ExecError> {
    let Some((pool_name, member)) = name.split_once('/') else {
        return Ok(None);
    };
    let Ok(Some(record)) = pool::load(site, pool_name) else {
        return Ok(None);
    };
    let id = member_id(&record, member)?;
    let m = record.members.iter().find(|m| m.id == id);
    let (Some(alloc), Some(node)) = (&record.allocation, m.and_then(|m| m.node.as_ref())) else {
        return Ok(None);
    };
    if !pool::job_running(&alloc.job_id) {
        return Err(ExecError::Site(format!(
            "{name} ran on {node} in allocation {}, which has ended",
            alloc.job_id
        )));
    }
    let mut args: Vec<&str> = sd_args.to_vec();
    args.push(&id);
    args.extend(rest.iter().map(String::as_str));
    Ok(Some(alloc.step(node, &format!("sd-{}", sd_args[0]), &args)))
}

fn member_id(record: &pool::PoolRecord, member: &str) -> Result<String, ExecError> {
    let below_root = |path: &str| path.strip_prefix("sfConfig:").unwrap_or(path).to_string();
    let exact: Vec<&pool::MemberRecord> = record
        .members
        .iter()
        .filter(|m| {
            m.path == member
                || below_root(&m.path) == member
                || below_root(&m.path).replace(':', ".") == member
                || m.id == member
        })
        .collect();
    let by_name: Vec<&pool::MemberRecord> = record
        .members
        .iter()
        .filter(|m| m.path.rsplit(':').next() == Some(member))
        .collect();
    let found = if exact.is_empty() { by_name } else { exact };
    match found.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(ExecError::NoSuchMember {
            pool: record.name.clone(),
            member: member.to_string(),
            members: record
                .members
                .iter()
                .map(|m| below_root(&m.path))
                .collect::<Vec<_>>()
                .join(", "),
        }),
        several => Err(ExecError::Ambiguous {
            pool: record.name.clone(),
            member: member.to_string(),
            candidates: several
                .iter()
                .map(|m| m.path.clone())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Deployment `id` if `caller` may use it: root, or the uid its journal
/// names. A journal `caller` may not read is another's.
pub fn owned(site: &SiteConfig, id: &str, caller: u32) -> Result<DeploymentStatus, ExecError> {
    check_owner(status::of(site, id), id, caller)
}

fn check_owner(
    journal: Result<Option<DeploymentStatus>, JournalError>,
    id: &str,
    caller: u32,
) -> Result<DeploymentStatus, ExecError> {
    match journal {
        Ok(Some(st)) if caller == 0 || st.uid == Some(caller) => Ok(st),
        Ok(Some(_)) => Err(ExecError::NotYours(id.to_string())),
        Ok(None) | Err(JournalError::BadId(_)) => Err(ExecError::NoSuchDeployment(id.to_string())),
        Err(JournalError::Io { source, .. }) if source.kind() == ErrorKind::PermissionDenied => {
            Err(ExecError::NotYours(id.to_string()))
        }
        Err(e) => Err(ExecError::Site(e.to_string())),
    }
}

/// What a failure to reach the agent means to the caller.
fn attach_error(id: &str, e: DeployError) -> ExecError {
    match e {
        DeployError::NoSuchDeployment(_) => ExecError::NoSuchDeployment(id.to_string()),
        DeployError::Journal(JournalError::Io { source, .. })
            if source.kind() == ErrorKind::PermissionDenied =>
        {
            ExecError::NotYours(id.to_string())
        }
        DeployError::Link {
            error: LinkError::Connect { source, .. },
            ..
        } if source.kind() == ErrorKind::PermissionDenied => ExecError::NotYours(id.to_string()),
        other => ExecError::Site(other.to_string()),
    }
}

fn caller_uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

/// `sd exec NAME -- ARGV`: the command's outcome in the guest.
/// `signals` were blocked by the caller before any thread existed
/// (`sd_batch::frontend::block_forwarded_signals`); they go to the command.
pub fn exec(
    site: &SiteConfig,
    name: &str,
    argv: Vec<String>,
    cwd: &str,
    signals: nix::sys::signal::SigSet,
) -> Result<JobOutcome, ExecError> {
    let id = resolve(site, name)?;
    owned(site, &id, caller_uid())?;
    let timeout = Duration::from_secs(site.boot_timeout_secs);
    let link = deployment::attach_exec(site, &id, timeout).map_err(|e| attach_error(&id, e))?;
    sd_batch::frontend::run_streamed(&link, argv, cwd.to_string(), signals).map_err(|e| match e {
        sd_batch::frontend::RunError::NoDomain(_) => ExecError::NoSuchDeployment(id.clone()),
        sd_batch::frontend::RunError::Site(m) => ExecError::Site(m),
    })
}

/// `sd console NAME [--follow]`: the guest's console log, escaped, to `out`;
/// with `follow`, on as it grows until the deployment is gone.
pub fn console(
    site: &SiteConfig,
    name: &str,
    follow: bool,
    out: &mut dyn Write,
) -> Result<(), ExecError> {
    let id = resolve(site, name)?;
    owned(site, &id, caller_uid())?;
    let path = deployment::console_log_path(site, &id);
    let unreadable = |source| ExecError::ConsoleUnreadable {
        id: id.clone(),
        path: path.display().to_string(),
        source,
    };
    let mut file = loop {
        match std::fs::File::open(&path) {
            Ok(f) => break f,
            // Not written yet: a deployment still starting.
            Err(e) if e.kind() == ErrorKind::NotFound && follow && !gone(site, &id) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(unreadable(e)),
        }
    };
    let mut escaper = Escaper::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    let write_err = |e: std::io::Error| ExecError::Site(format!("writing the console: {e}"));
    loop {
        let n = file.read(&mut buf).map_err(unreadable)?;
        if n > 0 {
            offset += n as u64;
            let mut text = Vec::with_capacity(n * 2);
            escaper.push(&buf[..n], &mut text);
            out.write_all(&text).map_err(write_err)?;
            continue;
        }
        out.flush().map_err(write_err)?;
        if !follow {
            break;
        }
        if gone(site, &id) {
            // What it wrote last, then the end.
            let mut rest = vec![];
            file.read_to_end(&mut rest).map_err(unreadable)?;
            let mut text = vec![];
            escaper.push(&rest, &mut text);
            out.write_all(&text).map_err(write_err)?;
            break;
        }
        // A log started afresh (the same id deployed again) is read from its start.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() < offset) {
            file.seek(SeekFrom::Start(0)).map_err(unreadable)?;
            offset = 0;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut text = vec![];
    escaper.finish(&mut text);
    out.write_all(&text).map_err(write_err)?;
    out.flush().map_err(write_err)
}

/// Whether deployment `id` is over: its journal is gone, or (asked as root,
/// who may ask the hypervisor) its domain no longer runs.
fn gone(site: &SiteConfig, id: &str) -> bool {
    match status::of(site, id) {
        Ok(Some(st)) => nix::unistd::geteuid().is_root() && !st.is_running(site),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Makes a hostile guest's bytes safe for a terminal: printable ASCII,
/// newlines and tabs as they are; a CR before a newline (a serial console's
/// line end) dropped; a backslash as `\\`; everything else (escape
/// sequences, other control bytes, anything not ASCII) as `\xNN`. Streams:
/// a CR at the end of one chunk is decided by the next.
#[derive(Debug, Default)]
pub struct Escaper {
    pending_cr: bool,
}

impl Escaper {
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        for &b in bytes {
            if std::mem::take(&mut self.pending_cr) && b != b'\n' {
                out.extend_from_slice(b"\\r");
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\n' | b'\t' | 0x20..=0x7e => out.push(b),
                _ => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            }
        }
    }

    /// The end of the stream: a last CR is shown.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            out.extend_from_slice(b"\\r");
        }
    }
}

/// All of `bytes`, escaped (see [`Escaper`]).
pub fn escape(bytes: &[u8]) -> Vec<u8> {
    let mut out = vec![];
    let mut e = Escaper::default();
    e.push(bytes, &mut out);
    e.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sd_vmm::journal::Journal;
    use std::path::Path;

    fn site(dir: &Path) -> SiteConfig {
        SiteConfig::from_str(
            &format!(
                "state_dir: {0}/state\nlog_dir: {0}/log\nimage_dir: {0}/images\n\
                 images:\n  busybox: {{ disk: b.qcow2, kernel: k, initrd: i }}\n\
                 vos:\n  demo: {{ images: \"*\" }}\ndefault_vo: demo\n",
                dir.display()
            ),
            Path::new("site.yaml"),
        )
        .unwrap()
    }

    fn member(pool: &str, path: &str) -> pool::MemberRecord {
        let below = path.strip_prefix("sfConfig:").unwrap().replace(':', ".");
        pool::MemberRecord {
            id: format!("pool-{pool}-{below}"),
            path: path.into(),
            image: "busybox".into(),
            memory_mib: 128,
            vcpus: 1,
            up_unix_ms: Some(1),
            down_unix_ms: None,
            boot_ms: Some(1),
            liveness_delay_secs: 10,
            liveness_factor: 2,
            node: None,
            step: None,
        }
    }

    fn write_pool(site: &SiteConfig, name: &str, paths: &[&str]) {
        let record = pool::PoolRecord {
            name: name.into(),
            source: "p.yaml".into(),
            kind: "Sequence".into(),
            concurrent_terminate: false,
            started_unix_ms: 1,
            members: paths.iter().map(|p| member(name, p)).collect(),
            monitor_pid: None,
            terminated_because: None,
            terminated_unix_ms: None,
            allocation: None,
        };
        let dir = pool::pools_dir(site);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{name}.json")),
            serde_json::to_vec(&record).unwrap(),
        )
        .unwrap();
    }

    #[test]
    fn pool_members_resolve_by_name_or_path_and_ids_stand_for_themselves() {
        let tmp = tempfile::tempdir().unwrap();
        let site = site(tmp.path());
        write_pool(
            &site,
            "farm",
            &[
                "sfConfig:db",
                "sfConfig:web:w1",
                "sfConfig:batch:w1",
                "sfConfig:batch:w2",
            ],
        );
        let r = |name: &str| resolve(&site, name);
        assert_eq!(r("farm/db").unwrap(), "pool-farm-db");
        assert_eq!(r("farm/w2").unwrap(), "pool-farm-batch.w2");
        // The full path, with or without sfConfig, or dotted as in the id.
        assert_eq!(r("farm/sfConfig:web:w1").unwrap(), "pool-farm-web.w1");
        assert_eq!(r("farm/batch:w1").unwrap(), "pool-farm-batch.w1");
        assert_eq!(r("farm/batch.w1").unwrap(), "pool-farm-batch.w1");
        assert_eq!(r("farm/pool-farm-db").unwrap(), "pool-farm-db");
        let e = r("farm/w1").unwrap_err();
        assert!(matches!(e, ExecError::Ambiguous { .. }), "{e}");
        assert!(
            e.to_string().contains("sfConfig:web:w1, sfConfig:batch:w1"),
            "{e}"
        );
        let e = r("farm/w9").unwrap_err();
        assert_eq!(
            e.to_string(),
            "pool farm has no member \"w9\"; its members: db, web:w1, batch:w1, batch:w2"
        );
        assert!(matches!(r("nope/db"), Err(ExecError::NoSuchPool(_))));
        assert!(matches!(r("bad name!/db"), Err(ExecError::NoSuchPool(_))));
        // Anything else is a deployment id (`sd run --id`, `slurm-JOBID`).
        assert_eq!(r("slurm-42").unwrap(), "slurm-42");
        assert!(matches!(r("no such"), Err(ExecError::NoSuchDeployment(_))));
        assert!(matches!(r("../x"), Err(ExecError::NoSuchPool(_))));
        // A pool record one may not read (root's) is another's pool.
        if caller_uid() != 0 {
            let rec = pool::pools_dir(&site).join("farm.json");
            std::fs::set_permissions(&rec, std::os::unix::fs::PermissionsExt::from_mode(0o000))
                .unwrap();
            let e = r("farm/db").unwrap_err();
            assert_eq!(
                e.to_string(),
                "pool farm is not yours: only its owner and root may use its members"
            );
        }
        for e in [r("nope/db").unwrap_err(), r("farm/w1").unwrap_err()] {
            assert_eq!(e.exit_code(), sd_site::ExitCode::REFUSED);
        }
    }

    #[test]
    fn only_the_owner_and_root_may_and_others_are_told_it_is_not_theirs() {
        let tmp = tempfile::tempdir().unwrap();
        let site = site(tmp.path());
        let mut j = Journal::create(&site.state_dir, "run-1").unwrap();
        j.update_details(|d| d.uid = Some(4321)).unwrap();
        assert_eq!(owned(&site, "run-1", 4321).unwrap().id, "run-1");
        assert!(owned(&site, "run-1", 0).is_ok(), "root may");
        let e = owned(&site, "run-1", 1000).unwrap_err();
        assert_eq!(
            e.to_string(),
            "deployment run-1 is not yours: only its owner and root may use it"
        );
        assert_eq!(e.exit_code(), sd_site::ExitCode::REFUSED);
        // A journal without an owner yet is nobody's but root's.
        Journal::create(&site.state_dir, "run-2").unwrap();
        assert!(matches!(
            owned(&site, "run-2", 4321),
            Err(ExecError::NotYours(_))
        ));
        let e = owned(&site, "run-9", 4321).unwrap_err();
        assert!(matches!(e, ExecError::NoSuchDeployment(_)), "{e}");
        assert!(e.to_string().contains("`sd status`"), "{e}");
        assert_eq!(e.exit_code(), sd_site::ExitCode::REFUSED);
    }

    #[test]
    fn permission_errors_are_refusals_naming_the_deployment() {
        let denied = || std::io::Error::from(ErrorKind::PermissionDenied);
        // The journal, unreadable to others (group-readable only).
        let e = check_owner(
            Err(JournalError::Io {
                path: "/state/journal/run-1.json".into(),
                source: denied(),
            }),
            "run-1",
            1000,
        )
        .unwrap_err();
        assert!(
            matches!(&e, ExecError::NotYours(id) if id == "run-1"),
            "{e}"
        );
        // Another I/O error is the site's.
        let e = check_owner(
            Err(JournalError::Io {
                path: "/state/journal/run-1.json".into(),
                source: std::io::Error::from(ErrorKind::Other),
            }),
            "run-1",
            1000,
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), sd_site::ExitCode::SITE);
        // The agent's socket, the user's only.
        let e = attach_error(
            "pool-farm-db",
            DeployError::Link {
                error: LinkError::Connect {
                    path: "/state/run/pool-farm-db/exec.sock".into(),
                    source: denied(),
                },
                console: String::new(),
                last_words: vec![],
            },
        );
        assert_eq!(
            e.to_string(),
            "deployment pool-farm-db is not yours: only its owner and root may use it"
        );
        assert!(matches!(
            attach_error("x", DeployError::NoSuchDeployment("x".into())),
            ExecError::NoSuchDeployment(_)
        ));
        let e = attach_error(
            "x",
            DeployError::Link {
                error: LinkError::Timeout(Duration::from_secs(1)),
                console: "c.log".into(),
                last_words: vec![],
            },
        );
        assert_eq!(e.exit_code(), sd_site::ExitCode::SITE);
    }

    #[test]
    fn console_bytes_are_escaped_for_the_terminal() {
        assert_eq!(escape(b"Linux 6.1\r\nok\tdone\n"), b"Linux 6.1\nok\tdone\n");
        // A terminal's escape sequences, other control bytes, a bare CR,
        // bytes beyond ASCII: shown, never sent raw.
        assert_eq!(
            escape(b"\x1b]0;pwned\x07\x1b[2J a\rb \xe2\x80\xae \\x41"),
            b"\\x1b]0;pwned\\x07\\x1b[2J a\\rb \\xe2\\x80\\xae \\\\x41".to_vec()
        );
        assert_eq!(escape(b"end\r"), b"end\\r");
        // Streamed: a CR at a chunk's end waits for the next byte.
        let mut e = Escaper::default();
        let mut out = vec![];
        e.push(b"a\r", &mut out);
        e.push(b"\nb\r", &mut out);
        e.push(b"c", &mut out);
        e.finish(&mut out);
        assert_eq!(out, b"a\nb\\rc");
        let all: Vec<u8> = (0..=255u8).collect();
        assert!(escape(&all)
            .iter()
            .all(|&b| b == b'\n' || b == b'\t' || (0x20..=0x7e).contains(&b)));
    }

    #[test]
    fn console_of_a_deployment_is_its_owners_and_escaped() {
        let tmp = tempfile::tempdir().unwrap();
        let site = site(tmp.path());
        let mut j = Journal::create(&site.state_dir, "run-c").unwrap();
        j.update_details(|d| d.uid = Some(caller_uid())).unwrap();
        std::fs::create_dir_all(&site.log_dir).unwrap();
        std::fs::write(
            deployment::console_log_path(&site, "run-c"),
            b"boot\r\n\x1b[31mred\n",
        )
        .unwrap();
        let mut out = vec![];
        console(&site, "run-c", false, &mut out).unwrap();
        assert_eq!(out, b"boot\n\\x1b[31mred\n");
        // --follow ends once the deployment is gone (its domain does not
        // run, for root who may ask; its journal is gone, for anyone).
        let out = std::thread::scope(|s| {
            let follower = s.spawn(|| {
                let mut out = vec![];
                console(&site, "run-c", true, &mut out).map(|()| out)
            });
            std::thread::sleep(Duration::from_millis(500));
            j.remove().unwrap();
            follower.join().unwrap().unwrap()
        });
        assert!(out.starts_with(b"boot\n\\x1b[31mred\n"), "{out:?}");
        assert!(matches!(
            console(&site, "run-c", true, &mut vec![]),
            Err(ExecError::NoSuchDeployment(_))
        ));
        // Another's console is refused before the log is opened.
        let mut j = Journal::create(&site.state_dir, "run-d").unwrap();
        j.update_details(|d| d.uid = Some(caller_uid() + 1))
            .unwrap();
        if caller_uid() != 0 {
            assert!(matches!(
                console(&site, "run-d", false, &mut vec![]),
                Err(ExecError::NotYours(_))
            ));
        }
    }
}
