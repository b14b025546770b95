//! The site configuration as the rest of SmartDomains sees it: defaults
//! filled in, paths absolute, every value checked.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

pub use ipnet::Ipv4Net;

use serde::{Deserialize, Serialize, Serializer};

/// Where the site configuration lives unless `$SD_CONFIG` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smartdomains/site.yaml";

pub(crate) const DEFAULT_STATE_DIR: &str = "/var/lib/smartdomains";
pub(crate) const DEFAULT_LOG_DIR: &str = "/var/log/smartdomains";
pub(crate) const DEFAULT_QEMU_BINARY: &str = "qemu-system-x86_64";
pub(crate) const DEFAULT_BOOT_TIMEOUT_SECS: u64 = 60;
pub(crate) const DEFAULT_SHUTDOWN_TIMEOUT_SECS: u64 = 10;
/// A request (JDL) is small: 1 MiB is ~100 times the largest real one.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = 1 << 20;
pub(crate) const DEFAULT_MEMORY_MIB: u64 = 512;
pub(crate) const DEFAULT_VCPUS: u32 = 1;
pub(crate) const DEFAULT_DISK_MIB: u64 = 2048;
pub(crate) const DEFAULT_HOSTNAME: &str = "sd-guest";
pub(crate) const DEFAULT_THIN_POOL: &str = "pool";

// ---------------------------------------------------------------------------
// The resolved configuration
// ---------------------------------------------------------------------------

/// The site configuration, defaults filled in and paths resolved (absolute).
#[derive(Debug, Clone, Serialize)]
pub struct SiteConfig {
    /// The file this configuration was read from (absolute).
    pub path: PathBuf,
    /// Journals, sockets and overlays of running domains.
    pub state_dir: PathBuf,
    /// Directory the catalogue's files are relative to.
    pub image_dir: PathBuf,
    /// Console logs of domains.
    pub log_dir: PathBuf,
    pub backend: Backend,
    pub acceleration: Acceleration,
    /// Whether domains start from booted templates (QEMU).
    pub templates: Templates,
    pub qemu: QemuConfig,
    pub xen: XenConfig,
    pub boot_timeout_secs: u64,
    pub shutdown_timeout_secs: u64,
    /// Largest request (a JDL) root reads for a user, in bytes: checked on the
    /// open file before reading, so a huge or sparse file costs nothing.
    pub max_request_bytes: u64,
    /// What a job gets for what it does not ask for.
    pub defaults: SiteDefaults,
    /// The image catalogue, by name.
    pub images: BTreeMap<String, CatalogueImage>,
    /// The VOs this site serves, by name.
    pub vos: BTreeMap<String, VoPolicy>,
    /// The `networks:` section: the networks a domain may be attached to,
    /// by name (`none`, no network, is not one of them).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub networks: BTreeMap<String, Network>,
    /// VO of jobs that name none.
    pub default_vo: Option<String>,
    /// When a job's disk is kept as a new image in the store.
    pub save_images: SavePolicy,
    /// The `lvm:` section: where the bases of `format: lvm` images live.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmConfig>,
    /// The `node_limits:` section: what this node runs at most, for every
    /// front end.
    #[serde(skip_serializing_if = "NodeLimits::is_default")]
    pub node_limits: NodeLimits,
    /// The `hosts:` section: what a pool description's `sfProcessHost`
    /// names (`PhysHost01.cern.ch`) stand for here: a node of the
    /// allocation by name or index (`@0`), or `localhost`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub hosts: BTreeMap<String, String>,
}

/// The `node_limits:` section. Checked before a deployment makes anything,
/// under a lock shared by every front end on the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct NodeLimits {
    /// Domains on this node at once.
    pub max_domains: u32,
    /// Domains of one uid on this node at once.
    pub max_domains_per_user: u32,
    /// Host memory no domain may have: domains share MemTotal minus this.
    pub memory_reserve_mib: u64,
}

impl Default for NodeLimits {
    fn default() -> NodeLimits {
        // Memory is what bounds a node first; the counts bound the rest
        // (a pool of 16 members of one user, as tests/pool.rs boots, fits).
        NodeLimits {
            max_domains: 32,
            max_domains_per_user: 16,
            memory_reserve_mib: 1024,
        }
    }
}

impl NodeLimits {
    fn is_default(&self) -> bool {
        *self == NodeLimits::default()
    }
}

/// The `lvm:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LvmConfig {
    /// Volume group of the thin pool.
    pub vg: String,
    /// Thin pool the base volumes (and so the job snapshots) live in.
    pub thin_pool: String,
}

/// Where an `lvm` image's base is: a thin volume `vg/lv` of pool `thin_pool`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LvmBase {
    pub vg: String,
    pub thin_pool: String,
    pub lv: String,
}

/// When a job's disk becomes a new image in the site's image store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SavePolicy {
    /// Never; a job that asks (`SaveImage = true`) is refused.
    Never,
    /// When the job asks.
    OnRequest,
    /// When the job asks and ends with exit status 0.
    OnSuccess,
    /// After every job.
    Always,
}

/// Which hypervisor runs the domains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Qemu,
    Xen,
}

/// Hardware acceleration for QEMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Acceleration {
    Auto,
    Kvm,
    Tcg,
}

/// Starting domains from booted templates (copy-on-write RAM, QEMU only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Templates {
    /// Every domain that can be cloned is; a missing or stale template is
    /// built on first need.
    Auto,
    /// Every domain boots.
    Off,
}

/// Format of a catalogue disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Qcow2,
    Raw,
    /// A thin logical volume (raw contents); the job's disk is a thin snapshot.
    Lvm,
}

impl DiskFormat {
    /// The format QEMU and qemu-img name the disk's contents by (an lvm
    /// volume holds raw bytes).
    pub fn qemu_format(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw | DiskFormat::Lvm => "raw",
        }
    }
}

/// The `qemu:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QemuConfig {
    /// A bare name is looked up in `$PATH`; a name with a `/` is a path
    /// (relative to the config file's directory).
    pub binary: PathBuf,
    /// User QEMU drops to (`-runas`) when started by root.
    pub run_as: Option<String>,
    /// `-sandbox on`.
    pub sandbox: bool,
}

/// The `xen:` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct XenConfig {
    /// PV (no hardware virtualisation needed) or PVH.
    pub guest_type: XenGuestType,
    /// `xl`'s `cpuid =` for PVH guests: the host's policy with these
    /// changes. The default hides `rdtscp`, which nested SVM (Xen under
    /// QEMU) cannot emulate.
    pub pvh_cpuid: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XenGuestType {
    Pv,
    Pvh,
}

/// The site-wide `defaults:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteDefaults {
    /// Image of jobs that name none (`None`: such jobs are refused).
    pub image: Option<String>,
    pub memory_mib: u64,
    pub vcpus: u32,
    pub disk_mib: u64,
    pub hostname: String,
}

/// An image's own `defaults:`, overriding the site's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageDefaults {
    pub memory_mib: Option<u64>,
    pub vcpus: Option<u32>,
    pub disk_mib: Option<u64>,
    pub hostname: Option<String>,
}

/// One entry of the image catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogueImage {
    pub name: String,
    /// Base disk (absolute); a job's disk is a copy-on-write overlay on it.
    /// For an `lvm` image, its base volume's device `/dev/VG/LV`.
    pub disk: PathBuf,
    pub format: DiskFormat,
    /// The base volume of an `lvm` image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lvm: Option<LvmBase>,
    /// Guest kernel (absolute).
    pub kernel: PathBuf,
    /// Guest initrd (absolute).
    pub initrd: PathBuf,
    pub description: Option<String>,
    pub defaults: ImageDefaults,
}

/// What a VO may use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VoPolicy {
    pub name: String,
    pub images: AllowedImages,
    /// `None`: no limit beyond the host's.
    pub max_memory_mib: Option<u64>,
    pub max_vcpus: Option<u32>,
    pub max_disk_mib: Option<u64>,
    /// Most the VO's saved images may take in the store (compressed).
    pub max_store_mib: Option<u64>,
    /// Who belongs to it (`unix_groups`, `users`).
    pub members: VoMembers,
    /// The site networks its jobs may use (all in `networks:`, checked at
    /// load); empty: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
}

/// The network name that means "no network" (the default); never a key of
/// `networks:`.
pub const NO_NETWORK: &str = "none";

/// The destinations a `nat` network denies unless its `deny:` says
/// otherwise: the private, link-local and carrier-grade NAT ranges, where a
/// site's own services live.
pub const DEFAULT_NAT_DENY: [&str; 5] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
];

/// Smallest subnet a network may have (a /30: a network address, the
/// host's, one guest's, a broadcast address).
pub const MAX_SUBNET_PREFIX: u8 = 30;

/// One entry of `networks:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub name: String,
    pub kind: NetworkKind,
}

/// What a network is. Serialized with its `kind:` as the tag, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum NetworkKind {
    /// The domain reaches the outside through the host, masqueraded; nothing
    /// comes in. The host's side is the subnet's first address (the
    /// gateway); guests get the others.
    Nat {
        subnet: Ipv4Net,
        /// Resolvers given to guests (default: none).
        dns: Vec<Ipv4Addr>,
        /// Destinations guests may not reach (default: [`DEFAULT_NAT_DENY`]).
        /// The host itself (the gateway) is never reachable, except for DNS
        /// (port 53) when `dns` lists the gateway.
        deny: Vec<Ipv4Net>,
        /// Exceptions to `deny` (default: none).
        allow: Vec<Ipv4Net>,
    },
    /// An isolated L2 segment per pool (or per job), never routed: every
    /// segment reuses the same subnet. Its first address is kept for the
    /// host side, as on `nat`.
    Private { subnet: Ipv4Net },
    /// An existing host bridge on the site network; the site's DHCP gives
    /// the addresses (no subnet, no static address).
    Bridge { bridge: String },
}

impl NetworkKind {
    /// `nat`, `private` or `bridge`, as in site.yaml.
    pub fn name(&self) -> &'static str {
        match self {
            NetworkKind::Nat { .. } => "nat",
            NetworkKind::Private { .. } => "private",
            NetworkKind::Bridge { .. } => "bridge",
        }
    }

    /// The subnet SmartDomains gives addresses from (none for a bridge).
    pub fn subnet(&self) -> Option<Ipv4Net> {
        match self {
            NetworkKind::Nat { subnet, .. } | NetworkKind::Private { subnet } => Some(*subnet),
            NetworkKind::Bridge { .. } => None,
        }
    }

    /// The host's own address on the network: the subnet's first address
    /// (the gateway of a `nat` network). None for a bridge.
    pub fn host_address(&self) -> Option<Ipv4Addr> {
        self.subnet().map(first_host)
    }
}

/// The first address after the network address of `subnet`.
pub fn first_host(subnet: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(subnet.network()).wrapping_add(1))
}

/// Who belongs to a VO, as the site admin wrote it: the users in any of
/// `unix_groups`, and the users named in `users` (`"*"`: every local user).
/// Checked against the job owner's groups from the user database
/// ([`sd_host::owner`]), never against what a request says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct VoMembers {
    pub unix_groups: Vec<String>,
    pub users: Vec<String>,
    /// `users: ["*"]`: every user the node knows (a test bed, not a grid site).
    pub everyone: bool,
}

impl VoMembers {
    pub fn admits(&self, user: &sd_host::owner::UnixUser) -> bool {
        self.everyone
            || self.users.contains(&user.name)
            || self
                .unix_groups
                .iter()
                .any(|g| user.groups.iter().any(|ug| ug == g))
    }
}

impl fmt::Display for VoMembers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.everyone {
            return f.write_str("every local user");
        }
        let mut parts = Vec::new();
        if !self.unix_groups.is_empty() {
            parts.push(format!("Unix groups {}", self.unix_groups.join(", ")));
        }
        if !self.users.is_empty() {
            parts.push(format!("users {}", self.users.join(", ")));
        }
        if parts.is_empty() {
            f.write_str("none but root")
        } else {
            f.write_str(&parts.join("; "))
        }
    }
}

/// The images a VO may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedImages {
    /// `"*"`: the whole catalogue.
    All,
    /// These catalogue names (all in the catalogue, checked at load).
    Only(Vec<String>),
}

impl AllowedImages {
    pub fn allows(&self, image: &str) -> bool {
        match self {
            AllowedImages::All => true,
            AllowedImages::Only(names) => names.iter().any(|n| n == image),
        }
    }
}

impl fmt::Display for AllowedImages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowedImages::All => f.write_str("*"),
            AllowedImages::Only(names) => f.write_str(&names.join(", ")),
        }
    }
}

impl Serialize for AllowedImages {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            AllowedImages::All => s.serialize_str("*"),
            AllowedImages::Only(names) => names.serialize(s),
        }
    }
}
