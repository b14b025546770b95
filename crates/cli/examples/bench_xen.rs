//! Benchmark of the Xen backend against `xl`, inside a Xen dom0 (run by
//! `scripts/bench-xen`, which boots the Xen test host for it).
//!
//! For each of N rounds, side by side on the same guest (kernel, initramfs,
//! qcow2 overlay on the busybox image, agent channel, memory, vCPUs):
//! - create → agent up: ours (`Deployment::deploy`, through libxl, until the
//!   agent answered its Hello) vs `xl create` until the agent's start-up
//!   line ("serving on /dev/hvc1") is in the guest's console log;
//! - destroy: ours (`Domain::destroy`, libxl) vs `xl destroy`.
//!
//! Prints medians and ratios (ours / xl; < 1 means ours is faster).

use sd_policy as policy;
use sd_request::EnvironmentRequest;
use sd_site::SiteConfig;
use sd_vmm::deployment::{self, Deployment};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Debian's /usr/sbin/xl is a wrapper that picks the tools by the running
/// hypervisor's version; call 4.17's directly.
const XL: &str = "/usr/lib/xen-4.17/bin/xl";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3);
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build/images");
    let images = images
        .canonicalize()
        .expect("build/images (run scripts/setup)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("site.yaml");
    std::fs::write(
        &config,
        format!(
            "state_dir: {d}/state\nlog_dir: {d}/log\nimage_dir: {i}\nbackend: xen\nboot_timeout_secs: 300\n\
             defaults: {{ image: busybox, memory_mib: 256, vcpus: 1, disk_mib: 256 }}\n\
             images:\n  busybox: {{ disk: busybox.qcow2, format: qcow2, kernel: vmlinux, initrd: initrd.img }}\n\
             vos:\n  demo: {{ images: [busybox] }}\ndefault_vo: demo\n",
            d = d.display(),
            i = images.display()
        ),
    )
    .unwrap();
    let site = SiteConfig::load(&config).expect("site");
    let env = policy::admit(
        &site,
        &sd_host::owner::Owner::Root,
        None,
        &EnvironmentRequest::default(),
        &sd_policy::NoSavedImages,
    )
    .expect("admit");
    let backend = deployment::backend_for(&site, None).expect("xen backend (run inside dom0)");

    // The same guest for xl. xl 4.17 gives the first channel devid 0, which
    // clashes with the primary console ("Primary console has invalid
    // configuration", fixed upstream in 2025): a placeholder goes first, so
    // our channel is still the guest's hvc1. libxl itself numbers from 1.
    let xl_dir = d.join("xl");
    std::fs::create_dir_all(&xl_dir).unwrap();
    let disk = xl_dir.join("disk.qcow2");
    let agent = xl_dir.join("agent.sock");
    let cfg = xl_dir.join("guest.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"xlbench\"\ntype = \"pv\"\nkernel = \"{i}/vmlinux\"\nramdisk = \"{i}/initrd.img\"\n\
             extra = \"console=hvc0 panic=-1 quiet loglevel=3 sd.root=/dev/xvda sd.agent=/dev/hvc1\"\n\
             memory = 256\nvcpus = 1\non_poweroff = \"destroy\"\non_crash = \"destroy\"\non_reboot = \"destroy\"\n\
             disk = [ 'format=qcow2,vdev=xvda,access=rw,backendtype=qdisk,target={disk}' ]\n\
             channel = [ 'name=xl-bug-placeholder,connection=pty', 'name=org.smartdomains.agent.0,connection=socket,path={agent}' ]\n",
            i = images.display(),
            disk = disk.display(),
            agent = agent.display()
        ),
    )
    .unwrap();
    let console = Path::new("/var/log/xen/console/guest-xlbench.log");

    let (mut ours_up, mut xl_up, mut ours_destroy, mut xl_destroy) =
        (vec![], vec![], vec![], vec![]);
    for round in 1..=rounds {
        // Ours.
        let id = format!("bench{round}");
        let t = Instant::now();
        let dep = Deployment::deploy(&site, &id, &env, 0, None).expect("deploy");
        let up = t.elapsed().as_secs_f64();
        let name = deployment::domain_name(&site, &id);
        let t = Instant::now();
        backend
            .find(&name)
            .expect("find")
            .expect("the domain")
            .destroy()
            .expect("destroy");
        let down = t.elapsed().as_secs_f64();
        drop(dep);
        deployment::cleanup(&site, &id).expect("cleanup");
        ours_up.push(up);
        ours_destroy.push(down);

        // xl, same guest.
        let _ = std::fs::remove_file(console);
        let _ = std::fs::remove_file(&agent);
        let ok = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(images.join("busybox.qcow2"))
            .arg(&disk)
            .status()
            .unwrap();
        assert!(ok.success());
        let t = Instant::now();
        let st = Command::new(XL)
            .arg("create")
            .arg("-q")
            .arg(&cfg)
            .status()
            .expect("xl");
        assert!(st.success(), "xl create failed");
        let deadline = Instant::now() + Duration::from_secs(300);
        while !std::fs::read_to_string(console)
            .unwrap_or_default()
            .contains("serving on /dev/hvc1")
        {
            assert!(
                Instant::now() < deadline,
                "xl's guest never started its agent"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let up = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let st = Command::new(XL)
            .args(["destroy", "xlbench"])
            .status()
            .unwrap();
        assert!(st.success());
        let down = t.elapsed().as_secs_f64();
        xl_up.push(up);
        xl_destroy.push(down);
        println!(
            "round {round}: create→agent ours {:.3} s, xl {:.3} s; destroy ours {:.3} s, xl {:.3} s",
            ours_up[round - 1], xl_up[round - 1], ours_destroy[round - 1], xl_destroy[round - 1]
        );
    }
    let (ou, xu, od, xd) = (
        median(ours_up),
        median(xl_up),
        median(ours_destroy),
        median(xl_destroy),
    );
    println!(
        "BENCH-XEN create→agent: ours {ou:.3} s, xl create {xu:.3} s, ratio {:.3} (goal ≤ 1)",
        ou / xu
    );
    println!(
        "BENCH-XEN destroy:      ours {od:.3} s, xl destroy {xd:.3} s, ratio {:.3} (goal ≤ 1)",
        od / xd
    );
}
