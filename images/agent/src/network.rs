//! The guest's network, from the host's [`NetworkConfig`]: each NIC found
//! by its MAC in /sys/class/net and set up with the initramfs's busybox
//! `ip`, the default route, the host name, and the VO image's
//! `/etc/hosts` and `/etc/resolv.conf` (written in its view, under
//! `--root`: the image needs none of our software).
//!
//! A NIC without an address (a `bridge` network: the site's DHCP hands
//! them out) gets one from the initramfs's busybox `udhcpc`, bounded in
//! time. Its script (written to the initramfs's /run, not the image) only
//! writes down what the server offered; the agent checks those values (they
//! come from the network) and applies them itself with `ip`.

use sd_proto::{InterfaceConfig, InterfaceUp, NetworkConfig};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BUSYBOX: &str = "/bin/busybox";

fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// `/etc/hosts`: localhost, this domain's own name on its first address,
/// then the given entries.
pub fn hosts_text(cfg: &NetworkConfig) -> String {
    let mut t = String::from("# Written by the SmartDomains guest agent.\n127.0.0.1\tlocalhost\n");
    let own = cfg
        .interfaces
        .iter()
        .find_map(|i| i.address.map(|(ip, _)| ip))
        .unwrap_or(Ipv4Addr::new(127, 0, 1, 1));
    let short = cfg.hostname.split('.').next().unwrap_or_default();
    if short != cfg.hostname {
        t.push_str(&format!("{own}\t{} {short}\n", cfg.hostname));
    } else {
        t.push_str(&format!("{own}\t{}\n", cfg.hostname));
    }
    for (name, ip) in &cfg.hosts {
        if name != &cfg.hostname {
            t.push_str(&format!("{ip}\t{name}\n"));
        }
    }
    t
}

/// `/etc/resolv.conf`, or None when no NIC has a resolver (the image's
/// own file is left as it is).
pub fn resolv_text(cfg: &NetworkConfig) -> Option<String> {
    let mut servers: Vec<Ipv4Addr> = vec![];
    for s in cfg.interfaces.iter().flat_map(|i| &i.dns) {
        if !servers.contains(s) && servers.len() < sd_proto::MAX_DNS {
            servers.push(*s);
        }
    }
    if servers.is_empty() {
        return None;
    }
    let mut t = String::from("# Written by the SmartDomains guest agent.\n");
    for s in servers {
        t.push_str(&format!("nameserver {s}\n"));
    }
    Some(t)
}

/// The busybox `ip` commands (arguments after `ip`) that set up NIC `nic`,
/// which the guest calls `ifname`.
pub fn ip_commands(ifname: &str, nic: &InterfaceConfig) -> Vec<Vec<String>> {
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<String>>();
    let mut cmds = vec![s(&["link", "set", "dev", ifname, "up"])];
    if let Some((ip, prefix)) = nic.address {
        cmds.push(s(&[
            "addr",
            "add",
            &format!("{ip}/{prefix}"),
            "dev",
            ifname,
        ]));
        if let Some(gw) = nic.gateway {
            cmds.push(s(&[
                "route",
                "replace",
                "default",
                "via",
                &gw.to_string(),
                "dev",
                ifname,
            ]));
        }
    }
    cmds
}

/// The interface whose MAC is `mac` (in `sys_class_net`), waiting a
/// little for its driver.
fn find_by_mac(sys_class_net: &Path, mac: &[u8; 6], wait: Duration) -> Option<String> {
    let want = mac_text(mac);
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(entries) = std::fs::read_dir(sys_class_net) {
            for e in entries.flatten() {
                let addr = std::fs::read_to_string(e.path().join("address")).unwrap_or_default();
                if addr.trim().eq_ignore_ascii_case(&want) {
                    return e.file_name().to_str().map(str::to_string);
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// udhcpc's script: on a lease, the values udhcpc passes write down in
/// `$SD_LEASE` (renamed into place), nothing applied.
const DHCP_SCRIPT: &str = "#!/bin/sh
# Written by the SmartDomains guest agent: records udhcpc's lease for the agent,
# which checks and applies it.
case \"$1\" in
bound|renew)
\tprintf 'ip=%s\\nmask=%s\\nsubnet=%s\\nrouter=%s\\ndns=%s\\n' \"$ip\" \"$mask\" \"$subnet\" \"$router\" \"$dns\" >\"$SD_LEASE.tmp\" &&
\t\tmv -f \"$SD_LEASE.tmp\" \"$SD_LEASE\"
\t;;
esac
exit 0
";

/// udhcpc's tries: DISCOVERs, seconds between them. Then it gives up.
const DHCP_TRIES: u32 = 5;
const DHCP_WAIT_SECS: u32 = 2;
/// The most a DHCP run may take, whatever udhcpc does.
const DHCP_DEADLINE: Duration = Duration::from_secs(30);

/// What a DHCP server offered, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub address: (Ipv4Addr, u8),
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

fn prefix_of_mask(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let p = m.leading_ones();
    (m.checked_shl(p).unwrap_or(0) == 0).then_some(p as u8)
}

fn unicast(ip: Ipv4Addr) -> bool {
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.octets()[0] >= 240)
}

/// The lease file the script wrote (`key=value` lines), checked: an
/// address that is a host's unicast one, a prefix of 1-32, a router in
/// its subnet, at most [`sd_proto::MAX_DNS`] resolvers; anything else is
/// refused or dropped.
pub fn parse_lease(text: &str) -> Result<Lease, String> {
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .map(str::trim)
            .unwrap_or_default()
    };
    let ip: Ipv4Addr = get("ip").parse().map_err(|_| {
        format!(
            "the DHCP server offered no usable address ({:?})",
            get("ip")
        )
    })?;
    if !unicast(ip) {
        return Err(format!(
            "the DHCP server offered {ip}, not a host's address"
        ));
    }
    let prefix = match get("mask").parse::<u8>() {
        Ok(p) => Some(p),
        Err(_) => get("subnet")
            .parse::<Ipv4Addr>()
            .ok()
            .and_then(prefix_of_mask),
    }
    .filter(|p| (1..=32).contains(p))
    .ok_or_else(|| {
        format!(
            "the DHCP server offered no valid netmask (mask {:?}, subnet {:?})",
            get("mask"),
            get("subnet")
        )
    })?;
    let net = |a: Ipv4Addr| u32::from(a).checked_shr(32 - prefix as u32).unwrap_or(0);
    let router = get("router")
        .split_whitespace()
        .filter_map(|r| r.parse::<Ipv4Addr>().ok())
        .find(|r| unicast(*r) && *r != ip && (prefix == 32 || net(*r) == net(ip)));
    let mut dns = vec![];
    for d in get("dns")
        .split_whitespace()
        .filter_map(|d| d.parse::<Ipv4Addr>().ok())
    {
        if !d.is_unspecified()
            && !d.is_multicast()
            && !d.is_broadcast()
            && !dns.contains(&d)
            && dns.len() < sd_proto::MAX_DNS
        {
            dns.push(d);
        }
    }
    Ok(Lease {
        address: (ip, prefix),
        router,
        dns,
    })
}

/// The udhcpc command line (after `busybox`) for `ifname`.
pub fn udhcpc_args(ifname: &str, script: &Path, hostname: &str) -> Vec<String> {
    let mut a: Vec<String> = ["udhcpc", "-i", ifname, "-f", "-n", "-q", "-t"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(DHCP_TRIES.to_string());
    a.push("-T".into());
    a.push(DHCP_WAIT_SECS.to_string());
    a.push("-A".into());
    a.push("1".into());
    a.push("-s".into());
    a.push(script.display().to_string());
    if sd_proto::valid_hostname(hostname) {
        a.push("-x".into());
        a.push(format!("hostname:{hostname}"));
    }
    a
}

/// A lease for `ifname` (link up) from the site's DHCP, within
/// [`DHCP_DEADLINE`].
fn dhcp(ifname: &str, mac: &[u8; 6], hostname: &str) -> Result<Lease, String> {
    let fail = |why: String| {
        format!(
            "no address by DHCP on {ifname} (MAC {}): {why}",
            mac_text(mac)
        )
    };
    let dir = Path::new("/run/sd-guest");
    std::fs::create_dir_all(dir).map_err(|e| fail(format!("{}: {e}", dir.display())))?;
    let script = dir.join("udhcpc.script");
    let lease_file = dir.join(format!("{ifname}.lease"));
    let _ = std::fs::remove_file(&lease_file);
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::remove_file(&script);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&script)
            .map_err(|e| fail(format!("{}: {e}", script.display())))?;
        std::io::Write::write_all(&mut f, DHCP_SCRIPT.as_bytes())
            .map_err(|e| fail(format!("{}: {e}", script.display())))?;
    }
    let args = udhcpc_args(ifname, &script, hostname);
    let started = Instant::now();
    // udhcpc is waited for here: the reaper must not take it.
    let (status, stderr) = crate::job::children_waited_here(|| -> Result<_, String> {
        let mut child = Command::new(BUSYBOX)
            .args(&args)
            .env_clear()
            .env("PATH", "/bin:/sbin:/usr/bin:/usr/sbin")
            .env("SD_LEASE", &lease_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run busybox udhcpc: {e}"))?;
        let mut err_pipe = child.stderr.take();
        // Drained aside so that a chatty udhcpc never blocks on its pipe.
        let reader = std::thread::spawn(move || {
            let mut v = vec![];
            if let Some(p) = err_pipe.as_mut() {
                let _ = std::io::Read::read_to_end(p, &mut v);
            }
            v
        });
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if started.elapsed() > DHCP_DEADLINE => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break None;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => return Err(format!("waiting for udhcpc: {e}")),
            }
        };
        Ok((status, reader.join().unwrap_or_default()))
    })
    .map_err(fail)?;
    // Its last word ("no lease, failing"), not each DISCOVER.
    let stderr = String::from_utf8_lossy(&stderr);
    let mut err = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string();
    err.truncate(400);
    let leased = std::fs::read_to_string(&lease_file).ok();
    match (status, leased) {
        (Some(s), Some(text)) if s.success() => parse_lease(&text).map_err(fail),
        (None, _) => Err(fail(format!(
            "udhcpc still running after {}s, killed",
            DHCP_DEADLINE.as_secs()
        ))),
        (Some(s), _) => Err(fail(format!(
            "no answer from a DHCP server in {}s ({} tries; udhcpc {s}{}{err})",
            started.elapsed().as_secs(),
            DHCP_TRIES,
            if err.is_empty() { "" } else { ": " }
        ))),
    }
}

fn ip(args: &[String]) -> Result<(), String> {
    // `output()` waits for its child: the reaper must not take it.
    let out = crate::job::children_waited_here(|| {
        Command::new(BUSYBOX)
            .arg("ip")
            .args(args)
            .stdin(Stdio::null())
            .output()
    })
    .map_err(|e| format!("cannot run busybox ip: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let mut err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    err.truncate(512);
    Err(format!("ip {}: {err}", args.join(" ")))
}

/// Writes `text` as `rel` (e.g. `etc/hosts`) of the VO image: a new file
/// renamed over the old one (a symlink there is replaced, not followed).
fn write_in_root(root: &Path, rel: &str, text: &str) -> Result<(), String> {
    let path = root.join(rel);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("sd-guest.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))
}

/// Applies `cfg`; returns each NIC as it is now, in order.
pub fn apply(cfg: &NetworkConfig, root: &Path) -> Result<Vec<InterfaceUp>, String> {
    cfg.check()?;
    ip(&[
        "link".into(),
        "set".into(),
        "dev".into(),
        "lo".into(),
        "up".into(),
    ])?;
    let mut up = vec![];
    // What was applied: a DHCP lease fills in its NIC's address, route and
    // resolvers, for /etc/hosts and /etc/resolv.conf.
    let mut applied = cfg.clone();
    for nic in applied.interfaces.iter_mut() {
        let name = find_by_mac(Path::new("/sys/class/net"), &nic.mac, Duration::from_secs(10))
            .ok_or_else(|| {
                format!(
                    "no network interface with MAC {} (is virtio_net or xen_netfront in the initramfs?)",
                    mac_text(&nic.mac)
                )
            })?;
        for args in ip_commands(&name, nic) {
            ip(&args)?;
        }
        let dhcp_used = nic.address.is_none();
        if dhcp_used {
            let lease = dhcp(&name, &nic.mac, &cfg.hostname)?;
            nic.address = Some(lease.address);
            nic.gateway = lease.router;
            nic.dns = lease.dns;
            for args in ip_commands(&name, nic).into_iter().skip(1) {
                ip(&args)?;
            }
        }
        up.push(InterfaceUp {
            name,
            address: nic.address,
            dhcp: dhcp_used,
        });
    }
    nix::unistd::sethostname(&cfg.hostname).map_err(|e| format!("sethostname: {e}"))?;
    write_in_root(root, "etc/hostname", &format!("{}\n", cfg.hostname))?;
    write_in_root(root, "etc/hosts", &hosts_text(&applied))?;
    if let Some(text) = resolv_text(&applied) {
        write_in_root(root, "etc/resolv.conf", &text)?;
    }
    Ok(up)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> NetworkConfig {
        NetworkConfig {
            hostname: "db.pool1".into(),
            interfaces: vec![
                InterfaceConfig {
                    mac: [2, 0xab, 0, 0, 0, 1],
                    address: Some((Ipv4Addr::new(192, 168, 50, 1), 24)),
                    gateway: None,
                    dns: vec![],
                },
                InterfaceConfig {
                    mac: [2, 0xab, 0, 0, 0, 2],
                    address: Some((Ipv4Addr::new(10, 77, 0, 2), 24)),
                    gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
                    dns: vec![Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 1)],
                },
            ],
            hosts: vec![
                ("db.pool1".into(), Ipv4Addr::new(192, 168, 50, 1)),
                ("worker-1".into(), Ipv4Addr::new(192, 168, 50, 2)),
            ],
        }
    }

    #[test]
    fn hosts_file_names_this_domain_and_its_peers() {
        assert_eq!(
            hosts_text(&cfg()),
            "# Written by the SmartDomains guest agent.\n127.0.0.1\tlocalhost\n\
             192.168.50.1\tdb.pool1 db\n192.168.50.2\tworker-1\n"
        );
        let mut none = cfg();
        none.interfaces.clear();
        none.hostname = "solo".into();
        assert!(hosts_text(&none).contains("127.0.1.1\tsolo\n"));
    }

    #[test]
    fn resolv_conf_lists_each_resolver_once_or_is_left_alone() {
        assert_eq!(
            resolv_text(&cfg()).unwrap(),
            "# Written by the SmartDomains guest agent.\nnameserver 10.77.0.1\n"
        );
        let mut none = cfg();
        none.interfaces[1].dns.clear();
        assert_eq!(resolv_text(&none), None);
    }

    #[test]
    fn ip_commands_bring_up_address_and_route() {
        let c = cfg();
        let text: Vec<String> = ip_commands("eth1", &c.interfaces[1])
            .iter()
            .map(|a| a.join(" "))
            .collect();
        assert_eq!(
            text,
            [
                "link set dev eth1 up",
                "addr add 10.77.0.2/24 dev eth1",
                "route replace default via 10.77.0.1 dev eth1"
            ]
        );
        assert_eq!(
            ip_commands("eth0", &c.interfaces[0]).len(),
            2,
            "no gateway, no route"
        );
        let dhcp = InterfaceConfig {
            address: None,
            ..c.interfaces[1].clone()
        };
        assert_eq!(ip_commands("eth0", &dhcp).len(), 1);
    }

    #[test]
    fn a_dhcp_lease_is_checked_before_it_is_applied() {
        let l = parse_lease(
            "ip=192.0.2.57\nmask=24\nsubnet=255.255.255.0\nrouter=192.0.2.1 192.0.2.2\n\
             dns=192.0.2.53 192.0.2.53 9.9.9.9 1.1.1.1 8.8.8.8\n",
        )
        .unwrap();
        assert_eq!(l.address, (Ipv4Addr::new(192, 0, 2, 57), 24));
        assert_eq!(l.router, Some(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(
            l.dns,
            [
                Ipv4Addr::new(192, 0, 2, 53),
                Ipv4Addr::new(9, 9, 9, 9),
                Ipv4Addr::new(1, 1, 1, 1)
            ]
        );
        // An older udhcpc passes only the dotted mask.
        let l = parse_lease("ip=10.1.2.3\nmask=\nsubnet=255.255.0.0\nrouter=\ndns=\n").unwrap();
        assert_eq!(l.address, (Ipv4Addr::new(10, 1, 2, 3), 16));
        assert_eq!((l.router, l.dns.len()), (None, 0));
        // A router outside the subnet is not taken.
        let l = parse_lease("ip=10.1.2.3\nmask=24\nrouter=10.9.9.9\n").unwrap();
        assert_eq!(l.router, None);
        for bad in [
            "ip=\nmask=24\n",
            "ip=224.0.0.1\nmask=24\n",
            "ip=127.0.0.1\nmask=8\n",
            "ip=10.1.2.3\nmask=33\n",
            "ip=10.1.2.3\nsubnet=255.0.255.0\n",
            "ip=10.1.2.3; reboot\nmask=24\n",
        ] {
            assert!(parse_lease(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn udhcpc_is_bounded_and_uses_our_script() {
        let a = udhcpc_args("eth0", Path::new("/run/sd-guest/udhcpc.script"), "db.pool1").join(" ");
        assert_eq!(
            a,
            "udhcpc -i eth0 -f -n -q -t 5 -T 2 -A 1 -s /run/sd-guest/udhcpc.script -x hostname:db.pool1"
        );
    }

    #[test]
    fn the_dhcp_script_only_writes_the_lease_down() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("s");
        std::fs::write(&script, DHCP_SCRIPT).unwrap();
        let lease = dir.path().join("eth0.lease");
        for event in ["deconfig", "bound"] {
            // Another test may have started the real reaper.
            let st = crate::job::children_waited_here(|| {
                Command::new("sh")
                    .arg(&script)
                    .arg(event)
                    .env("SD_LEASE", &lease)
                    .env("ip", "192.0.2.57")
                    .env("mask", "24")
                    .env("router", "192.0.2.1")
                    .env("dns", "192.0.2.53")
                    .status()
            })
            .unwrap();
            assert!(st.success());
            assert_eq!(lease.exists(), event == "bound", "{event}");
        }
        let l = parse_lease(&std::fs::read_to_string(&lease).unwrap()).unwrap();
        assert_eq!(l.address, (Ipv4Addr::new(192, 0, 2, 57), 24));
        assert_eq!(l.dns, [Ipv4Addr::new(192, 0, 2, 53)]);
    }

    #[test]
    fn interfaces_are_found_by_mac() {
        let dir = tempfile::tempdir().unwrap();
        for (name, mac) in [
            ("eth0", "02:ab:00:00:00:01\n"),
            ("eth1", "02:AB:00:00:00:02\n"),
        ] {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            std::fs::write(dir.path().join(name).join("address"), mac).unwrap();
        }
        let c = cfg();
        assert_eq!(
            find_by_mac(dir.path(), &c.interfaces[1].mac, Duration::ZERO).as_deref(),
            Some("eth1")
        );
        assert_eq!(
            find_by_mac(dir.path(), &[2, 0, 0, 0, 0, 9], Duration::ZERO),
            None
        );
    }

    #[test]
    fn files_are_written_in_the_image_view() {
        let root = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("resolv.conf");
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(&target, root.path().join("etc/resolv.conf")).unwrap();
        write_in_root(root.path(), "etc/resolv.conf", "nameserver 1.1.1.1\n").unwrap();
        assert!(
            !target.exists(),
            "a symlink of the image is replaced, not followed"
        );
        write_in_root(root.path(), "etc/hosts", "x\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(root.path().join("etc/hosts")).unwrap(),
            "x\n"
        );
    }
}
