use std::net::Ipv4Addr;

use super::*;

/// A fixed, fake location: paths in snapshots do not depend on the checkout.
const FAKE: &str = "/etc/sd/site.yaml";

fn load(src: &str) -> Result<SiteConfig, ConfigError> {
    SiteConfig::from_str(src, Path::new(FAKE))
}

fn error(src: &str) -> String {
    match load(src) {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(e) => e.to_string(),
    }
}

const MINIMAL: &str = "\
images:
  busybox: { disk: busybox.qcow2, kernel: vmlinuz, initrd: initrd.img }
vos:
  demo: { images: \"*\", users: [\"*\"] }
";

/// A small valid config that error cases modify.
const BASE: &str = "\
defaults: { image: debian-minimal }
images:
  debian-minimal: { disk: debian-minimal.qcow2, kernel: vmlinuz, initrd: initrd.img }
  busybox: { disk: busybox.qcow2, kernel: vmlinuz, initrd: initrd.img }
vos:
  demo:
    images: [debian-minimal, busybox]
    max_memory_mib: 2048
    max_vcpus: 2
";

fn repo_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/site.yaml")
}

#[test]
fn loads_the_repo_config() {
    let site = SiteConfig::load(&repo_config_path()).unwrap();
    let top = normalize(
        &std::path::absolute(Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")).unwrap(),
    );
    assert_eq!(site.image_dir, top.join("build/images"));
    assert_eq!(site.path, top.join("config/site.yaml"));
    assert_eq!(site.state_dir, Path::new("/var/lib/smartdomains"));
    assert_eq!(site.log_dir, Path::new("/var/log/smartdomains"));
    assert_eq!(
        site.images["busybox"].disk,
        top.join("build/images/busybox.qcow2")
    );
    assert_eq!(
        site.images["debian-minimal"].kernel,
        top.join("build/images/vmlinuz")
    );
    assert_eq!(site.vos.keys().collect::<Vec<_>>(), ["atlas", "demo"]);
    assert!(site.vos["demo"].images.allows("busybox"));
    assert!(!site.vos["atlas"].images.allows("busybox"));
    assert_eq!(site.default_vo.as_deref(), Some("demo"));
}

#[test]
fn repo_config_resolved() {
    let src = std::fs::read_to_string(repo_config_path()).unwrap();
    let site = load(&src).unwrap();
    insta::assert_yaml_snapshot!(site);
}

#[test]
fn minimal_config_gets_defaults() {
    let site = load(MINIMAL).unwrap();
    assert_eq!(site.path, Path::new(FAKE));
    assert_eq!(site.state_dir, Path::new("/var/lib/smartdomains"));
    assert_eq!(site.image_dir, Path::new("/var/lib/smartdomains/images"));
    assert_eq!(site.log_dir, Path::new("/var/log/smartdomains"));
    assert_eq!(site.backend, Backend::Auto);
    assert_eq!(site.acceleration, Acceleration::Auto);
    assert_eq!(
        site.qemu,
        QemuConfig {
            binary: PathBuf::from("qemu-system-x86_64"),
            run_as: None,
            sandbox: true
        }
    );
    assert_eq!(site.boot_timeout_secs, 60);
    assert_eq!(site.shutdown_timeout_secs, 10);
    assert_eq!(
        site.defaults,
        SiteDefaults {
            image: None,
            memory_mib: 512,
            vcpus: 1,
            disk_mib: 2048,
            hostname: "sd-guest".into()
        }
    );
    let busybox = &site.images["busybox"];
    assert_eq!(
        busybox.disk,
        Path::new("/var/lib/smartdomains/images/busybox.qcow2")
    );
    assert_eq!(busybox.format, DiskFormat::Qcow2);
    assert_eq!(busybox.defaults, ImageDefaults::default());
    assert_eq!(site.vos["demo"].images, AllowedImages::All);
    assert_eq!(site.vos["demo"].max_memory_mib, None);
    assert_eq!(site.default_vo, None);
}

#[test]
fn paths_resolve_against_the_config_and_image_dirs() {
    let site = load(&format!(
            "state_dir: state\nimage_dir: ./../img\nlog_dir: /log\nqemu: {{ binary: bin/qemu, run_as: sd-qemu }}\n{}",
            MINIMAL.replace("busybox.qcow2", "/abs/busybox.img").replace("vmlinuz", "k/./vmlinuz")
        ))
        .unwrap();
    assert_eq!(site.state_dir, Path::new("/etc/sd/state"));
    assert_eq!(site.image_dir, Path::new("/etc/img"));
    assert_eq!(site.log_dir, Path::new("/log"));
    assert_eq!(site.qemu.binary, Path::new("/etc/sd/bin/qemu"));
    assert_eq!(site.qemu.run_as.as_deref(), Some("sd-qemu"));
    assert_eq!(site.images["busybox"].disk, Path::new("/abs/busybox.img"));
    assert_eq!(
        site.images["busybox"].kernel,
        Path::new("/etc/img/k/vmlinuz")
    );
    // image_dir defaults to <state_dir>/images.
    let site = load(&format!("state_dir: /srv/sd\n{MINIMAL}")).unwrap();
    assert_eq!(site.image_dir, Path::new("/srv/sd/images"));
}

#[test]
fn a_relative_config_path_is_made_absolute() {
    let site = SiteConfig::from_str(MINIMAL, Path::new("site.yaml")).unwrap();
    assert!(site.path.is_absolute());
    assert_eq!(
        site.path,
        std::env::current_dir().unwrap().join("site.yaml")
    );
}

#[test]
fn vo_images_forms() {
    let site = load(&BASE.replace("[debian-minimal, busybox]", "busybox")).unwrap();
    assert_eq!(
        site.vos["demo"].images,
        AllowedImages::Only(vec!["busybox".into()])
    );
    let site = load(&BASE.replace("[debian-minimal, busybox]", "[busybox, \"*\"]")).unwrap();
    assert_eq!(site.vos["demo"].images, AllowedImages::All);
    let site = load(&BASE.replace("[debian-minimal, busybox]", "[busybox, busybox]")).unwrap();
    assert_eq!(
        site.vos["demo"].images,
        AllowedImages::Only(vec!["busybox".into()])
    );
}

#[test]
fn error_unknown_top_level_key() {
    insta::assert_snapshot!(error(&format!("{BASE}frobnicate: 3\n")));
}

#[test]
fn error_unknown_key_in_a_vo() {
    insta::assert_snapshot!(error(&BASE.replace("max_vcpus: 2", "max_vcpu: 2")));
}

#[test]
fn error_bad_enum_value() {
    insta::assert_snapshot!(error(&format!("backend: vmware\n{BASE}")));
}

#[test]
fn error_wrong_type() {
    insta::assert_snapshot!(error(&BASE.replace("max_vcpus: 2", "max_vcpus: two")));
}

#[test]
fn error_yaml_syntax() {
    insta::assert_snapshot!(error(
        &BASE.replace("[debian-minimal, busybox]", "[debian-minimal, busybox")
    ));
}

#[test]
fn error_vo_names_an_unknown_image() {
    insta::assert_snapshot!(error(
        &BASE.replace("[debian-minimal, busybox]", "[debian-minimal, centos]")
    ));
}

#[test]
fn error_vo_names_an_unknown_image_alone() {
    insta::assert_snapshot!(error(&BASE.replace("[debian-minimal, busybox]", "centos")));
}

#[test]
fn error_default_image_not_in_catalogue() {
    insta::assert_snapshot!(error(
        &BASE.replace("image: debian-minimal", "image: centos")
    ));
}

#[test]
fn error_zero_limit() {
    insta::assert_snapshot!(error(&BASE.replace("max_vcpus: 2", "max_vcpus: 0")));
}

#[test]
fn error_bad_image_name() {
    insta::assert_snapshot!(error(&BASE.replace("  busybox: {", "  BusyBox: {")));
}

#[test]
fn error_bad_default_hostname() {
    insta::assert_snapshot!(error(&BASE.replace(
        "{ image: debian-minimal }",
        "{ image: debian-minimal, hostname: my_guest }"
    )));
}

#[test]
fn error_unknown_default_vo() {
    insta::assert_snapshot!(error(&format!("{BASE}default_vo: cms\n")));
}

#[test]
fn error_vo_limit_below_site_defaults() {
    insta::assert_snapshot!(error(
        &BASE.replace("max_memory_mib: 2048", "max_memory_mib: 256")
    ));
}

#[test]
fn error_vo_limit_below_image_defaults() {
    let src = BASE.replace(
        "{ disk: busybox.qcow2,",
        "{ defaults: { vcpus: 4 }, disk: busybox.qcow2,",
    );
    insta::assert_snapshot!(error(&src));
}

#[test]
fn error_no_vos() {
    insta::assert_snapshot!(error(
        "images:\n  busybox: { disk: b, kernel: k, initrd: i }\n"
    ));
}

#[test]
fn error_no_images() {
    insta::assert_snapshot!(error(""));
}

#[test]
fn error_missing_key() {
    insta::assert_snapshot!(error(&BASE.replace(
        " kernel: vmlinuz, initrd: initrd.img }\nvos",
        " kernel: vmlinuz }\nvos"
    )));
}

#[test]
fn error_empty_vo() {
    insta::assert_snapshot!(error(&BASE.replace("  demo:\n", "  demo:\n  cms:\n")));
}

/// BASE with an `lvm:` section and an lvm image, `busybox-lvm`.
const LVM: &str = "\
lvm: { vg: sdvg, thin_pool: thin }
images:
  busybox: { disk: busybox.qcow2, kernel: vmlinuz, initrd: initrd.img }
  busybox-lvm: { format: lvm, lv: busybox-base, kernel: vmlinuz, initrd: initrd.img }
vos:
  demo: { images: \"*\" }
";

#[test]
fn lvm_images_resolve() {
    let site = load(LVM).unwrap();
    assert_eq!(
        site.lvm,
        Some(LvmConfig {
            vg: "sdvg".into(),
            thin_pool: "thin".into()
        })
    );
    let img = &site.images["busybox-lvm"];
    assert_eq!(img.format, DiskFormat::Lvm);
    assert_eq!(
        img.lvm,
        Some(LvmBase {
            vg: "sdvg".into(),
            thin_pool: "thin".into(),
            lv: "busybox-base".into()
        })
    );
    assert_eq!(img.disk, Path::new("/dev/sdvg/busybox-base"));
    assert_eq!(site.images["busybox"].lvm, None);
    insta::assert_yaml_snapshot!(site);

    // Defaults: the pool is `pool`, the base volume is named after the image.
    let site = load(
        &LVM.replace(", thin_pool: thin", "")
            .replace("lv: busybox-base, ", ""),
    )
    .unwrap();
    let base = site.images["busybox-lvm"].lvm.clone().unwrap();
    assert_eq!(
        (base.vg.as_str(), base.thin_pool.as_str(), base.lv.as_str()),
        ("sdvg", "pool", "busybox-lvm")
    );
    assert_eq!(
        site.images["busybox-lvm"].disk,
        Path::new("/dev/sdvg/busybox-lvm")
    );
    // An lvm: section without lvm images is fine (and changes nothing).
    let site = load(&format!("lvm: {{ vg: sdvg }}\n{MINIMAL}")).unwrap();
    assert_eq!(site.images["busybox"].format, DiskFormat::Qcow2);
}

#[test]
fn error_lvm_image_without_lvm_section() {
    insta::assert_snapshot!(error(
        &LVM.replace("lvm: { vg: sdvg, thin_pool: thin }\n", "")
    ));
}

#[test]
fn error_lvm_image_with_a_disk() {
    insta::assert_snapshot!(error(
        &LVM.replace("lv: busybox-base,", "disk: busybox.raw,")
    ));
}

#[test]
fn error_lv_on_a_qcow2_image() {
    insta::assert_snapshot!(error(&LVM.replace(
        "{ disk: busybox.qcow2,",
        "{ disk: busybox.qcow2, lv: busybox-base,"
    )));
}

#[test]
fn error_image_without_disk() {
    insta::assert_snapshot!(error(&LVM.replace("{ disk: busybox.qcow2,", "{")));
}

#[test]
fn error_bad_lv_name() {
    insta::assert_snapshot!(error(&LVM.replace("busybox-base", "busybox_tmeta")));
}

#[test]
fn error_bad_vg_name() {
    insta::assert_snapshot!(error(&LVM.replace("vg: sdvg", "vg: \"-sdvg\"")));
}

#[test]
fn error_default_lv_name_is_no_volume_name() {
    // A good image name, but lvm2 reserves the prefix `snapshot`.
    insta::assert_snapshot!(error(&LVM.replace(
        "busybox-lvm: { format: lvm, lv: busybox-base,",
        "snapshot-1: { format: lvm,"
    )));
}

#[test]
fn error_lv_is_the_thin_pool() {
    insta::assert_snapshot!(error(&LVM.replace("lv: busybox-base", "lv: thin")));
}

#[test]
fn error_lvm_section_without_vg() {
    insta::assert_snapshot!(error(&LVM.replace("vg: sdvg, ", "")));
}

#[test]
fn io_error_names_the_file() {
    let e = SiteConfig::load(Path::new("/nonexistent/sd/site.yaml")).unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }));
    insta::assert_snapshot!(e.to_string());
}

#[test]
fn parse_errors_have_positions() {
    let e = load(&BASE.replace("max_vcpus: 2", "max_vcpus: two")).unwrap_err();
    assert!(matches!(e, ConfigError::Parse { .. }));
    assert_eq!(e.position(), Some((9, 16)));
    let e = load(&BASE.replace("max_vcpus: 2", "max_vcpus: 0")).unwrap_err();
    assert!(matches!(e, ConfigError::Invalid { .. }));
    assert_eq!(e.position(), Some((9, 16)));
}

#[test]
fn check_files_lists_missing_catalogue_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("busybox.qcow2"), b"").unwrap();
    std::fs::write(dir.path().join("vmlinuz"), b"").unwrap();
    std::fs::create_dir(dir.path().join("initrd.img")).unwrap();
    let site = SiteConfig::from_str(
        &format!("image_dir: .\n{MINIMAL}"),
        &dir.path().join("site.yaml"),
    )
    .unwrap();
    let problems = || -> Vec<String> {
        let dir = dir.path().display().to_string();
        site.check_files(&|_| None)
            .iter()
            .map(|p| p.replace(&dir, "DIR"))
            .collect()
    };
    assert_eq!(
        problems(),
        ["image \"busybox\": initrd DIR/initrd.img: not a regular file"]
    );
    std::fs::remove_file(dir.path().join("vmlinuz")).unwrap();
    assert_eq!(
        problems(),
        [
            "image \"busybox\": kernel DIR/vmlinuz: No such file or directory (os error 2)",
            "image \"busybox\": initrd DIR/initrd.img: not a regular file",
        ]
    );
}

#[test]
fn vo_members_are_groups_and_users() {
    let site = load(&format!(
        "{BASE}    unix_groups: [sd-demo, sd-demo, Grid.Users]\n    users: [alice]\n  \
             open: {{ images: \"*\", users: [\"*\"] }}\n  closed: {{ images: \"*\" }}\n"
    ))
    .unwrap();
    let demo = &site.vos["demo"].members;
    assert_eq!(demo.unix_groups, ["sd-demo", "Grid.Users"]);
    assert_eq!(demo.users, ["alice"]);
    assert_eq!(
        demo.to_string(),
        "Unix groups sd-demo, Grid.Users; users alice"
    );
    let user = |name: &str, groups: &[&str]| sd_host::owner::UnixUser {
        uid: 1000,
        name: name.into(),
        gid: 1000,
        gids: vec![1000],
        groups: groups.iter().map(|g| g.to_string()).collect(),
    };
    assert!(demo.admits(&user("alice", &["alice"])));
    assert!(demo.admits(&user("bob", &["bob", "sd-demo"])));
    assert!(!demo.admits(&user("carol", &["carol", "sd-demo2"])));
    // A group named like a user is not that user.
    assert!(!demo.admits(&user("dave", &["alice"])));
    assert!(site.vos["open"].members.admits(&user("eve", &[])));
    assert_eq!(site.vos["open"].members.to_string(), "every local user");
    assert!(!site.vos["closed"]
        .members
        .admits(&user("alice", &["sd-demo"])));
    assert_eq!(site.vos["closed"].members.to_string(), "none but root");
    // A VO only root may use is odd, not broken: `sd images` shows it.
    let problems = site.check_files(&|_| None);
    assert!(
        !problems.iter().any(|p| p.contains("closed")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p
                == "VO \"demo\": Unix group \"Grid.Users\" is not in this node's group database"),
        "{problems:?}"
    );
}

#[test]
fn error_bad_member_names() {
    insta::assert_snapshot!(error(&format!("{BASE}    unix_groups: [\"sd demo\"]\n")));
    insta::assert_snapshot!(error(&format!("{BASE}    unix_groups: [\"*\"]\n")));
}

#[test]
fn hostnames() {
    for ok in [
        "sd-guest",
        "a",
        "A1",
        "9lives",
        "node-1.example.org",
        &"a".repeat(63),
    ] {
        assert_eq!(validate_hostname(ok), Ok(()), "{ok}");
    }
    let long = [
        "a".repeat(63),
        "b".repeat(63),
        "c".repeat(63),
        "d".repeat(63),
    ]
    .join(".");
    for bad in [
        "",
        "-a",
        "a-",
        "a_b",
        "a..b",
        ".a",
        "a.",
        "ü",
        "a b",
        &"a".repeat(64),
        &long,
    ] {
        assert!(validate_hostname(bad).is_err(), "{bad}");
    }
}

#[test]
fn image_names() {
    for ok in ["busybox", "debian-12.4_min", "0day"] {
        assert_eq!(validate_image_name(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "../etc",
        "a/b",
        "/abs",
        ".hidden",
        "-x",
        "Debian",
        "a b",
        &"a".repeat(129),
    ] {
        assert!(validate_image_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn node_limits_default_and_are_read() {
    assert_eq!(load(MINIMAL).unwrap().node_limits, NodeLimits::default());
    let site = load(&format!(
            "{MINIMAL}node_limits: {{ max_domains: 3, max_domains_per_user: 1, memory_reserve_mib: 0 }}\n"
        ))
        .unwrap();
    assert_eq!(
        site.node_limits,
        NodeLimits {
            max_domains: 3,
            max_domains_per_user: 1,
            memory_reserve_mib: 0
        }
    );
    let e = error(&format!("{MINIMAL}node_limits: {{ max_domains: 0 }}\n"));
    assert!(
        e.contains("node_limits.max_domains") && e.contains("at least 1"),
        "{e}"
    );
    let e = error(&format!("{MINIMAL}node_limits: {{ max_vms: 2 }}\n"));
    assert!(e.contains("max_vms"), "{e}");
}

#[test]
fn normalizes_lexically() {
    assert_eq!(normalize(Path::new("/a/b/../c/./d")), Path::new("/a/c/d"));
    assert_eq!(normalize(Path::new("/../a")), Path::new("/a"));
    assert_eq!(normalize(Path::new("../a/..")), Path::new(".."));
    assert_eq!(normalize(Path::new("a/..")), Path::new("."));
}

/// BASE with networks: a nat one, a private one, a bridge.
fn with_networks(networks: &str, vo_networks: &str) -> String {
    format!("{BASE}    networks: {vo_networks}\nnetworks:\n{networks}")
}

const NETWORKS: &str = "  nat: { kind: nat, subnet: 10.213.0.0/24, dns: [10.213.0.1] }
  lab: { kind: private, subnet: 10.214.0.0/24 }
  site: { kind: bridge, bridge: br0 }
";

#[test]
fn networks_resolve() {
    let site = load(&with_networks(NETWORKS, "[nat, lab, nat]")).unwrap();
    assert_eq!(site.vos["demo"].networks, ["nat", "lab"]);
    let NetworkKind::Nat {
        subnet,
        dns,
        deny,
        allow,
    } = &site.networks["nat"].kind
    else {
        panic!("{:?}", site.networks["nat"])
    };
    assert_eq!(subnet.to_string(), "10.213.0.0/24");
    assert_eq!(dns, &[Ipv4Addr::new(10, 213, 0, 1)]);
    assert_eq!(deny.len(), DEFAULT_NAT_DENY.len());
    assert!(allow.is_empty());
    assert_eq!(
        site.networks["nat"].kind.host_address(),
        Some(Ipv4Addr::new(10, 213, 0, 1))
    );
    assert_eq!(
        site.networks["site"].kind,
        NetworkKind::Bridge {
            bridge: "br0".into()
        }
    );
    assert_eq!(site.networks["site"].kind.host_address(), None);
    insta::assert_yaml_snapshot!(site.networks);

    // deny and allow as written (a bare address is a /32).
    let site = load(&with_networks(
        "  nat: { kind: nat, subnet: 10.213.0.0/30, deny: [0.0.0.0/0], allow: [192.0.2.7] }\n",
        "[]",
    ))
    .unwrap();
    let NetworkKind::Nat { deny, allow, .. } = &site.networks["nat"].kind else {
        panic!()
    };
    assert_eq!(deny[0].to_string(), "0.0.0.0/0");
    assert_eq!(allow[0].to_string(), "192.0.2.7/32");
    assert!(site.vos["demo"].networks.is_empty());
    // No networks: none.
    assert!(load(BASE).unwrap().networks.is_empty());
}

#[test]
fn repo_config_networks() {
    let site = SiteConfig::load(&repo_config_path()).unwrap();
    assert_eq!(site.vos["demo"].networks, ["nat", "private"]);
    assert!(site.vos["atlas"].networks.is_empty());
    assert_eq!(site.networks["nat"].kind.name(), "nat");
    assert_eq!(site.networks["private"].kind.name(), "private");
}

#[test]
fn network_names() {
    for ok in ["nat", "private", "lab-1", &"a".repeat(15)] {
        assert_eq!(validate_network_name(ok), Ok(()), "{ok}");
    }
    for bad in [
        "",
        "none",
        "Nat",
        "1net",
        "-x",
        "a_b",
        "a.b",
        &"a".repeat(16),
    ] {
        assert!(validate_network_name(bad).is_err(), "{bad}");
    }
}

#[test]
fn error_unknown_network_kind() {
    insta::assert_snapshot!(error(&with_networks(
        "  nat: { kind: vde, subnet: 10.213.0.0/24 }\n",
        "[nat]"
    )));
}

#[test]
fn error_bad_subnet() {
    insta::assert_snapshot!(error(&with_networks(
        "  nat: { kind: nat, subnet: 10.213.0.0/33 }\n",
        "[nat]"
    )));
}

#[test]
fn error_subnet_too_small() {
    insta::assert_snapshot!(error(&with_networks(
        "  nat: { kind: nat, subnet: 10.213.0.0/31 }\n",
        "[nat]"
    )));
}

#[test]
fn error_subnet_not_ipv4() {
    insta::assert_snapshot!(error(&with_networks(
        "  lab: { kind: private, subnet: \"fd00::/64\" }\n",
        "[lab]"
    )));
}

#[test]
fn error_subnet_not_its_network_address() {
    insta::assert_snapshot!(error(&with_networks(
        "  lab: { kind: private, subnet: 10.214.0.1/24 }\n",
        "[lab]"
    )));
}

#[test]
fn error_network_without_subnet() {
    insta::assert_snapshot!(error(&with_networks("  lab: { kind: private }\n", "[lab]")));
}

#[test]
fn error_bridge_without_bridge() {
    insta::assert_snapshot!(error(&with_networks(
        "  site: { kind: bridge }\n",
        "[site]"
    )));
}

#[test]
fn error_bad_bridge_name() {
    insta::assert_snapshot!(error(&with_networks(
        "  site: { kind: bridge, bridge: \"br 0\" }\n",
        "[site]"
    )));
}

#[test]
fn error_key_of_another_kind() {
    insta::assert_snapshot!(error(&with_networks(
        "  site: { kind: bridge, bridge: br0, subnet: 10.0.0.0/24 }\n",
        "[site]"
    )));
    insta::assert_snapshot!(error(&with_networks(
        "  lab: { kind: private, subnet: 10.214.0.0/24, dns: [10.214.0.1] }\n",
        "[lab]"
    )));
}

#[test]
fn error_unknown_network_key() {
    insta::assert_snapshot!(error(&with_networks(
        "  nat: { kind: nat, subnet: 10.213.0.0/24, forward: [] }\n",
        "[nat]"
    )));
}

#[test]
fn error_bad_deny_and_dns() {
    insta::assert_snapshot!(error(&with_networks(
        "  nat: { kind: nat, subnet: 10.213.0.0/24, deny: [10.0.0.0/8, 10.1.2.3/8] }\n",
        "[nat]"
    )));
    insta::assert_snapshot!(error(&with_networks(
        "  nat: { kind: nat, subnet: 10.213.0.0/24, allow: [example.org] }\n",
        "[nat]"
    )));
    insta::assert_snapshot!(error(&with_networks(
        "  nat: { kind: nat, subnet: 10.213.0.0/24, dns: [10.213.0.1, 1.1.1.300] }\n",
        "[nat]"
    )));
}

#[test]
fn error_bad_network_name() {
    insta::assert_snapshot!(error(&with_networks(
        "  My_Net: { kind: private, subnet: 10.214.0.0/24 }\n",
        "[]"
    )));
    insta::assert_snapshot!(error(&with_networks(
        "  none: { kind: private, subnet: 10.214.0.0/24 }\n",
        "[]"
    )));
}

#[test]
fn error_vo_names_an_unknown_network() {
    insta::assert_snapshot!(error(&with_networks(NETWORKS, "[nat, dmz]")));
    insta::assert_snapshot!(error(&with_networks(NETWORKS, "[none]")));
    insta::assert_snapshot!(error(&format!("{BASE}    networks: [nat]\n")));
}
