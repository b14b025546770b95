//! The nftables rulesets, as text (pure: unit-tested without a kernel).
//!
//! Each script replaces its table whole in one transaction: `add table`
//! (so that `delete` finds one), `delete table`, then the table as it must
//! be. Applying it twice leaves one copy, and a changed site (a new deny
//! list) takes effect on the next attach.

use super::{Mac, Subnet};
use std::fmt::Write;
use std::net::Ipv4Addr;

fn replace_table(family: &str, name: &str, body: &str) -> String {
    format!("add table {family} {name}\ndelete table {family} {name}\ntable {family} {name} {{\n{body}}}\n")
}

fn set(items: &[Subnet]) -> String {
    let parts: Vec<String> = items.iter().map(|s| s.to_string()).collect();
    format!("{{ {} }}", parts.join(", "))
}

/// Interface name prefixes of every bridge we make: a domain's traffic is
/// never routed from one of our bridges to another (nor back to its own:
/// guests of one NAT network do not reach each other through the gateway).
pub const OUR_BRIDGES: [&str; 2] = ["sdn-*", "sdp-*"];

/// The table of a NAT network: masquerade out, no forwarding to denied
/// ranges (unless allowed), nothing in but replies, and nothing to the
/// host itself but DNS to the gateway when the gateway is the resolver.
pub fn nat_table(
    table: &str,
    bridge: &str,
    subnet: Subnet,
    gateway: Ipv4Addr,
    dns_on_gateway: bool,
    deny: &[Subnet],
    allow: &[Subnet],
) -> String {
    let mut b = String::new();
    b.push_str("  chain input {\n    type filter hook input priority filter; policy accept;\n");
    if dns_on_gateway {
        for proto in ["udp", "tcp"] {
            let _ = writeln!(
                b,
                "    iifname \"{bridge}\" ip daddr {gateway} {proto} dport 53 accept"
            );
        }
    }
    let _ = writeln!(
        b,
        "    iifname \"{bridge}\" counter drop comment \"guest to host\"\n  }}"
    );
    b.push_str("  chain forward {\n    type filter hook forward priority filter; policy accept;\n");
    for other in OUR_BRIDGES {
        let _ = writeln!(
            b,
            "    iifname \"{bridge}\" oifname \"{other}\" counter drop comment \"to our bridges\""
        );
    }
    let _ = writeln!(b, "    iifname \"{bridge}\" ip saddr != {subnet} counter drop comment \"not from the subnet\"");
    if !allow.is_empty() {
        let _ = writeln!(b, "    iifname \"{bridge}\" ip daddr {} accept", set(allow));
    }
    if !deny.is_empty() {
        let _ = writeln!(
            b,
            "    iifname \"{bridge}\" ip daddr {} counter drop comment \"denied\"",
            set(deny)
        );
    }
    let _ = writeln!(b, "    iifname \"{bridge}\" meta nfproto ipv4 accept");
    let _ = writeln!(
        b,
        "    iifname \"{bridge}\" counter drop comment \"not ipv4\""
    );
    let _ = writeln!(
        b,
        "    oifname \"{bridge}\" ct state established,related accept"
    );
    let _ = writeln!(
        b,
        "    oifname \"{bridge}\" counter drop comment \"inbound\"\n  }}"
    );
    b.push_str(
        "  chain postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n",
    );
    let _ = writeln!(
        b,
        "    ip saddr {subnet} oifname != \"{bridge}\" masquerade\n  }}"
    );
    replace_table("inet", table, &b)
}

/// The table of a private segment: its bridge has no address and nothing
/// is routed into or out of it, nor delivered to the host.
///
/// With `br_netfilter` loaded (Docker loads it) frames bridged between two
/// ports of the segment pass the IP forward hook too, with the bridge as
/// both input and output interface: those are the segment's own traffic
/// and are let through.
pub fn private_table(table: &str, bridge: &str) -> String {
    let body = format!(
        "  chain input {{\n    type filter hook input priority filter; policy accept;\n    \
         iifname \"{bridge}\" counter drop comment \"segment to host\"\n  }}\n  \
         chain forward {{\n    type filter hook forward priority filter; policy accept;\n    \
         iifname \"{bridge}\" oifname != \"{bridge}\" counter drop comment \"out of the segment\"\n    \
         oifname \"{bridge}\" iifname != \"{bridge}\" counter drop comment \"into the segment\"\n  }}\n"
    );
    replace_table("inet", table, &body)
}

/// Anti-spoofing of one port (a tap) in the bridge family: a frame from
/// the port must carry the domain's MAC; its IPv4 and ARP must carry its
/// address (when it has one: a `bridge` network's guests use the site's
/// DHCP, so only the MAC is checked there). We are IPv4 only: IPv6 from a
/// domain is dropped, as is any other ethertype (VLAN tags included).
pub fn spoof_table(table: &str, port: &str, mac: Mac, ip: Option<Ipv4Addr>) -> String {
    let mut b = String::new();
    b.push_str(
        "  chain from_port {\n    type filter hook prerouting priority filter; policy accept;\n",
    );
    let p = format!("iifname \"{port}\"");
    let _ = writeln!(
        b,
        "    {p} ether saddr != {mac} counter drop comment \"spoofed mac\""
    );
    let _ = writeln!(
        b,
        "    {p} ether type ip6 counter drop comment \"ipv6: v4 only\""
    );
    if let Some(ip) = ip {
        let _ = writeln!(
            b,
            "    {p} ether type ip ip saddr != {ip} counter drop comment \"spoofed ip\""
        );
        let _ = writeln!(
            b,
            "    {p} ether type arp arp saddr ip != {ip} counter drop comment \"spoofed arp ip\""
        );
    }
    let _ = writeln!(
        b,
        "    {p} ether type arp arp saddr ether != {mac} counter drop comment \"spoofed arp mac\""
    );
    let _ = writeln!(
        b,
        "    {p} ether type != {{ ip, arp }} counter drop comment \"other ethertype\"\n  }}"
    );
    replace_table("bridge", table, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Subnet {
        s.parse().unwrap()
    }

    #[test]
    fn nat_table_denies_before_it_accepts_and_allows_before_it_denies() {
        let t = nat_table(
            "sd-nat-x",
            "sdn-x",
            net("10.77.0.0/24"),
            "10.77.0.1".parse().unwrap(),
            true,
            &[net("10.0.0.0/8"), net("192.168.0.0/16")],
            &[net("10.1.2.0/24")],
        );
        assert!(
            t.starts_with("add table inet sd-nat-x\ndelete table inet sd-nat-x\n"),
            "{t}"
        );
        let pos = |s: &str| t.find(s).unwrap_or_else(|| panic!("{s:?} not in\n{t}"));
        assert!(
            pos("ip daddr { 10.1.2.0/24 } accept")
                < pos("{ 10.0.0.0/8, 192.168.0.0/16 } counter drop")
        );
        assert!(pos("udp dport 53 accept") < pos("counter drop comment \"guest to host\""));
        assert!(pos("oifname \"sdn-*\"") < pos("meta nfproto ipv4 accept"));
        assert!(t.contains("ip saddr 10.77.0.0/24 oifname != \"sdn-x\" masquerade"));
        let no_dns = nat_table(
            "t",
            "b",
            net("10.0.0.0/30"),
            "10.0.0.1".parse().unwrap(),
            false,
            &[],
            &[],
        );
        assert!(!no_dns.contains("dport 53"), "{no_dns}");
    }

    #[test]
    fn spoof_table_checks_ip_only_when_there_is_one() {
        let mac = Mac([0x02, 1, 2, 3, 4, 5]);
        let t = spoof_table("sd-spoof-t", "sdt0", mac, Some("10.0.0.5".parse().unwrap()));
        assert!(
            t.contains("iifname \"sdt0\" ether saddr != 02:01:02:03:04:05 counter drop"),
            "{t}"
        );
        assert!(t.contains("ip saddr != 10.0.0.5 counter drop"), "{t}");
        assert!(t.contains("arp saddr ip != 10.0.0.5"), "{t}");
        let t = spoof_table("sd-spoof-t", "sdt0", mac, None);
        assert!(!t.contains("ip saddr"), "{t}");
        assert!(t.contains("ether type ip6 counter drop"), "{t}");
    }
}
