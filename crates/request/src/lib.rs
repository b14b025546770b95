//! What a job asks for, independent of the front end that carried it
//! (a JDL's `VirtualEnvironment` record, `--sd-env=IMAGE`, `+SDEnvironment`).
//!
//! Every field is optional: what the job leaves out, the site's defaults and
//! the image's defaults fill in (see `policy`).
//!
//! These types are also what crosses from the request parser, which runs
//! with the user's rights (`sd-parse-request`), to the root side that
//! admits it: plain data, checked field by field by serde.
//!
//! Also here, because root reads them too: what carries a request to the
//! node (`carried`), HTCondor's job ad that the hooks are handed (`job_ad`,
//! `Name = value` lines, split without recursion), and the node service's
//! messages (`node_service`). None of it needs more than serde.

pub mod carried;
pub mod job_ad;
pub mod node_service;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// What a job asks for and for which VO: everything admission reads of a
/// job's description.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    /// The VO the job names (`VirtualOrganisation`), if any; it only picks
    /// among the owner's VOs.
    pub vo: Option<String>,
    pub environment: EnvironmentRequest,
}

/// The `VirtualEnvironment = [ ... ]` record of a JDL, or an image name alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentRequest {
    /// Catalogue name of the VO image (never a path).
    pub image: Option<String>,
    /// Guest memory in MiB.
    pub memory_mib: Option<u64>,
    /// Virtual CPUs.
    pub vcpus: Option<u32>,
    /// Size of the job's disk (the copy-on-write overlay) in MiB.
    pub disk_mib: Option<u64>,
    /// Keep the domain's disk as a new image after the job.
    pub save_image: Option<bool>,
    /// Name of that image in the site's store (default: `<vo>-<deployment>`).
    pub save_as: Option<String>,
    /// Hostname the guest gets.
    pub hostname: Option<String>,
    /// The site networks the domain is attached to, in order: its first
    /// interface is on the first. Empty (or the one name `none`): no network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkRequest>,
}

/// One network interface a job asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRequest {
    /// A network of the site's `networks:` (or `none`).
    pub name: String,
    /// A static address in that network's subnet; none: the host side
    /// assigns one (or the site's DHCP does, on a bridge).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
}

impl NetworkRequest {
    /// An interface on `name`, with an address the host side assigns.
    pub fn named(name: &str) -> Self {
        NetworkRequest {
            name: name.to_string(),
            ip: None,
        }
    }
}

impl EnvironmentRequest {
    /// A request that names only an image (`--sd-env=debian-minimal`).
    pub fn image_only(name: &str) -> Self {
        EnvironmentRequest {
            image: Some(name.to_string()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_cross_as_json() {
        let req = JobRequest {
            vo: Some("demo".into()),
            environment: EnvironmentRequest {
                networks: vec![
                    NetworkRequest {
                        name: "private".into(),
                        ip: Some(Ipv4Addr::new(10, 214, 0, 10)),
                    },
                    NetworkRequest::named("nat"),
                ],
                ..EnvironmentRequest::image_only("busybox")
            },
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(
            json,
            r#"{"vo":"demo","environment":{"image":"busybox","memory_mib":null,"vcpus":null,"disk_mib":null,"save_image":null,"save_as":null,"hostname":null,"networks":[{"name":"private","ip":"10.214.0.10"},{"name":"nat"}]}}"#
        );
        assert_eq!(serde_json::from_str::<JobRequest>(&json).unwrap(), req);
        // Older parsers send no networks: none.
        let old: EnvironmentRequest = serde_json::from_str(r#"{"image":"busybox"}"#).unwrap();
        assert!(old.networks.is_empty());
        // Unknown fields and bad addresses are refused.
        assert!(serde_json::from_str::<NetworkRequest>(r#"{"name":"nat","mac":"x"}"#).is_err());
        assert!(
            serde_json::from_str::<NetworkRequest>(r#"{"name":"nat","ip":"10.0.0.300"}"#).is_err()
        );
    }
}
