//! Stopping a pool: its monitor first, then its members in reverse
//! creation order, then its record (kept in the log directory).

use sd_site::SiteConfig;
use sd_vmm::deployment;
use std::fs;
use std::sync::Mutex;

use super::liveness::liveness_path;
use super::monitor::stop_monitor;
use super::node_member;
use super::record::{
    final_record_path, load, now_unix_ms, record_error, record_path, save, steps_dir, write_atomic,
    PoolRecord,
};
use super::{lock, PoolError};

/// Stops pool `name`: its monitor first, then its members in reverse
/// creation order (concurrently for a Compound with `sfSyncTerminate
/// false`), each powered off through its agent and its journal undone; then
/// the record is removed. Returns the final record, or None if there was no
/// such pool (idempotent) — or its monitor ended it meanwhile.
pub fn terminate(site: &SiteConfig, name: &str) -> Result<Option<PoolRecord>, PoolError> {
    let Some(record) = load(site, name)? else {
        return Ok(None);
    };
    if let Some(pid) = record.monitor_pid {
        stop_monitor(pid, name);
    }
    match load(site, name)? {
        None => Ok(None),
        Some(record) => stop(site, record, true, true).map(Some),
    }
}

pub(super) fn stop(
    site: &SiteConfig,
    record: PoolRecord,
    graceful: bool,
    succeeded: bool,
) -> Result<PoolRecord, PoolError> {
    let name = record.name.clone();
    let concurrent = record.concurrent_terminate;
    let record = Mutex::new(record);
    let errors = Mutex::new(Vec::new());
    let pending: Vec<usize> = {
        let r = lock(&record);
        (0..r.members.len())
            .rev()
            .filter(|&i| r.members[i].down_unix_ms.is_none())
            .collect()
    };
    let allocation = lock(&record).allocation.clone();
    let stop_one = |i: usize| {
        let member = lock(&record).members[i].clone();
        let id = member.id.clone();
        let result = if let (Some(alloc), Some(_)) = (&allocation, &member.node) {
            node_member::stop(site, alloc, &member, succeeded)
        } else if graceful {
            deployment::finish(site, &id, succeeded)
                .map(|saved| match saved {
                    Some(Some(Err(e))) => {
                        tracing::warn!("pool {name}: {id}: its disk was not saved: {e}")
                    }
                    Some(Some(Ok(image))) => {
                        tracing::info!("pool {name}: {id}: disk saved as image {}", image.name)
                    }
                    _ => {}
                })
                .map_err(|e| e.to_string())
        } else {
            deployment::cleanup(site, &id)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        match result {
            Ok(()) => {
                tracing::info!("pool {name}: {id} down");
                let mut r = lock(&record);
                r.members[i].down_unix_ms = Some(now_unix_ms());
                if let Err(e) = save(site, &r) {
                    lock(&errors).push(e.to_string());
                }
            }
            Err(e) => lock(&errors).push(format!("{id}: {e}")),
        }
    };
    let stop_one = &stop_one;
    if concurrent {
        std::thread::scope(|s| {
            for &i in &pending {
                s.spawn(move || stop_one(i));
            }
        });
    } else {
        for &i in &pending {
            stop_one(i);
        }
    }
    let record = record.into_inner().unwrap_or_else(|e| e.into_inner());
    let errors = errors.into_inner().unwrap_or_else(|e| e.into_inner());
    if !errors.is_empty() {
        return Err(PoolError::Terminate { name, errors });
    }
    let last = final_record_path(site, &name);
    if let Err(e) = write_atomic(&last, &record, false) {
        tracing::warn!("pool {name}: cannot keep its final record: {e}");
    }
    let _ = fs::remove_file(liveness_path(site, &name));
    let _ = fs::remove_dir_all(steps_dir(site, &name));
    let path = record_path(site, &name);
    match fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(record_error(&path, e)),
        _ => Ok(record),
    }
}
