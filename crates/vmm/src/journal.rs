//! The journal of one deployment: every resource it is about to create, in
//! order, written to disk *before* the resource exists.
//!
//! Cleanup reads the journal and undoes its entries in reverse order; each
//! undo tolerates a resource that was never made or is already gone, so
//! cleanup is idempotent and correct after a crash at any point. The file is
//! replaced atomically (write to a temporary name, fsync, rename), so a crash
//! never leaves a half-written journal.

use sd_host::atomic_file::Readers;
use sd_host::fault_point;
use sd_policy::ResolvedEnvironment;
use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

/// Something on the host that a deployment creates and cleanup removes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// A directory of the deployment's own (removed with its contents).
    Directory { path: PathBuf },
    /// A file: an overlay disk, a socket, a pid file.
    File { path: PathBuf },
    /// A hypervisor domain, found again by its name (a QEMU process whose
    /// `-name` is this, or a Xen domain of that name).
    Domain { backend: String, name: String },
    /// An LVM thin volume `vg/lv` of pool `thin_pool`: the job's disk, a
    /// snapshot of an `lvm` image's base (removed with `lvremove`).
    LvmVolume {
        vg: String,
        thin_pool: String,
        lv: String,
    },
    /// A tap device of one NIC (`ip link delete`).
    Tap { name: String },
    /// A network's bridge, shared by the deployments on it: the undo
    /// removes it only when the lease file `leases` holds no lease.
    Bridge { name: String, leases: PathBuf },
    /// The VXLAN port of a private segment's bridge towards its other
    /// hosts, shared like the bridge.
    Tunnel { name: String, leases: PathBuf },
    /// An nftables table `family name`. With `leases`, it is a network's
    /// shared table, removed only when that lease file holds no lease.
    NftTable {
        family: String,
        name: String,
        #[serde(default)]
        leases: Option<PathBuf>,
    },
    /// An address of network `network` held by `owner` (`DEPLOYMENT/NIC`)
    /// in the node-wide lease file `path`.
    Lease {
        network: String,
        ip: std::net::Ipv4Addr,
        owner: String,
        path: PathBuf,
    },
}

impl Resource {
    /// Its kind, as the journal file names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Directory { .. } => "directory",
            Resource::File { .. } => "file",
            Resource::Domain { .. } => "domain",
            Resource::LvmVolume { .. } => "lvm_volume",
            Resource::Tap { .. } => "tap",
            Resource::Bridge { .. } => "bridge",
            Resource::Tunnel { .. } => "tunnel",
            Resource::NftTable { .. } => "nft_table",
            Resource::Lease { .. } => "lease",
        }
    }
}

/// What the journal knows of a deployment besides its resources: how to
/// reach it again (sd-exec), whose it is, what it was admitted as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentDetails {
    /// Unix socket of the guest agent's channel.
    pub agent_socket: Option<PathBuf>,
    /// The agent's exec channel (`sd exec`); None: commands share the
    /// control link (Xen, or a journal of an older version).
    #[serde(default)]
    pub exec_socket: Option<PathBuf>,
    /// Hypervisor control socket (QMP).
    pub control_socket: Option<PathBuf>,
    pub backend: Option<String>,
    /// `kvm` or `tcg`.
    pub acceleration: Option<String>,
    pub console_log: Option<PathBuf>,
    /// The resolved request, as admitted by policy: what the teardown saves
    /// and `sd status` shows.
    pub environment: Option<ResolvedEnvironment>,
    /// User the deployment acts for.
    pub uid: Option<u32>,
    /// The process that owns the deployment (an `sd run`, an HTCondor job's
    /// `condor_starter`); when it is gone the deployment is an orphan that
    /// `sd cleanup` and the node service remove. None for deployments owned
    /// by a batch system's epilog (Slurm).
    pub owner_pid: Option<u32>,
    /// The qcow2 base the job's qcow2 overlay was made on: a save reads
    /// this, not what the overlay's header (which QEMU can write) names.
    pub disk_backing: Option<PathBuf>,
    /// The owner's start time (field 22 of /proc/PID/stat): a later process
    /// with the same pid is not the owner. None in older journals.
    #[serde(default)]
    pub owner_start_time: Option<u64>,
    /// The Slurm job whose step made it (a pool member on a node of an
    /// allocation): that job's epilog on this node cleans it up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slurm_job: Option<String>,
    /// The save-after-use flag as changed while the domain ran (`sd set
    /// NAME save=...`, the console API): the teardown does what this says,
    /// not what the request said. None: unchanged since admission.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save: Option<sd_policy::live::SaveSetting>,
    /// The memory target last set while it ran (`sd set NAME memory=`), MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_target_mib: Option<u64>,
    /// How the domain started: `boot`, or `clone` of a template. None in
    /// older journals (they booted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
}

/// The journal format this build writes and reads. A change that would
/// make an older reader misread a journal bumps it.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalData {
    /// [`FORMAT_VERSION`] of the writer (journals before it was written are 1).
    #[serde(default = "first_version")]
    pub version: u32,
    pub id: String,
    pub created_unix: u64,
    pub resources: Vec<Resource>,
    /// Named `facts` in the format.
    #[serde(rename = "facts")]
    pub details: DeploymentDetails,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("journal {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "journal {path} is of format {found}, this sd reads format {FORMAT_VERSION}: \
         clean it up with the sd that wrote it (a newer one?), not this one"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("a deployment named {0:?} already exists (clean it up with `sd cleanup {0}`)")]
    Exists(String),
    #[error("deployment id {0:?} is not valid: use letters, digits, '.', '_' and '-'")]
    BadId(String),
}

fn first_version() -> u32 {
    1
}

/// An open journal, owned by the process that deploys.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    data: JournalData,
}

/// Where the journals of a state directory live.
pub fn journal_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("journal")
}

fn journal_path(state_dir: &Path, id: &str) -> PathBuf {
    journal_dir(state_dir).join(format!("{id}.json"))
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

impl Journal {
    /// Starts the journal of a new deployment; refuses an id already in use.
    pub fn create(state_dir: &Path, id: &str) -> Result<Journal, JournalError> {
        Journal::create_with(state_dir, id, DeploymentDetails::default())
    }

    /// [`Journal::create`] with its details in the first write: a journal
    /// is never on disk without its owner, which `sd cleanup` goes by.
    pub fn create_with(
        state_dir: &Path,
        id: &str,
        details: DeploymentDetails,
    ) -> Result<Journal, JournalError> {
        if !valid_id(id) {
            return Err(JournalError::BadId(id.to_string()));
        }
        let dir = journal_dir(state_dir);
        fs::create_dir_all(&dir).map_err(|source| JournalError::Io {
            path: dir.clone(),
            source,
        })?;
        let path = journal_path(state_dir, id);
        if path.exists() {
            return Err(JournalError::Exists(id.to_string()));
        }
        let created_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let journal = Journal {
            path,
            data: JournalData {
                version: FORMAT_VERSION,
                id: id.to_string(),
                created_unix,
                resources: vec![],
                details,
            },
        };
        journal.persist()?;
        fault_point::reached("journal: created");
        Ok(journal)
    }

    pub fn open(state_dir: &Path, id: &str) -> Result<Option<Journal>, JournalError> {
        if !valid_id(id) {
            return Err(JournalError::BadId(id.to_string()));
        }
        let path = journal_path(state_dir, id);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(JournalError::Io { path, source }),
        };
        let corrupt = |source| JournalError::Corrupt {
            path: path.clone(),
            source,
        };
        // The version first: a newer format is refused as such, not misread.
        #[derive(Deserialize)]
        struct Version {
            #[serde(default = "first_version")]
            version: u32,
        }
        let Version { version } = serde_json::from_slice(&text).map_err(corrupt)?;
        if version != FORMAT_VERSION {
            return Err(JournalError::Version {
                path,
                found: version,
            });
        }
        let data = serde_json::from_slice(&text).map_err(corrupt)?;
        Ok(Some(Journal { path, data }))
    }

    /// Ids of every deployment that has a journal.
    pub fn list(state_dir: &Path) -> Result<Vec<String>, JournalError> {
        let dir = journal_dir(state_dir);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(source) => return Err(JournalError::Io { path: dir, source }),
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .collect();
        ids.sort();
        Ok(ids)
    }

    pub fn id(&self) -> &str {
        &self.data.id
    }

    pub fn data(&self) -> &JournalData {
        &self.data
    }

    pub fn details(&self) -> &DeploymentDetails {
        &self.data.details
    }

    /// Records a resource *before* the caller creates it.
    pub fn record(&mut self, resource: Resource) -> Result<(), JournalError> {
        if !self.data.resources.contains(&resource) {
            let kind = resource.kind();
            self.data.resources.push(resource);
            self.persist()?;
            fault_point::reached(&format!("journal: {kind}"));
        }
        Ok(())
    }

    pub fn update_details(
        &mut self,
        f: impl FnOnce(&mut DeploymentDetails),
    ) -> Result<(), JournalError> {
        f(&mut self.data.details);
        self.persist()
    }

    /// Records a live change of the save flag in deployment `id`'s journal
    /// (written by another process than the one that deployed it: the
    /// deployer's own copy in memory is not what the teardown reads, see
    /// [`Journal::current_save`]).
    pub fn set_save(
        state_dir: &Path,
        id: &str,
        setting: sd_policy::live::SaveSetting,
    ) -> Result<(), JournalError> {
        Journal::set_live(state_dir, id, |d| d.save = Some(setting))
    }

    /// Records the memory target set while the domain runs.
    pub fn set_memory_target(state_dir: &Path, id: &str, mib: u64) -> Result<(), JournalError> {
        Journal::set_live(state_dir, id, |d| d.memory_target_mib = Some(mib))
    }

    fn set_live(
        state_dir: &Path,
        id: &str,
        f: impl FnOnce(&mut DeploymentDetails),
    ) -> Result<(), JournalError> {
        let mut journal = Journal::open(state_dir, id)?.ok_or_else(|| JournalError::Io {
            path: journal_path(state_dir, id),
            source: std::io::ErrorKind::NotFound.into(),
        })?;
        f(&mut journal.data.details);
        journal.persist()
    }

    /// The save flag as it is now on disk: a live change (`set_save`) by
    /// another process, else this journal's own.
    pub fn current_save(&self) -> Option<sd_policy::live::SaveSetting> {
        let on_disk = Journal::open_path(&self.path)
            .ok()
            .and_then(|d| d.details.save);
        on_disk.or_else(|| self.data.details.save.clone())
    }

    fn open_path(path: &Path) -> Result<JournalData, ()> {
        serde_json::from_slice(&fs::read(path).map_err(drop)?).map_err(drop)
    }

    /// Resources in the order they must be undone.
    pub fn undo_order(&self) -> impl Iterator<Item = &Resource> {
        self.data.resources.iter().rev()
    }

    /// Drops the journal once everything in it is undone.
    pub fn remove(self) -> Result<(), JournalError> {
        // A writer killed between its write and its rename left its temporary.
        sd_host::atomic_file::remove_stale_temporaries(&self.path).map_err(|source| {
            JournalError::Io {
                path: self.path.clone(),
                source,
            }
        })?;
        match fs::remove_file(&self.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(JournalError::Io {
                path: self.path,
                source,
            }),
        }
    }

    fn persist(&self) -> Result<(), JournalError> {
        let io = |source| JournalError::Io {
            path: self.path.clone(),
            source,
        };
        // A live change of the save flag, made by another process since this
        // journal was read, is kept.
        let mut data = self.data.clone();
        if data.details.save.is_none() || data.details.memory_target_mib.is_none() {
            if let Ok(on_disk) = Journal::open_path(&self.path) {
                let d = &mut data.details;
                d.save = d.save.take().or(on_disk.details.save);
                d.memory_target_mib = d.memory_target_mib.or(on_disk.details.memory_target_mib);
            }
        }
        let text = serde_json::to_vec_pretty(&data).expect("journal serialises");
        // The deployment's user reads it (sd-exec finds its agent there) but
        // may not change it: root undoes what it lists.
        let readers = match self.data.details.uid.filter(|&u| u != 0) {
            Some(uid) => match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
                Ok(Some(user)) => Readers::Group(user.gid.as_raw()),
                _ => Readers::Root,
            },
            None => Readers::Root,
        };
        sd_host::atomic_file::write_readable(&self.path, &text, readers).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_journal_of_another_format_is_refused_not_misread() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), "job-v").unwrap();
        let path = j.path.clone();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"version\": 1"), "{text}");
        std::fs::write(&path, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
        let e = Journal::open(dir.path(), "job-v").unwrap_err();
        assert!(matches!(e, JournalError::Version { found: 2, .. }), "{e}");
        assert!(
            e.to_string()
                .contains("is of format 2, this sd reads format 1"),
            "{e}"
        );
        // A journal written before the version existed is format 1.
        std::fs::write(&path, text.replace("\"version\": 1,", "")).unwrap();
        assert!(Journal::open(dir.path(), "job-v").unwrap().is_some());
    }

    #[test]
    fn records_survive_a_reopen_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), "job-1").unwrap();
        j.record(Resource::Directory { path: "/x".into() }).unwrap();
        j.record(Resource::File {
            path: "/x/disk".into(),
        })
        .unwrap();
        j.record(Resource::File {
            path: "/x/disk".into(),
        })
        .unwrap();
        j.update_details(|f| f.backend = Some("qemu".into()))
            .unwrap();
        let again = Journal::open(dir.path(), "job-1").unwrap().unwrap();
        assert_eq!(again.data(), j.data());
        let order: Vec<_> = again.undo_order().cloned().collect();
        assert_eq!(
            order,
            vec![
                Resource::File {
                    path: "/x/disk".into()
                },
                Resource::Directory { path: "/x".into() }
            ]
        );
        assert_eq!(
            Journal::list(dir.path()).unwrap(),
            vec!["job-1".to_string()]
        );
        again.remove().unwrap();
        assert!(Journal::open(dir.path(), "job-1").unwrap().is_none());
        assert!(Journal::list(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn network_resources_keep_their_shape_and_older_entries_read_as_before() {
        let r = Resource::Lease {
            network: "nat".into(),
            ip: std::net::Ipv4Addr::new(10, 77, 0, 2),
            owner: "job-1/0".into(),
            path: "/var/lib/sd/network/leases/nat-nat.json".into(),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(
            text,
            r#"{"kind":"lease","network":"nat","ip":"10.77.0.2","owner":"job-1/0","path":"/var/lib/sd/network/leases/nat-nat.json"}"#
        );
        assert_eq!(serde_json::from_str::<Resource>(&text).unwrap(), r);
        let table: Resource =
            serde_json::from_str(r#"{"kind":"nft_table","family":"bridge","name":"t"}"#).unwrap();
        assert!(matches!(table, Resource::NftTable { leases: None, .. }));
        let old: Resource = serde_json::from_str(r#"{"kind":"file","path":"/x"}"#).unwrap();
        assert_eq!(old, Resource::File { path: "/x".into() });
    }

    #[test]
    fn ids_are_checked_and_unique() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Journal::create(dir.path(), "../etc"),
            Err(JournalError::BadId(_))
        ));
        assert!(matches!(
            Journal::create(dir.path(), ""),
            Err(JournalError::BadId(_))
        ));
        Journal::create(dir.path(), "a").unwrap();
        assert!(matches!(
            Journal::create(dir.path(), "a"),
            Err(JournalError::Exists(_))
        ));
    }
}
