//! `sd check`: a request checked against the site's policy for the caller,
//! as the prolog admits it, without booting or creating anything. Run as
//! root and as `sdtest` (uid 4242, groups sd-demo and sd-atlas).

mod common;
use common::{text, TestSite};
use std::path::{Path, PathBuf};
use std::process::Output;

const USER: &str = "sdtest";

/// A site with fake image files (check opens none of them), readable by
/// sdtest, and a job directory.
fn site() -> TestSite {
    let site = TestSite::new(
        "sd-check-",
        "image_dir: {dir}/images\n\
         defaults: { image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 1024, hostname: sd-guest }\n\
         images:\n\
         \x20 busybox: { disk: busybox.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }\n\
         \x20 debian-minimal: { disk: debian-minimal.qcow2, format: qcow2, kernel: vmlinuz, initrd: initrd.img }\n\
         vos:\n\
         \x20 demo: { images: [busybox, debian-minimal], max_memory_mib: 1024, max_vcpus: 2, max_disk_mib: 4096, unix_groups: [sd-demo] }\n\
         \x20 atlas: { images: [busybox], max_memory_mib: 512, max_vcpus: 1, max_disk_mib: 2048, unix_groups: [sd-atlas] }\n",
    );
    std::fs::create_dir(site.path("images")).unwrap();
    for f in [
        "busybox.qcow2",
        "debian-minimal.qcow2",
        "vmlinuz",
        "initrd.img",
    ] {
        std::fs::write(site.path("images").join(f), "").unwrap();
    }
    std::fs::create_dir(site.path("job")).unwrap();
    // sdtest must reach its JDLs.
    for dir in [site.dir.path().to_path_buf(), site.path("job")] {
        std::process::Command::new("chmod")
            .arg("755")
            .arg(&dir)
            .status()
            .unwrap();
    }
    site
}

fn jdl(site: &TestSite, name: &str, body: &str) -> PathBuf {
    let path = site.path("job").join(name);
    std::fs::write(&path, body).unwrap();
    path
}

/// `sd check ARGS` as sdtest, with the groups the user database gives it.
fn check_as_sdtest(site: &TestSite, args: &[&str]) -> Output {
    std::process::Command::new("runuser")
        .args(["-u", USER, "--", env!("CARGO_BIN_EXE_sd"), "check"])
        .args(args)
        .env("SD_CONFIG", site.path("site.yaml"))
        .env_remove("SD_LOG")
        .output()
        .unwrap()
}

/// Everything under the site's directory but the config, images and JDLs.
fn created(site: &TestSite) -> Vec<String> {
    let mut found = vec![];
    for entry in std::fs::read_dir(site.dir.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !["site.yaml", "images", "job"].contains(&name.as_str()) {
            found.push(name);
        }
    }
    found
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn a_good_request_prints_the_resolved_environment_and_creates_nothing() {
    let site = site();
    let job = jdl(
        &site,
        "ok.jdl",
        "[ Executable = \"run.sh\"; VirtualOrganisation = \"demo\";\n  \
         VirtualEnvironment = [ Image = \"debian-minimal\"; Memory = 768; VCPUs = 2; Disk = 3000; ]; ]",
    );
    let out = check_as_sdtest(&site, &[path(&job)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let images = site.path("images");
    assert_eq!(
        text(&out.stdout),
        format!(
            "vo: demo\nimage: debian-minimal\nkernel: {k}\ninitrd: {i}\nmemory: 768 MiB\nvcpus: 2\n\
             disk: 3000 MiB\nhostname: sd-guest\nnetworks: none\nsave_image: false\n",
            k = images.join("vmlinuz").display(),
            i = images.join("initrd.img").display()
        )
    );
    assert_eq!(text(&out.stderr), "");
    assert_eq!(created(&site), Vec::<String>::new());
}

#[test]
fn a_request_over_the_limit_names_the_limit_and_the_vo() {
    let site = site();
    let job = jdl(
        &site,
        "big.jdl",
        "[ Executable = \"run.sh\"; VirtualOrganisation = \"atlas\"; VirtualEnvironment = [ Memory = 4096; ]; ]",
    );
    let out = check_as_sdtest(&site, &[path(&job)]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        "sd: memory 4096 MiB exceeds VO \"atlas\"'s limit max_memory_mib = 512\n"
    );
    assert_eq!(text(&out.stdout), "");
    assert_eq!(created(&site), Vec::<String>::new());
}

#[test]
fn a_syntax_error_gives_file_line_col() {
    let site = site();
    let job = jdl(
        &site,
        "bad.jdl",
        "[\n  Executable = \"run.sh\"\n  Arguments = \"x\";\n]",
    );
    let out = check_as_sdtest(&site, &[path(&job)]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!(
            "sd: {}:3:3: expected ';' or ']' after attribute value, found identifier 'Arguments'\n",
            job.display()
        )
    );
    assert_eq!(created(&site), Vec::<String>::new());
}

#[test]
fn an_image_with_vo_and_json() {
    let site = site();
    let out = check_as_sdtest(&site, &["busybox", "--vo", "atlas", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["admitted"], true);
    assert_eq!(answer["environment"]["vo"], "atlas");
    assert_eq!(answer["environment"]["image"]["name"], "busybox");
    assert_eq!(answer["environment"]["memory_mib"], 256);

    // An unknown VO is refused by name rather than ignored.
    let out = check_as_sdtest(&site, &["busybox", "--vo", "cms", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["admitted"], false);
    assert_eq!(answer["error"], "this site has no VO \"cms\"");

    // A VO the caller may not use an image of: the policy's words.
    let out = check_as_sdtest(&site, &["debian-minimal", "--vo", "atlas", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .starts_with("VO \"atlas\" may not use image \"debian-minimal\""),
        "{answer}"
    );
    assert_eq!(created(&site), Vec::<String>::new());
}

#[test]
fn the_vo_comes_from_the_callers_groups_not_the_request() {
    let site = site();
    // VO atlas no longer lists a group of sdtest's: the JDL cannot claim it.
    let yaml = std::fs::read_to_string(site.path("site.yaml"))
        .unwrap()
        .replace("unix_groups: [sd-atlas]", "unix_groups: [nobody-group]");
    std::fs::write(site.path("site.yaml"), yaml).unwrap();
    let job = jdl(
        &site,
        "atlas.jdl",
        "[ Executable = \"run.sh\"; VirtualOrganisation = \"atlas\"; ]",
    );
    let out = check_as_sdtest(&site, &[path(&job)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("atlas"), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("sdtest"),
        "{}",
        text(&out.stderr)
    );
}
