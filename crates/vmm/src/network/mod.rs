//! The host side of a domain's network interface, built from the kernel's
//! own parts with Debian's `ip` and `nft`.
//!
//! - **nat**: one bridge per network (`sdn-NAME`) holding the gateway, the
//!   subnet's first address; an `inet` table per network masquerades what
//!   leaves, drops forwarding to denied ranges (allowed ones excepted),
//!   lets nothing in but replies and nothing reach the host but DNS to the
//!   gateway when the gateway is the resolver; `ip_forward` on. Each tap is
//!   an `isolated` bridge port: guests of one NAT network do not see each
//!   other.
//! - **private**: a bridge per segment (a pool or a job), no host address,
//!   nothing routed in or out, nothing delivered to the host. A segment
//!   that spans hosts (a pool over the nodes of an allocation) has a
//!   [`Tunnel`]: a VXLAN port on its bridge, one VNI per segment and
//!   network, flooding to the other hosts; its frames never meet another
//!   segment's, here or there.
//! - **bridge**: the tap joins an existing bridge of the site; the site's
//!   DHCP hands out addresses. Only the MAC is checked.
//!
//! Every NIC gets a host end, a MAC derived from the deployment, a lease (nat, private) and an anti-spoofing table in the
//! `bridge` family. The host end is either a tap we make, which its QEMU
//! user may open ([`HostEnd::Tap`]), or a vif the hypervisor makes
//! ([`HostEnd::HypervisorVif`]: Xen's netback, put on the bridge by Xen's
//! `vif-bridge` script) under the name we chose, so that its anti-spoofing
//! table, keyed by that name, is in place before the vif exists; what must
//! be set on the port itself then comes after create
//! ([`hypervisor_port_ready`]). Each of these is a journal [`Resource`], recorded
//! before it is made; [`undo`] removes one and tolerates it being gone.
//! The shared parts of a network (bridge, nft table) are made while its
//! lease file is locked and removed by the undo of the last deployment
//! that recorded them once no lease is left, also after a crash.
//!
//! IPv4 only: guests get no IPv6 (dropped at the tap, and disabled on our
//! bridges so that the host has no link-local address there).
//!
//! Everything acts in the caller's network namespace (the tests run in a
//! throw-away one).

mod cmd;
pub mod leases;
pub mod rules;

use crate::journal::{Journal, JournalError, Resource};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// An IPv4 network `addr/prefix_len` (the address is the network's: host
/// bits are zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Subnet {
    /// `addr/prefix_len` with the host bits cleared; None if prefix_len > 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Subnet> {
        (prefix_len <= 32).then(|| Subnet {
            addr: Ipv4Addr::from(u32::from(addr) & Self::mask_of(prefix_len)),
            prefix_len,
        })
    }

    fn mask_of(prefix_len: u8) -> u32 {
        if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix_len))
        }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask_of(self.prefix_len) == u32::from(self.addr)
    }

    /// First and last address a host may have (not the network's nor the
    /// broadcast address).
    pub fn hosts(&self) -> (Ipv4Addr, Ipv4Addr) {
        let net = u32::from(self.addr);
        let bcast = net | !Self::mask_of(self.prefix_len);
        if self.prefix_len >= 31 {
            (Ipv4Addr::from(net), Ipv4Addr::from(bcast))
        } else {
            (Ipv4Addr::from(net + 1), Ipv4Addr::from(bcast - 1))
        }
    }

    /// The gateway of a NAT network: the first host address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.hosts().0
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IPv4 address"))?;
        let prefix_len: u8 = p
            .parse()
            .ok()
            .filter(|&p| p <= 32)
            .ok_or_else(|| format!("{p:?} is not a prefix length (0-32)"))?;
        let net = Subnet::new(addr, prefix_len).expect("checked");
        if net.addr != addr {
            return Err(format!("{s:?} has host bits set (the network is {net})"));
        }
        Ok(net)
    }
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// Locally administered, unicast, derived from the deployment and the NIC.
    pub fn derive(deployment_id: &str, nic_index: u32) -> Mac {
        let h = Sha256::digest(format!("sd-mac\0{deployment_id}\0{nic_index}").as_bytes());
        Mac([(h[0] & 0xfc) | 0x02, h[1], h[2], h[3], h[4], h[5]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// What kind of network a NIC is on (the site's declaration, resolved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetworkKind {
    Nat {
        subnet: Subnet,
        /// Resolvers the guest is given. If the gateway is one of them, the
        /// host's port 53 on the gateway is open to the guests.
        dns: Vec<Ipv4Addr>,
        deny: Vec<Subnet>,
        allow: Vec<Subnet>,
    },
    Private {
        subnet: Subnet,
        /// The segment: a pool's or a job's id. Segments never meet.
        segment: String,
        /// The segment's other hosts, when it spans several.
        tunnel: Option<Tunnel>,
    },
    Bridge {
        /// An existing host bridge.
        bridge: String,
    },
}

impl NetworkError {
    /// Whether the request caused it (its static address, or none left in
    /// the network), not the host: such a job fails, its node stays in service.
    pub fn is_the_requests(&self) -> bool {
        matches!(
            self,
            NetworkError::AddressOutOfRange { .. }
                | NetworkError::AddressTaken { .. }
                | NetworkError::NoFreeAddress { .. }
                | NetworkError::StaticOnBridge(_)
        )
    }
}

impl NetworkKind {
    /// The site's declaration of a network, for a deployment whose private
    /// networks are `segment` (reaching the other hosts of `tunnel`).
    pub fn of_site(
        kind: &sd_site::NetworkKind,
        segment: &str,
        tunnel: Option<&Tunnel>,
    ) -> NetworkKind {
        let subnet = |net: &sd_site::Ipv4Net| Subnet {
            addr: net.network(),
            prefix_len: net.prefix_len(),
        };
        match kind {
            sd_site::NetworkKind::Nat {
                subnet: net,
                dns,
                deny,
                allow,
            } => NetworkKind::Nat {
                subnet: subnet(net),
                dns: dns.clone(),
                deny: deny.iter().map(subnet).collect(),
                allow: allow.iter().map(subnet).collect(),
            },
            sd_site::NetworkKind::Private { subnet: net } => NetworkKind::Private {
                subnet: subnet(net),
                segment: segment.to_string(),
                tunnel: tunnel.cloned(),
            },
            sd_site::NetworkKind::Bridge { bridge } => NetworkKind::Bridge {
                bridge: bridge.clone(),
            },
        }
    }
}

/// How a private segment reaches its other hosts: VXLAN (UDP
/// [`VXLAN_PORT`]) over the hosts' own network, the VNI derived from `key`
/// and the network's name so that every host derives the same one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tunnel {
    /// Unique among the segments that may meet on the hosts' network at
    /// once: the allocation and the pool (`slurm-JOB/pool-NAME`).
    pub key: String,
    /// The other hosts' addresses. Broadcast and unknown destinations are
    /// sent to each; the bridge learns where each guest is.
    pub peers: Vec<Ipv4Addr>,
}

/// VXLAN's IANA port.
pub const VXLAN_PORT: u16 = 4789;

impl Tunnel {
    /// The VNI of `network` on this tunnel's segment: 24 bits of hash,
    /// never 0.
    pub fn vni(&self, network: &str) -> u32 {
        let h = Sha256::digest(format!("vxlan\0{}\0{network}", self.key).as_bytes());
        (u32::from_be_bytes([0, h[0], h[1], h[2]])).max(1)
    }
}

/// One NIC of a domain, as the caller resolved it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicConfig {
    /// The site's name of the network (letters, digits, '-', '_').
    pub network: String,
    pub kind: NetworkKind,
    /// A static address asked for (nat, private); None: the lowest free.
    pub ip: Option<Ipv4Addr>,
    pub host_end: HostEnd,
}

/// Who makes the host end of a NIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEnd {
    /// We make a tap that `user` (the unprivileged QEMU's uid) may open,
    /// and put it on the bridge (QEMU).
    Tap { user: u32 },
    /// The hypervisor makes it while it creates the domain and puts it on
    /// the bridge (Xen's vif); we make everything around it, and
    /// [`hypervisor_port_ready`] what needs the port to exist.
    HypervisorVif,
}

/// What the hypervisor and the guest need of an attached NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedNic {
    /// The host end's name: the tap (QEMU: `-netdev
    /// tap,ifname=TAP,script=no,downscript=no`) or the vif the hypervisor
    /// is to make (Xen: the vif's dom0 name).
    pub tap: String,
    /// The bridge the host end is a port of (Xen: the vif's bridge).
    pub bridge: String,
    /// Whether the port is `isolated` on its bridge (NAT: guests of one
    /// network do not see each other). Set by [`attach`] on a tap, by
    /// [`hypervisor_port_ready`] on a vif.
    pub isolated: bool,
    pub mac: Mac,
    /// None on a `bridge` network (the site's DHCP).
    pub ip: Option<Ipv4Addr>,
    pub prefix_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("cannot run {tool}: {source} (install Debian's {package})")]
    Tool {
        tool: &'static str,
        package: &'static str,
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot set {path}: {source} (is this root, in the right network namespace?)")]
    Sysctl {
        path: String,
        source: std::io::Error,
    },
    #[error("lease file {path}: {source}")]
    Leases {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "lease file {path} is corrupt ({message}): remove it once no domain of that network runs"
    )]
    CorruptLeases { path: PathBuf, message: String },
    #[error("address {ip} is not usable on network {network:?} ({subnet}: a domain may have {first} to {last}, not the gateway)")]
    AddressOutOfRange {
        network: String,
        ip: Ipv4Addr,
        subnet: Subnet,
        first: Ipv4Addr,
        last: Ipv4Addr,
    },
    #[error("address {ip} of network {network:?} is taken (by {holder}): choose another, or leave it out to get a free one")]
    AddressTaken {
        network: String,
        ip: Ipv4Addr,
        holder: String,
    },
    #[error("network {network:?} ({subnet}) has no free address left: the site must widen it, or wait for domains to end")]
    NoFreeAddress { network: String, subnet: Subnet },
    #[error("network name {0:?} is not valid: use 1 to 32 letters, digits, '-' and '_'")]
    BadName(String),
    #[error("a static address does not fit a `bridge` network ({0:?}): its addresses come from the site's DHCP")]
    StaticOnBridge(String),
    #[error("host bridge {0:?} does not exist: the site's `bridge` network names a bridge this node lacks")]
    NoSuchBridge(String),
    #[error("interface {0} (the NIC's tap or vif) already exists: a crashed deployment of the same id left it? `sd cleanup` it first")]
    TapExists(String),
    #[error("the hypervisor's port {port} is not on bridge {bridge} ({found}): is its hotplug script (Xen: /etc/xen/scripts/vif-bridge) installed and working? See its log (Xen: /var/log/xen/xen-hotplug.log)")]
    NotOnBridge {
        port: String,
        bridge: String,
        found: String,
    },
    #[error(transparent)]
    Journal(#[from] JournalError),
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

fn hex_tag(parts: &[&str], chars: usize) -> String {
    let h = Sha256::digest(parts.join("\0").as_bytes());
    h.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(chars)
        .collect()
}

/// Interface names are at most 15 bytes (IFNAMSIZ - 1).
const IFNAME_MAX: usize = 15;

/// The part of host-wide names that tells sites apart: 4 hex digits of
/// the state directory (as domain names have). Two sites on one host (a
/// test's and the real one) never share a bridge, tap or table.
pub fn site_scope(state_dir: &Path) -> String {
    format!(
        "{:04x}",
        sd_host::name_tag(state_dir.as_os_str().as_encoded_bytes()) & 0xffff
    )
}

/// The bridge of NAT network `network` of site `scope`: `sdn-NAME-SCOPE`,
/// or `sdn-HASH` when that does not fit.
pub fn nat_bridge_name(scope: &str, network: &str) -> String {
    let plain = format!("sdn-{network}-{scope}");
    if plain.len() <= IFNAME_MAX
        && network
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        plain
    } else {
        format!("sdn-{}", hex_tag(&["nat", scope, network], 11))
    }
}

/// The bridge of one private segment.
pub fn private_bridge_name(scope: &str, network: &str, segment: &str) -> String {
    format!("sdp-{}", hex_tag(&["private", scope, network, segment], 11))
}

/// The tap of NIC `nic_index` of a deployment (48 bits of hash: unique
/// on a node in practice, and checked).
pub fn tap_name(scope: &str, deployment_id: &str, nic_index: u32) -> String {
    format!(
        "sdt{}",
        hex_tag(&["tap", scope, deployment_id, &nic_index.to_string()], 12)
    )
}

fn nat_table_name(scope: &str, network: &str) -> String {
    format!("sd-nat-{network}-{scope}")
}

fn private_table_name(bridge: &str) -> String {
    format!("sd-{bridge}")
}

fn spoof_table_name(tap: &str) -> String {
    format!("sd-spoof-{tap}")
}

fn lease_path(state_dir: &Path, key: &str) -> PathBuf {
    leases::lease_dir(state_dir).join(format!("{key}.json"))
}

/// Connects NIC `nic_index` of the deployment of `journal` to its network:
/// records each part in the journal, then makes it. On an error, what was
/// made is in the journal: the caller's rollback undoes it.
pub fn attach(
    journal: &mut Journal,
    state_dir: &Path,
    nic_index: u32,
    nic: &NicConfig,
) -> Result<AttachedNic, NetworkError> {
    if !valid_name(&nic.network) {
        return Err(NetworkError::BadName(nic.network.clone()));
    }
    let id = journal.id().to_string();
    let owner = format!("{id}/{nic_index}");
    let scope = site_scope(state_dir);
    let tap = tap_name(&scope, &id, nic_index);
    let mac = Mac::derive(&id, nic_index);
    // What is recorded first of the host end: a port of that name not in
    // the journal is someone else's.
    let marker = match nic.host_end {
        HostEnd::Tap { .. } => Resource::Tap { name: tap.clone() },
        HostEnd::HypervisorVif => Resource::NftTable {
            family: "bridge".into(),
            name: spoof_table_name(&tap),
            leases: None,
        },
    };
    if journal_lacks(journal, &marker) && cmd::link_exists(&tap)? {
        return Err(NetworkError::TapExists(tap));
    }

    let (bridge, ip, prefix_len, gateway, dns, isolated) = match &nic.kind {
        NetworkKind::Nat {
            subnet,
            dns,
            deny,
            allow,
        } => {
            let bridge = nat_bridge_name(&scope, &nic.network);
            let table = nat_table_name(&scope, &nic.network);
            let path = lease_path(state_dir, &format!("nat-{}", nic.network));
            let gateway = subnet.gateway();
            let mut locked = leases::lock(&path)?;
            shared_bridge(journal, &bridge, &path, Some((gateway, subnet.prefix_len)))?;
            journal.record(Resource::NftTable {
                family: "inet".into(),
                name: table.clone(),
                leases: Some(path.clone()),
            })?;
            let script = rules::nat_table(
                &table,
                &bridge,
                *subnet,
                gateway,
                dns.contains(&gateway),
                deny,
                allow,
            );
            cmd::nft_script(&format!("NAT network {}", nic.network), &script)?;
            cmd::sysctl("net/ipv4/ip_forward", "1")?;
            let ip = lease(
                journal,
                &mut locked,
                &nic.network,
                *subnet,
                Some(gateway),
                nic.ip,
                &owner,
                &path,
            )?;
            (
                bridge,
                Some(ip),
                subnet.prefix_len,
                Some(gateway),
                dns.clone(),
                true,
            )
        }
        NetworkKind::Private {
            subnet,
            segment,
            tunnel,
        } => {
            let bridge = private_bridge_name(&scope, &nic.network, segment);
            let table = private_table_name(&bridge);
            let path = lease_path(
                state_dir,
                &format!("private-{}-{}", nic.network, &bridge[4..]),
            );
            let mut locked = leases::lock(&path)?;
            shared_bridge(journal, &bridge, &path, None)?;
            if let Some(tunnel) = tunnel {
                shared_tunnel(journal, &bridge, &path, tunnel.vni(&nic.network), tunnel)?;
            }
            journal.record(Resource::NftTable {
                family: "inet".into(),
                name: table.clone(),
                leases: Some(path.clone()),
            })?;
            cmd::nft_script(
                &format!("private network {} segment {segment}", nic.network),
                &rules::private_table(&table, &bridge),
            )?;
            let ip = lease(
                journal,
                &mut locked,
                &nic.network,
                *subnet,
                // The first address is kept for the host side, as admission
                // and pool planning keep it (a future DHCP or DNS there).
                Some(subnet.gateway()),
                nic.ip,
                &owner,
                &path,
            )?;
            (bridge, Some(ip), subnet.prefix_len, None, vec![], false)
        }
        NetworkKind::Bridge { bridge } => {
            if nic.ip.is_some() {
                return Err(NetworkError::StaticOnBridge(nic.network.clone()));
            }
            if !cmd::link_exists(bridge)? {
                return Err(NetworkError::NoSuchBridge(bridge.clone()));
            }
            (bridge.clone(), None, 0, None, vec![], false)
        }
    };

    if let HostEnd::Tap { user } = nic.host_end {
        journal.record(Resource::Tap { name: tap.clone() })?;
        let uid = user.to_string();
        if !cmd::link_exists(&tap)? {
            cmd::run(
                "ip",
                &["tuntap", "add", "dev", &tap, "mode", "tap", "user", &uid],
            )?;
        }
    }
    // The guest's MAC is the one it gets from QEMU; the tap's own (the host
    // end) is left as the kernel chose it.
    let spoof = spoof_table_name(&tap);
    journal.record(Resource::NftTable {
        family: "bridge".into(),
        name: spoof.clone(),
        leases: None,
    })?;
    // The filter exists before the port joins the bridge (a vif's: before
    // the vif exists; nft matches the name).
    cmd::nft_script(
        &format!("anti-spoofing of {tap}"),
        &rules::spoof_table(&spoof, &tap, mac, ip),
    )?;
    if let HostEnd::Tap { .. } = nic.host_end {
        cmd::sysctl(&format!("net/ipv6/conf/{tap}/disable_ipv6"), "1")?;
        cmd::run("ip", &["link", "set", "dev", &tap, "master", &bridge])?;
        if isolated {
            isolate_port(&tap)?;
        }
        cmd::run("ip", &["link", "set", "dev", &tap, "up"])?;
    }
    Ok(AttachedNic {
        tap,
        bridge,
        isolated,
        mac,
        ip,
        prefix_len,
        gateway,
        dns,
    })
}

fn isolate_port(port: &str) -> Result<(), NetworkError> {
    cmd::run(
        "ip",
        &[
            "link",
            "set",
            "dev",
            port,
            "type",
            "bridge_slave",
            "isolated",
            "on",
        ],
    )
    .map(drop)
}

/// How long [`hypervisor_port_ready`] waits for the port to be on its bridge.
pub const HYPERVISOR_PORT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What [`attach`] leaves undone on a [`HostEnd::HypervisorVif`], once the
/// hypervisor made the port `port` and put it on `bridge` (Xen: after
/// create, before the domain is unpaused): no IPv6 on it, and `isolated`
/// on the bridge if `isolated`. Waits (bounded) for the port to join.
pub fn hypervisor_port_ready(port: &str, bridge: &str, isolated: bool) -> Result<(), NetworkError> {
    let deadline = std::time::Instant::now() + HYPERVISOR_PORT_TIMEOUT;
    loop {
        match cmd::master_of(port)? {
            Some(master) if master == bridge => break,
            Some(other) => {
                return Err(NetworkError::NotOnBridge {
                    port: port.to_string(),
                    bridge: bridge.to_string(),
                    found: format!("it is a port of {other}"),
                })
            }
            None if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            None => {
                let secs = HYPERVISOR_PORT_TIMEOUT.as_secs();
                return Err(NetworkError::NotOnBridge {
                    port: port.to_string(),
                    bridge: bridge.to_string(),
                    found: if cmd::link_exists(port)? {
                        format!("on no bridge after {secs} s")
                    } else {
                        format!("no such interface after {secs} s")
                    },
                });
            }
        }
    }
    cmd::sysctl(&format!("net/ipv6/conf/{port}/disable_ipv6"), "1")?;
    if isolated {
        isolate_port(port)?;
    }
    Ok(())
}

fn journal_lacks(journal: &Journal, r: &Resource) -> bool {
    !journal.data().resources.contains(r)
}

/// Records, then makes (if missing) a network's shared bridge, with the
/// gateway's address if it has one. The caller holds the lease lock.
fn shared_bridge(
    journal: &mut Journal,
    bridge: &str,
    leases: &Path,
    address: Option<(Ipv4Addr, u8)>,
) -> Result<(), NetworkError> {
    journal.record(Resource::Bridge {
        name: bridge.to_string(),
        leases: leases.to_path_buf(),
    })?;
    if !cmd::link_exists(bridge)? {
        cmd::run("ip", &["link", "add", "name", bridge, "type", "bridge"])?;
    }
    cmd::sysctl(&format!("net/ipv6/conf/{bridge}/disable_ipv6"), "1")?;
    if let Some((gw, prefix)) = address {
        cmd::run(
            "ip",
            &["addr", "replace", &format!("{gw}/{prefix}"), "dev", bridge],
        )?;
    }
    cmd::run("ip", &["link", "set", "dev", bridge, "up"])?;
    Ok(())
}

/// The VXLAN port of a private segment's bridge (`sdx-HASH`).
pub fn tunnel_name(bridge: &str) -> String {
    format!("sdx-{}", hex_tag(&["vxlan", bridge], 11))
}

/// Records, then makes (if missing) the VXLAN port of `bridge`, shared by
/// the segment's deployments on this host like the bridge. The caller
/// holds the lease lock.
fn shared_tunnel(
    journal: &mut Journal,
    bridge: &str,
    leases: &Path,
    vni: u32,
    tunnel: &Tunnel,
) -> Result<(), NetworkError> {
    let name = tunnel_name(bridge);
    journal.record(Resource::Tunnel {
        name: name.clone(),
        leases: leases.to_path_buf(),
    })?;
    if !cmd::link_exists(&name)? {
        // MTU 1500 as the guests' NICs have: the 50 bytes of VXLAN's own
        // header may make the outer packet a fragment on a 1500-byte
        // network (the kernel sets no DF on it), never a dropped frame.
        cmd::run(
            "ip",
            &[
                "link",
                "add",
                &name,
                "mtu",
                "1500",
                "type",
                "vxlan",
                "id",
                &vni.to_string(),
                "dstport",
                &VXLAN_PORT.to_string(),
            ],
        )?;
    }
    for peer in &tunnel.peers {
        let peer = peer.to_string();
        let args = [
            "fdb",
            "append",
            "00:00:00:00:00:00",
            "dev",
            &name,
            "dst",
            &peer,
        ];
        // Another member of the segment on this host added it already.
        let ran = cmd::run_raw("bridge", &args, None)?;
        if !ran.ok && !ran.stderr.contains("File exists") {
            return Err(NetworkError::Command {
                command: format!("bridge {}", args.join(" ")),
                stderr: ran.stderr,
            });
        }
    }
    cmd::sysctl(&format!("net/ipv6/conf/{name}/disable_ipv6"), "1")?;
    cmd::run("ip", &["link", "set", "dev", &name, "master", bridge])?;
    cmd::run("ip", &["link", "set", "dev", &name, "up"])?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn lease(
    journal: &mut Journal,
    locked: &mut leases::Locked,
    network: &str,
    subnet: Subnet,
    reserved: Option<Ipv4Addr>,
    wanted: Option<Ipv4Addr>,
    owner: &str,
    path: &Path,
) -> Result<Ipv4Addr, NetworkError> {
    let ip = locked.take(network, subnet, reserved, wanted, owner)?;
    journal.record(Resource::Lease {
        network: network.to_string(),
        ip,
        owner: owner.to_string(),
        path: path.to_path_buf(),
    })?;
    locked.save()?;
    Ok(ip)
}

/// Undoes one network resource: removes it if it is there (a missing one
/// is fine). A shared bridge or table goes only once its network has no
/// lease left. Returns false for a resource that is not the network's
/// (the caller undoes it).
pub fn undo(resource: &Resource) -> Result<bool, NetworkError> {
    match resource {
        Resource::Tap { name } => {
            cmd::delete_link(name)?;
        }
        Resource::Bridge { name, leases } | Resource::Tunnel { name, leases } => {
            let locked = leases::lock(leases)?;
            if locked.is_empty() {
                cmd::delete_link(name)?;
            }
        }
        Resource::NftTable {
            family,
            name,
            leases,
        } => {
            let _locked = match leases {
                Some(path) => {
                    let locked = leases::lock(path)?;
                    if !locked.is_empty() {
                        return Ok(true);
                    }
                    Some(locked)
                }
                None => None,
            };
            cmd::delete_table(family, name)?;
        }
        Resource::Lease {
            ip, owner, path, ..
        } => {
            let mut locked = leases::lock(path)?;
            if locked.release(*ip, owner) {
                locked.save()?;
            }
        }
        _ => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests;
