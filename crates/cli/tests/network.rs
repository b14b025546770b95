//! Networks with real VMs: a NAT job reaches a server outside the host
//! but no address the site denies, a guest that spoofs its address or MAC
//! gets nothing through, and a deployment killed in mid-setup leaves no
//! tap, bridge, nft table or lease after `sd cleanup`. Two members of a
//! pool on a private network talk by hostname; another pool's member and
//! a NAT job cannot reach them. A job on a `bridge` network gets its
//! address and resolver from the site's DHCP (busybox udhcpd on a bridge
//! of the test's own), and fails clearly when no server answers.
//!
//! "Outside" is a network namespace of the test's own behind a veth pair:
//! 198.51.100.2 (TEST-NET-2, allowed) serves HTTP, and 10.99.0.2 on the
//! same server is in 10.0.0.0/8, which the site's NAT network denies by
//! default. Each test has its own site, so its bridge, taps and tables are
//! its own (they are named by the site's state directory).

mod common;
use common::{serial, sh, text};
use sd_vmm::network::{nat_bridge_name, site_scope, tap_name};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const NAT_SUBNET: &str = "10.231.0.0/24";
const NAT_GATEWAY: &str = "10.231.0.1";

struct Site(common::TestSite);

impl Site {
    fn new() -> Site {
        Site::with_bridge(None)
    }

    /// With `lan`, a `bridge` network on host bridge `bridge`, too.
    fn with_bridge(bridge: Option<&str>) -> Site {
        sd_host::needs_root("making bridges, taps and nft tables");
        let (lan, lan_name) = match bridge {
            Some(b) => (
                format!("\x20 lan: {{ kind: bridge, bridge: {b} }}\n"),
                ", lan",
            ),
            None => (String::new(), ""),
        };
        let config = format!(
            "{head}\
             defaults: {{ image: busybox, memory_mib: 192, vcpus: 1, disk_mib: 256 }}\n\
             images:\n\
             \x20 busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }}\n\
             networks:\n\
             \x20 nat: {{ kind: nat, subnet: {NAT_SUBNET} }}\n\
             \x20 lab: {{ kind: private, subnet: 10.232.0.0/24 }}\n\
             {lan}\
             vos:\n\
             \x20 demo: {{ images: [busybox], networks: [nat, lab{lan_name}] }}\n\
             default_vo: demo\n",
            head = common::qemu_site_head(),
        );
        Site(common::TestSite::new("sd-net-", &config))
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.path(rel)
    }

    fn state(&self) -> PathBuf {
        self.path("state")
    }

    fn sd(&self) -> Command {
        self.0.sd()
    }

    /// A NAT job running `script` in the guest (busybox sh).
    fn nat_jdl(&self, name: &str, script: &str) -> PathBuf {
        self.jdl(name, "nat", script)
    }

    /// A job on network `network` running `script` in the guest.
    fn jdl(&self, name: &str, network: &str, script: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::write(
            &p,
            format!(
                "[ Executable = \"/bin/sh\"; Arguments = \"-c '{script}'\";\n  \
                 VirtualEnvironment = [ Network = \"{network}\"; ]; ]"
            ),
        )
        .unwrap();
        p
    }

    fn run(&self, jdl: &Path) -> Output {
        self.sd()
            .arg("run")
            .arg(jdl)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn bridge(&self) -> String {
        nat_bridge_name(&site_scope(&self.state()), "nat")
    }

    /// What of this site's network is still on the host.
    fn network_leftovers(&self, taps: &[String]) -> Vec<String> {
        let mut found = vec![];
        let links = sh("ip -o link show");
        for name in taps.iter().chain([&self.bridge()]) {
            if links.contains(&format!(" {name}:")) || links.contains(&format!(" {name}@")) {
                found.push(format!("link {name}"));
            }
        }
        let scope = site_scope(&self.state());
        for table in sh("nft list tables").lines() {
            if table.contains(&scope) || taps.iter().any(|t| table.contains(t.as_str())) {
                found.push(table.to_string());
            }
        }
        let leases = self.state().join("network/leases");
        for entry in std::fs::read_dir(&leases).into_iter().flatten().flatten() {
            let body = std::fs::read_to_string(entry.path()).unwrap_or_default();
            if body.contains("10.231.") {
                found.push(format!("lease file {}: {body}", entry.path().display()));
            }
        }
        for sub in ["journal", "run"] {
            for entry in std::fs::read_dir(self.state().join(sub))
                .into_iter()
                .flatten()
                .flatten()
            {
                found.push(entry.path().display().to_string());
            }
        }
        found
    }
}

/// `GET /` from the host (its busybox wget crashes on Debian 12).
fn http_get(addr: &str) -> String {
    use std::io::Write;
    let Ok(mut s) =
        std::net::TcpStream::connect_timeout(&addr.parse().unwrap(), Duration::from_secs(1))
    else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    got
}

fn must(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", text(&out.stderr));
}

/// A server outside the host: a namespace behind a veth pair, serving
/// HTTP on 198.51.100.2:8080 (allowed) and 10.99.0.2:8080 (denied).
struct Outside {
    netns: String,
    host_end: String,
    httpd: Option<Child>,
}

impl Outside {
    fn start() -> Outside {
        let tag = std::process::id() % 100000;
        let netns = format!("sdtest-out-{tag}");
        let host_end = format!("sdto{tag}");
        let www = tempfile::tempdir().unwrap().keep();
        std::fs::write(www.join("index.html"), "hello-from-outside\n").unwrap();
        let _ = Command::new("ip").args(["netns", "del", &netns]).status();
        let _ = Command::new("ip").args(["link", "del", &host_end]).status();
        must(&format!("ip netns add {netns}"));
        // From here on, what is made is undone even if a step fails.
        let mut outside = Outside {
            netns: netns.clone(),
            host_end: host_end.clone(),
            httpd: None,
        };
        must(&format!(
            "ip link add {host_end} type veth peer name eth0 netns {netns}"
        ));
        must(&format!(
            "ip addr add 198.51.100.1/24 dev {host_end} && ip link set {host_end} up"
        ));
        must(&format!(
            "ip -n {netns} addr add 198.51.100.2/24 dev eth0 && \
             ip -n {netns} addr add 10.99.0.2/24 dev eth0 && \
             ip -n {netns} link set eth0 up && ip -n {netns} link set lo up && \
             ip -n {netns} route add default via 198.51.100.1"
        ));
        must("ip route replace 10.99.0.0/24 via 198.51.100.2");
        outside.httpd = Some(
            Command::new("ip")
                .args([
                    "netns", "exec", &netns, "busybox", "httpd", "-f", "-p", "8080", "-h",
                ])
                .arg(&www)
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
        // Served from the host itself: the server works before a guest asks.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !http_get("198.51.100.2:8080").contains("hello") {
            assert!(
                Instant::now() < deadline,
                "the outside server does not answer"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        outside
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        if let Some(httpd) = &mut self.httpd {
            let _ = httpd.kill();
            let _ = httpd.wait();
        }
        let _ = Command::new("ip")
            .args(["route", "del", "10.99.0.0/24"])
            .status();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

/// An HTTP GET of `host:port` from inside the guest (busybox nc: its
/// wget crashes), as one line the test can read: the page's last line, or
/// `blocked`.
fn fetch(label: &str, host_port: &str) -> String {
    let (host, port) = host_port.split_once(':').unwrap();
    format!(
        "if (echo GET / HTTP/1.0; echo) | nc -w 4 {host} {port} >/tmp/got 2>/dev/null \
         && grep -q 200 /tmp/got; then echo {label}=$(tail -n 1 /tmp/got); \
         else echo {label}=blocked; fi"
    )
}

#[test]
fn a_nat_job_reaches_an_allowed_server_but_not_a_denied_address_nor_the_host() {
    let _serial = serial();
    let site = Site::new();
    let _outside = Outside::start();
    let script = [
        "ip -o -4 addr show dev eth0".to_string(),
        fetch("ALLOWED", "198.51.100.2:8080"),
        fetch("DENIED", "10.99.0.2:8080"),
        // The host's own services on the gateway are not for guests.
        fetch("HOST", &format!("{NAT_GATEWAY}:8081")),
    ]
    .join("; ");
    // The host serves on all its addresses, the gateway's among them: a
    // guest must not get it. (From the host itself it answers.)
    let host_www = tempfile::tempdir().unwrap();
    std::fs::write(host_www.path().join("index.html"), "hello-from-host\n").unwrap();
    let mut host_httpd = Command::new("busybox")
        .args(["httpd", "-f", "-p", "8081", "-h"])
        .arg(host_www.path())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !http_get("127.0.0.1:8081").contains("hello-from-host") {
        assert!(
            Instant::now() < deadline,
            "the host's server does not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = site.run(&site.nat_jdl("nat.jdl", &script));
    let _ = host_httpd.kill();
    let _ = host_httpd.wait();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(
        stdout.contains("inet 10.231.0.2/24"),
        "the leased address: {stdout}"
    );
    assert!(stdout.contains("ALLOWED=hello-from-outside"), "{stdout}");
    assert!(stdout.contains("DENIED=blocked"), "{stdout}");
    assert!(stdout.contains("HOST=blocked"), "{stdout}");
    assert_eq!(site.network_leftovers(&[]), Vec::<String>::new());
}

#[test]
fn a_guest_that_spoofs_its_ip_or_mac_gets_nothing_through() {
    let _serial = serial();
    let site = Site::new();
    let _outside = Outside::start();
    let url = "198.51.100.2:8080";
    // Root in the guest may set both; the host's filter on its tap decides.
    let script = [
        fetch("REAL", url),
        "ip addr flush dev eth0; ip addr add 10.231.0.200/24 dev eth0; ip route add default via 10.231.0.1"
            .to_string(),
        fetch("SPOOFED_IP", url),
        "ip addr flush dev eth0; ip link set eth0 down; ip link set eth0 address 02:00:00:00:00:99; \
         ip link set eth0 up; ip addr add 10.231.0.2/24 dev eth0; ip route add default via 10.231.0.1"
            .to_string(),
        fetch("SPOOFED_MAC", url),
    ]
    .join("; ");
    let out = site.run(&site.nat_jdl("spoof.jdl", &script));
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("REAL=hello-from-outside"), "{stdout}");
    assert!(stdout.contains("SPOOFED_IP=blocked"), "{stdout}");
    assert!(stdout.contains("SPOOFED_MAC=blocked"), "{stdout}");
    assert_eq!(site.network_leftovers(&[]), Vec::<String>::new());
}

#[test]
fn killed_in_mid_setup_then_cleanup_leaves_no_tap_bridge_table_or_lease() {
    let _serial = serial();
    let site = Site::new();
    let jdl = site.nat_jdl("long.jdl", "sleep 600");
    let mut child = site
        .sd()
        .args(["run", "--id", "net-victim"])
        .arg(&jdl)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Killed as soon as its tap is journaled: the network is (being) made,
    // the domain not yet.
    let journal = site.state().join("journal/net-victim.json");
    let deadline = Instant::now() + Duration::from_secs(60);
    let tap = loop {
        let body = std::fs::read_to_string(&journal).unwrap_or_default();
        if let Some(tap) = tap_in(&body) {
            break tap;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("sd run ended before its tap was made: {status:?}: {err}");
        }
        assert!(Instant::now() < deadline, "no tap in the journal: {body}");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    let out = site.sd().arg("cleanup").output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("net-victim: cleaned up"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(site.network_leftovers(&[tap]), Vec::<String>::new());
}

/// The name of the tap a journal records, if it does yet.
fn tap_in(journal: &str) -> Option<String> {
    let data: serde_json::Value = serde_json::from_str(journal).ok()?;
    data["resources"]
        .as_array()?
        .iter()
        .find_map(|r| (r["kind"] == "tap").then(|| r["name"].as_str().map(str::to_string))?)
}

impl Site {
    /// `sd exec TARGET -- sh -c SCRIPT`.
    fn exec(&self, target: &str, script: &str) -> Output {
        self.sd()
            .args(["exec", target, "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn start_pool(&self, name: &str, yaml: &str) {
        let desc = self.path(&format!("{name}.yaml"));
        std::fs::write(&desc, yaml).unwrap();
        let out = self
            .sd()
            .arg("start")
            .arg(name)
            .arg(&desc)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "sd start {name}: {}",
            text(&out.stderr)
        );
    }

    fn terminate(&self, name: &str) {
        let out = self.sd().args(["terminate", name]).output().unwrap();
        assert!(
            out.status.success(),
            "sd terminate {name}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn pool_members_talk_by_hostname_on_their_private_network_and_nobody_else_reaches_them() {
    let _serial = serial();
    let site = Site::new();
    let member = "M: { extends: DefaultXenDomain, image: busybox, memory: 160, network: lab }\n";
    site.start_pool(
        "bed",
        &format!("{member}sfConfig:\n  extends: Sequence\n  a: {{ extends: M }}\n  b: {{ extends: M }}\n"),
    );
    // A second pool on the same site network: a segment of its own.
    site.start_pool(
        "other",
        &format!(
            "{member}sfConfig:\n  extends: Compound\n  c: {{ extends: M, ip: 10.232.0.50 }}\n"
        ),
    );
    let serve = site.exec(
        "bed/a",
        "mkdir -p /tmp/www && echo hello-from-a > /tmp/www/index.html && httpd -p 8080 -h /tmp/www \
         && ip -o -4 addr show dev eth0",
    );
    let serve_out = text(&serve.stdout);
    assert!(serve.status.success(), "{serve_out}{}", text(&serve.stderr));
    let a_ip = serve_out
        .split("inet ")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or_else(|| panic!("a's address: {serve_out}"))
        .to_string();
    let get = |host: &str| {
        format!(
            "cat /etc/hosts; if (echo GET / HTTP/1.0; echo) | nc -w 4 {host} 8080 >/tmp/got 2>/dev/null \
             && grep -q hello /tmp/got; then echo GOT=$(tail -n 1 /tmp/got); else echo GOT=blocked; fi"
        )
    };
    let from_b = text(&site.exec("bed/b", &get("a")).stdout);
    assert!(
        from_b.contains("GOT=hello-from-a"),
        "b reaches a by name: {from_b}"
    );
    assert!(
        from_b.contains(&format!("{a_ip}\ta")),
        "/etc/hosts names a: {from_b}"
    );
    let from_c = text(&site.exec("other/c", &get(&a_ip)).stdout);
    assert!(
        from_c.contains("GOT=blocked"),
        "another pool's member: {from_c}"
    );
    let nat_job = site.run(&site.nat_jdl("reach.jdl", &fetch("GOT", &format!("{a_ip}:8080"))));
    let from_nat = text(&nat_job.stdout);
    assert!(from_nat.contains("GOT=blocked"), "a NAT job: {from_nat}");
    site.terminate("other");
    site.terminate("bed");
    assert_eq!(site.network_leftovers(&[]), Vec::<String>::new());
    let links = sh("ip -o link show");
    let scope = site_scope(&site.state());
    assert!(
        !sh("nft list tables").contains(&scope),
        "{}",
        sh("nft list tables")
    );
    assert!(
        !links.contains("sdp-") || !links.contains(&scope),
        "{links}"
    );
}

/// A site network that hands out addresses by DHCP: a host bridge of the
/// test's own, 192.0.2.1/24, with busybox udhcpd serving 192.0.2.100-150,
/// router 192.0.2.1 and resolver 192.0.2.53 on it.
struct DhcpLan {
    bridge: String,
    dir: tempfile::TempDir,
    udhcpd: Option<Child>,
}

impl DhcpLan {
    fn start() -> DhcpLan {
        let bridge = format!("sdtbr{}", std::process::id() % 100000);
        let _ = Command::new("ip")
            .args(["link", "del", &bridge])
            .stderr(Stdio::null())
            .status();
        must(&format!("ip link add {bridge} type bridge"));
        // From here on, what is made is undone even if a step fails.
        let mut lan = DhcpLan {
            bridge: bridge.clone(),
            dir: tempfile::tempdir().unwrap(),
            udhcpd: None,
        };
        must(&format!(
            "ip addr add 192.0.2.1/24 dev {bridge} && ip link set {bridge} up"
        ));
        let conf = lan.dir.path().join("udhcpd.conf");
        std::fs::write(
            &conf,
            format!(
                "interface {bridge}\nstart 192.0.2.100\nend 192.0.2.150\n\
                 lease_file {dir}/leases\npidfile {dir}/udhcpd.pid\n\
                 opt subnet 255.255.255.0\nopt router 192.0.2.1\nopt dns 192.0.2.53\nopt lease 600\n",
                dir = lan.dir.path().display()
            ),
        )
        .unwrap();
        std::fs::write(lan.dir.path().join("leases"), "").unwrap();
        let mut udhcpd = Command::new("busybox")
            .args(["udhcpd", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = udhcpd.try_wait().unwrap() {
            let mut err = String::new();
            let _ = udhcpd.stderr.take().unwrap().read_to_string(&mut err);
            panic!("udhcpd ended at once: {status:?}: {err}");
        }
        lan.udhcpd = Some(udhcpd);
        lan
    }

    /// The site has no DHCP server any more.
    fn stop_server(&mut self) {
        if let Some(mut d) = self.udhcpd.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }

    /// The ports of the bridge (the taps still on it).
    fn ports(&self) -> String {
        sh(&format!("ip -o link show master {}", self.bridge))
    }

    fn exists(&self) -> bool {
        sh("ip -o link show").contains(&format!(" {}:", self.bridge))
    }
}

impl Drop for DhcpLan {
    fn drop(&mut self) {
        self.stop_server();
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

#[test]
fn a_bridge_job_gets_its_address_and_resolver_by_dhcp_and_fails_clearly_without_a_server() {
    let _serial = serial();
    let mut lan = DhcpLan::start();
    let site = Site::with_bridge(Some(&lan.bridge));
    let tap = tap_name(&site_scope(&site.state()), "dhcp-job", 0);
    let jdl = site.jdl(
        "dhcp.jdl",
        "lan",
        "ip -o -4 addr show dev eth0; ip route; cat /etc/resolv.conf",
    );
    let out = site
        .sd()
        .args(["run", "--id", "dhcp-job"])
        .arg(&jdl)
        .env("SD_LOG", "info")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    println!("--- with a DHCP server:\n{stdout}--- stderr:\n{stderr}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let got: std::net::Ipv4Addr = stdout
        .split("inet ")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address on eth0: {stdout}"));
    assert!(
        (100..=150).contains(&got.octets()[3]) && got.octets()[..3] == [192, 0, 2],
        "{got} is not in udhcpd's range: {stdout}"
    );
    assert!(stdout.contains(&format!("inet {got}/24")), "{stdout}");
    assert!(
        stdout.contains("default via 192.0.2.1 dev eth0"),
        "the router: {stdout}"
    );
    assert!(
        stdout.contains("nameserver 192.0.2.53"),
        "the resolver: {stdout}"
    );
    assert!(
        stderr.contains(&format!("eth0 got {got}/24 by DHCP on network lan")),
        "{stderr}"
    );
    assert!(
        !sh("ip -o link show").contains(&format!(" {tap}:")),
        "the tap is gone"
    );
    assert_eq!(lan.ports(), "", "nothing is left on the site's bridge");
    assert!(lan.exists(), "the site's bridge is the site's: it stays");
    assert_eq!(
        site.network_leftovers(std::slice::from_ref(&tap)),
        Vec::<String>::new()
    );

    // No DHCP server: a clear error after udhcpc's tries, nothing left.
    lan.stop_server();
    let started = Instant::now();
    let out = site
        .sd()
        .args(["run", "--id", "dhcp-job"])
        .arg(&jdl)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    println!(
        "--- without ({:?}):\n{}--- stderr:\n{stderr}",
        started.elapsed(),
        text(&out.stdout)
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("network lan") && stderr.contains("no address by DHCP on eth0"),
        "names the network and the interface: {stderr}"
    );
    assert!(stderr.contains("no answer from a DHCP server"), "{stderr}");
    assert!(
        !sh("ip -o link show").contains(&format!(" {tap}:")),
        "the tap is gone"
    );
    assert_eq!(lan.ports(), "");
    assert!(lan.exists());
    assert_eq!(site.network_leftovers(&[tap]), Vec::<String>::new());
}
