//! Address leases: one file per network (per segment for a private one)
//! under the state directory, shared by every deployment of the node.
//!
//! Every read-modify-write holds an exclusive `flock` on a lock file beside
//! it (the lease file itself is replaced by rename, so it cannot carry the
//! lock); the file is replaced atomically. While the lock is held, the
//! network's shared parts (bridge, nft table) are made or removed, so that
//! "the last lease is gone, remove the bridge" never races with a new lease.

use super::{NetworkError, Subnet};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    pub ip: Ipv4Addr,
    /// `DEPLOYMENT/NIC`: who holds it.
    pub owner: String,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseFile {
    pub leases: Vec<LeaseEntry>,
}

/// The lease file, locked for as long as this lives.
pub struct Locked {
    path: PathBuf,
    _lock: File,
    pub data: LeaseFile,
}

/// Directory of the node's lease files.
pub fn lease_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("network").join("leases")
}

fn lock_path(path: &Path) -> PathBuf {
    path.with_extension("lock")
}

/// Opens and locks the lease file `path` (it need not exist yet).
pub fn lock(path: &Path) -> Result<Locked, NetworkError> {
    let io = |source| NetworkError::Leases {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path(path))
        .map_err(io)?;
    loop {
        // SAFETY: flock on a valid open descriptor.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } == 0 {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(io(e));
        }
    }
    let data = match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| NetworkError::CorruptLeases {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => LeaseFile::default(),
        Err(e) => return Err(io(e)),
    };
    Ok(Locked {
        path: path.to_path_buf(),
        _lock: lock,
        data,
    })
}

impl Locked {
    /// Writes the leases back (atomically); an empty set removes the file.
    pub fn save(&self) -> Result<(), NetworkError> {
        let io = |source| NetworkError::Leases {
            path: self.path.clone(),
            source,
        };
        if self.data.leases.is_empty() {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(e)),
                _ => Ok(()),
            };
        }
        let text = serde_json::to_vec_pretty(&self.data).expect("leases serialise");
        sd_host::atomic_file::write(&self.path, &text).map_err(io)
    }

    /// Takes an address for `owner`: `wanted` if it is in range and free,
    /// else the lowest free one. An owner that holds one already gets it
    /// again (a retried attach).
    pub fn take(
        &mut self,
        network: &str,
        subnet: Subnet,
        reserved: Option<Ipv4Addr>,
        wanted: Option<Ipv4Addr>,
        owner: &str,
    ) -> Result<Ipv4Addr, NetworkError> {
        if let Some(held) = self.data.leases.iter().find(|l| l.owner == owner) {
            if wanted.is_none() || wanted == Some(held.ip) {
                return Ok(held.ip);
            }
        }
        let (first, last) = subnet.hosts();
        let used =
            |ip: Ipv4Addr| Some(ip) == reserved || self.data.leases.iter().any(|l| l.ip == ip);
        let ip = match wanted {
            Some(ip) => {
                if !subnet.contains(ip) || ip < first || ip > last || Some(ip) == reserved {
                    return Err(NetworkError::AddressOutOfRange {
                        network: network.to_string(),
                        ip,
                        subnet,
                        first,
                        last,
                    });
                }
                if let Some(l) = self.data.leases.iter().find(|l| l.ip == ip) {
                    return Err(NetworkError::AddressTaken {
                        network: network.to_string(),
                        ip,
                        holder: l.owner.clone(),
                    });
                }
                ip
            }
            None => (u32::from(first)..=u32::from(last))
                .map(Ipv4Addr::from)
                .find(|&ip| !used(ip))
                .ok_or_else(|| NetworkError::NoFreeAddress {
                    network: network.to_string(),
                    subnet,
                })?,
        };
        self.data.leases.push(LeaseEntry {
            ip,
            owner: owner.to_string(),
        });
        Ok(ip)
    }

    /// Gives back `owner`'s lease of `ip`; returns whether it was held.
    pub fn release(&mut self, ip: Ipv4Addr, owner: &str) -> bool {
        let before = self.data.leases.len();
        self.data
            .leases
            .retain(|l| !(l.ip == ip && l.owner == owner));
        before != self.data.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.leases.is_empty()
    }
}
