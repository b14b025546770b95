//! The node's virtual-machine side: a resolved environment becomes a
//! running domain and, afterwards, nothing (or a saved image).
//!
//! `deployment` drives the lifecycle: it records each resource in the
//! `journal` before creating it, prepares disks (`storage`,
//! `storage_lvm`, `image_store`), starts the domain through a
//! `hypervisor` backend and reaches its agent through `guest_link`.
//! `capacity` holds the node's limits; `network` makes a domain's NICs
//! (tap, bridge, nftables, address leases).

pub mod capacity;
pub mod cgroup;
pub mod deployment;
pub mod guest_link;
pub mod hypervisor;
pub mod image_store;
pub mod journal;
pub mod network;
pub mod status;
pub mod storage;
pub mod storage_lvm;
pub mod template;
#[doc(hidden)]
pub mod test_images;
