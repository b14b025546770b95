//! `scripts/slurm-local start --nodes 2`: a Slurm of two nodes on this host,
//! each slurmd in its own network namespace (sdnode-K, 10.215.0.(10+K)),
//! each node with its own SmartDomains state (its /etc/smartdomains/site.yaml
//! names state_dir <host's>/nodes/nodeK). It has its own directory and ports,
//! so it runs beside the one-node instance the Slurm tests use.
//!
//! Uses the hooks of $SD_SLURM_BIN, default this checkout's release build
//! (as scripts/slurm-local does), and the site config scripts/setup wrote.

mod common;
use common::{repo, text};
use sd_site::SiteConfig;
use std::process::{Command, Output};

const DIR: &str = "/tmp/sd-slurm-nodes";

fn slurm_local(args: &[&str]) -> Output {
    Command::new(repo().join("scripts/slurm-local"))
        .args(args)
        .env("SD_SLURM_DIR", DIR)
        .output()
        .unwrap()
}

/// Stops the cluster when the test ends, passed or not.
struct Stop;
impl Drop for Stop {
    fn drop(&mut self) {
        let out = slurm_local(&["stop"]);
        if !out.status.success() {
            eprintln!("scripts/slurm-local stop failed: {}", text(&out.stderr));
        }
    }
}

/// What is left of the nodes' network and config: namespaces, links, /etc/netns.
fn leftovers() -> Vec<String> {
    let mut left = Vec::new();
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    left.extend(
        text(&ns.stdout)
            .lines()
            .filter(|l| l.starts_with("sdnode-"))
            .map(|l| format!("netns {l}")),
    );
    let links = Command::new("ip").args(["-br", "link"]).output().unwrap();
    left.extend(
        text(&links.stdout)
            .lines()
            .filter(|l| l.starts_with("sdnodes0") || l.starts_with("sdn-"))
            .map(|l| format!("link {l}")),
    );
    for k in 1..=2 {
        let etc = format!("/etc/netns/sdnode-{k}");
        if std::path::Path::new(&etc).exists() {
            left.push(etc);
        }
    }
    left
}

#[test]
fn two_nodes_each_in_its_own_namespace_with_its_own_state() {
    let site = SiteConfig::load(&SiteConfig::default_path())
        .expect("the site config the hooks read (scripts/setup writes it)");
    let out = slurm_local(&["start", "--nodes", "2"]);
    let _stop = Stop;
    assert!(
        out.status.success(),
        "scripts/slurm-local start --nodes 2 failed: {}",
        text(&out.stderr)
    );
    let conf = text(&out.stdout)
        .trim()
        .strip_prefix("export SLURM_CONF=")
        .expect("export line")
        .to_string();

    // One task per node: the node's name, its address and the state_dir of
    // the site config it sees.
    let script = r#"printf 'node=%s addr=%s state_dir=%s\n' "$SLURMD_NODENAME" \
        "$(ip -4 -o addr show dev eth0 | awk '{ print $4 }')" \
        "$(sed -n 's/^state_dir: *//p' /etc/smartdomains/site.yaml)""#;
    let run = Command::new("srun")
        .env("SLURM_CONF", &conf)
        .args(["-N2", "-l", "--time=1", "sh", "-c", script])
        .output()
        .unwrap();
    let stdout = text(&run.stdout);
    assert!(
        run.status.success(),
        "srun -N2: {stdout}{}",
        text(&run.stderr)
    );
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort();
    let want: Vec<String> = (1..=2)
        .map(|k| {
            format!(
                "{}: node=node{k} addr=10.215.0.{}/24 state_dir={}",
                k - 1,
                10 + k,
                site.state_dir.join(format!("nodes/node{k}")).display()
            )
        })
        .collect();
    assert_eq!(lines, want, "srun -N2 -l output: {stdout}");

    drop(_stop);
    assert_eq!(
        leftovers(),
        Vec::<String>::new(),
        "scripts/slurm-local stop left these"
    );
}
