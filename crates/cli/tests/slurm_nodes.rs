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
    // It stops the cluster the other tests here share.
    let _serial = common::serial();
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

// ---------------------------------------------------------------------------
// Pools over the nodes of an allocation (`sd start` inside `salloc -N2`)
// ---------------------------------------------------------------------------

/// The two-node cluster, started if it is not running (scripts/test stops
/// it at the end); its SLURM_CONF.
fn cluster() -> String {
    let out = slurm_local(&["start", "--nodes", "2"]);
    assert!(
        out.status.success(),
        "scripts/slurm-local start --nodes 2 failed: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .trim()
        .strip_prefix("export SLURM_CONF=")
        .expect("export line")
        .to_string()
}

/// An allocation of both nodes (`salloc -N2 --no-shell`), cancelled when
/// dropped; `sd` run through [`Allocation::sd`] is inside it, as in the
/// shell salloc would start.
struct Allocation {
    conf: String,
    job: String,
}

impl Allocation {
    fn new(conf: &str) -> Allocation {
        let out = Command::new("timeout")
            .env("SLURM_CONF", conf)
            .args([
                "120",
                "salloc",
                "-N2",
                "--no-shell",
                "--time=10",
                "-J",
                "sd-test-pool",
            ])
            .output()
            .unwrap();
        let said = text(&out.stderr);
        let job = said
            .split_whitespace()
            .skip_while(|w| *w != "allocation")
            .nth(1)
            .unwrap_or_else(|| panic!("salloc -N2: {said}"))
            .to_string();
        Allocation {
            conf: conf.to_string(),
            job,
        }
    }

    fn sd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sd"));
        c.env("SLURM_CONF", &self.conf)
            .env("SLURM_JOB_ID", &self.job)
            .env_remove("SD_CONFIG")
            .env_remove("SD_LOG");
        c
    }

    /// `sd ARGS` in the allocation; its stdout, once it succeeded.
    fn sd_ok(&self, args: &[&str]) -> String {
        let mut c = self.sd();
        c.args(args);
        ok(c)
    }

    fn squeue(&self, args: &[&str]) -> String {
        let mut c = self.slurm("squeue");
        c.args(args);
        ok(c)
    }

    fn slurm(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf);
        c
    }

    fn cancel(&self) {
        let _ = self.slurm("scancel").arg(&self.job).status();
    }
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.cancel();
    }
}

fn ok(mut c: Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn site() -> SiteConfig {
    SiteConfig::load(&SiteConfig::default_path())
        .expect("the site config the hooks read (scripts/setup writes it)")
}

fn pool_record(name: &str) -> Option<serde_json::Value> {
    let path = site().state_dir.join(format!("pools/{name}.json"));
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

fn final_record(name: &str) -> serde_json::Value {
    let path = site().log_dir.join(format!("pool-{name}.pool.json"));
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// What a pool's members left on either node: journals, run directories,
/// QEMU processes, and the nodes' bridges, tunnels, taps and nft tables.
fn node_leftovers(pool: &str) -> Vec<String> {
    let site = site();
    let mut found = vec![];
    for k in 1..=2 {
        let state = site.state_dir.join(format!("nodes/node{k}"));
        for sub in ["journal", "run"] {
            if let Ok(entries) = std::fs::read_dir(state.join(sub)) {
                found.extend(
                    entries
                        .flatten()
                        .map(|e| e.path().display().to_string())
                        .filter(|p| p.contains(&format!("pool-{pool}-"))),
                );
            }
        }
        let ns = format!("sdnode-{k}");
        let links = Command::new("ip")
            .args(["netns", "exec", &ns, "ip", "-br", "link"])
            .output()
            .unwrap();
        found.extend(
            text(&links.stdout)
                .lines()
                .filter(|l| {
                    ["sdp-", "sdx-", "sdt", "sdn-"]
                        .iter()
                        .any(|p| l.starts_with(p))
                })
                .map(|l| format!("{ns}: link {l}")),
        );
        let tables = Command::new("ip")
            .args(["netns", "exec", &ns, "nft", "list", "tables"])
            .output()
            .unwrap();
        found.extend(
            text(&tables.stdout)
                .lines()
                .filter(|l| l.contains(" sd-"))
                .map(|l| format!("{ns}: {l}")),
        );
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = text(&cmdline).replace('\0', " ");
            if cmdline.contains(&format!("sd-pool-{pool}-"))
                || (cmdline.contains("qemu-system") && cmdline.contains(&format!("pool-{pool}-")))
            {
                found.push(format!(
                    "process {}: {cmdline}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    found
}

fn assert_nothing_left(pool: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let left = node_leftovers(pool);
        if left.is_empty() && pool_record(pool).is_none() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pool {pool} left, 60 s after its end: {left:?} (record there: {})",
            pool_record(pool).is_some()
        );
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
}

/// A pool description `NAME.sf` in `dir`.
fn description(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.sf"));
    std::fs::write(&path, text).unwrap();
    path
}

/// The paper's Figure 1, its domains on busybox (which has ping).
fn figure1_on_busybox(dir: &std::path::Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(repo().join("jobs/figure1.sf")).unwrap();
    let text = text.replace(
        "extends DefaultXenDomain {",
        "extends DefaultXenDomain {\n      image \"busybox\";",
    );
    let path = dir.join("figure1-busybox.sf");
    std::fs::write(&path, text).unwrap();
    path
}

fn members_by_node(pool: &str) -> Vec<(String, String)> {
    let record = pool_record(pool).expect("the pool record");
    record["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["path"].as_str().unwrap().to_string(),
                m["node"].as_str().unwrap_or("here").to_string(),
            )
        })
        .collect()
}

#[test]
fn figure1_on_two_nodes_puts_each_hosts_domains_on_its_node_and_they_talk_by_name() {
    let _serial = common::serial();
    let alloc = Allocation::new(&cluster());
    let dir = tempfile::tempdir().unwrap();
    let fig = figure1_on_busybox(dir.path());
    alloc.sd_ok(&["start", "fig1", fig.to_str().unwrap()]);
    assert_eq!(
        members_by_node("fig1"),
        [
            ("sfConfig:computer1:domain1", "node1"),
            ("sfConfig:computer1:domain2", "node1"),
            ("sfConfig:computer2:domain1", "node2"),
        ]
        .map(|(p, n)| (p.to_string(), n.to_string()))
    );
    let status = alloc.sd_ok(&["status", "fig1"]);
    assert!(
        status.contains(&format!("allocation: Slurm job {}", alloc.job)),
        "{status}"
    );
    for (member, node) in [
        ("pool-fig1-computer1.domain1", "node1"),
        ("pool-fig1-computer1.domain2", "node1"),
        ("pool-fig1-computer2.domain1", "node2"),
    ] {
        assert!(
            status
                .lines()
                .any(|l| l.starts_with(member) && l.contains(" up ") && l.contains(node)),
            "{member} up on {node}: {status}"
        );
    }
    // computer2's domain (node 2) reaches computer1's (node 1) by host name,
    // over the private network's tunnel between the nodes.
    let ping = alloc.sd_ok(&[
        "exec",
        "fig1/computer2:domain1",
        "--",
        "ping",
        "-c",
        "2",
        "-W",
        "5",
        "PhysHost01-dom1",
    ]);
    assert!(ping.contains("from 10.214.0.11"), "{ping}");
    alloc.sd_ok(&["terminate", "fig1"]);
    assert_nothing_left("fig1");
    let last = final_record("fig1");
    assert!(last["terminated_because"].is_null(), "{last}");
}

#[test]
fn a_sequence_over_two_nodes_starts_the_second_once_the_first_is_up() {
    let _serial = common::serial();
    let alloc = Allocation::new(&cluster());
    let dir = tempfile::tempdir().unwrap();
    let desc = description(
        dir.path(),
        "seq",
        r#"sfConfig extends Sequence {
  first extends DefaultXenDomain { image "busybox"; memory 128; sfProcessHost "@0"; }
  second extends DefaultXenDomain { image "busybox"; memory 128; sfProcessHost "node2"; }
}
"#,
    );
    alloc.sd_ok(&["start", "seq", desc.to_str().unwrap()]);
    let record = pool_record("seq").unwrap();
    let m = record["members"].as_array().unwrap();
    let (first, second) = (&m[0], &m[1]);
    assert_eq!(
        (first["node"].as_str(), second["node"].as_str()),
        (Some("node1"), Some("node2"))
    );
    let first_up = first["up_unix_ms"].as_u64().unwrap();
    // The second's boot began when its agent answered minus its boot time.
    let second_began = second["up_unix_ms"].as_u64().unwrap() - second["boot_ms"].as_u64().unwrap();
    assert!(
        second_began >= first_up,
        "the second began booting at {second_began}, before the first was up at {first_up}: {record}"
    );
    alloc.sd_ok(&["terminate", "seq"]);
    assert_nothing_left("seq");
}

#[test]
fn a_killed_step_on_node2_terminates_the_whole_compound_and_leaves_nothing() {
    let _serial = common::serial();
    let alloc = Allocation::new(&cluster());
    let dir = tempfile::tempdir().unwrap();
    let desc = description(
        dir.path(),
        "two",
        r#"sfConfig extends Compound {
  sfLivenessDelay 1;
  sfLivenessFactor 2;
  a extends DefaultXenDomain { image "busybox"; memory 128; network "private"; sfProcessHost "@0"; }
  b extends DefaultXenDomain { image "busybox"; memory 128; network "private"; sfProcessHost "@1"; }
}
"#,
    );
    alloc.sd_ok(&["start", "kill2", desc.to_str().unwrap()]);
    // b's step, as Slurm knows it: the one on node2.
    let steps = alloc.squeue(&["-h", "-s", "-j", &alloc.job, "-o", "%i %N"]);
    let step = steps
        .lines()
        .find(|l| l.ends_with(" node2"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no step on node2: {steps}"))
        .to_string();
    let _ = alloc
        .slurm("scancel")
        .args(["--signal=KILL", &step])
        .status();
    assert_nothing_left("kill2");
    let last = final_record("kill2");
    let why = last["terminated_because"].as_str().unwrap_or_default();
    assert!(
        why.contains("pool-kill2-b") && why.contains("node2"),
        "terminated because: {why}"
    );
    // The allocation is untouched: a member's end is the pool's, not the job's.
    let state = alloc.squeue(&["-h", "-j", &alloc.job, "-o", "%T"]);
    assert_eq!(state.trim(), "RUNNING");
}

#[test]
fn scancel_of_the_allocation_leaves_nothing_on_either_node() {
    let _serial = common::serial();
    let alloc = Allocation::new(&cluster());
    let dir = tempfile::tempdir().unwrap();
    let desc = description(
        dir.path(),
        "two",
        r#"sfConfig extends Compound {
  a extends DefaultXenDomain { image "busybox"; memory 128; network "private"; sfProcessHost "@0"; }
  b extends DefaultXenDomain { image "busybox"; memory 128; network "private"; sfProcessHost "@1"; }
}
"#,
    );
    alloc.sd_ok(&["start", "cancelled", desc.to_str().unwrap()]);
    alloc.cancel();
    assert_nothing_left("cancelled");
    // After the allocation, terminate has nothing left to do and says so.
    alloc.sd_ok(&["terminate", "cancelled"]);
}

#[test]
fn outside_an_allocation_a_description_naming_other_hosts_is_refused_and_nothing_made() {
    let _serial = common::serial();
    let dir = tempfile::tempdir().unwrap();
    let fig = figure1_on_busybox(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_sd"))
        .env_remove("SLURM_JOB_ID")
        .env_remove("SD_CONFIG")
        .args(["start", "outside", fig.to_str().unwrap()])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sfConfig:computer1:domain1")
            && err.contains("PhysHost01.cern.ch")
            && err.contains("Slurm allocation"),
        "{err}"
    );
    assert!(pool_record("outside").is_none());
}
