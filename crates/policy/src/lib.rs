//! Admission: a job's [`EnvironmentRequest`] against the site's
//! configuration. Either the job gets a complete [`ResolvedEnvironment`]
//! (every value filled in and within its VO's limits), or a [`PolicyError`]
//! that says what to change.
//!
//! Values come from the request, else the image's `defaults`, else the
//! site's `defaults`.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub mod live;

use sd_host::owner::Owner;
use sd_request::{EnvironmentRequest, NetworkRequest};
use sd_site::{
    validate_hostname, validate_image_name, Blame, CatalogueImage, DiskFormat, Fault, Ipv4Net,
    NetworkKind, SavePolicy, SiteConfig, VoPolicy, NO_NETWORK,
};

/// What a job gets: everything `deployment` needs, nothing left optional.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedEnvironment {
    pub vo: String,
    pub image: CatalogueImage,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub disk_mib: u64,
    pub hostname: String,
    /// The catalogue image this one is (or was saved from): its kernel,
    /// initrd and defaults are the ones used.
    pub catalogue_image: String,
    /// The image is a saved one from the site's store (its `disk` is the
    /// compressed file; `deployment` decompresses it once, verified).
    pub from_store: bool,
    /// Whether the disk is kept as a new image after the job.
    pub save_image: bool,
    /// Its name in the store, if the job gave one.
    pub save_as: Option<String>,
    /// Keep it only if the job ends with exit status 0 (`save_images: on_success`).
    pub save_only_on_success: bool,
    /// The VO's store quota (`max_store_mib`), in bytes.
    pub store_quota_bytes: Option<u64>,
    /// The domain's network interfaces, in order (NIC 0 first); empty: no
    /// network (only the loopback).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<ResolvedNic>,
}

/// One network interface of an admitted domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedNic {
    /// The site network's name (`networks:` in site.yaml).
    pub network: String,
    /// What that network is, as the site declares it (subnet, DNS, filters).
    pub kind: NetworkKind,
    /// The static address the job asked for (checked: in the subnet, not
    /// its network, host or broadcast address). None: the host side assigns
    /// one from the subnet (on a bridge: the site's DHCP).
    pub ip: Option<Ipv4Addr>,
}

/// What admission needs of the image store (`sd_vmm::image_store`
/// implements it): policy reads no file itself.
pub trait SavedImages {
    /// The image saved under `name`, if there is one. An error is the
    /// site's: the store could not be read.
    fn find(&self, name: &str) -> Result<Option<SavedImage>, String>;
}

/// A saved image, as admission sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedImage {
    pub name: String,
    /// The VO whose job saved it: only that VO may use it.
    pub vo: String,
    /// The catalogue image it was saved from (its kernel and defaults).
    pub base_image: String,
    pub source_job: String,
    /// Its compressed disk in the store.
    pub disk: std::path::PathBuf,
}

/// No image store: only catalogue images exist.
pub struct NoSavedImages;

impl SavedImages for NoSavedImages {
    fn find(&self, _: &str) -> Result<Option<SavedImage>, String> {
        Ok(None)
    }
}

/// Why a job was refused. Each is the job's (the user's) to fix; the site
/// configuration was checked when it was loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the job names no VirtualOrganisation and the site has no default_vo")]
    NoVo,
    #[error("unknown VirtualOrganisation {vo:?}; this site serves: {}", known.join(", "))]
    UnknownVo { vo: String, known: Vec<String> },
    #[error(
        "{owner} is not a member of VO {vo:?} at this site (its members: {members}); \
         the site admin lists a VO's members in site.yaml (vos.{vo}.unix_groups, users)"
    )]
    NotMember {
        vo: String,
        owner: String,
        members: String,
    },
    #[error("the job names no VirtualOrganisation, and {owner} is a member of no VO at this site")]
    MemberOfNoVo { owner: String },
    #[error(
        "the job names no VirtualOrganisation, and {owner} is a member of several VOs ({}): \
         name one, e.g. VirtualOrganisation = \"{}\"",
        vos.join(", "),
        vos[0]
    )]
    MemberOfSeveralVos { owner: String, vos: Vec<String> },
    #[error("the job names no image and the site has no default image (defaults.image)")]
    NoImage,
    #[error("invalid image name {image:?}: {reason}")]
    InvalidImageName { image: String, reason: String },
    #[error("unknown image {image:?}; the catalogue has: {}", catalogue.join(", "))]
    UnknownImage {
        image: String,
        catalogue: Vec<String>,
    },
    #[error(
        "VO {vo:?} may not use image {image:?}{} (allowed: {allowed}){}",
        if *from_default { ", the site's default image" } else { "" },
        if *from_default { "; the job must name an image" } else { "" }
    )]
    ImageNotAllowed {
        vo: String,
        image: String,
        allowed: String,
        from_default: bool,
    },
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error("memory {requested} MiB exceeds VO {vo:?}'s limit max_memory_mib = {limit}")]
    MemoryOverLimit {
        vo: String,
        requested: u64,
        limit: u64,
    },
    #[error("{requested} vCPUs exceed VO {vo:?}'s limit max_vcpus = {limit}")]
    VcpusOverLimit {
        vo: String,
        requested: u32,
        limit: u32,
    },
    #[error("disk {requested} MiB exceeds VO {vo:?}'s limit max_disk_mib = {limit}")]
    DiskOverLimit {
        vo: String,
        requested: u64,
        limit: u64,
    },
    #[error("invalid hostname {hostname:?}: {reason}")]
    InvalidHostname { hostname: String, reason: String },
    #[error("image {image:?} was saved by VO {owner:?}; VO {vo:?} may not use it")]
    SavedByOtherVo {
        image: String,
        owner: String,
        vo: String,
    },
    #[error("this site does not save images (save_images: never); remove SaveImage/SaveAs from the request")]
    SaveRefused,
    #[error("cannot save as {name:?}: {reason}")]
    BadSaveName { name: String, reason: String },
    #[error(
        "network {network:?} is not one of this site's networks ({})",
        if allowed.is_empty() {
            format!("VO {vo:?} may use none")
        } else {
            format!("VO {vo:?} may use: {}", allowed.join(", "))
        }
    )]
    UnknownNetwork {
        vo: String,
        network: String,
        allowed: Vec<String>,
    },
    #[error(
        "VO {vo:?} may not use network {network:?} ({}); the site admin lists a VO's \
         networks in site.yaml (vos.{vo}.networks)",
        if allowed.is_empty() {
            "it may use none".to_string()
        } else {
            format!("it may use: {}", allowed.join(", "))
        }
    )]
    NetworkNotAllowed {
        vo: String,
        network: String,
        allowed: Vec<String>,
    },
    #[error("network {network:?} is asked for twice; a domain has one interface per network")]
    DuplicateNetwork { network: String },
    #[error("network \"none\" means no network: it cannot be asked for with others ({})", others.join(", "))]
    NoneWithOthers { others: Vec<String> },
    #[error("network \"none\" has no addresses: remove the ip {ip}")]
    IpOnNone { ip: Ipv4Addr },
    #[error(
        "static address {ip} on network {network:?}: a bridge network's addresses come from \
         the site's DHCP; remove the ip"
    )]
    IpOnBridge { network: String, ip: Ipv4Addr },
    #[error("static address {ip} is outside network {network:?}'s subnet {subnet}")]
    IpOutsideSubnet {
        network: String,
        ip: Ipv4Addr,
        subnet: Ipv4Net,
    },
    #[error(
        "static address {ip} is {what} of network {network:?} ({subnet}); guests may use \
         {first} to {last}"
    )]
    IpReserved {
        network: String,
        ip: Ipv4Addr,
        subnet: Ipv4Net,
        what: &'static str,
        first: Ipv4Addr,
        last: Ipv4Addr,
    },
    #[error("members {first:?} and {second:?} both ask for address {ip} on network {network:?}")]
    DuplicateAddress {
        network: String,
        ip: Ipv4Addr,
        first: String,
        second: String,
    },
    #[error(
        "the pool has more members on network {network:?} than its subnet {subnet} has addresses"
    )]
    PoolOutOfAddresses { network: String, subnet: Ipv4Net },
    /// The site's: its image store could not be read.
    #[error("cannot look up image {image:?} in the site's image store: {reason}")]
    StoreUnreadable { image: String, reason: String },
}

impl Blame for PolicyError {
    /// Every refusal is the job's to fix, but for an unreadable store: the
    /// site's configuration itself was checked when it was loaded.
    fn fault(&self) -> Fault {
        match self {
            PolicyError::StoreUnreadable { .. } => Fault::Site,
            _ => Fault::User,
        }
    }
}

/// Admit a job of `owner` naming VO `vo` (None or empty: the owner's VO,
/// see [`choose_vo`]) asking for `req`.
pub fn admit(
    site: &SiteConfig,
    owner: &Owner,
    vo: Option<&str>,
    req: &EnvironmentRequest,
    store: &dyn SavedImages,
) -> Result<ResolvedEnvironment, PolicyError> {
    // 1. The VO: one the owner is a member of.
    let policy = choose_vo(site, owner, vo)?;

    // 2. The image: named by the request, else the site's default.
    let (image_name, from_default) = match (&req.image, &site.defaults.image) {
        (Some(name), _) => {
            validate_image_name(name).map_err(|reason| PolicyError::InvalidImageName {
                image: name.clone(),
                reason,
            })?;
            (name.as_str(), false)
        }
        (None, Some(name)) => (name.as_str(), true),
        (None, None) => return Err(PolicyError::NoImage),
    };
    // A catalogue image, else one this VO saved in the store.
    let mut catalogue_image = image_name.to_string();
    let (image, from_store) = match site.images.get(image_name) {
        Some(image) => {
            if !policy.images.allows(image_name) {
                return Err(PolicyError::ImageNotAllowed {
                    vo: policy.name.clone(),
                    image: image_name.to_string(),
                    allowed: policy.images.to_string(),
                    from_default,
                });
            }
            (image.clone(), false)
        }
        None => {
            let unknown = || PolicyError::UnknownImage {
                image: image_name.to_string(),
                catalogue: site.images.keys().cloned().collect(),
            };
            let saved = store
                .find(image_name)
                .map_err(|reason| PolicyError::StoreUnreadable {
                    image: image_name.to_string(),
                    reason,
                })?
                .ok_or_else(unknown)?;
            if saved.vo != policy.name {
                return Err(PolicyError::SavedByOtherVo {
                    image: image_name.to_string(),
                    owner: saved.vo,
                    vo: policy.name.clone(),
                });
            }
            // Booted with its base's kernel, initrd and defaults.
            let base = site.images.get(&saved.base_image).ok_or_else(unknown)?;
            catalogue_image = saved.base_image.clone();
            let mut image = base.clone();
            image.name = saved.name.clone();
            image.disk = saved.disk.clone();
            image.format = DiskFormat::Qcow2;
            // Its disk is the store's qcow2, even when its base was a volume.
            image.lvm = None;
            image.description = Some(format!(
                "saved from {} (job {})",
                saved.base_image, saved.source_job
            ));
            (image, true)
        }
    };

    // 3. Values: request, else image defaults, else site defaults.
    let defaults = &site.defaults;
    let memory_mib = req
        .memory_mib
        .or(image.defaults.memory_mib)
        .unwrap_or(defaults.memory_mib);
    let vcpus = req.vcpus.or(image.defaults.vcpus).unwrap_or(defaults.vcpus);
    let disk_mib = req
        .disk_mib
        .or(image.defaults.disk_mib)
        .unwrap_or(defaults.disk_mib);
    let hostname = req
        .hostname
        .clone()
        .or_else(|| image.defaults.hostname.clone())
        .unwrap_or_else(|| defaults.hostname.clone());

    // 4. Limits.
    if memory_mib == 0 {
        return Err(PolicyError::Zero { what: "memory_mib" });
    }
    if vcpus == 0 {
        return Err(PolicyError::Zero { what: "vcpus" });
    }
    if disk_mib == 0 {
        return Err(PolicyError::Zero { what: "disk_mib" });
    }
    if let Some(limit) = policy.max_memory_mib.filter(|&l| memory_mib > l) {
        return Err(PolicyError::MemoryOverLimit {
            vo: policy.name.clone(),
            requested: memory_mib,
            limit,
        });
    }
    if let Some(limit) = policy.max_vcpus.filter(|&l| vcpus > l) {
        return Err(PolicyError::VcpusOverLimit {
            vo: policy.name.clone(),
            requested: vcpus,
            limit,
        });
    }
    if let Some(limit) = policy.max_disk_mib.filter(|&l| disk_mib > l) {
        return Err(PolicyError::DiskOverLimit {
            vo: policy.name.clone(),
            requested: disk_mib,
            limit,
        });
    }

    // 5. Hostname (the site's defaults were checked at load).
    validate_hostname(&hostname).map_err(|reason| PolicyError::InvalidHostname {
        hostname: hostname.clone(),
        reason,
    })?;

    // 6. Saving the disk afterwards: the job asks, the site decides.
    let asked = req.save_image.unwrap_or(false) || req.save_as.is_some();
    let save_image = match site.save_images {
        SavePolicy::Never if asked => return Err(PolicyError::SaveRefused),
        SavePolicy::Never => false,
        SavePolicy::OnRequest | SavePolicy::OnSuccess => asked,
        SavePolicy::Always => true,
    };
    if let Some(name) = &req.save_as {
        let bad = |reason: String| PolicyError::BadSaveName {
            name: name.clone(),
            reason,
        };
        validate_image_name(name).map_err(bad)?;
        if site.images.contains_key(name) {
            return Err(bad("the catalogue has an image of that name".into()));
        }
        let taken = store
            .find(name)
            .map_err(|reason| PolicyError::StoreUnreadable {
                image: name.clone(),
                reason,
            })?;
        if taken.is_some() {
            return Err(bad(
                "the image store already has an image of that name".into()
            ));
        }
    }

    // 7. Networks: the site's, the VO's, addresses within their subnets.
    let networks = resolve_networks(site, policy, &req.networks)?;

    Ok(ResolvedEnvironment {
        vo: policy.name.clone(),
        image,
        memory_mib,
        vcpus,
        disk_mib,
        hostname,
        catalogue_image,
        from_store,
        save_image,
        save_as: req.save_as.clone().filter(|_| save_image),
        save_only_on_success: site.save_images == SavePolicy::OnSuccess,
        store_quota_bytes: policy.max_store_mib.map(|m| m << 20),
        networks,
    })
}

/// The interfaces `asked` names, checked against the site and the VO's
/// `networks`: `none` alone is no network; each network at most once; a
/// static address only where SmartDomains hands them out (not on a bridge),
/// within the subnet, and neither its network, host (first) nor broadcast
/// address.
pub fn resolve_networks(
    site: &SiteConfig,
    policy: &VoPolicy,
    asked: &[NetworkRequest],
) -> Result<Vec<ResolvedNic>, PolicyError> {
    if let Some(none) = asked.iter().find(|n| n.name == NO_NETWORK) {
        if let Some(ip) = none.ip {
            return Err(PolicyError::IpOnNone { ip });
        }
        let others: Vec<String> = asked
            .iter()
            .filter(|n| n.name != NO_NETWORK)
            .map(|n| n.name.clone())
            .collect();
        if !others.is_empty() {
            return Err(PolicyError::NoneWithOthers { others });
        }
        return Ok(Vec::new());
    }
    let mut nics: Vec<ResolvedNic> = Vec::new();
    for n in asked {
        let Some(network) = site.networks.get(&n.name) else {
            return Err(PolicyError::UnknownNetwork {
                vo: policy.name.clone(),
                network: n.name.clone(),
                allowed: policy.networks.clone(),
            });
        };
        if !policy.networks.contains(&n.name) {
            return Err(PolicyError::NetworkNotAllowed {
                vo: policy.name.clone(),
                network: n.name.clone(),
                allowed: policy.networks.clone(),
            });
        }
        if nics.iter().any(|nic| nic.network == n.name) {
            return Err(PolicyError::DuplicateNetwork {
                network: n.name.clone(),
            });
        }
        if let Some(ip) = n.ip {
            check_static_address(&n.name, &network.kind, ip)?;
        }
        nics.push(ResolvedNic {
            network: n.name.clone(),
            kind: network.kind.clone(),
            ip: n.ip,
        });
    }
    Ok(nics)
}

fn check_static_address(name: &str, kind: &NetworkKind, ip: Ipv4Addr) -> Result<(), PolicyError> {
    let Some(subnet) = kind.subnet() else {
        return Err(PolicyError::IpOnBridge {
            network: name.to_string(),
            ip,
        });
    };
    if !subnet.contains(&ip) {
        return Err(PolicyError::IpOutsideSubnet {
            network: name.to_string(),
            ip,
            subnet,
        });
    }
    let host = sd_site::first_host(subnet);
    let what = if ip == subnet.network() {
        "the network address"
    } else if ip == subnet.broadcast() {
        "the broadcast address"
    } else if ip == host {
        match kind {
            NetworkKind::Nat { .. } => "the host's address (the gateway)",
            _ => "the host's address (the subnet's first, kept for the host side)",
        }
    } else {
        return Ok(());
    };
    Err(PolicyError::IpReserved {
        network: name.to_string(),
        ip,
        subnet,
        what,
        first: Ipv4Addr::from(u32::from(host) + 1),
        last: Ipv4Addr::from(u32::from(subnet.broadcast()) - 1),
    })
}

/// The members of one pool, as admitted: no two ask for the same static
/// address on the same network. (Each pool has its own segment of a
/// `private` network, so pools never clash with each other there.)
pub fn check_pool_addresses(members: &[(&str, &ResolvedEnvironment)]) -> Result<(), PolicyError> {
    let mut seen: Vec<(&str, Ipv4Addr, &str)> = Vec::new();
    for (member, env) in members {
        for nic in &env.networks {
            let Some(ip) = nic.ip else { continue };
            if let Some((_, _, first)) = seen
                .iter()
                .find(|(network, addr, _)| *network == nic.network && *addr == ip)
            {
                return Err(PolicyError::DuplicateAddress {
                    network: nic.network.clone(),
                    ip,
                    first: first.to_string(),
                    second: member.to_string(),
                });
            }
            seen.push((&nic.network, ip, member));
        }
    }
    Ok(())
}

/// Gives every member of a pool without a static address on a `private`
/// network the lowest address of its subnet that no member has, so that
/// all of them are known before the first boots (each member's
/// `/etc/hosts` names the others). Run after [`check_pool_addresses`].
/// A `nat` network's addresses are the node's, leased at boot (its guests
/// do not reach each other); a `bridge` network's are the site's DHCP's.
pub fn assign_pool_addresses(members: &mut [&mut ResolvedEnvironment]) -> Result<(), PolicyError> {
    let taken: Vec<(String, Ipv4Addr)> = members
        .iter()
        .flat_map(|env| env.networks.iter())
        .filter_map(|nic| Some((nic.network.clone(), nic.ip?)))
        .collect();
    let mut taken = taken;
    for env in members.iter_mut() {
        for nic in env.networks.iter_mut() {
            let (NetworkKind::Private { subnet }, None) = (&nic.kind, nic.ip) else {
                continue;
            };
            let first = u32::from(sd_site::first_host(*subnet)) + 1;
            let last = u32::from(subnet.broadcast()) - 1;
            let free = (first..=last)
                .map(Ipv4Addr::from)
                .find(|ip| !taken.contains(&(nic.network.clone(), *ip)))
                .ok_or_else(|| PolicyError::PoolOutOfAddresses {
                    network: nic.network.clone(),
                    subnet: *subnet,
                })?;
            taken.push((nic.network.clone(), free));
            nic.ip = Some(free);
        }
    }
    Ok(())
}

/// The VO a job of `owner` acts for. A named VO must be one the owner is a
/// member of (`site.yaml` says who is; the request only picks among them).
/// With none named: the owner's only VO; with several, the site's
/// `default_vo` if it is one of them. Root may act for any VO.
pub fn choose_vo<'a>(
    site: &'a SiteConfig,
    owner: &Owner,
    named: Option<&str>,
) -> Result<&'a VoPolicy, PolicyError> {
    if let Some(name) = named.filter(|v| !v.is_empty()) {
        let policy = site.vos.get(name).ok_or_else(|| PolicyError::UnknownVo {
            vo: name.to_string(),
            known: site.vos.keys().cloned().collect(),
        })?;
        return match owner {
            Owner::Root => Ok(policy),
            Owner::User(user) if policy.members.admits(user) => Ok(policy),
            Owner::User(_) => Err(PolicyError::NotMember {
                vo: name.to_string(),
                owner: owner.to_string(),
                members: policy.members.to_string(),
            }),
        };
    }
    let default = site.default_vo.as_deref().and_then(|d| site.vos.get(d));
    let Owner::User(user) = owner else {
        return default.ok_or(PolicyError::NoVo);
    };
    let mine: Vec<&VoPolicy> = site
        .vos
        .values()
        .filter(|p| p.members.admits(user))
        .collect();
    match mine[..] {
        [] => Err(PolicyError::MemberOfNoVo {
            owner: owner.to_string(),
        }),
        [only] => Ok(only),
        _ => default
            .filter(|d| mine.iter().any(|m| m.name == d.name))
            .ok_or_else(|| PolicyError::MemberOfSeveralVos {
                owner: owner.to_string(),
                vos: mine.iter().map(|m| m.name.clone()).collect(),
            }),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const SITE: &str = "\
image_dir: images
defaults: { image: debian-minimal, hostname: sd-guest }
images:
  debian-minimal:
    disk: debian-minimal.qcow2
    kernel: vmlinuz
    initrd: initrd.img
    description: Debian 12 minbase
    defaults: { memory_mib: 768, disk_mib: 4096 }
  busybox: { disk: busybox.raw, format: raw, kernel: vmlinuz, initrd: initrd.img }
vos:
  demo:
    images: [debian-minimal, busybox]
    max_memory_mib: 2048
    max_vcpus: 2
    max_disk_mib: 8192
    networks: [nat, lab, site]
  atlas:
    images: [debian-minimal]
    max_memory_mib: 1024
    max_vcpus: 1
  open: { images: \"*\" }
  belle: { images: \"*\", unix_groups: [belle, belle-pilot], users: [carol] }
default_vo: demo
networks:
  nat: { kind: nat, subnet: 10.213.0.0/24 }
  lab: { kind: private, subnet: 10.214.0.0/24 }
  site: { kind: bridge, bridge: br0 }
  dmz: { kind: private, subnet: 10.215.0.0/30 }
";

    fn site() -> SiteConfig {
        SiteConfig::from_str(SITE, Path::new("/etc/sd/site.yaml")).unwrap()
    }

    fn refusal(vo: Option<&str>, req: EnvironmentRequest) -> String {
        let e = admit(&site(), &Owner::Root, vo, &req, &NoSavedImages).unwrap_err();
        e.to_string()
    }

    /// A store that cannot be read is the site's fault, never "unknown
    /// image" (the user's): the front end then says so and exits as such.
    #[test]
    fn an_unreadable_store_is_the_sites_fault() {
        struct Broken;
        impl SavedImages for Broken {
            fn find(&self, _: &str) -> Result<Option<SavedImage>, String> {
                Err("Permission denied (os error 13)".into())
            }
        }
        let req = EnvironmentRequest::image_only("my-saved-image");
        let e = admit(&site(), &Owner::Root, Some("demo"), &req, &Broken).unwrap_err();
        assert_eq!(e.fault(), Fault::Site);
        assert!(e.to_string().contains("Permission denied"), "{e}");
        let e = admit(&site(), &Owner::Root, Some("demo"), &req, &NoSavedImages).unwrap_err();
        assert_eq!(e.fault(), Fault::User);
        assert!(e.to_string().starts_with("unknown image"), "{e}");
    }

    #[test]
    fn admitted_environment() {
        let req = EnvironmentRequest {
            image: Some("debian-minimal".into()),
            memory_mib: Some(1024),
            vcpus: Some(2),
            disk_mib: None,
            save_image: Some(true),
            save_as: Some("worker-image".into()),
            hostname: Some("worker-1.example.org".into()),
            networks: vec![
                NetworkRequest {
                    name: "lab".into(),
                    ip: Some(Ipv4Addr::new(10, 214, 0, 10)),
                },
                NetworkRequest::named("nat"),
            ],
        };
        insta::assert_yaml_snapshot!(admit(
            &site(),
            &Owner::Root,
            Some("demo"),
            &req,
            &NoSavedImages
        )
        .unwrap());
    }

    #[test]
    fn values_come_from_request_then_image_then_site() {
        let site = site();
        // Nothing asked: default VO, default image, its defaults, then the site's.
        let env = admit(
            &site,
            &Owner::Root,
            None,
            &EnvironmentRequest::default(),
            &NoSavedImages,
        )
        .unwrap();
        assert_eq!(env.vo, "demo");
        assert_eq!(env.image.name, "debian-minimal");
        assert_eq!(
            env.image.disk,
            Path::new("/etc/sd/images/debian-minimal.qcow2")
        );
        assert_eq!((env.memory_mib, env.vcpus, env.disk_mib), (768, 1, 4096));
        assert_eq!(env.hostname, "sd-guest");
        assert!(!env.save_image);
        // An image without defaults gets the site's.
        let env = admit(
            &site,
            &Owner::Root,
            Some("demo"),
            &EnvironmentRequest::image_only("busybox"),
            &NoSavedImages,
        )
        .unwrap();
        assert_eq!((env.memory_mib, env.vcpus, env.disk_mib), (512, 1, 2048));
        assert_eq!(env.image.format, sd_site::DiskFormat::Raw);
        // The request wins.
        let req = EnvironmentRequest {
            memory_mib: Some(600),
            disk_mib: Some(100),
            ..Default::default()
        };
        let env = admit(&site, &Owner::Root, Some("atlas"), &req, &NoSavedImages).unwrap();
        assert_eq!(
            (env.vo.as_str(), env.memory_mib, env.vcpus, env.disk_mib),
            ("atlas", 600, 1, 100)
        );
        // Limits are inclusive; a VO without limits has none.
        let req = EnvironmentRequest {
            memory_mib: Some(2048),
            vcpus: Some(2),
            disk_mib: Some(8192),
            ..Default::default()
        };
        assert!(admit(&site, &Owner::Root, Some("demo"), &req, &NoSavedImages).is_ok());
        let req = EnvironmentRequest {
            image: Some("busybox".into()),
            memory_mib: Some(1 << 20),
            vcpus: Some(64),
            ..Default::default()
        };
        assert!(admit(&site, &Owner::Root, Some("open"), &req, &NoSavedImages).is_ok());
        // An empty VO name counts as none.
        assert_eq!(
            admit(
                &site,
                &Owner::Root,
                Some(""),
                &EnvironmentRequest::default(),
                &NoSavedImages
            )
            .unwrap()
            .vo,
            "demo"
        );
    }

    fn user(name: &str, groups: &[&str]) -> Owner {
        Owner::User(sd_host::owner::UnixUser {
            uid: 5001,
            name: name.into(),
            gid: 5001,
            gids: vec![5001],
            groups: groups.iter().map(|g| g.to_string()).collect(),
        })
    }

    fn vo_of(owner: &Owner, named: Option<&str>) -> Result<String, String> {
        choose_vo(&site(), owner, named)
            .map(|p| p.name.clone())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_vo_is_one_the_owner_is_a_member_of() {
        let (alice, carol) = (
            user("alice", &["alice", "belle-pilot"]),
            user("carol", &["carol"]),
        );
        assert_eq!(vo_of(&alice, Some("belle")).unwrap(), "belle");
        assert_eq!(vo_of(&carol, Some("belle")).unwrap(), "belle");
        // Named or not, membership decides: the request only picks among the owner's VOs.
        assert_eq!(vo_of(&alice, None).unwrap(), "belle");
        assert_eq!(vo_of(&alice, Some("")).unwrap(), "belle");
        insta::assert_snapshot!(
            vo_of(&alice, Some("demo")).unwrap_err(),
            @r#"user alice (uid 5001) is not a member of VO "demo" at this site (its members: none but root); the site admin lists a VO's members in site.yaml (vos.demo.unix_groups, users)"#
        );
        insta::assert_snapshot!(
            vo_of(&user("dave", &["dave", "belle-admins"]), Some("belle")).unwrap_err(),
            @r#"user dave (uid 5001) is not a member of VO "belle" at this site (its members: Unix groups belle, belle-pilot; users carol); the site admin lists a VO's members in site.yaml (vos.belle.unix_groups, users)"#
        );
        // A member of none gets none, not the site's default VO.
        insta::assert_snapshot!(
            vo_of(&user("dave", &["dave"]), None).unwrap_err(),
            @"the job names no VirtualOrganisation, and user dave (uid 5001) is a member of no VO at this site"
        );
        // Root may act for any VO; naming none, it gets the default.
        assert_eq!(vo_of(&Owner::Root, Some("belle")).unwrap(), "belle");
        assert_eq!(vo_of(&Owner::Root, None).unwrap(), "demo");
        // Unknown stays unknown, whoever asks.
        assert!(vo_of(&alice, Some("lhcb"))
            .unwrap_err()
            .starts_with("unknown VirtualOrganisation \"lhcb\""));
    }

    #[test]
    fn several_vos_default_only_if_a_member() {
        let with = |default: &str| {
            let text = SITE
                .replace("default_vo: demo", &format!("default_vo: {default}"))
                .replace("  atlas:\n", "  atlas:\n    unix_groups: [atlas]\n");
            SiteConfig::from_str(&text, Path::new("/etc/sd/site.yaml")).unwrap()
        };
        let both = user("erin", &["erin", "atlas", "belle"]);
        let site = with("belle");
        assert_eq!(choose_vo(&site, &both, None).unwrap().name, "belle");
        let site = with("demo");
        insta::assert_snapshot!(
            choose_vo(&site, &both, None).unwrap_err(),
            @r#"the job names no VirtualOrganisation, and user erin (uid 5001) is a member of several VOs (atlas, belle): name one, e.g. VirtualOrganisation = "atlas""#
        );
        assert_eq!(
            choose_vo(&site, &both, Some("atlas")).unwrap().name,
            "atlas"
        );
        // The whole admission refuses a non-member before looking at the image.
        let e = admit(
            &site,
            &user("dave", &["dave"]),
            Some("atlas"),
            &EnvironmentRequest::image_only("nonexistent"),
            &NoSavedImages,
        )
        .unwrap_err();
        assert!(matches!(e, PolicyError::NotMember { .. }), "{e}");
    }

    #[test]
    fn refused_unknown_image() {
        insta::assert_snapshot!(refusal(
            Some("demo"),
            EnvironmentRequest::image_only("centos")
        ));
    }

    #[test]
    fn refused_image_not_allowed_for_vo() {
        insta::assert_snapshot!(refusal(
            Some("atlas"),
            EnvironmentRequest::image_only("busybox")
        ));
    }

    #[test]
    fn refused_default_image_not_allowed_for_vo() {
        let mut site = site();
        site.defaults.image = Some("busybox".into());
        let e = admit(
            &site,
            &Owner::Root,
            Some("atlas"),
            &EnvironmentRequest::default(),
            &NoSavedImages,
        )
        .unwrap_err();
        insta::assert_snapshot!(e.to_string());
    }

    #[test]
    fn refused_memory_over_limit() {
        let req = EnvironmentRequest {
            memory_mib: Some(4096),
            ..Default::default()
        };
        insta::assert_snapshot!(refusal(Some("demo"), req));
    }

    #[test]
    fn refused_vcpus_over_limit() {
        let req = EnvironmentRequest {
            vcpus: Some(2),
            ..Default::default()
        };
        insta::assert_snapshot!(refusal(Some("atlas"), req));
    }

    #[test]
    fn refused_disk_over_limit() {
        let req = EnvironmentRequest {
            disk_mib: Some(10_000),
            ..Default::default()
        };
        insta::assert_snapshot!(refusal(Some("demo"), req));
    }

    #[test]
    fn refused_zero() {
        let req = EnvironmentRequest {
            vcpus: Some(0),
            ..Default::default()
        };
        insta::assert_snapshot!(refusal(Some("demo"), req));
    }

    #[test]
    fn refused_unknown_vo() {
        insta::assert_snapshot!(refusal(Some("cms"), EnvironmentRequest::default()));
    }

    #[test]
    fn refused_no_vo() {
        let mut site = site();
        site.default_vo = None;
        let e = admit(
            &site,
            &Owner::Root,
            None,
            &EnvironmentRequest::default(),
            &NoSavedImages,
        )
        .unwrap_err();
        assert_eq!(e, PolicyError::NoVo);
        insta::assert_snapshot!(e.to_string());
    }

    #[test]
    fn refused_no_image() {
        let mut site = site();
        site.defaults.image = None;
        let e = admit(
            &site,
            &Owner::Root,
            Some("demo"),
            &EnvironmentRequest::default(),
            &NoSavedImages,
        )
        .unwrap_err();
        assert_eq!(e, PolicyError::NoImage);
    }

    #[test]
    fn refused_bad_hostname() {
        let req = EnvironmentRequest {
            hostname: Some("my_host".into()),
            ..Default::default()
        };
        insta::assert_snapshot!(refusal(Some("demo"), req));
    }

    #[test]
    fn refused_image_name_with_a_slash() {
        insta::assert_snapshot!(refusal(
            Some("demo"),
            EnvironmentRequest::image_only("../../etc/shadow")
        ));
    }

    #[test]
    fn image_names_never_reach_a_path() {
        for name in [
            "/etc/passwd",
            "a/b",
            "..",
            "../x",
            "debian-minimal/../busybox",
            "Debian-Minimal",
            "",
        ] {
            let e = admit(
                &site(),
                &Owner::Root,
                Some("demo"),
                &EnvironmentRequest::image_only(name),
                &NoSavedImages,
            )
            .unwrap_err();
            assert!(
                matches!(e, PolicyError::InvalidImageName { .. }),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn the_vo_is_checked_before_the_image() {
        let e = admit(
            &site(),
            &Owner::Root,
            Some("cms"),
            &EnvironmentRequest::image_only("../x"),
            &NoSavedImages,
        )
        .unwrap_err();
        assert!(matches!(e, PolicyError::UnknownVo { .. }));
    }

    fn nets(list: &[(&str, Option<&str>)]) -> EnvironmentRequest {
        EnvironmentRequest {
            networks: list
                .iter()
                .map(|(name, ip)| NetworkRequest {
                    name: name.to_string(),
                    ip: ip.map(|ip| ip.parse().unwrap()),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn admitted(vo: &str, req: &EnvironmentRequest) -> ResolvedEnvironment {
        admit(&site(), &Owner::Root, Some(vo), req, &NoSavedImages).unwrap()
    }

    #[test]
    fn networks_resolve() {
        let env = admitted(
            "demo",
            &nets(&[("nat", None), ("lab", Some("10.214.0.254"))]),
        );
        let names: Vec<_> = env.networks.iter().map(|n| n.network.as_str()).collect();
        assert_eq!(names, ["nat", "lab"]);
        assert_eq!(env.networks[0].kind.name(), "nat");
        assert_eq!(env.networks[1].ip, Some(Ipv4Addr::new(10, 214, 0, 254)));
        assert_eq!(
            admitted("demo", &nets(&[("site", None)])).networks[0].kind,
            NetworkKind::Bridge {
                bridge: "br0".into()
            }
        );
        // Nothing, or `none` alone: no network.
        assert!(admitted("atlas", &EnvironmentRequest::default())
            .networks
            .is_empty());
        assert!(admitted("atlas", &nets(&[("none", None)]))
            .networks
            .is_empty());
        // The smallest subnet has one guest address.
        let mut site = site();
        site.vos
            .get_mut("demo")
            .unwrap()
            .networks
            .push("dmz".into());
        let env = admit(
            &site,
            &Owner::Root,
            Some("demo"),
            &nets(&[("dmz", Some("10.215.0.2"))]),
            &NoSavedImages,
        )
        .unwrap();
        assert_eq!(env.networks[0].ip, Some(Ipv4Addr::new(10, 215, 0, 2)));
        // What a journal written before networks existed reads back as.
        let mut json = serde_json::to_value(admitted("demo", &nets(&[]))).unwrap();
        assert!(json.get("networks").is_none());
        json.as_object_mut().unwrap().remove("networks");
        let back: ResolvedEnvironment = serde_json::from_value(json).unwrap();
        assert!(back.networks.is_empty());
    }

    #[test]
    fn refused_networks() {
        let cases = [
            ("unknown", "demo", nets(&[("nat", None), ("wan", None)])),
            (
                "unknown_for_a_vo_with_none",
                "atlas",
                nets(&[("wan", None)]),
            ),
            ("not_allowed", "demo", nets(&[("dmz", None)])),
            (
                "not_allowed_for_a_vo_with_none",
                "atlas",
                nets(&[("nat", None)]),
            ),
            (
                "twice",
                "demo",
                nets(&[("nat", None), ("lab", None), ("nat", None)]),
            ),
            (
                "none_with_others",
                "demo",
                nets(&[("none", None), ("nat", None)]),
            ),
            ("ip_on_none", "demo", nets(&[("none", Some("10.0.0.2"))])),
            (
                "ip_on_bridge",
                "demo",
                nets(&[("site", Some("192.168.1.20"))]),
            ),
            ("ip_outside", "demo", nets(&[("lab", Some("10.213.0.10"))])),
            (
                "ip_network_address",
                "demo",
                nets(&[("lab", Some("10.214.0.0"))]),
            ),
            ("ip_gateway", "demo", nets(&[("nat", Some("10.213.0.1"))])),
            (
                "ip_host_on_private",
                "demo",
                nets(&[("lab", Some("10.214.0.1"))]),
            ),
            (
                "ip_broadcast",
                "demo",
                nets(&[("lab", Some("10.214.0.255"))]),
            ),
        ];
        for (name, vo, req) in cases {
            let e = admit(&site(), &Owner::Root, Some(vo), &req, &NoSavedImages).unwrap_err();
            assert_eq!(e.fault(), Fault::User, "{name}");
            insta::assert_snapshot!(format!("refused_network_{name}"), e.to_string());
        }
    }

    #[test]
    fn pool_addresses() {
        let a = admitted("demo", &nets(&[("lab", Some("10.214.0.10"))]));
        let b = admitted("demo", &nets(&[("lab", Some("10.214.0.11"))]));
        let c = admitted(
            "demo",
            &nets(&[("nat", None), ("lab", Some("10.214.0.10"))]),
        );
        let d = admitted("demo", &nets(&[("nat", None), ("lab", None)]));
        assert_eq!(
            check_pool_addresses(&[("a", &a), ("b", &b), ("d", &d), ("e", &d)]),
            Ok(())
        );
        let e =
            check_pool_addresses(&[("db", &a), ("worker-1", &b), ("worker-2", &c)]).unwrap_err();
        assert_eq!(e.fault(), Fault::User);
        insta::assert_snapshot!(e.to_string());
    }
}
