//! SmartDomains: every grid job in the virtual machine its VO asked for.
//!
//! Data flows one way:
//! front end (`jdl`) → `request` → `policy` (against `site`) → `deployment`
//! (`journal`, `storage`) → `hypervisor` backend → `guest_link`.

pub mod atomic_file;
pub mod batch;
pub mod condor;
pub mod deployment;
pub mod description;
pub mod guest_link;
pub mod hook_log;
pub mod hypervisor;
pub mod image_store;
pub mod jdl;
pub mod job;
pub mod journal;
pub mod node_service;
pub mod policy;
pub mod pool;
pub mod request;
pub mod site;
pub mod slurm;
pub mod storage;
pub mod storage_lvm;
pub mod user_files;
