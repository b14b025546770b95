//! Pure tests, and real ones as root: each of those moves its own test
//! thread into a fresh network namespace (`unshare(CLONE_NEWNET)` acts on
//! the calling thread; the `ip` and `nft` it runs inherit it), so nothing
//! touches the host's network and the namespace dies with the thread.

use super::*;
use std::os::fd::AsRawFd;

fn net(s: &str) -> Subnet {
    s.parse().unwrap()
}

fn in_fresh_netns() {
    sd_host::needs_root("network namespaces, bridges, taps and nftables");
    // SAFETY: unshare of this thread's network namespace only.
    let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        r,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    cmd::run("ip", &["link", "set", "dev", "lo", "up"]).unwrap();
}

fn nat(network: &str, ip: Option<Ipv4Addr>) -> NicConfig {
    NicConfig {
        network: network.into(),
        kind: NetworkKind::Nat {
            subnet: net("10.77.0.0/24"),
            dns: vec!["10.77.0.1".parse().unwrap()],
            deny: vec![net("10.0.0.0/8"), net("172.16.0.0/12")],
            allow: vec![],
        },
        ip,
        host_end: HostEnd::Tap { user: 65534 },
    }
}

/// A NIC on network "private" (192.168.50.0/24), in `segment`.
fn private_nic(segment: &str) -> NicConfig {
    NicConfig {
        network: "private".into(),
        kind: NetworkKind::Private {
            subnet: net("192.168.50.0/24"),
            segment: segment.into(),
            tunnel: None,
        },
        ip: None,
        host_end: HostEnd::Tap { user: 65534 },
    }
}

fn undo_all(journal: &Journal) {
    for r in journal.undo_order() {
        assert!(undo(r).unwrap(), "{r:?} is a network resource");
    }
}

fn links() -> String {
    cmd::run("ip", &["-o", "link", "show"]).unwrap()
}

fn tables() -> String {
    cmd::run("nft", &["list", "tables"]).unwrap()
}

#[test]
fn subnets_parse_and_know_their_hosts() {
    let s = net("10.1.2.0/24");
    assert_eq!(s.gateway(), Ipv4Addr::new(10, 1, 2, 1));
    assert_eq!(
        s.hosts(),
        (Ipv4Addr::new(10, 1, 2, 1), Ipv4Addr::new(10, 1, 2, 254))
    );
    assert!(s.contains(Ipv4Addr::new(10, 1, 2, 200)));
    assert!(!s.contains(Ipv4Addr::new(10, 1, 3, 1)));
    assert!("10.1.2.3/24"
        .parse::<Subnet>()
        .unwrap_err()
        .contains("host bits"));
    assert!("10.1.2.0/33".parse::<Subnet>().is_err());
    assert!("123.456.789.011/8".parse::<Subnet>().is_err());
}

/// The NAT network "nat"'s bridge and table for the site of `state`.
fn nat_br(state: &std::path::Path) -> String {
    nat_bridge_name(&site_scope(state), "nat")
}

fn nat_tb(state: &std::path::Path) -> String {
    nat_table_name(&site_scope(state), "nat")
}

#[test]
fn names_fit_ifnamsiz_and_macs_are_local_unicast_and_stable() {
    for n in [
        nat_bridge_name("1a2b", "nat"),
        nat_bridge_name("1a2b", "a-very-long-network-name"),
        private_bridge_name("1a2b", "private", "pool-xyz"),
        tap_name("1a2b", "job-1234567890-abcdef", 3),
    ] {
        assert!(n.len() <= IFNAME_MAX, "{n}");
    }
    assert_eq!(nat_bridge_name("1a2b", "nat"), "sdn-nat-1a2b");
    assert_ne!(
        nat_bridge_name("1a2b", "nat"),
        nat_bridge_name("3c4d", "nat")
    );
    assert_ne!(
        private_bridge_name("1a2b", "p", "a"),
        private_bridge_name("1a2b", "p", "b")
    );
    assert_ne!(tap_name("1a2b", "d", 0), tap_name("1a2b", "d", 1));
    let m = Mac::derive("d", 0);
    assert_eq!(m, Mac::derive("d", 0));
    assert_ne!(m, Mac::derive("d", 1));
    assert_eq!(m.0[0] & 0x03, 0x02, "locally administered, unicast: {m}");
}

#[test]
fn leases_take_the_lowest_free_a_wanted_one_once_and_release_by_owner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.json");
    let s = net("10.9.0.0/29");
    let gw = Some(s.gateway());
    let mut l = leases::lock(&path).unwrap();
    assert_eq!(
        l.take("n", s, gw, None, "a/0").unwrap(),
        Ipv4Addr::new(10, 9, 0, 2)
    );
    assert_eq!(
        l.take("n", s, gw, None, "a/0").unwrap(),
        Ipv4Addr::new(10, 9, 0, 2),
        "retried"
    );
    assert_eq!(
        l.take("n", s, gw, Some(Ipv4Addr::new(10, 9, 0, 5)), "b/0")
            .unwrap(),
        Ipv4Addr::new(10, 9, 0, 5)
    );
    let e = l
        .take("n", s, gw, Some(Ipv4Addr::new(10, 9, 0, 5)), "c/0")
        .unwrap_err();
    assert!(matches!(e, NetworkError::AddressTaken { .. }), "{e}");
    assert!(e.to_string().contains("taken (by b/0)"), "{e}");
    for bad in [
        Ipv4Addr::new(10, 9, 0, 1),
        Ipv4Addr::new(10, 9, 0, 7),
        Ipv4Addr::new(10, 9, 1, 2),
    ] {
        let e = l.take("n", s, gw, Some(bad), "c/0").unwrap_err();
        assert!(
            matches!(e, NetworkError::AddressOutOfRange { .. }),
            "{bad}: {e}"
        );
    }
    for want in [3, 4, 6] {
        assert_eq!(
            l.take("n", s, gw, None, &format!("x/{want}")).unwrap(),
            Ipv4Addr::new(10, 9, 0, want)
        );
    }
    assert!(matches!(
        l.take("n", s, gw, None, "full/0"),
        Err(NetworkError::NoFreeAddress { .. })
    ));
    l.save().unwrap();
    drop(l);
    let mut l = leases::lock(&path).unwrap();
    assert!(!l.release(Ipv4Addr::new(10, 9, 0, 5), "a/0"), "not a/0's");
    assert!(l.release(Ipv4Addr::new(10, 9, 0, 5), "b/0"));
    assert_eq!(
        l.take("n", s, gw, None, "d/0").unwrap(),
        Ipv4Addr::new(10, 9, 0, 5)
    );
}

/// Xen's case: we make everything but the port; the "hypervisor" (here a
/// veth we put on the bridge, as vif-bridge does) makes it under our name,
/// and hypervisor_port_ready sets what needs it.
#[test]
fn vif_attach_leaves_the_port_to_the_hypervisor() {
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    let mut j = Journal::create(state.path(), "dep-vif").unwrap();
    let config = NicConfig {
        host_end: HostEnd::HypervisorVif,
        ..nat("nat", None)
    };
    let nic = attach(&mut j, state.path(), 0, &config).unwrap();
    assert_eq!(nic.ip, Some(Ipv4Addr::new(10, 77, 0, 2)));
    assert!(nic.isolated);
    assert!(!links().contains(&format!("{}:", nic.tap)), "no tap made");
    let kinds: Vec<&str> = j
        .data()
        .resources
        .iter()
        .map(|r| match r {
            Resource::Bridge { .. } => "bridge",
            Resource::NftTable { family, .. } => family.as_str(),
            Resource::Lease { .. } => "lease",
            Resource::Tap { .. } => "tap",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["bridge", "inet", "lease", "bridge"]);
    let spoof = cmd::run(
        "nft",
        &["list", "table", "bridge", &spoof_table_name(&nic.tap)],
    )
    .unwrap();
    assert!(
        spoof.contains(&format!("iifname \"{}\"", nic.tap)),
        "{spoof}"
    );
    // Attaching again before create changes nothing.
    assert_eq!(attach(&mut j, state.path(), 0, &config).unwrap(), nic);

    // Not there yet: a bounded wait, then the reason.
    let started = std::time::Instant::now();
    let err = hypervisor_port_ready("sdtnothere", &nic.bridge, true).unwrap_err();
    assert!(started.elapsed() >= HYPERVISOR_PORT_TIMEOUT);
    assert!(err.to_string().contains("no such interface"), "{err}");

    cmd::run(
        "ip",
        &[
            "link", "add", &nic.tap, "type", "veth", "peer", "name", "sdvpeer",
        ],
    )
    .unwrap();
    cmd::run(
        "ip",
        &["link", "set", "dev", &nic.tap, "master", &nic.bridge],
    )
    .unwrap();
    cmd::run("ip", &["link", "set", "dev", &nic.tap, "up"]).unwrap();
    hypervisor_port_ready(&nic.tap, &nic.bridge, nic.isolated).unwrap();
    let detail = cmd::run("ip", &["-d", "link", "show", "dev", &nic.tap]).unwrap();
    assert!(detail.contains("isolated on"), "{detail}");
    assert_eq!(
        std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", nic.tap))
            .unwrap()
            .trim(),
        "1"
    );
    // The hypervisor removes its port on destroy; undo removes the rest.
    cmd::delete_link(&nic.tap).unwrap();
    undo_all(&j);
    let l = links();
    assert!(!l.contains("sdn-nat") && !l.contains(&nic.tap), "{l}");
    assert!(!tables().contains("sd-"), "{}", tables());
    assert!(!lease_path(state.path(), "nat-nat").exists());
}

#[test]
fn nat_attach_makes_bridge_tap_and_tables_and_undo_removes_all_idempotently() {
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    let mut j = Journal::create(state.path(), "dep-nat").unwrap();
    let nic = attach(&mut j, state.path(), 0, &nat("nat", None)).unwrap();
    assert_eq!(nic.ip, Some(Ipv4Addr::new(10, 77, 0, 2)));
    assert_eq!(
        (nic.gateway, nic.prefix_len),
        (Some(Ipv4Addr::new(10, 77, 0, 1)), 24)
    );
    assert_eq!(nic.bridge, nat_br(state.path()));
    let l = links();
    assert!(
        l.contains(&format!("{}:", nat_br(state.path()))) && l.contains(&format!("{}:", nic.tap)),
        "{l}"
    );
    assert!(
        l.contains(&format!("master {}", nat_br(state.path()))),
        "{l}"
    );
    let addr = cmd::run(
        "ip",
        &["-o", "-4", "addr", "show", "dev", &nat_br(state.path())],
    )
    .unwrap();
    assert!(addr.contains("10.77.0.1/24"), "{addr}");
    let detail = cmd::run("ip", &["-d", "link", "show", "dev", &nic.tap]).unwrap();
    assert!(detail.contains("isolated on"), "{detail}");
    assert!(
        detail.contains("tun type tap")
            && (detail.contains("user 65534") || detail.contains("user nobody")),
        "the QEMU user may open it: {detail}"
    );
    let t = tables();
    assert!(
        t.contains(&format!("table inet {}", nat_tb(state.path())))
            && t.contains(&format!("table bridge sd-spoof-{}", nic.tap)),
        "{t}"
    );
    // Every part is in the journal, in the order it was made.
    let kinds: Vec<&str> = j
        .data()
        .resources
        .iter()
        .map(|r| match r {
            Resource::Bridge { .. } => "bridge",
            Resource::NftTable { family, .. } => family.as_str(),
            Resource::Lease { .. } => "lease",
            Resource::Tap { .. } => "tap",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds, ["bridge", "inet", "lease", "tap", "bridge"]);
    // Attaching again (a retried step) changes nothing.
    let again = attach(&mut j, state.path(), 0, &nat("nat", None));
    assert_eq!(again.unwrap(), nic);
    assert_eq!(
        cmd::run("nft", &["list", "table", "inet", &nat_tb(state.path())])
            .unwrap()
            .matches("masquerade")
            .count(),
        1
    );

    undo_all(&j);
    let l = links();
    assert!(
        !l.contains(&nat_br(state.path())) && !l.contains(&nic.tap),
        "{l}"
    );
    assert!(!tables().contains("sd-"), "{}", tables());
    assert!(!lease_path(state.path(), "nat-nat").exists());
    // Twice is fine: everything is gone already.
    undo_all(&j);
}

#[test]
fn shared_parts_stay_until_the_last_lease_and_static_addresses_are_taken_once() {
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    let mut a = Journal::create(state.path(), "dep-a").unwrap();
    let mut b = Journal::create(state.path(), "dep-b").unwrap();
    let mut c = Journal::create(state.path(), "dep-c").unwrap();
    let na = attach(
        &mut a,
        state.path(),
        0,
        &nat("nat", Some(Ipv4Addr::new(10, 77, 0, 9))),
    )
    .unwrap();
    let nb = attach(&mut b, state.path(), 0, &nat("nat", None)).unwrap();
    assert_eq!(na.ip, Some(Ipv4Addr::new(10, 77, 0, 9)));
    assert_eq!(nb.ip, Some(Ipv4Addr::new(10, 77, 0, 2)));
    assert_ne!(na.tap, nb.tap);
    assert_ne!(na.mac, nb.mac);
    let e = attach(
        &mut c,
        state.path(),
        0,
        &nat("nat", Some(Ipv4Addr::new(10, 77, 0, 9))),
    )
    .unwrap_err();
    assert!(matches!(e, NetworkError::AddressTaken { .. }), "{e}");
    let e = attach(
        &mut c,
        state.path(),
        0,
        &nat("nat", Some(Ipv4Addr::new(10, 78, 0, 9))),
    )
    .unwrap_err();
    assert!(matches!(e, NetworkError::AddressOutOfRange { .. }), "{e}");
    // The failed deployment's rollback leaves the others' network alone.
    undo_all(&c);
    assert!(links().contains(&format!("{}:", nat_br(state.path()))));
    undo_all(&a);
    assert!(
        links().contains(&format!("{}:", nat_br(state.path()))),
        "b still holds a lease"
    );
    assert!(tables().contains(&nat_tb(state.path())));
    assert!(!links().contains(&na.tap));
    undo_all(&b);
    assert!(!links().contains(&nat_br(state.path())), "{}", links());
    assert!(!tables().contains("sd-"), "{}", tables());
}

#[test]
fn private_segments_get_bridges_of_their_own_with_no_address_and_no_forwarding() {
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    let private = private_nic;
    let mut a = Journal::create(state.path(), "pool1-a").unwrap();
    let mut b = Journal::create(state.path(), "pool2-a").unwrap();
    let na = attach(&mut a, state.path(), 0, &private("pool1")).unwrap();
    let nb = attach(&mut b, state.path(), 0, &private("pool2")).unwrap();
    assert_ne!(na.bridge, nb.bridge);
    assert_eq!(na.gateway, None);
    assert_eq!(
        na.ip,
        Some(Ipv4Addr::new(192, 168, 50, 2)),
        "no gateway, but the first address is kept for the host side"
    );
    assert_eq!(
        nb.ip, na.ip,
        "segments are separate: the same address is fine"
    );
    let addr = cmd::run("ip", &["-o", "addr", "show", "dev", &na.bridge]).unwrap();
    assert!(
        addr.trim().is_empty(),
        "the host has no address on a private segment: {addr}"
    );
    let t = cmd::run(
        "nft",
        &["list", "table", "inet", &format!("sd-{}", na.bridge)],
    )
    .unwrap();
    assert!(
        t.contains(&format!(
            "iifname \"{}\" counter packets 0 bytes 0 drop",
            na.bridge
        )),
        "{t}"
    );
    undo_all(&a);
    undo_all(&b);
    assert!(!links().contains("sdp-"), "{}", links());
    assert!(!tables().contains("sd-"), "{}", tables());
}

#[test]
fn a_segment_over_hosts_gets_one_vxlan_port_flooding_to_each_peer_until_its_last_lease() {
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    let tunnel = Tunnel {
        key: "slurm-7/pool-fig".into(),
        peers: vec![Ipv4Addr::new(10, 215, 0, 12), Ipv4Addr::new(10, 215, 0, 13)],
    };
    let over_hosts = |segment: &str| {
        let mut nic = private_nic(segment);
        if let NetworkKind::Private { tunnel: t, .. } = &mut nic.kind {
            *t = Some(tunnel.clone());
        }
        nic
    };
    let mut a = Journal::create(state.path(), "pool-fig-a").unwrap();
    let mut b = Journal::create(state.path(), "pool-fig-b").unwrap();
    let na = attach(&mut a, state.path(), 0, &over_hosts("pool-fig")).unwrap();
    let nb = attach(&mut b, state.path(), 0, &over_hosts("pool-fig")).unwrap();
    assert_eq!(na.bridge, nb.bridge);
    let port = tunnel_name(&na.bridge);
    let details = cmd::run("ip", &["-d", "-o", "link", "show", "dev", &port]).unwrap();
    let vni = tunnel.vni("private");
    assert!(
        details.contains(&format!("vxlan id {vni} "))
            && details.contains(&format!("dstport {VXLAN_PORT}"))
            && details.contains(&format!("master {}", na.bridge))
            && details.contains("mtu 1500"),
        "{details}"
    );
    let fdb = cmd::run("bridge", &["fdb", "show", "dev", &port]).unwrap();
    for peer in &tunnel.peers {
        let entries = fdb
            .lines()
            .filter(|l| l.starts_with("00:00:00:00:00:00") && l.contains(&format!("dst {peer} ")))
            .count();
        assert_eq!(
            entries, 1,
            "one flood entry per peer, not one per member: {fdb}"
        );
    }
    // Another pool's segment, or another network of this one: another VNI.
    assert_ne!(vni, tunnel.vni("private2"));
    let other = Tunnel {
        key: "slurm-8/pool-fig".into(),
        ..tunnel.clone()
    };
    assert_ne!(vni, other.vni("private"));
    undo_all(&a);
    assert!(
        links().contains(&port),
        "b still holds a lease: {}",
        links()
    );
    undo_all(&b);
    assert!(!links().contains("sdx-"), "{}", links());
    assert!(!links().contains("sdp-"), "{}", links());
}

#[test]
fn bridge_network_needs_an_existing_bridge_and_refuses_a_static_address() {
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    let mut j = Journal::create(state.path(), "dep-br").unwrap();
    let site = |ip| NicConfig {
        network: "site".into(),
        kind: NetworkKind::Bridge {
            bridge: "br-site".into(),
        },
        ip,
        host_end: HostEnd::Tap { user: 65534 },
    };
    let e = attach(&mut j, state.path(), 0, &site(None)).unwrap_err();
    assert!(matches!(e, NetworkError::NoSuchBridge(_)), "{e}");
    let e = attach(
        &mut j,
        state.path(),
        0,
        &site(Some(Ipv4Addr::new(1, 2, 3, 4))),
    )
    .unwrap_err();
    assert!(matches!(e, NetworkError::StaticOnBridge(_)), "{e}");
    cmd::run("ip", &["link", "add", "name", "br-site", "type", "bridge"]).unwrap();
    let nic = attach(&mut j, state.path(), 0, &site(None)).unwrap();
    assert_eq!(nic.ip, None);
    let t = cmd::run(
        "nft",
        &["list", "table", "bridge", &format!("sd-spoof-{}", nic.tap)],
    )
    .unwrap();
    assert!(
        t.contains("spoofed mac") && !t.contains("spoofed ip"),
        "{t}"
    );
    undo_all(&j);
    assert!(
        links().contains("br-site:"),
        "the site's bridge is not ours to remove"
    );
    assert!(!links().contains(&nic.tap));
}

/// Opens tap `name` as QEMU would, to write the guest's frames into it,
/// and waits until its bridge port forwards (the kernel moves it there a
/// moment after the carrier comes up; before, frames are dropped).
fn open_tap(name: &str) -> std::fs::File {
    let f = open_tap_now(name);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let out = std::process::Command::new("/usr/sbin/bridge")
            .args(["link", "show", "dev", name])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("state forwarding") {
            return f;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never forwards"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn open_tap_now(name: &str) -> std::fs::File {
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .unwrap();
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
    // SAFETY: TUNSETIFF reads a struct ifreq (40 bytes) we own.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), TUNSETIFF, &mut req) };
    assert_eq!(
        r,
        0,
        "TUNSETIFF {name}: {}",
        std::io::Error::last_os_error()
    );
    f
}

/// An Ethernet frame carrying a UDP datagram.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let sum = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (IPv4 allows it)
    f.extend_from_slice(payload);
    f
}

fn counter(table: &str, comment: &str) -> u64 {
    let t = cmd::run("nft", &["list", "table", "bridge", table]).unwrap();
    let line = t
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .unwrap_or_else(|| panic!("no rule {comment:?} in\n{t}"));
    let after = line.split("counter packets ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn spoofed_source_ip_and_mac_from_a_tap_are_dropped_the_real_ones_pass() {
    use std::io::Write;
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    let mut j = Journal::create(state.path(), "dep-spoof").unwrap();
    let nic = attach(&mut j, state.path(), 0, &nat("nat", None)).unwrap();
    let gw = nic.gateway.unwrap();
    let me = nic.ip.unwrap();
    // The host's DNS port on the gateway is open to guests: listen there.
    let sock = std::net::UdpSocket::bind((gw, 53)).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(500)))
        .unwrap();
    let mut tap = open_tap(&nic.tap);
    let bridge_mac = bridge_mac(&nat_br(state.path()));
    let table = spoof_table_name(&nic.tap);
    let recv = |sock: &std::net::UdpSocket| {
        let mut buf = [0u8; 64];
        sock.recv_from(&mut buf)
            .ok()
            .map(|(n, from)| (buf[..n].to_vec(), from))
    };

    // The real address arrives (the setup works)...
    tap.write_all(&udp_frame(bridge_mac, nic.mac.0, me, gw, 53, b"real"))
        .unwrap();
    let (got, from) = recv(&sock).expect("a frame with the domain's own MAC and IP arrives");
    assert_eq!(
        (got.as_slice(), from.ip()),
        (&b"real"[..], std::net::IpAddr::V4(me))
    );
    // ...a spoofed source IP does not...
    let other = Ipv4Addr::new(10, 77, 0, 3);
    tap.write_all(&udp_frame(bridge_mac, nic.mac.0, other, gw, 53, b"ip"))
        .unwrap();
    assert_eq!(recv(&sock), None, "spoofed IP got through");
    assert_eq!(counter(&table, "spoofed ip"), 1);
    // ...nor a spoofed source MAC.
    tap.write_all(&udp_frame(
        bridge_mac,
        [0x02, 9, 9, 9, 9, 9],
        me,
        gw,
        53,
        b"mac",
    ))
    .unwrap();
    assert_eq!(recv(&sock), None, "spoofed MAC got through");
    assert_eq!(counter(&table, "spoofed mac"), 1);
    // And guest → host on anything but DNS is dropped by the network's table.
    let other_port = std::net::UdpSocket::bind((gw, 5353)).unwrap();
    other_port
        .set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    tap.write_all(&udp_frame(bridge_mac, nic.mac.0, me, gw, 5353, b"x"))
        .unwrap();
    assert_eq!(recv(&other_port), None, "guest reached a host service");
    drop(tap);
    undo_all(&j);
}

fn tx_packets(dev: &str) -> u64 {
    let out = cmd::run("ip", &["-s", "-o", "link", "show", "dev", dev]).unwrap();
    // "... TX: bytes packets errors ...\    BYTES PACKETS ..."
    let tx = out.split("TX:").nth(1).unwrap();
    let numbers: Vec<&str> = tx.split('\\').nth(1).unwrap().split_whitespace().collect();
    numbers[1].parse().unwrap()
}

fn inet_counter(table: &str, comment: &str) -> u64 {
    let t = cmd::run("nft", &["list", "table", "inet", table]).unwrap();
    let line = t
        .lines()
        .find(|l| l.contains(&format!("comment \"{comment}\"")))
        .unwrap_or_else(|| panic!("no rule {comment:?} in\n{t}"));
    let after = line.split("counter packets ").nth(1).unwrap();
    after.split_whitespace().next().unwrap().parse().unwrap()
}

fn bridge_mac(bridge: &str) -> [u8; 6] {
    let out = cmd::run("ip", &["-o", "link", "show", "dev", bridge]).unwrap();
    let hex = out
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap();
    let v: Vec<u8> = hex
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    <[u8; 6]>::try_from(v).unwrap()
}

/// Reads what reaches a tap within a moment (the fd is made non-blocking).
fn frames_at(tap: &mut std::fs::File, wait: std::time::Duration) -> Vec<Vec<u8>> {
    use std::io::Read;
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(tap.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(tap.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    std::thread::sleep(wait);
    let mut frames = vec![];
    let mut buf = [0u8; 2048];
    while let Ok(n) = tap.read(&mut buf) {
        frames.push(buf[..n].to_vec());
    }
    frames
}

#[test]
fn nat_forwards_out_but_not_to_denied_ranges_nor_to_another_guest() {
    use std::io::Write;
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    // "The outside": a dummy link holding a denied range and an allowed one.
    // (A veth pair: this kernel has no dummy; static neighbours, so that
    // what is forwarded leaves at once, and no IPv6 chatter in the count.)
    cmd::run(
        "ip",
        &[
            "link", "add", "name", "out0", "type", "veth", "peer", "name", "out1",
        ],
    )
    .unwrap();
    for dev in ["out0", "out1"] {
        cmd::sysctl(&format!("net/ipv6/conf/{dev}/disable_ipv6"), "1").unwrap();
        cmd::run("ip", &["link", "set", "dev", dev, "up"]).unwrap();
    }
    cmd::run("ip", &["addr", "add", "10.200.0.1/16", "dev", "out0"]).unwrap();
    cmd::run("ip", &["addr", "add", "198.51.100.1/24", "dev", "out0"]).unwrap();
    for ip in ["198.51.100.7", "10.200.3.4"] {
        cmd::run(
            "ip",
            &[
                "neigh",
                "replace",
                ip,
                "lladdr",
                "02:00:00:00:00:77",
                "dev",
                "out0",
            ],
        )
        .unwrap();
    }
    let mut ja = Journal::create(state.path(), "dep-fa").unwrap();
    let mut jb = Journal::create(state.path(), "dep-fb").unwrap();
    let a = attach(&mut ja, state.path(), 0, &nat("nat", None)).unwrap();
    let b = attach(&mut jb, state.path(), 0, &nat("nat", None)).unwrap();
    let mut tap_a = open_tap(&a.tap);
    let mut tap_b = open_tap(&b.tap);
    let _ = frames_at(&mut tap_b, std::time::Duration::ZERO);
    let gw_mac = bridge_mac(&nat_br(state.path()));
    let me = a.ip.unwrap();

    let before = tx_packets("out0");
    tap_a
        .write_all(&udp_frame(
            gw_mac,
            a.mac.0,
            me,
            Ipv4Addr::new(198, 51, 100, 7),
            9,
            b"out",
        ))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        tx_packets("out0"),
        before + 1,
        "an allowed destination is forwarded"
    );
    tap_a
        .write_all(&udp_frame(
            gw_mac,
            a.mac.0,
            me,
            Ipv4Addr::new(10, 200, 3, 4),
            9,
            b"deny",
        ))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(
        tx_packets("out0"),
        before + 1,
        "a denied destination is not"
    );
    assert_eq!(inet_counter(&nat_tb(state.path()), "denied"), 1);

    // Guest to guest: neither through the bridge (isolated ports) nor
    // routed through the gateway.
    tap_a
        .write_all(&udp_frame(b.mac.0, a.mac.0, me, b.ip.unwrap(), 9, b"l2"))
        .unwrap();
    tap_a
        .write_all(&udp_frame(gw_mac, a.mac.0, me, b.ip.unwrap(), 9, b"l3"))
        .unwrap();
    let at_b = frames_at(&mut tap_b, std::time::Duration::from_millis(200));
    assert!(
        !at_b
            .iter()
            .any(|f| f[6..12] == a.mac.0 || f.ends_with(b"l3")),
        "a frame of a reached b: {at_b:?}"
    );
    assert_eq!(
        inet_counter(&nat_tb(state.path()), "to our bridges"),
        1,
        "the routed one"
    );
    drop((tap_a, tap_b));
    undo_all(&ja);
    undo_all(&jb);
}

#[test]
fn private_segments_do_not_meet_but_members_of_one_do() {
    use std::io::Write;
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    let nic = private_nic;
    let mut j1 = Journal::create(state.path(), "p1-a").unwrap();
    let mut j2 = Journal::create(state.path(), "p1-b").unwrap();
    let mut j3 = Journal::create(state.path(), "p2-a").unwrap();
    let a = attach(&mut j1, state.path(), 0, &nic("pool1")).unwrap();
    let b = attach(&mut j2, state.path(), 0, &nic("pool1")).unwrap();
    let c = attach(&mut j3, state.path(), 0, &nic("pool2")).unwrap();
    let (mut ta, mut tb, mut tc) = (open_tap(&a.tap), open_tap(&b.tap), open_tap(&c.tap));
    let _ = frames_at(&mut tb, std::time::Duration::ZERO);
    let _ = frames_at(&mut tc, std::time::Duration::ZERO);
    let broadcast = [0xff; 6];
    ta.write_all(&udp_frame(
        broadcast,
        a.mac.0,
        a.ip.unwrap(),
        Ipv4Addr::new(192, 168, 50, 255),
        9,
        b"hello",
    ))
    .unwrap();
    let at_b = frames_at(&mut tb, std::time::Duration::from_millis(200));
    let at_c = frames_at(&mut tc, std::time::Duration::ZERO);
    assert!(
        at_b.iter().any(|f| f.ends_with(b"hello")),
        "a member reaches its peer: {at_b:?}"
    );
    assert!(
        !at_c.iter().any(|f| f.ends_with(b"hello")),
        "another segment is reached: {at_c:?}"
    );
    drop((ta, tb, tc));
    for j in [&j1, &j2, &j3] {
        undo_all(j);
    }
    assert!(!links().contains("sdp-"));
}

#[test]
fn a_crash_after_the_bridge_before_the_lease_is_cleaned_up() {
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    let mut j = Journal::create(state.path(), "dep-crash").unwrap();
    // Fails after the bridge and the table were made (the address is not
    // the network's): what the journal holds is what rollback undoes.
    attach(
        &mut j,
        state.path(),
        0,
        &nat("nat", Some(Ipv4Addr::new(10, 77, 0, 1))),
    )
    .unwrap_err();
    assert!(links().contains(&format!("{}:", nat_br(state.path()))));
    let reopened = Journal::open(state.path(), "dep-crash").unwrap().unwrap();
    undo_all(&reopened);
    assert!(!links().contains("sdn-"), "{}", links());
    assert!(!tables().contains("sd-"), "{}", tables());
}

#[test]
fn concurrent_attaches_get_distinct_addresses() {
    in_fresh_netns();
    let state = tempfile::tempdir().unwrap();
    // Threads started here share this thread's network namespace.
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let dir = state.path().to_path_buf();
            std::thread::spawn(move || {
                let mut j = Journal::create(&dir, &format!("dep-c{i}")).unwrap();
                let nic = attach(&mut j, &dir, 0, &nat("nat", None)).unwrap();
                (j.id().to_string(), nic.ip.unwrap())
            })
        })
        .collect();
    let mut ips: Vec<Ipv4Addr> = handles.into_iter().map(|h| h.join().unwrap().1).collect();
    ips.sort();
    ips.dedup();
    assert_eq!(ips.len(), 6, "{ips:?}");
    for i in 0..6 {
        undo_all(
            &Journal::open(state.path(), &format!("dep-c{i}"))
                .unwrap()
                .unwrap(),
        );
    }
    assert!(!links().contains("sdn-"), "{}", links());
    assert!(!tables().contains("sd-"), "{}", tables());
}
