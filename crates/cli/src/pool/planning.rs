//! Planning a pool: every domain of the description admitted by policy
//! (nothing is made for a refused description), and the order they start
//! in.

use sd_host::owner::Owner;
use sd_languages::description::{Kind, ResolvedComponent, ResolvedDescription, ResolvedValue};
use sd_policy::{self as policy, ResolvedEnvironment};
use sd_request::EnvironmentRequest;
use sd_site::SiteConfig;
use sd_vmm::status;
use std::fs;

use super::liveness::Liveness;
use super::record::MemberRecord;
use super::PoolError;

/// One domain to deploy, admitted by policy.
pub(super) struct PlannedMember {
    pub(super) id: String,
    pub(super) path: String,
    /// What the description asks for it, and in which VO: a node's step
    /// admits it again against that node's site.
    pub(super) request: EnvironmentRequest,
    pub(super) vo: Option<String>,
    pub(super) env: ResolvedEnvironment,
    pub(super) liveness: Liveness,
    /// Its `sfProcessHost` as the description says.
    pub(super) host: String,
    /// The allocation's node it runs on (see [`super::placement`]); None:
    /// on this host.
    pub(super) node: Option<usize>,
}

impl PlannedMember {
    /// Its name and address on each `private` network, for the others'
    /// `/etc/hosts` (every one is assigned at planning).
    pub(super) fn hosts(&self) -> impl Iterator<Item = (String, std::net::Ipv4Addr)> + '_ {
        self.env
            .networks
            .iter()
            .filter(|n| matches!(n.kind, sd_site::NetworkKind::Private { .. }))
            .filter_map(|n| Some((self.env.hostname.clone(), n.ip?)))
    }

    pub(super) fn record(&self) -> MemberRecord {
        MemberRecord {
            id: self.id.clone(),
            path: self.path.clone(),
            image: self.env.image.name.clone(),
            memory_mib: self.env.memory_mib,
            vcpus: self.env.vcpus,
            up_unix_ms: None,
            down_unix_ms: None,
            boot_ms: None,
            liveness_delay_secs: self.liveness.delay_secs,
            liveness_factor: self.liveness.factor,
            node: None,
            step: None,
        }
    }

    /// Its request as a node's step is to admit it: the image, host name
    /// and network addresses this host's planning resolved and assigned,
    /// so that every node deploys the same pool.
    pub(super) fn request_for_node(&self) -> EnvironmentRequest {
        EnvironmentRequest {
            image: Some(self.env.image.name.clone()),
            hostname: Some(self.env.hostname.clone()),
            networks: if self.env.networks.is_empty() {
                // Not the VO's default networks, there.
                vec![sd_request::NetworkRequest {
                    name: "none".into(),
                    ip: None,
                }]
            } else {
                self.env
                    .networks
                    .iter()
                    .map(|n| sd_request::NetworkRequest {
                        name: n.network.clone(),
                        ip: n.ip,
                    })
                    .collect()
            },
            ..self.request.clone()
        }
    }
}

/// The order members start in: which go one after another, which
/// together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StartOrder {
    /// The planned member `i` (of the plan's list).
    Member(usize),
    /// One after another, each once the previous one is up.
    Sequence(Vec<StartOrder>),
    /// All at once.
    Compound(Vec<StartOrder>),
}

/// The deployment id of a domain of pool `name`.
pub(super) fn member_id(name: &str, member: &ResolvedComponent) -> String {
    let below = member
        .path
        .strip_prefix("sfConfig:")
        .map(|p| p.replace(':', "."))
        .unwrap_or_else(|| member.name.clone());
    format!("pool-{name}-{below}")
}

/// A domain's attributes as a request (`vo` attribute, else `default_vo`).
pub(super) fn request_of(
    member: &ResolvedComponent,
) -> Result<(EnvironmentRequest, Option<String>), PoolError> {
    let attribute = |message: String| PoolError::Attribute {
        path: member.path.clone(),
        message,
    };
    let count = |attr: &str| -> Result<Option<u64>, PoolError> {
        match member.get(attr) {
            None => Ok(None),
            Some(ResolvedValue::Int(i)) if *i >= 0 => Ok(Some(*i as u64)),
            Some(other) => Err(attribute(format!(
                "{attr} must be a non-negative integer, not {other}"
            ))),
        }
    };
    let text = |attr: &str| member.get_str(attr).filter(|s| !s.is_empty());
    if let Some(kernel) = text("kernel").filter(|k| *k != "default") {
        tracing::warn!(
            "{}: kernel {kernel:?} is not used: the image's kernel boots",
            member.path
        );
    }
    match member.get("storageBackend") {
        None => {}
        Some(ResolvedValue::Str(s)) if s == "overlay" || s == "default" => {}
        Some(other) => tracing::warn!(
            "{}: storageBackend {other}: the site's copy-on-write overlay is used",
            member.path
        ),
    }
    let vcpus = count("vcpus")?
        .map(|v| u32::try_from(v).map_err(|_| attribute(format!("vcpus {v} is too large"))))
        .transpose()?;
    let request = EnvironmentRequest {
        image: text("image").map(str::to_string),
        memory_mib: count("memory")?,
        vcpus,
        disk_mib: count("disk")?,
        save_image: member.get_bool("saveImage"),
        save_as: text("saveAs").map(str::to_string),
        // A member is known by its name to the others (`/etc/hosts`).
        hostname: text("hostname").map(str::to_string).or_else(|| {
            sd_site::validate_hostname(&member.name)
                .ok()
                .map(|()| member.name.clone())
        }),
        networks: member.network_requests(),
    };
    Ok((request, text("vo").map(str::to_string)))
}

/// Admits every domain under `c` (in description order, appended to
/// `plans`) and returns how they are to be deployed; None if `c` holds no
/// domain. `liveness` is that of the pool holding `c`.
pub(super) fn walk(
    site: &SiteConfig,
    owner: &Owner,
    name: &str,
    vo: Option<&str>,
    c: &ResolvedComponent,
    liveness: Liveness,
    plans: &mut Vec<PlannedMember>,
) -> Result<Option<StartOrder>, PoolError> {
    if c.kind == Kind::Domain {
        let id = member_id(name, c);
        if !status::valid_id(&id) || plans.iter().any(|p| p.id == id) {
            return Err(PoolError::BadMemberId {
                path: c.path.clone(),
                id,
            });
        }
        let (request, own_vo) = request_of(c)?;
        let vo = own_vo.or(vo.map(str::to_string));
        let env = policy::admit(
            site,
            owner,
            vo.as_deref(),
            &request,
            &sd_vmm::image_store::ImageStore::of_site(site),
        )
        .map_err(|error| PoolError::Policy {
            path: c.path.clone(),
            error,
        })?;
        plans.push(PlannedMember {
            id,
            path: c.path.clone(),
            request,
            vo,
            env,
            liveness,
            host: c
                .get_str("sfProcessHost")
                .unwrap_or("localhost")
                .to_string(),
            node: None,
        });
        return Ok(Some(StartOrder::Member(plans.len() - 1)));
    }
    let own = if c.kind.is_pool() {
        Liveness::of(c, liveness)
    } else {
        liveness
    };
    let mut children = Vec::new();
    for m in &c.members {
        if let Some(node) = walk(site, owner, name, vo, m, own, plans)? {
            children.push(node);
        }
    }
    Ok(match (c.kind, children.is_empty()) {
        (_, true) => None,
        (Kind::Compound, false) => Some(StartOrder::Compound(children)),
        // A Sequence, or a plain component holding domains: in order.
        (_, false) => Some(StartOrder::Sequence(children)),
    })
}

/// Every domain of the description, admitted, in description order, and
/// the shape of their deployment.
pub(super) fn plan_members(
    site: &SiteConfig,
    owner: &Owner,
    name: &str,
    description: &ResolvedDescription,
    vo: Option<&str>,
) -> Result<(Vec<PlannedMember>, StartOrder), PoolError> {
    let mut plans: Vec<PlannedMember> = Vec::new();
    let root = &description.root;
    // A lone domain beats by its own attributes.
    let top = Liveness::of(root, Liveness::DEFAULT);
    match walk(site, owner, name, vo, root, top, &mut plans)? {
        Some(node) => {
            // Static addresses: no two members on one address of a network.
            let members: Vec<_> = plans.iter().map(|p| (p.path.as_str(), &p.env)).collect();
            let refused = |error| PoolError::Policy {
                path: root.path.clone(),
                error,
            };
            policy::check_pool_addresses(&members).map_err(refused)?;
            let mut envs: Vec<_> = plans.iter_mut().map(|p| &mut p.env).collect();
            policy::assign_pool_addresses(&mut envs).map_err(refused)?;
            Ok((plans, node))
        }
        None => Err(PoolError::NoDomains),
    }
}

/// Every pool in the tree is a Compound that terminates concurrently.
pub(super) fn terminates_concurrently(c: &ResolvedComponent) -> bool {
    let own = match c.kind {
        Kind::Compound => c.get_bool("sfSyncTerminate") == Some(false),
        Kind::Sequence => false,
        _ => true,
    };
    own && c
        .members
        .iter()
        .filter(|m| m.kind.is_pool())
        .all(terminates_concurrently)
}

/// MiB of memory the host can still give (MemAvailable), if known.
pub(super) fn available_memory_mib() -> Option<u64> {
    let text = fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}
