use std::path::{Path, PathBuf};

use super::*;

fn jobs(name: &str) -> PathBuf {
    // Relative to the crate (cargo runs tests there), so that snapshots name
    // the file the way a user in the repository would.
    Path::new("../../jobs").join(name)
}

fn sf_error(src: &str) -> String {
    resolve_str("test.sf", src, Format::SmartFrog)
        .expect_err("should fail")
        .to_string()
}

fn yaml_error(src: &str) -> String {
    resolve_str("test.yaml", src, Format::Yaml)
        .expect_err("should fail")
        .to_string()
}

#[test]
fn figure1_resolves() {
    let d = resolve_file(&jobs("figure1.sf"), &[]).unwrap();
    assert_eq!(d.root.kind, Kind::Compound);
    let names: Vec<&str> = d.root.domains().iter().map(|c| c.path.as_str()).collect();
    assert_eq!(
        names,
        [
            "sfConfig:computer1:domain1",
            "sfConfig:computer1:domain2",
            "sfConfig:computer2:domain1"
        ]
    );
    let dom2 = d.root.domains()[1];
    assert_eq!(dom2.get_str("sfProcessHost"), Some("PhysHost01.cern.ch"));
    assert_eq!(dom2.get_str("kernel"), Some("/boot/vmlinuz-2.6.16-xen"));
    assert_eq!(d.root.domains()[2].get_int("memory"), Some(512));
    assert_eq!(
        d.root.domains()[0].network_requests(),
        [sd_request::NetworkRequest {
            name: "private".into(),
            ip: Some(std::net::Ipv4Addr::new(10, 214, 0, 11)),
        }]
    );
    insta::assert_yaml_snapshot!(d);
}

#[test]
fn pool_yaml_resolves() {
    let d = resolve_file(&jobs("pool.yaml"), &[]).unwrap();
    assert_eq!(d.root.kind, Kind::Sequence);
    let members: Vec<&str> = d.root.members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(members, ["db", "worker1", "worker2", "worker3"]);
    assert_eq!(d.root.members[2].get_int("memory"), Some(512));
    assert_eq!(d.root.members[3].get_int("vcpus"), Some(2));
    assert_eq!(d.root.members[1].get_str("hostname"), Some("worker1"));
    insta::assert_yaml_snapshot!(d);
    // What `sd describe` will print.
    let text = serde_saphyr::to_string(&d).unwrap();
    assert!(
        text.contains("path: sfConfig:worker3") || text.contains("path: \"sfConfig:worker3\""),
        "{text}"
    );
}

#[test]
fn sf_numbers() {
    let d = resolve_str(
        "n.sf",
        "sfConfig { a 1e3; b -2.5E-1; c 7L; d 3D; e 0; }",
        Format::SmartFrog,
    )
    .unwrap();
    assert_eq!(
        serde_json::to_string(&d.root.attributes).unwrap(),
        r#"{"a":1000.0,"b":-0.25,"c":7,"d":3.0,"e":0}"#
    );
    let e = resolve_str("n.sf", "sfConfig { ip 10.0.0.1; }", Format::SmartFrog).unwrap_err();
    assert_eq!(
        e.to_string(),
        "n.sf:1:15: syntax error: malformed number starting `10.0`"
    );
}

#[test]
fn both_readers_agree() {
    let yaml = r#"
Base: { extends: DefaultXenDomain, memory: 300 }
sfConfig:
  extends: Compound
  a: { extends: Base, vcpus: 2, image: { $ref: "PARENT:b:image" } }
  b: { extends: DefaultXenDomain, image: "x", storageBackend: { $ref: "LAZY ATTRIB s" } }
  s: { extends: LoopbackStorageBackend }
"#;
    let sf = r#"
Base extends DefaultXenDomain { memory 300; }
sfConfig extends Compound {
  a extends Base { vcpus 2; image PARENT:b:image; }
  b extends DefaultXenDomain { image "x"; storageBackend LAZY ATTRIB s; }
  s extends LoopbackStorageBackend;
}
"#;
    let y = resolve_str("d", yaml, Format::Yaml).unwrap();
    let s = resolve_str("d", sf, Format::SmartFrog).unwrap();
    assert_eq!(y, s);
    assert_eq!(y.root.members[0].get_str("image"), Some("x"));
}

#[test]
fn library_files_chain_and_nested_components_merge() {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("site.sf");
    std::fs::write(
        &lib,
        "SiteDomain extends DefaultXenDomain { memory 128; kernel \"site-kernel\"; }\n\
         Rack extends Compound { sfSyncTerminate true; node extends SiteDomain { vcpus 2; } }\n",
    )
    .unwrap();
    let user = dir.path().join("mine.yaml");
    std::fs::write(
        &user,
        "Mine: { extends: SiteDomain, memory: 700 }\n\
         sfConfig:\n  extends: Rack\n  node: { image: custom }\n  extra: { extends: Mine }\n",
    )
    .unwrap();
    let d = resolve_file(&user, &[lib]).unwrap();
    let node = &d.root.members[0];
    // The nested `node` merges into Rack's: its base's attributes survive.
    assert_eq!(node.get_str("image"), Some("custom"));
    assert_eq!(node.get_int("vcpus"), Some(2));
    assert_eq!(node.get_str("kernel"), Some("site-kernel"));
    let extra = &d.root.members[1];
    assert_eq!(
        extra.extends,
        ["Mine", "SiteDomain", "DefaultXenDomain", "Prim"]
    );
    assert_eq!(extra.get_int("memory"), Some(700));
    assert_eq!(d.root.get_bool("sfSyncTerminate"), Some(true));
}

#[test]
fn lists_and_literals() {
    let d = resolve_str(
        "l.sf",
        "sfConfig { xs [1, 2.5, \"a\\tb\", true, NULL, ATTRIB y]; y -3; z [| 1, 2 |]; }",
        Format::SmartFrog,
    )
    .unwrap();
    insta::assert_snapshot!(serde_json::to_string(&d.root.attributes).unwrap(), @r#"{"xs":[1,2.5,"a\tb",true,null,-3],"y":-3,"z":[1,2]}"#);
}

#[test]
fn eager_reference_copies_a_component_and_quoted_yaml_stays_a_string() {
    let d = resolve_str(
        "c.yaml",
        r#"
sfConfig:
  extends: Compound
  sh: { extends: BashShell, shellCommand: /bin/sh }
  store: { extends: LVMStorageBackend, shell: { $ref: "ATTRIB sh" } }
  d: { extends: DefaultXenDomain, hostname: "42", storageBackend: { $ref: "LAZY PARENT:store" } }
"#,
        Format::Yaml,
    )
    .unwrap();
    let store = &d.root.members[1];
    let Some(ResolvedValue::Component(shell)) = store.get("shell") else {
        panic!("{store:?}")
    };
    assert_eq!(shell.kind, Kind::Shell);
    assert_eq!(shell.get_str("shellCommand"), Some("/bin/sh"));
    assert_eq!(d.root.members[2].get_str("hostname"), Some("42"));
    assert_eq!(
        d.root.members[2].get("storageBackend"),
        Some(&ResolvedValue::Lazy {
            lazy: "LAZY PARENT:store".into(),
            target: "sfConfig:store".into()
        })
    );
}

// --- every error class, with path and line:column ------------------------

#[test]
fn error_extends_cycle() {
    insta::assert_snapshot!(sf_error(
        "A extends B { memory 1; }\nB extends A;\nsfConfig extends Compound {\n  d extends A;\n}\n"
    ));
}

#[test]
fn error_extends_cycle_yaml() {
    insta::assert_snapshot!(yaml_error(
        "Loop:\n  extends: Loop\nsfConfig:\n  extends: Sequence\n  w: { extends: Loop }\n"
    ));
}

#[test]
fn error_reference_cycle() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Sequence {\n  d extends DefaultXenDomain {\n    memory ATTRIB vcpus;\n    vcpus PARENT:d:memory;\n  }\n}\n"
    ));
}

#[test]
fn error_reference_cycle_yaml() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Sequence\n  worker1:\n    extends: DefaultXenDomain\n    memory: { $ref: \"PARENT:worker2:memory\" }\n  worker2:\n    extends: DefaultXenDomain\n    memory: { $ref: \"PARENT:worker1:memory\" }\n"
    ));
}

#[test]
fn error_dangling_reference() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Compound {\n  d extends DefaultXenDomain {\n    storageBackend LAZY ATTRIB loop;\n  }\n}\n"
    ));
}

#[test]
fn error_dangling_reference_path() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Sequence\n  db: { extends: DefaultXenDomain }\n  w:\n    extends: DefaultXenDomain\n    memory: { $ref: \"PARENT:db:memroy\" }\n"
    ));
}

#[test]
fn error_unknown_base() {
    insta::assert_snapshot!(sf_error("sfConfig extends Compund {\n}\n"));
}

#[test]
fn error_type() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Sequence\n  worker2:\n    extends: DefaultXenDomain\n    memory: lots\n"
    ));
}

#[test]
fn error_type_on_pool() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Compound {\n  sfSyncTerminate \"yes\";\n}\n"
    ));
}

#[test]
fn error_type_via_reference() {
    // Reported where the reference is written.
    insta::assert_snapshot!(sf_error(
        "size \"big\";\nsfConfig extends Compound {\n  d extends DefaultXenDomain { memory ATTRIB size; }\n}\n"
    ));
}

#[test]
fn error_reference_to_itself() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Compound {\n  d extends DefaultXenDomain { memory ATTRIB memory; }\n}\n"
    ));
}

#[test]
fn error_type_storage_backend() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Compound {\n  sh extends BashShell;\n  d extends DefaultXenDomain { storageBackend LAZY sh; }\n}\n"
    ));
}

#[test]
fn error_type_in_template_names_its_file() {
    insta::assert_snapshot!(sf_error(
        "W extends DefaultXenDomain {\n  vcpus 0;\n}\nsfConfig extends Sequence { w1 extends W; }\n"
    ));
}

#[test]
fn error_unknown_attribute() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Sequence\n  worker2:\n    extends: DefaultXenDomain\n    memry: 512\n"
    ));
}

#[test]
fn error_unknown_attribute_on_pool() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Compound {\n  colour \"blue\";\n}\n"
    ));
}

#[test]
fn error_syntax_sf() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Compound {\n  d extends DefaultXenDomain {\n    memory 512\n    vcpus = 2;\n  }\n}\n"
    ));
}

#[test]
fn error_syntax_sf_unclosed() {
    insta::assert_snapshot!(sf_error("sfConfig extends Compound {\n  a 1;\n"));
}

#[test]
fn error_syntax_sf_string() {
    insta::assert_snapshot!(sf_error("sfConfig {\n  a \"open\n}\n"));
}

#[test]
fn error_include() {
    insta::assert_snapshot!(sf_error(
        "#include \"org/smartfrog/components.sf\"\nsfConfig {}\n"
    ));
}

#[test]
fn error_syntax_yaml() {
    insta::assert_snapshot!(yaml_error("sfConfig:\n  extends: Sequence\n  db: [1, 2\n"));
}

#[test]
fn error_syntax_yaml_reference() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Sequence\n  db:\n    extends: DefaultXenDomain\n    memory: { $ref: \"PARENT::x\" }\n"
    ));
}

#[test]
fn error_no_sfconfig() {
    insta::assert_snapshot!(yaml_error("Worker: { extends: DefaultXenDomain }\n"));
}

#[test]
fn error_missing_file() {
    let e = resolve_file(Path::new("/nonexistent/pool.yaml"), &[]).unwrap_err();
    assert!(matches!(e, DescriptionError::Read { .. }), "{e}");
}

// --- more of each class: other formats, other component types -------------

#[test]
fn error_unknown_attribute_sf() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Compound {\n  d extends DefaultXenDomain {\n    memory 512;\n    cpus 2;\n  }\n}\n"
    ));
}

#[test]
fn error_unknown_attribute_on_storage_backend() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Compound {\n  loop extends LoopbackStorageBackend {\n    sise 4096;\n  }\n  d extends DefaultXenDomain { storageBackend LAZY ATTRIB loop; }\n}\n"
    ));
}

#[test]
fn error_unknown_attribute_in_nested_pool_yaml() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Compound\n  inner:\n    extends: Sequence\n    sfLivenessDelya: 2\n    w: { extends: DefaultXenDomain }\n"
    ));
}

#[test]
fn error_type_yaml_boolean_on_pool() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Compound\n  sfSyncTerminate: \"yes\"\n  w: { extends: DefaultXenDomain }\n"
    ));
}

#[test]
fn error_type_liveness_factor_zero() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Compound\n  sfLivenessFactor: 0\n  w: { extends: DefaultXenDomain }\n"
    ));
}

#[test]
fn error_type_vo_not_a_string() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Sequence\n  w: { extends: DefaultXenDomain, vo: 7 }\n"
    ));
}

#[test]
fn error_dangling_reference_sf_path() {
    insta::assert_snapshot!(sf_error(
        "sfConfig extends Sequence {\n  db extends DefaultXenDomain;\n  w extends DefaultXenDomain {\n    vcpus PARENT:bd:vcpus;\n  }\n}\n"
    ));
}

#[test]
fn error_dangling_lazy_reference_yaml() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Compound\n  w:\n    extends: DefaultXenDomain\n    storageBackend: { $ref: \"LAZY ATTRIB lvm\" }\n"
    ));
}

#[test]
fn error_unknown_base_yaml() {
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Sequense\n  w: { extends: DefaultXenDomain }\n"
    ));
}

#[test]
fn error_lazy_references_loop() {
    insta::assert_snapshot!(sf_error(
        "a LAZY b;\nb LAZY a;\nsfConfig extends Compound {\n  d extends DefaultXenDomain { storageBackend LAZY ATTRIB a; }\n}\n"
    ));
}

#[test]
fn lazy_reference_through_a_top_level_reference_reaches_its_component() {
    let d = resolve_str(
        "chain.sf",
        "myStore LAZY store;\nstore extends LoopbackStorageBackend { size 512; }\n\
         sfConfig extends Compound {\n  d extends DefaultXenDomain { storageBackend LAZY ATTRIB myStore; }\n}\n",
        Format::SmartFrog,
    );
    assert!(d.is_ok(), "{:?}", d.err());
}

#[test]
fn a_member_may_name_its_vo() {
    let d = resolve_str(
        "vo.yaml",
        "sfConfig:\n  extends: Compound\n  w: { extends: DefaultXenDomain, vo: atlas }\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(d.root.domains()[0].get_str("vo"), Some("atlas"));
    let sf = resolve_str(
        "vo.sf",
        "sfConfig extends Compound {\n  w extends DefaultXenDomain { vo \"atlas\"; }\n}\n",
        Format::SmartFrog,
    )
    .unwrap();
    assert_eq!(sf.root.domains()[0].get_str("vo"), Some("atlas"));
}

#[test]
fn sf_nesting_is_bounded() {
    // 10k levels used to overflow the stack (SIGABRT); past 64 is refused.
    let deep = format!("sfConfig {}{}", "{ a ".repeat(10_000), "} ".repeat(10_000));
    assert!(
        sf_error(&deep).starts_with("test.sf:1:")
            && sf_error(&deep)
                .ends_with("components and lists nested too deeply (more than 64 levels)"),
        "{}",
        sf_error(&deep)
    );
    let lists = format!(
        "sfConfig extends {{ x {}1{}; }}",
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(
        sf_error(&lists).contains("nested too deeply"),
        "{}",
        sf_error(&lists)
    );
    // 30 levels are fine.
    let ok = format!("sfConfig {}{}", "{ a ".repeat(30), "} ".repeat(30));
    assert!(resolve_str("test.sf", &ok, Format::SmartFrog).is_ok());
}

/// Copies made by `extends` double at each level: refused, not resolved out
/// of memory (found by fuzzing, `description_sf`).
#[test]
fn exponential_extends_is_refused() {
    let mut src = String::from("A0 { x 1; }\n");
    for i in 1..26 {
        src += &format!("A{i} {{ a extends A{}; b extends A{}; }}\n", i - 1, i - 1);
    }
    src += "sfConfig extends Compound {}\n";
    let e = sf_error(&src);
    assert!(e.contains("description too large"), "{e}");
}

/// The same with references copying lists (`l2 [l1, l1, ...]`), in YAML.
#[test]
fn exponential_references_are_refused() {
    let mut src = String::from("sfConfig:\n  extends: Compound\n  l0: [1, 1, 1, 1, 1, 1, 1, 1]\n");
    for i in 1..9 {
        let refs = vec![format!("{{ $ref: l{} }}", i - 1); 8].join(", ");
        src += &format!("  l{i}: [{refs}]\n");
    }
    let e = yaml_error(&src);
    assert!(e.contains("description too large"), "{e}");
}

/// Chains of `extends` and of references are refused past a depth instead
/// of recursing without bound (and took quadratic time to get there).
#[test]
fn long_chains_are_refused() {
    // Written last first, so that each one's base is still to flatten.
    let mut src = String::new();
    for i in (1..2000).rev() {
        src += &format!("A{i} extends A{};\n", i - 1);
    }
    src += "A0 { x 1; }\nsfConfig extends Compound {}\n";
    let e = sf_error(&src);
    assert!(e.contains("deeper than 256 levels"), "{e}");
    let mut src = String::from("sfConfig {\n");
    for i in (1..2000).rev() {
        src += &format!(" a{i} a{};\n", i - 1);
    }
    src += " a0 1;\n}\n";
    let e = sf_error(&src);
    assert!(e.contains("deeper than 256 levels"), "{e}");
    // 100 are fine.
    let mut ok = String::from("A0 { x 1; }\n");
    for i in 1..100 {
        ok += &format!("A{i} extends A{};\n", i - 1);
    }
    ok += "sfConfig {\n";
    for i in (1..100).rev() {
        ok += &format!(" a{i} a{};\n", i - 1);
    }
    ok += " a0 1;\n b extends A99;\n}\n";
    let d = resolve_str("test.sf", &ok, Format::SmartFrog).unwrap();
    assert_eq!(d.root.get_int("a99"), Some(1));
}

/// Thousands of attributes in one component take linear time: attribute
/// lookups used to be a scan, which made reading and resolving quadratic
/// (seconds for 70 KB; found by fuzzing).
#[test]
fn many_attributes_are_linear() {
    let names: String = (0..50_000).map(|i| format!("a{i} {i};")).collect();
    let src = format!("sfConfig extends Compound {{ {names} }}");
    let start = std::time::Instant::now();
    let e = sf_error(&src);
    assert!(e.contains("unknown attribute for a Compound"), "{e}");
    assert!(
        start.elapsed() < std::time::Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
    let ok: String = (0..50_000).map(|i| format!("a{i} {i};")).collect();
    let d = resolve_str(
        "test.sf",
        &format!("{ok} sfConfig extends Compound {{}}"),
        Format::SmartFrog,
    )
    .unwrap();
    assert_eq!(d.root.name, "sfConfig");
    // A duplicate is still refused.
    assert!(sf_error("sfConfig { a 1; b 2; a 3; }").contains("defined twice"));
}

/// A domain with `attrs` in SmartFrog syntax, resolved.
fn domain_sf(attrs: &str) -> Result<ResolvedDescription, DescriptionError> {
    resolve_str(
        "test.sf",
        &format!(
            "sfConfig extends Compound {{\n  a extends DefaultXenDomain {{\n{attrs}\n  }}\n}}\n"
        ),
        Format::SmartFrog,
    )
}

#[test]
fn networks_and_addresses() {
    use sd_request::NetworkRequest;
    let nics = |attrs: &str| domain_sf(attrs).unwrap().root.domains()[0].network_requests();
    // The default: no network (the prelude's "none", which admission reads as such).
    assert_eq!(nics(""), [NetworkRequest::named("none")]);
    assert_eq!(nics("    network \"nat\";"), [NetworkRequest::named("nat")]);
    assert_eq!(
        nics("    network [\"private\", \"nat\"];\n    ip \"10.214.0.7\";"),
        [
            NetworkRequest {
                name: "private".into(),
                ip: Some(std::net::Ipv4Addr::new(10, 214, 0, 7))
            },
            NetworkRequest::named("nat")
        ]
    );
    assert_eq!(
        nics("    network \"private\";\n    ip \"dhcp\";"),
        [NetworkRequest::named("private")]
    );
    // YAML: a name or a list.
    let d = resolve_str(
        "test.yaml",
        "sfConfig:\n  extends: Sequence\n  a: { extends: DefaultXenDomain, network: [private], ip: 10.214.0.9 }\n",
        Format::Yaml,
    )
    .unwrap();
    assert_eq!(
        d.root.domains()[0].network_requests(),
        [NetworkRequest {
            name: "private".into(),
            ip: Some(std::net::Ipv4Addr::new(10, 214, 0, 9))
        }]
    );
}

#[test]
fn error_figure1_ip_is_no_address() {
    // As the paper printed it.
    let src = std::fs::read_to_string(jobs("figure1.sf"))
        .unwrap()
        .replace("ip \"10.214.0.11\"", "ip \"123.456.789.011\"");
    insta::assert_snapshot!(resolve_str("figure1.sf", &src, Format::SmartFrog)
        .unwrap_err()
        .to_string());
}

#[test]
fn error_ip_not_a_string() {
    insta::assert_snapshot!(domain_sf("    network \"private\";\n    ip 10;")
        .unwrap_err()
        .to_string());
}

#[test]
fn error_ip_without_network() {
    insta::assert_snapshot!(domain_sf("    ip \"10.214.0.7\";").unwrap_err().to_string());
}

#[test]
fn error_network_none_with_others() {
    insta::assert_snapshot!(domain_sf("    network [\"none\", \"nat\"];")
        .unwrap_err()
        .to_string());
}

#[test]
fn error_network_types() {
    insta::assert_snapshot!(domain_sf("    network 3;").unwrap_err().to_string());
    insta::assert_snapshot!(domain_sf("    network [];").unwrap_err().to_string());
    insta::assert_snapshot!(yaml_error(
        "sfConfig:\n  extends: Sequence\n  a: { extends: DefaultXenDomain, network: [nat, 4] }\n"
    ));
}
