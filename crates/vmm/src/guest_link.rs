//! Host side of the link to the guest agent (protocol in `sd-proto`).
//!
//! A reader thread turns the byte stream into messages on a channel, so that
//! every wait here has a deadline and notices a dead domain; a malformed frame
//! ends the link with [`LinkError::Protocol`].

use sd_proto::{read_msg, write_msg, GuestMsg, HostMsg, ProtoError, RunRequest, PROTOCOL_VERSION};
use serde::Serialize;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot reach the guest agent at {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("the guest agent did not answer within {0:?} (see the console log)")]
    Timeout(Duration),
    #[error("the domain stopped before its guest agent answered (see the console log)")]
    DomainGone,
    #[error("guest agent link: {0}")]
    Protocol(#[from] ProtoError),
    #[error("guest agent speaks protocol {guest}, we speak {PROTOCOL_VERSION}")]
    Version { guest: u32 },
    #[error("guest agent: {0}")]
    Guest(String),
    #[error("guest agent sent {0} where it was not expected")]
    Unexpected(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl LinkError {
    /// The guest (what runs in it) failed, not our side of the link.
    pub fn is_guest_side(&self) -> bool {
        match self {
            LinkError::Timeout(_)
            | LinkError::DomainGone
            | LinkError::Protocol(_)
            | LinkError::Version { .. }
            | LinkError::Guest(_)
            | LinkError::Unexpected(_) => true,
            LinkError::Connect { .. } | LinkError::Io(_) => false,
        }
    }
}

/// What the guest reported about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestInfo {
    pub kernel_release: String,
    pub hostname: String,
    pub vcpus: u32,
    pub mem_total_kib: u64,
}

/// How a command in the guest ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOutcome {
    Exited(i32),
    Killed(i32),
}

impl JobOutcome {
    /// The shell convention: the code, or 128 + signal.
    pub fn exit_code(self) -> i32 {
        match self {
            JobOutcome::Exited(c) => c,
            JobOutcome::Killed(s) => 128 + s,
        }
    }
}

/// Sends frames; cloneable so that stdin and signal forwarders share it.
#[derive(Clone)]
pub struct LinkWriter(Arc<Mutex<UnixStream>>);

impl LinkWriter {
    pub fn send(&self, msg: &HostMsg) -> Result<(), LinkError> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        write_msg(&mut *s, msg).map_err(Into::into)
    }

    /// Signals the running command's process group in the guest.
    pub fn signal(&self, sig: i32) -> Result<(), LinkError> {
        self.send(&HostMsg::Signal(sig))
    }
}

pub struct GuestLink {
    writer: LinkWriter,
    incoming: Receiver<Result<GuestMsg, ProtoError>>,
    pub info: GuestInfo,
    /// Lives as long as the link; a watcher stops when it is gone.
    token: Arc<()>,
}

impl GuestLink {
    /// Connects and says hello; waits up to `timeout` for the guest to boot
    /// and answer, giving up early when `alive()` says the domain is gone.
    pub fn connect(
        socket: &Path,
        hostname: &str,
        timeout: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<GuestLink, LinkError> {
        Self::open(socket, hostname, timeout, alive, false)
    }

    /// The first connection to a freshly booted domain whose agent channel
    /// is a console (Xen): say hello only once the agent announced it is
    /// ready ([`GuestMsg::Ready`]), since a console echoes and mangles
    /// whatever arrives before the agent made it raw.
    pub fn connect_when_ready(
        socket: &Path,
        hostname: &str,
        timeout: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<GuestLink, LinkError> {
        Self::open(socket, hostname, timeout, alive, true)
    }

    fn open(
        socket: &Path,
        hostname: &str,
        timeout: Duration,
        alive: &dyn Fn() -> bool,
        wait_for_ready: bool,
    ) -> Result<GuestLink, LinkError> {
        let stream = UnixStream::connect(socket).map_err(|source| LinkError::Connect {
            path: socket.display().to_string(),
            source,
        })?;
        let reader = stream.try_clone()?;
        // Bounded: when the consumer is slow (a job's stdout blocked), the
        // reader stops reading, the channel's buffers fill and the agent's
        // writes in the guest block, instead of the host buffering without
        // end. 16 frames are 1 MiB of 64 KiB chunks (16 MiB at the 1 MiB limit).
        let (tx, incoming) = sync_channel(16);
        std::thread::spawn(move || {
            let mut reader = std::io::BufReader::with_capacity(256 * 1024, reader);
            loop {
                let msg = read_msg::<_, GuestMsg>(&mut reader);
                let end = msg.is_err();
                if tx.send(msg).is_err() || end {
                    return;
                }
            }
        });
        let writer = LinkWriter(Arc::new(Mutex::new(stream)));
        let hello = HostMsg::Hello {
            version: PROTOCOL_VERSION,
            hostname: hostname.to_string(),
        };
        // Buffered by QEMU until the guest opens its port: one hello suffices.
        if !wait_for_ready {
            writer.send(&hello)?;
        }
        let deadline = Instant::now() + timeout;
        let mut link = GuestLink {
            writer,
            incoming,
            info: GuestInfo {
                kernel_release: String::new(),
                hostname: String::new(),
                vcpus: 0,
                mem_total_kib: 0,
            },
            token: Arc::new(()),
        };
        loop {
            match link.incoming.recv_timeout(Duration::from_millis(200)) {
                Ok(Ok(GuestMsg::Hello {
                    version,
                    kernel_release,
                    hostname,
                    vcpus,
                    mem_total_kib,
                })) => {
                    if version != PROTOCOL_VERSION {
                        return Err(LinkError::Version { guest: version });
                    }
                    link.info = GuestInfo {
                        kernel_release,
                        hostname,
                        vcpus,
                        mem_total_kib,
                    };
                    return Ok(link);
                }
                Ok(Ok(GuestMsg::Ready)) => {
                    if wait_for_ready {
                        link.writer.send(&hello)?;
                    }
                }
                Ok(Ok(GuestMsg::Error { message })) => return Err(LinkError::Guest(message)),
                Ok(Ok(other)) => return Err(LinkError::Unexpected(format!("{other:?}"))),
                Ok(Err(ProtoError::Closed)) | Err(RecvTimeoutError::Disconnected) => {
                    return Err(LinkError::DomainGone)
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(RecvTimeoutError::Timeout) => {
                    if !alive() {
                        return Err(LinkError::DomainGone);
                    }
                    if Instant::now() > deadline {
                        return Err(LinkError::Timeout(timeout));
                    }
                }
            }
        }
    }

    /// Closes the link as soon as `alive()` turns false (checked every
    /// `every`), so that a domain that crashed or was destroyed reads as a
    /// closed link rather than a silent one: a console channel's dom0 end
    /// (Xen's device model) stays open after its guest is gone.
    pub fn watch(&self, every: Duration, alive: impl Fn() -> bool + Send + 'static) {
        let token = Arc::downgrade(&self.token);
        let stream = match self
            .writer
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_clone()
        {
            Ok(s) => s,
            Err(e) => return tracing::warn!("cannot watch the domain: {e}"),
        };
        std::thread::spawn(move || loop {
            std::thread::sleep(every);
            if token.upgrade().is_none() {
                return;
            }
            if !alive() {
                let _ = stream.shutdown(std::net::Shutdown::Both);
                tracing::warn!("the domain is gone: its agent link is closed");
                return;
            }
        });
    }

    pub fn writer(&self) -> LinkWriter {
        self.writer.clone()
    }

    fn recv(&self) -> Result<GuestMsg, LinkError> {
        match self.incoming.recv() {
            // A console channel's start-up announcement, late: not for us.
            Ok(Ok(GuestMsg::Ready)) => self.recv(),
            Ok(Ok(GuestMsg::Error { message })) => Err(LinkError::Guest(message)),
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ProtoError::Closed.into()),
        }
    }

    fn recv_timeout(&self, timeout: Duration) -> Result<GuestMsg, LinkError> {
        match self.incoming.recv_timeout(timeout) {
            Ok(Ok(GuestMsg::Ready)) => self.recv_timeout(timeout),
            Ok(Ok(GuestMsg::Error { message })) => Err(LinkError::Guest(message)),
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(e.into()),
            Err(RecvTimeoutError::Timeout) => Err(LinkError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(ProtoError::Closed.into()),
        }
    }

    /// Round trip time of a ping (liveness).
    pub fn ping(&self, timeout: Duration) -> Result<Duration, LinkError> {
        let start = Instant::now();
        let n = start.elapsed().as_nanos() as u64;
        self.writer.send(&HostMsg::Ping(n))?;
        match self.recv_timeout(timeout)? {
            GuestMsg::Pong(m) if m == n => Ok(start.elapsed()),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Sets up the guest's network (before its job); returns each NIC as
    /// the guest left it (its name, and the address DHCP gave it). Needs an agent of protocol [`sd_proto::NETWORK_SINCE`]
    /// or later (the Hello agreed on [`PROTOCOL_VERSION`], which is).
    pub fn configure_network(
        &self,
        config: &sd_proto::NetworkConfig,
        timeout: Duration,
    ) -> Result<Vec<sd_proto::InterfaceUp>, LinkError> {
        config.check().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("network config: {e}"),
            )
        })?;
        self.writer.send(&HostMsg::Network(config.clone()))?;
        match self.recv_timeout(timeout)? {
            GuestMsg::NetworkUp { interfaces } => Ok(interfaces),
            // An agent of version 2 names the NICs only.
            GuestMsg::NetworkConfigured { interfaces } => Ok(interfaces
                .into_iter()
                .zip(&config.interfaces)
                .map(|(name, nic)| sd_proto::InterfaceUp {
                    name,
                    address: nic.address,
                    dhcp: false,
                })
                .collect()),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Gives the domain its own identity (randomness, clock, machine-id) and,
    /// a clone of a template, its disk mounted; true if it mounted it.
    pub fn set_identity(
        &self,
        identity: &sd_proto::CloneIdentity,
        timeout: Duration,
    ) -> Result<bool, LinkError> {
        identity.check().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("identity: {e}"))
        })?;
        self.writer.send(&HostMsg::Identity(identity.clone()))?;
        match self.recv_timeout(timeout)? {
            GuestMsg::IdentitySet { mounted_root } => Ok(mounted_root),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Copies `from` into the guest file `path` (created with `mode`).
    pub fn put_file(&self, from: &mut dyn Read, path: &str, mode: u32) -> Result<u64, LinkError> {
        self.writer.send(&HostMsg::PutFile {
            path: path.to_string(),
            mode,
        })?;
        let mut buf = vec![0u8; sd_proto::CHUNK];
        let mut total = 0u64;
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            self.writer.send(&HostMsg::FileChunk(buf[..n].to_vec()))?;
        }
        self.writer.send(&HostMsg::FileEnd)?;
        match self.recv()? {
            GuestMsg::FileStored => Ok(total),
            other => Err(LinkError::Unexpected(format!("{other:?}"))),
        }
    }

    /// Copies the guest file `path` into `to`; returns its size and mode.
    pub fn get_file(&self, path: &str, to: &mut dyn Write) -> Result<(u64, u32), LinkError> {
        self.writer.send(&HostMsg::GetFile {
            path: path.to_string(),
        })?;
        let (size, mode) = match self.recv()? {
            GuestMsg::FileBegin { size, mode } => (size, mode),
            other => return Err(LinkError::Unexpected(format!("{other:?}"))),
        };
        loop {
            match self.recv()? {
                GuestMsg::FileChunk(data) => to.write_all(&data)?,
                GuestMsg::FileEnd => return Ok((size, mode)),
                other => return Err(LinkError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Runs a command; its output goes to `stdout` / `stderr` as it comes.
    /// With `stdin`, a thread forwards it (for `StdinSource::Stream`).
    pub fn run(
        &self,
        req: RunRequest,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
        stdin: Option<Box<dyn Read + Send>>,
    ) -> Result<JobOutcome, LinkError> {
        self.writer.send(&HostMsg::Run(req))?;
        if let Some(mut input) = stdin {
            let writer = self.writer.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; sd_proto::CHUNK];
                loop {
                    match input.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if writer.send(&HostMsg::Stdin(buf[..n].to_vec())).is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = writer.send(&HostMsg::Stdin(Vec::new()));
            });
        }
        loop {
            match self.recv()? {
                GuestMsg::Started { .. } => {}
                GuestMsg::Stdout(data) => {
                    stdout.write_all(&data)?;
                    stdout.flush()?;
                }
                GuestMsg::Stderr(data) => {
                    stderr.write_all(&data)?;
                    stderr.flush()?;
                }
                GuestMsg::Exited { code } => return Ok(JobOutcome::Exited(code)),
                GuestMsg::Killed { signal } => return Ok(JobOutcome::Killed(signal)),
                other => return Err(LinkError::Unexpected(format!("{other:?}"))),
            }
        }
    }

    /// Asks the agent to unmount the VO image and power off. The link ends.
    pub fn power_off(self) -> Result<(), LinkError> {
        self.writer.send(&HostMsg::PowerOff)
    }
}

impl Drop for GuestLink {
    /// Ends the connection for the agent too: the reader thread holds a
    /// second descriptor of the socket, which would keep it open.
    fn drop(&mut self) {
        let s = self.writer.0.lock().unwrap_or_else(|e| e.into_inner());
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake agent that answers hello and then sends garbage: the host must
    /// get an error, not hang or panic.
    #[test]
    fn malformed_frame_ends_the_link_with_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let agent = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _: HostMsg = read_msg(&mut s).unwrap();
            write_msg(
                &mut s,
                &GuestMsg::Hello {
                    version: PROTOCOL_VERSION,
                    kernel_release: "k".into(),
                    hostname: "h".into(),
                    vcpus: 1,
                    mem_total_kib: 1,
                },
            )
            .unwrap();
            let _: HostMsg = read_msg(&mut s).unwrap();
            s.write_all(b"SD\xff\xff\xff\xffgarbage").unwrap();
            std::thread::sleep(Duration::from_millis(200));
        });
        let link = GuestLink::connect(&sock, "h", Duration::from_secs(5), &|| true).unwrap();
        assert_eq!(link.info.kernel_release, "k");
        let err = link.ping(Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(err, LinkError::Protocol(ProtoError::TooLarge(_))),
            "{err}"
        );
        agent.join().unwrap();
    }

    /// The host sends the network after the Hello and gets the guest's
    /// interface names back; a config over the limits is not sent at all.
    #[test]
    fn network_config_goes_to_the_agent_and_its_names_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let config = sd_proto::NetworkConfig {
            hostname: "db".into(),
            interfaces: vec![sd_proto::InterfaceConfig {
                mac: [2, 0, 0, 0, 0, 1],
                address: Some(("10.77.0.2".parse().unwrap(), 24)),
                gateway: Some("10.77.0.1".parse().unwrap()),
                dns: vec![],
            }],
            hosts: vec![],
        };
        let expected = config.clone();
        let agent = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _: HostMsg = read_msg(&mut s).unwrap();
            write_msg(
                &mut s,
                &GuestMsg::Hello {
                    version: PROTOCOL_VERSION,
                    kernel_release: "k".into(),
                    hostname: "h".into(),
                    vcpus: 1,
                    mem_total_kib: 1,
                },
            )
            .unwrap();
            let got: HostMsg = read_msg(&mut s).unwrap();
            assert_eq!(got, HostMsg::Network(expected));
            write_msg(
                &mut s,
                &GuestMsg::NetworkUp {
                    interfaces: vec![sd_proto::InterfaceUp {
                        name: "eth0".into(),
                        address: Some((std::net::Ipv4Addr::new(192, 0, 2, 57), 24)),
                        dhcp: true,
                    }],
                },
            )
            .unwrap();
        });
        let link = GuestLink::connect(&sock, "h", Duration::from_secs(5), &|| true).unwrap();
        let names = link
            .configure_network(&config, Duration::from_secs(5))
            .unwrap();
        assert_eq!(names.len(), 1);
        assert_eq!(names[0].name, "eth0");
        assert_eq!(names[0].address, Some(("192.0.2.57".parse().unwrap(), 24)));
        agent.join().unwrap();
        let mut bad = config;
        bad.hostname = "bad name".into();
        let err = link
            .configure_network(&bad, Duration::from_secs(1))
            .unwrap_err();
        assert!(!err.is_guest_side(), "{err}");
    }

    #[test]
    fn silent_agent_times_out_and_dead_domain_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let _keep = std::thread::spawn(move || {
            let (_s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(2));
        });
        let err = GuestLink::connect(&sock, "h", Duration::from_millis(300), &|| true)
            .err()
            .unwrap();
        assert!(matches!(err, LinkError::Timeout(_)), "{err}");
    }
}
