//! The guest's network, from the host's [`NetworkConfig`]: each NIC found
//! by its MAC in /sys/class/net and set up with the initramfs's busybox
//! `ip`, the default route, the host name, and the VO image's
//! `/etc/hosts` and `/etc/resolv.conf` (written in its view, under
//! `--root`: the image needs none of our software).

use sd_proto::{InterfaceConfig, NetworkConfig};
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

/// Applies `cfg`; returns the guest's name of each NIC, in order.
pub fn apply(cfg: &NetworkConfig, root: &Path) -> Result<Vec<String>, String> {
    cfg.check()?;
    ip(&[
        "link".into(),
        "set".into(),
        "dev".into(),
        "lo".into(),
        "up".into(),
    ])?;
    let mut names = vec![];
    for nic in &cfg.interfaces {
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
        names.push(name);
    }
    nix::unistd::sethostname(&cfg.hostname).map_err(|e| format!("sethostname: {e}"))?;
    write_in_root(root, "etc/hostname", &format!("{}\n", cfg.hostname))?;
    write_in_root(root, "etc/hosts", &hosts_text(cfg))?;
    if let Some(text) = resolv_text(cfg) {
        write_in_root(root, "etc/resolv.conf", &text)?;
    }
    Ok(names)
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
