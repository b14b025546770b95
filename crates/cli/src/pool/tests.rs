use super::planning::*;
use super::record::*;
use super::*;
use sd_host::owner::Owner;
use sd_site::SiteConfig;
use sd_vmm::status;
use std::fs;
use std::path::Path;

fn record(name: &str) -> PoolRecord {
    PoolRecord {
        name: name.into(),
        source: "x.yaml".into(),
        kind: "Sequence".into(),
        concurrent_terminate: false,
        started_unix_ms: 1,
        members: vec![MemberRecord {
            id: format!("pool-{name}-db"),
            path: "sfConfig:db".into(),
            image: "busybox".into(),
            memory_mib: 256,
            vcpus: 1,
            up_unix_ms: Some(2),
            down_unix_ms: None,
            boot_ms: Some(1),
            liveness_delay_secs: 5,
            liveness_factor: 3,
            node: None,
            step: None,
        }],
        monitor_pid: Some(42),
        terminated_because: None,
        terminated_unix_ms: None,
        allocation: None,
    }
}

#[test]
fn exclusive_record_write_refuses_a_second_pool_of_that_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pools/p.json");
    write_atomic(&path, &record("p"), true).unwrap();
    let again = write_atomic(&path, &record("p"), true).unwrap_err();
    assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
    write_atomic(&path, &record("p"), false).unwrap();
    let back: PoolRecord = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(back, record("p"));
    let left: Vec<_> = fs::read_dir(dir.path().join("pools"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left.len(), 1, "no temporary file is left: {left:?}");
}

#[test]
fn members_get_journal_ids_and_pools_know_their_terminate_order() {
    use sd_languages::description::{resolve_str, Format};
    let d = resolve_str(
        "p.yaml",
        "sfConfig:\n  extends: Compound\n  sfSyncTerminate: false\n  \
         db: { extends: DefaultXenDomain, image: busybox }\n  \
         inner:\n    extends: Compound\n    sfSyncTerminate: false\n    \
         w1: { extends: DefaultXenDomain }\n",
        Format::Yaml,
    )
    .unwrap();
    let ids: Vec<String> = d.root.domains().iter().map(|m| member_id("p", m)).collect();
    assert_eq!(ids, ["pool-p-db", "pool-p-inner.w1"]);
    assert!(ids.iter().all(|i| status::valid_id(i)));
    assert!(terminates_concurrently(&d.root));
    let (req, vo) = request_of(d.root.domains()[0]).unwrap();
    assert_eq!(req.image.as_deref(), Some("busybox"));
    assert_eq!(req.memory_mib, Some(256));
    assert_eq!(req.hostname.as_deref(), Some("db"));
    assert_eq!(req.save_as, None);
    assert_eq!(vo, None);

    let seq = resolve_str(
        "s.yaml",
        "sfConfig:\n  extends: Sequence\n  db: { extends: DefaultXenDomain }\n",
        Format::Yaml,
    )
    .unwrap();
    assert!(!terminates_concurrently(&seq.root));
    assert!(!valid_name("../x") && !valid_name(&"a".repeat(41)) && valid_name("p-1"));
}

#[test]
fn a_record_from_before_liveness_still_loads() {
    let old = r#"{"name":"p","source":"x.yaml","kind":"Sequence","concurrent_terminate":false,
        "started_unix_ms":1,"members":[{"id":"pool-p-db","path":"sfConfig:db","image":"busybox",
        "memory_mib":256,"vcpus":1,"up_unix_ms":2,"down_unix_ms":null}]}"#;
    let r: PoolRecord = serde_json::from_str(old).unwrap();
    assert_eq!(r.monitor_pid, None);
    assert_eq!(r.members[0].liveness(), Liveness::DEFAULT);
}

fn site() -> SiteConfig {
    SiteConfig::from_str(
        "state_dir: /nonexistent/state\nlog_dir: /nonexistent/log\nimage_dir: /nonexistent\n\
         backend: qemu\ndefault_vo: demo\n\
         defaults: { image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: g }\n\
         images:\n  busybox: { disk: b.qcow2, format: qcow2, kernel: k, initrd: i }\n\
         vos:\n  demo: { images: [busybox], max_memory_mib: 512, max_vcpus: 2, max_disk_mib: 4096 }\n  \
         atlas: { images: [busybox], max_memory_mib: 256, max_vcpus: 1, max_disk_mib: 4096 }\n",
        Path::new("site.yaml"),
    )
    .unwrap()
}

#[test]
fn pools_nest_compounds_boot_together_and_liveness_is_the_holding_pools() {
    use sd_languages::description::{resolve_str, Format};
    let d = resolve_str(
        "p.yaml",
        "D: { extends: DefaultXenDomain, image: busybox, memory: 128 }\n\
         sfConfig:\n  extends: Sequence\n  sfLivenessDelay: 4\n  sfLivenessFactor: 3\n  \
         db: { extends: D }\n  \
         farm:\n    extends: Compound\n    sfLivenessDelay: 1\n    \
         w1: { extends: D }\n    w2: { extends: D, vo: atlas }\n    \
         inner: { extends: Sequence, x: { extends: D } }\n  \
         last: { extends: D }\n",
        Format::Yaml,
    )
    .unwrap();
    let (plans, shape) = plan_members(&site(), &Owner::Root, "p", &d, None).unwrap();
    let ids: Vec<&str> = plans.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "pool-p-db",
            "pool-p-farm.w1",
            "pool-p-farm.w2",
            "pool-p-farm.inner.x",
            "pool-p-last"
        ]
    );
    assert_eq!(
        shape,
        StartOrder::Sequence(vec![
            StartOrder::Member(0),
            StartOrder::Compound(vec![
                StartOrder::Member(1),
                StartOrder::Member(2),
                StartOrder::Sequence(vec![StartOrder::Member(3)]),
            ]),
            StartOrder::Member(4),
        ])
    );
    let l = |p: &PlannedMember| (p.liveness.delay_secs, p.liveness.factor);
    // The holding pool's own values; a pool that sets none has the
    // prelude's (Compound: 10 s, 2), like `inner`.
    assert_eq!(
        plans.iter().map(l).collect::<Vec<_>>(),
        [(4, 3), (1, 2), (1, 2), (10, 2), (4, 3)]
    );
    // A member's own `vo` is the one it is admitted for.
    assert_eq!(plans[2].env.vo, "atlas");
    assert_eq!(plans[1].env.vo, "demo");
    let over = resolve_str(
        "q.yaml",
        "sfConfig:\n  extends: Compound\n  w: { extends: DefaultXenDomain, image: busybox, vcpus: 2, vo: atlas }\n",
        Format::Yaml,
    )
    .unwrap();
    let e = plan_members(&site(), &Owner::Root, "q", &over, None)
        .err()
        .expect("refused");
    assert!(
        e.is_user_error() && e.to_string().contains("sfConfig:w"),
        "{e}"
    );
}

#[test]
fn a_process_that_is_not_the_monitor_is_not_taken_for_it() {
    assert!(!monitor_alive(std::process::id(), "p"));
    assert!(!monitor_alive(u32::MAX, "p"));
    // A stand-in whose command line holds `pool-monitor p` is one, for
    // pool p only, and no longer once it has exited.
    let mut stand_in = std::process::Command::new("/bin/sh")
        .args(["-c", "sleep 30; :", "pool-monitor", "p"])
        .spawn()
        .unwrap();
    let pid = stand_in.id();
    // Its command line is the test's own until it has exec'd.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !monitor_alive(pid, "p") {
        assert!(
            std::time::Instant::now() < deadline,
            "the stand-in is not seen"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(!monitor_alive(pid, "q"));
    stand_in.kill().unwrap();
    stand_in.wait().unwrap();
    assert!(!monitor_alive(pid, "p"));
}

/// A warning shows a value as it was written, never its Debug form.
#[test]
fn values_in_messages_are_shown_as_written() {
    use sd_languages::description::ResolvedValue;
    let lazy = ResolvedValue::Lazy {
        lazy: "LAZY ATTRIB loop".into(),
        target: "sfConfig:computer1:loop".into(),
    };
    assert_eq!(lazy.to_string(), "LAZY ATTRIB loop");
    let list = ResolvedValue::List(vec![
        ResolvedValue::Str("x".into()),
        ResolvedValue::Int(-1),
        ResolvedValue::Real(0.5),
        ResolvedValue::Bool(true),
        ResolvedValue::Null,
    ]);
    assert_eq!(list.to_string(), r#"["x", -1, 0.5, true, NULL]"#);
}

#[test]
fn members_get_their_networks_and_no_address_twice() {
    use sd_languages::description::{resolve_str, Format};
    let site = SiteConfig::from_str(
        "images:\n  busybox: { disk: b.qcow2, kernel: k, initrd: i }\n\
         vos:\n  demo: { images: \"*\", networks: [lab] }\ndefault_vo: demo\n\
         networks:\n  lab: { kind: private, subnet: 10.214.0.0/24 }\n",
        Path::new("site.yaml"),
    )
    .unwrap();
    let pool = |b_ip: &str| {
        let d = resolve_str(
            "p.yaml",
            &format!(
                "D: {{ extends: DefaultXenDomain, image: busybox, network: lab }}\n\
                 sfConfig:\n  extends: Sequence\n  \
                 a: {{ extends: D, ip: 10.214.0.10 }}\n  b: {{ extends: D, ip: {b_ip} }}\n"
            ),
            Format::Yaml,
        )
        .unwrap();
        plan_members(&site, &Owner::Root, "p", &d, None)
    };
    let (plans, _) = pool("dhcp").unwrap();
    assert_eq!(plans[0].env.networks[0].network, "lab");
    assert_eq!(plans[0].env.networks[0].ip, Some([10, 214, 0, 10].into()));
    // Assigned at planning: the lowest free after the host's first address.
    assert_eq!(plans[1].env.networks[0].ip, Some([10, 214, 0, 2].into()));
    let e = pool("10.214.0.10").err().unwrap().to_string();
    assert_eq!(
        e,
        "member sfConfig: members \"sfConfig:a\" and \"sfConfig:b\" both ask for address \
         10.214.0.10 on network \"lab\""
    );
}
