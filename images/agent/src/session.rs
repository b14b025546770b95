//! One host connection after another on the same channel.
//!
//! A virtio-serial port reads end-of-file while no host is connected; then
//! we wait for the next one. A malformed frame ends the connection: we drain
//! the channel until the host hangs up, because a byte stream cannot be
//! resynchronised safely.

use crate::job::{self, RunningJob};
use crate::{log, read_trimmed, Channel};
use sd_proto::{
    read_msg, write_msg, GuestMsg, HostMsg, ProtoError, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Frames from several threads (job output, replies) go through this lock,
/// one whole frame at a time.
#[derive(Clone)]
pub struct Writer(Arc<Mutex<File>>);

impl Writer {
    #[cfg(test)]
    pub fn for_test(file: File) -> Writer {
        Writer(Arc::new(Mutex::new(file)))
    }

    pub fn send(&self, msg: &GuestMsg) {
        let mut w = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = write_msg(&mut *w, msg) {
            log(&format!("cannot send to host: {e}"));
        }
    }
}

/// A file being received from the host.
struct Upload {
    file: Option<File>,
    error: Option<String>,
}

pub fn serve(channel: Channel, root: &Path, announce: bool) -> ! {
    let writer = Writer(Arc::new(Mutex::new(
        channel.try_clone().expect("dup channel"),
    )));
    if announce {
        writer.send(&GuestMsg::Ready);
    }
    let mut reader = channel;
    let running: Arc<Mutex<Option<RunningJob>>> = Arc::new(Mutex::new(None));
    let mut upload: Option<Upload> = None;
    // The version the last Hello agreed on.
    let mut agreed = MIN_PROTOCOL_VERSION;
    loop {
        let msg: HostMsg = match read_msg(&mut reader) {
            Ok(m) => m,
            Err(ProtoError::Closed) => {
                // No host connected (or it just left): nothing may outlive its caller.
                job::kill_running(&running);
                upload = None;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            Err(e) => {
                log(&format!(
                    "link error, waiting for the host to reconnect: {e}"
                ));
                job::kill_running(&running);
                upload = None;
                drain_until_hangup(&mut reader);
                continue;
            }
        };
        // A template's clone touches its VO image only once it has its
        // own identity and its own disk.
        if crate::clone::root_pending()
            && matches!(
                msg,
                HostMsg::Run(_)
                    | HostMsg::PutFile { .. }
                    | HostMsg::GetFile { .. }
                    | HostMsg::Network(_)
            )
        {
            upload = None;
            writer.send(&GuestMsg::Error {
                message:
                    "the VO disk is not mounted yet: a template's clone needs its Identity first"
                        .into(),
            });
            continue;
        }
        match msg {
            HostMsg::Identity(id) => match crate::clone::apply(&id, root) {
                Ok(mounted_root) => {
                    if mounted_root {
                        log("clone: identity set, VO disk mounted");
                    }
                    writer.send(&GuestMsg::IdentitySet { mounted_root })
                }
                Err(message) => writer.send(&GuestMsg::Error { message }),
            },
            HostMsg::Hello { version, hostname } => {
                if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
                    writer.send(&GuestMsg::Error {
                        message: format!("protocol version {version} not supported (agent speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION})"),
                    });
                    continue;
                }
                // A new host session: whatever ran for the previous one has
                // lost its caller (a console channel never reports hang-ups).
                job::kill_running(&running);
                upload = None;
                agreed = version;
                if let Err(e) = nix::unistd::sethostname(&hostname) {
                    log(&format!("sethostname {hostname:?}: {e}"));
                }
                writer.send(&hello(&hostname, version));
            }
            HostMsg::Run(req) => {
                let mut slot = running.lock().unwrap();
                if slot.is_some() {
                    writer.send(&GuestMsg::Error {
                        message: "a command is already running".into(),
                    });
                    continue;
                }
                match job::spawn(&req, root, writer.clone(), running.clone()) {
                    Ok(job) => {
                        writer.send(&GuestMsg::Started { pid: job.pid });
                        *slot = Some(job);
                    }
                    Err(message) => writer.send(&GuestMsg::Error { message }),
                }
            }
            HostMsg::Stdin(data) => job::feed_stdin(&running, data),
            HostMsg::Signal(sig) => job::signal_running(&running, sig),
            HostMsg::PutFile { path, mode } => {
                upload = Some(match open_for_upload(root, &path, mode) {
                    Ok(file) => Upload {
                        file: Some(file),
                        error: None,
                    },
                    Err(e) => Upload {
                        file: None,
                        error: Some(e),
                    },
                });
            }
            HostMsg::FileChunk(data) => {
                if let Some(up) = upload.as_mut() {
                    if let Some(f) = up.file.as_mut() {
                        if let Err(e) = f.write_all(&data) {
                            up.error = Some(format!("write: {e}"));
                            up.file = None;
                        }
                    }
                }
            }
            HostMsg::FileEnd => match upload.take() {
                Some(Upload {
                    error: None,
                    file: Some(f),
                }) => match f.sync_all() {
                    Ok(()) => writer.send(&GuestMsg::FileStored),
                    Err(e) => writer.send(&GuestMsg::Error {
                        message: format!("sync: {e}"),
                    }),
                },
                Some(Upload {
                    error: Some(message),
                    ..
                }) => writer.send(&GuestMsg::Error { message }),
                _ => writer.send(&GuestMsg::Error {
                    message: "FileEnd without PutFile".into(),
                }),
            },
            HostMsg::GetFile { path } => send_file(root, &path, &writer),
            HostMsg::Ping(n) => writer.send(&GuestMsg::Pong(n)),
            HostMsg::Network(cfg) => match crate::network::apply(&cfg, root) {
                Ok(interfaces) => {
                    let said: Vec<String> = interfaces
                        .iter()
                        .map(|i| match i.address {
                            Some((ip, p)) if i.dhcp => format!("{} {ip}/{p} (DHCP)", i.name),
                            Some((ip, p)) => format!("{} {ip}/{p}", i.name),
                            None => i.name.clone(),
                        })
                        .collect();
                    log(&format!("network up: {}", said.join(", ")));
                    if agreed >= sd_proto::NETWORK_UP_SINCE {
                        writer.send(&GuestMsg::NetworkUp { interfaces })
                    } else {
                        writer.send(&GuestMsg::NetworkConfigured {
                            interfaces: interfaces.into_iter().map(|i| i.name).collect(),
                        })
                    }
                }
                Err(e) => writer.send(&GuestMsg::Error {
                    message: format!("network: {e}"),
                }),
            },
            HostMsg::PowerOff => {
                log("power-off requested by the host");
                crate::power_off();
            }
        }
    }
}

/// The answer to a Hello: the host's own version, which we speak too.
fn hello(hostname: &str, version: u32) -> GuestMsg {
    let uts = nix::sys::utsname::uname().ok();
    let kernel_release = uts
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mem_total_kib = read_trimmed("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let vcpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    GuestMsg::Hello {
        version,
        kernel_release,
        hostname: hostname.to_string(),
        vcpus,
        mem_total_kib,
    }
}

/// After a broken frame: skip what the host still sends until it hangs up
/// (a socket-like port) or, on a console that never hangs up, until it has
/// been quiet for a moment — the next host starts afresh with a Hello.
fn drain_until_hangup(reader: &mut File) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let is_console = nix::sys::termios::tcgetattr(&*reader).is_ok();
    let mut buf = [0u8; 4096];
    loop {
        if is_console {
            let mut fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::from(300u16)), Ok(n) if n > 0) {
                return;
            }
        }
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// A path of the VO image: absolute or relative to its root, never with `..`.
pub fn in_root(root: &Path, path: &str) -> Result<PathBuf, String> {
    let mut out = root.to_path_buf();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("path {path:?} must not contain '..'"));
            }
        }
    }
    if out == root {
        return Err(format!("path {path:?} names no file"));
    }
    Ok(out)
}

/// Like [`in_root`] for a directory, which may be the root itself (a
/// command run in `/`).
pub fn dir_in_root(root: &Path, path: &str) -> Result<PathBuf, String> {
    match in_root(root, path) {
        Err(_)
            if Path::new(path)
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::CurDir)) =>
        {
            Ok(root.to_path_buf())
        }
        other => other,
    }
}

fn open_for_upload(root: &Path, path: &str, mode: u32) -> Result<File, String> {
    let target = in_root(root, path)?;
    if let Some(dir) = target.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode & 0o7777)
        .open(&target)
        .map_err(|e| format!("create {path}: {e}"))?;
    // An existing file keeps its old mode on open: set the requested one.
    let _ = file.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777));
    Ok(file)
}

fn send_file(root: &Path, path: &str, writer: &Writer) {
    let result =
        in_root(root, path).and_then(|p| File::open(&p).map_err(|e| format!("open {path}: {e}")));
    let mut file = match result {
        Ok(f) => f,
        Err(message) => return writer.send(&GuestMsg::Error { message }),
    };
    let meta = match file.metadata() {
        Ok(m) if m.is_file() => m,
        Ok(_) => {
            return writer.send(&GuestMsg::Error {
                message: format!("{path} is not a regular file"),
            })
        }
        Err(e) => {
            return writer.send(&GuestMsg::Error {
                message: format!("stat {path}: {e}"),
            })
        }
    };
    writer.send(&GuestMsg::FileBegin {
        size: meta.len(),
        mode: meta.permissions().mode() & 0o7777,
    });
    let mut buf = vec![0u8; sd_proto::CHUNK];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => writer.send(&GuestMsg::FileChunk(buf[..n].to_vec())),
            Err(e) => {
                return writer.send(&GuestMsg::Error {
                    message: format!("read {path}: {e}"),
                })
            }
        }
    }
    writer.send(&GuestMsg::FileEnd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let root = Path::new("/newroot");
        assert_eq!(
            in_root(root, "/sd-job/a.txt").unwrap(),
            Path::new("/newroot/sd-job/a.txt")
        );
        assert_eq!(
            in_root(root, "sd-job/./a").unwrap(),
            Path::new("/newroot/sd-job/a")
        );
        assert!(in_root(root, "/sd-job/../../etc/passwd").is_err());
        assert!(in_root(root, "/").is_err());
        assert_eq!(dir_in_root(root, "/").unwrap(), root);
        assert!(dir_in_root(root, "/../x").is_err());
    }

    /// The control port and the exec port are served at once, each by its
    /// own session: a host waiting on one does not hold up the other.
    #[test]
    fn two_channels_are_served_at_once() {
        use std::os::unix::net::UnixStream;
        let mut hosts = vec![];
        for _ in 0..2 {
            let (host, guest) = UnixStream::pair().unwrap();
            let channel = File::from(std::os::fd::OwnedFd::from(guest));
            std::thread::spawn(move || serve(channel, Path::new("/nonexistent-root"), false));
            host.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            hosts.push(host);
        }
        // Interleaved: the second channel answers while the first has a
        // request outstanding, and each answer comes back on its own channel.
        write_msg(&mut hosts[0], &HostMsg::Ping(1)).unwrap();
        write_msg(&mut hosts[1], &HostMsg::Ping(2)).unwrap();
        let second: GuestMsg = read_msg(&mut hosts[1]).unwrap();
        let first: GuestMsg = read_msg(&mut hosts[0]).unwrap();
        assert_eq!((first, second), (GuestMsg::Pong(1), GuestMsg::Pong(2)));
        // A request that fails on one leaves the other usable.
        write_msg(&mut hosts[1], &HostMsg::FileEnd).unwrap();
        assert!(matches!(
            read_msg::<_, GuestMsg>(&mut hosts[1]).unwrap(),
            GuestMsg::Error { .. }
        ));
        write_msg(&mut hosts[0], &HostMsg::Ping(3)).unwrap();
        assert_eq!(
            read_msg::<_, GuestMsg>(&mut hosts[0]).unwrap(),
            GuestMsg::Pong(3)
        );
    }
}
