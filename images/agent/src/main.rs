//! `sd-guest`: the SmartDomains guest agent.
//!
//! It is PID 1 of the boot initramfs (`images/init` execs it after mounting
//! the VO image at `--root`). It serves the host over one channel (the
//! virtio-serial port named [`sd_proto::VIRTIO_PORT_NAME`], or `--port DEV`):
//! sets up the guest's network, runs commands chrooted into the VO image,
//! moves sandbox files, answers pings, and powers the machine off. The VO image needs none of our software.
//!
//! A domain may have a second port, [`sd_proto::EXEC_PORT_NAME`], for
//! commands run while the control link is held (`sd exec` while `sd run` or
//! a pool's monitor is connected): it gets its own session on its own
//! thread, the same protocol and the same powers, no more. Each session has
//! its own running command; the one reaper hands each exit to its session.

mod clone;
mod job;
mod network;
mod session;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mut root = PathBuf::from("/newroot");
    let mut port: Option<PathBuf> = None;
    let mut template_root: Option<String> = None;
    let mut template_fstype = "ext4".to_string();
    let mut i = 1;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--root", Some(v)) => root = PathBuf::from(v),
            ("--port", Some(v)) => port = Some(PathBuf::from(v)),
            // A template's boot (sd.template): the VO disk is mounted when a
            // clone's Identity arrives, not before.
            ("--template-root", Some(v)) => template_root = Some(v.clone()),
            ("--template-fstype", Some(v)) => template_fstype = v.clone(),
            (other, _) => fatal(&format!(
                "unknown argument {other:?} (usage: sd-guest [--root DIR] [--port DEV] \
                 [--template-root DEV --template-fstype TYPE])"
            )),
        }
        i += 2;
    }
    if let Some(device) = template_root {
        clone::defer_root(device, template_fstype, root.clone());
    }
    let exec_search = port.is_none();
    let port = match port {
        Some(p) => p,
        None => find_virtio_port(sd_proto::VIRTIO_PORT_NAME, Duration::from_secs(20))
            .unwrap_or_else(|| fatal("no virtio-serial port named org.smartdomains.agent.0")),
    };
    let (channel, console) = open_channel(&port).unwrap_or_else(|e| fatal(&e));
    log(&format!("serving on {}", port.display()));
    if clone::root_pending() {
        // The host that builds a template waits for this line.
        log(clone::TEMPLATE_READY);
    }
    // One reaper for the whole guest: it hands each child's status to the
    // session that waits for that pid, whichever port it serves.
    job::start_reaper();
    if exec_search {
        let root = root.clone();
        std::thread::spawn(move || serve_exec_port(&root));
    }
    session::serve(channel, &root, console);
}

/// The second port ([`sd_proto::EXEC_PORT_NAME`], for `sd exec`), if the
/// domain has one: its own session, on this thread, with exactly what the
/// control port may do. Looked for briefly (the driver names the ports
/// together) while the control session already runs.
fn serve_exec_port(root: &Path) {
    let Some(port) = find_virtio_port(sd_proto::EXEC_PORT_NAME, Duration::from_secs(2)) else {
        log("no exec port: commands share the control link");
        return;
    };
    match open_channel(&port) {
        Ok((channel, console)) => {
            log(&format!("serving exec on {}", port.display()));
            session::serve(channel, root, console)
        }
        // Not fatal: the control link still works.
        Err(e) => log(&format!("exec port: {e}")),
    }
}

/// Opens a channel for a session. A console (Xen's hvc) carries our binary
/// frames only in raw mode: no echo, no line editing, no CR/LF translation.
/// What arrived before is dropped; `true` if it is a console (the host is
/// then told it may speak).
fn open_channel(port: &Path) -> Result<(Channel, bool), String> {
    let channel = OpenOptions::new()
        .read(true)
        .write(true)
        .open(port)
        .map_err(|e| format!("cannot open {}: {e}", port.display()))?;
    let mut console = false;
    if let Ok(mut t) = nix::sys::termios::tcgetattr(&channel) {
        use nix::sys::termios::{cfmakeraw, tcflush, tcsetattr, FlushArg, SetArg};
        cfmakeraw(&mut t);
        tcsetattr(&channel, SetArg::TCSANOW, &t)
            .map_err(|e| format!("cannot make {} raw: {e}", port.display()))?;
        let _ = tcflush(&channel, FlushArg::TCIFLUSH);
        console = true;
    }
    Ok((channel, console))
}

/// The virtio console driver names each port in sysfs; devtmpfs gives the node.
fn find_virtio_port(name: &str, wait: Duration) -> Option<PathBuf> {
    let deadline = Instant::now() + wait;
    loop {
        if let Ok(entries) = std::fs::read_dir("/sys/class/virtio-ports") {
            for entry in entries.flatten() {
                let found = std::fs::read_to_string(entry.path().join("name")).unwrap_or_default();
                if found.trim() == name {
                    let dev = Path::new("/dev").join(entry.file_name());
                    if dev.exists() {
                        return Some(dev);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines on the console (captured by the host in the domain's console log).
pub fn log(msg: &str) {
    use std::io::Write;
    if let Ok(mut console) = OpenOptions::new().write(true).open("/dev/console") {
        let _ = writeln!(console, "sd-guest: {msg}");
    } else {
        eprintln!("sd-guest: {msg}");
    }
}

pub fn fatal(msg: &str) -> ! {
    log(&format!("FATAL: {msg}"));
    power_off();
}

/// Stops every process, unmounts the VO image so that its file system is
/// clean (it may be saved as a new image), and powers off.
pub fn power_off() -> ! {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if std::process::id() == 1 {
        let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(50));
        unmount_all();
        nix::unistd::sync();
        let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    }
    std::process::exit(1)
}

/// Unmounts everything below `/newroot` deepest first, then remounts the
/// root of the VO image read-only.
fn unmount_all() {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut targets: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|t| t.starts_with("/newroot/"))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = nix::mount::umount2(t, nix::mount::MntFlags::MNT_DETACH);
    }
    let _ = nix::mount::umount("/newroot");
    let _ = nix::mount::mount(
        None::<&str>,
        "/newroot",
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    );
}

/// Reads a small text file, trimmed; empty on error.
pub fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

pub type Channel = File;
