//! SmartDomains: every grid job in the virtual machine its VO asked for.
//!
//! Data flows one way:
//! front end (`jdl`) → `request` → `policy` (against `site`) → `deployment`
//! (`journal`, `storage`) → `hypervisor` backend → `guest_link`.

pub mod jdl;
pub mod request;
pub mod site;
pub mod policy;
pub mod journal;
pub mod hypervisor;
pub mod guest_link;
pub mod storage;
pub mod user_files;
pub mod deployment;
pub mod job;
