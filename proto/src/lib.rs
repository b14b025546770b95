//! The link between the SmartDomains host and its guest agent (`sd-guest`).
//!
//! One byte stream (a virtio-serial port, later a Xen console), carrying frames:
//!
//! ```text
//! +------+------+-----------------+--------------------------+
//! | 'S'  | 'D'  | u32 BE length N | N bytes: postcard message |
//! +------+------+-----------------+--------------------------+
//! ```
//!
//! The host speaks first ([`HostMsg::Hello`]); the guest answers with its own
//! [`GuestMsg::Hello`] carrying [`PROTOCOL_VERSION`]. A frame longer than
//! [`MAX_FRAME`], a wrong magic or an undecodable payload is a [`ProtoError`]:
//! the reader gives up on the link; it never panics and never waits for bytes
//! that a bad length promised beyond the limit.

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::io::{self, Read, Write};
use std::net::Ipv4Addr;

/// Bumped on any change of the messages below. The agent answers a host's
/// [`HostMsg::Hello`] of any version from [`MIN_PROTOCOL_VERSION`] to this
/// one with that same version (an older host sees the version it speaks);
/// a host must send nothing the agreed version lacks.
///
/// - 1: the first.
/// - 2: [`HostMsg::Network`] and [`GuestMsg::NetworkConfigured`] (appended:
///   the encoding of every older message is unchanged).
/// - 3: [`GuestMsg::NetworkUp`] (appended): each NIC's name and the address
///   it has, the one the site's DHCP gave on a `bridge` network.
/// - 4: [`HostMsg::Identity`] and [`GuestMsg::IdentitySet`] (appended): a
///   domain's own randomness, clock and machine-id, and, for a clone of a
///   template, the mount of its disk, before anything else sees the guest.
pub const PROTOCOL_VERSION: u32 = 4;
/// The oldest host protocol the agent still serves.
pub const MIN_PROTOCOL_VERSION: u32 = 1;
/// The first version with [`HostMsg::Network`].
pub const NETWORK_SINCE: u32 = 2;
/// The first version whose agent answers a `Network` with [`GuestMsg::NetworkUp`].
pub const NETWORK_UP_SINCE: u32 = 3;
/// The first version with [`HostMsg::Identity`].
pub const IDENTITY_SINCE: u32 = 4;
/// A [`CloneIdentity`]'s seed: at least this many bytes (256 bits)...
pub const MIN_SEED: usize = 32;
/// ...and at most this many.
pub const MAX_SEED: usize = 512;
/// At most this many NICs in a [`NetworkConfig`].
pub const MAX_INTERFACES: usize = 16;
/// At most this many `/etc/hosts` entries in a [`NetworkConfig`].
pub const MAX_HOSTS: usize = 4096;
/// At most this many resolvers per NIC (the C library reads three).
pub const MAX_DNS: usize = 3;
/// Largest payload a frame may carry.
pub const MAX_FRAME: usize = 1 << 20;
/// Output and file data are sent in chunks of at most this size.
pub const CHUNK: usize = 64 * 1024;
const MAGIC: [u8; 2] = *b"SD";
/// Name of the virtio-serial port the agent listens on.
pub const VIRTIO_PORT_NAME: &str = "org.smartdomains.agent.0";
/// Name of the second virtio-serial port, for commands run in a running
/// domain (`sd exec`): the agent serves it with its own session, the same
/// protocol, so that they do not wait for the control link, which `sd run`
/// or a pool's liveness monitor holds for the domain's whole life. A
/// domain without it (Xen) has only the control link.
pub const EXEC_PORT_NAME: &str = "org.smartdomains.exec.0";

/// What the job's standard input is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StdinSource {
    /// `/dev/null`.
    Null,
    /// A file inside the guest (a JDL's `StdInput`, usually from the input sandbox).
    File(String),
    /// Bytes sent by the host as [`HostMsg::Stdin`] frames; an empty one is end of file.
    Stream,
}

/// A command to run inside the VO image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    pub argv: Vec<String>,
    /// The whole environment of the job (the agent adds nothing but a default `PATH` if absent).
    pub env: Vec<(String, String)>,
    /// Working directory inside the VO image; created if missing.
    pub cwd: String,
    pub stdin: StdinSource,
}

/// One NIC of the guest, found by its MAC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceConfig {
    pub mac: [u8; 6],
    /// The address and prefix length; None: the link is only brought up
    /// (a `bridge` network's addresses come from the site's DHCP).
    pub address: Option<(Ipv4Addr, u8)>,
    /// The default route through this NIC.
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
}

/// The guest's network, applied by the agent before the job: the NICs, the
/// host name, and `/etc/hosts` entries (`name`, `ip`): the other members of
/// a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkConfig {
    pub hostname: String,
    pub interfaces: Vec<InterfaceConfig>,
    pub hosts: Vec<(String, Ipv4Addr)>,
}

/// A host name as `/etc/hosts` and `sethostname` take it: 1-253 bytes of
/// dot-separated labels of 1-63 letters, digits and inner '-'.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl NetworkConfig {
    /// Checks the limits and the names (so that nothing written from it
    /// into the guest's files can add a line of its own).
    pub fn check(&self) -> Result<(), String> {
        if !valid_hostname(&self.hostname) {
            return Err(format!("host name {:?} is not valid", self.hostname));
        }
        if self.interfaces.len() > MAX_INTERFACES {
            return Err(format!(
                "{} interfaces: at most {MAX_INTERFACES}",
                self.interfaces.len()
            ));
        }
        if self.hosts.len() > MAX_HOSTS {
            return Err(format!(
                "{} host entries: at most {MAX_HOSTS}",
                self.hosts.len()
            ));
        }
        for (i, nic) in self.interfaces.iter().enumerate() {
            if nic.dns.len() > MAX_DNS {
                return Err(format!("interface {i}: at most {MAX_DNS} resolvers"));
            }
            if let Some((_, prefix)) = nic.address {
                if prefix > 32 {
                    return Err(format!("interface {i}: prefix length {prefix} > 32"));
                }
            }
            if self.interfaces[..i].iter().any(|o| o.mac == nic.mac) {
                return Err(format!("interface {i}: its MAC is another's"));
            }
        }
        if let Some((name, _)) = self.hosts.iter().find(|(n, _)| !valid_hostname(n)) {
            return Err(format!("host entry {name:?} is not a valid name"));
        }
        Ok(())
    }
}

/// What makes one domain its own, sent right after the Hello (the host
/// name came with it) and before anything else: a domain started from a
/// template shares its template's memory, so its entropy pool, clock and
/// machine-id are the template's until this arrives. A booted domain gets
/// it too (the same path for both).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloneIdentity {
    /// Mixed into the guest's entropy pool (`RNDADDENTROPY`), on top of the
    /// reseed the kernel does on a vmgenid change.
    pub seed: Vec<u8>,
    /// The host's real-time clock when sent, in nanoseconds since the epoch.
    pub unix_time_ns: u64,
    /// 32 lowercase hex digits, written to the VO image's `/etc/machine-id`.
    pub machine_id: String,
}

impl CloneIdentity {
    pub fn check(&self) -> Result<(), String> {
        if !(MIN_SEED..=MAX_SEED).contains(&self.seed.len()) {
            return Err(format!(
                "seed of {} bytes: {MIN_SEED} to {MAX_SEED}",
                self.seed.len()
            ));
        }
        if self.machine_id.len() != 32
            || !self
                .machine_id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!(
                "machine-id {:?}: expected 32 lowercase hex digits",
                self.machine_id
            ));
        }
        Ok(())
    }
}

/// Host → guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HostMsg {
    /// First message of every connection. The guest takes `hostname` as its own.
    Hello {
        version: u32,
        hostname: String,
    },
    /// Start a command; at most one runs at a time.
    Run(RunRequest),
    /// Data for the running command's stdin; empty = end of file.
    Stdin(Vec<u8>),
    /// Send a signal to the running command's process group.
    Signal(i32),
    /// Create (or replace) a file in the VO image; followed by `FileChunk`s and `FileEnd`.
    PutFile {
        path: String,
        mode: u32,
    },
    FileChunk(Vec<u8>),
    FileEnd,
    /// Ask for a file of the VO image; answered by `FileBegin`, `FileChunk`s, `FileEnd`.
    GetFile {
        path: String,
    },
    Ping(u64),
    /// Stop everything, unmount the VO image cleanly, power the machine off.
    PowerOff,
    /// (version 2) Set up the guest's network before the job: answered by
    /// [`GuestMsg::NetworkConfigured`] or an `Error`. Sent only if the Hello
    /// agreed on [`NETWORK_SINCE`] or later.
    Network(NetworkConfig),
    /// (version 4) This domain's own identity: answered by
    /// [`GuestMsg::IdentitySet`] or an `Error`. A clone of a template mounts
    /// its disk here (its template stopped before that).
    Identity(CloneIdentity),
}

/// Guest → host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GuestMsg {
    Hello {
        version: u32,
        kernel_release: String,
        hostname: String,
        vcpus: u32,
        mem_total_kib: u64,
    },
    /// The command of a `Run` started with this pid.
    Started {
        pid: u32,
    },
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    /// The command ended; sent after all of its output.
    Exited {
        code: i32,
    },
    Killed {
        signal: i32,
    },
    FileBegin {
        size: u64,
        mode: u32,
    },
    FileChunk(Vec<u8>),
    FileEnd,
    /// A `PutFile` was written completely.
    FileStored,
    Pong(u64),
    /// A request failed; the link stays usable.
    Error {
        message: String,
    },
    /// Unsolicited, once, when the agent starts on a console channel (Xen's
    /// hvc): until the guest has made its tty raw, bytes from the host would
    /// be echoed and mangled, so the first host waits for this before its
    /// Hello.
    Ready,
    /// (version 2) The `Network` was applied: the guest's interface name of
    /// each NIC, in order.
    NetworkConfigured {
        interfaces: Vec<String>,
    },
    /// (version 3) The `Network` was applied: each NIC, in order.
    NetworkUp {
        interfaces: Vec<InterfaceUp>,
    },
    /// (version 4) The `Identity` was applied; `mounted_root`: the VO disk
    /// was mounted for it (a clone of a template), not by the boot.
    IdentitySet {
        mounted_root: bool,
    },
}

/// A NIC as the agent left it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceUp {
    /// The guest's name of it (`eth0`).
    pub name: String,
    /// Its address and prefix length (None: only the link is up).
    pub address: Option<(Ipv4Addr, u8)>,
    /// The address came from the site's DHCP (a `bridge` network).
    pub dhcp: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    #[error("link closed by the other side")]
    Closed,
    #[error("link I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame: bad magic {0:02x?} (is something else writing to the channel?)")]
    BadMagic([u8; 2]),
    #[error("malformed frame: length {0} exceeds the limit of {MAX_FRAME} bytes")]
    TooLarge(usize),
    #[error("malformed frame: cannot decode payload: {0}")]
    Decode(String),
    #[error("message too large to encode: {0}")]
    Encode(String),
}

/// Encodes one message as a complete frame (header included).
pub fn encode<M: Serialize>(msg: &M) -> Result<Vec<u8>, ProtoError> {
    let payload = postcard::to_stdvec(msg).map_err(|e| ProtoError::Encode(e.to_string()))?;
    if payload.len() > MAX_FRAME {
        return Err(ProtoError::TooLarge(payload.len()));
    }
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Writes one frame with a single `write_all`, so that frames from several
/// threads sharing a writer (behind a lock) never interleave.
pub fn write_msg<W: Write + ?Sized, M: Serialize>(w: &mut W, msg: &M) -> Result<(), ProtoError> {
    let frame = encode(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame. End of stream before the first byte is [`ProtoError::Closed`].
pub fn read_msg<R: Read + ?Sized, M: DeserializeOwned>(r: &mut R) -> Result<M, ProtoError> {
    let mut header = [0u8; 6];
    let mut got = 0;
    while got < header.len() {
        match r.read(&mut header[got..]) {
            Ok(0) if got == 0 => return Err(ProtoError::Closed),
            Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let magic = [header[0], header[1]];
    if magic != MAGIC {
        return Err(ProtoError::BadMagic(magic));
    }
    let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
    if len > MAX_FRAME {
        return Err(ProtoError::TooLarge(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload)?;
    postcard::from_bytes(&payload).map_err(|e| ProtoError::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn roundtrip<M: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(m: M) {
        let frame = encode(&m).unwrap();
        let back: M = read_msg(&mut Cursor::new(frame)).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn messages_roundtrip() {
        roundtrip(HostMsg::Hello {
            version: PROTOCOL_VERSION,
            hostname: "node1".into(),
        });
        roundtrip(HostMsg::Run(RunRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "1".into())],
            cwd: "/sd-job".into(),
            stdin: StdinSource::File("in.txt".into()),
        }));
        roundtrip(GuestMsg::Stdout((0..=255u8).collect()));
        roundtrip(GuestMsg::Killed { signal: 9 });
    }

    fn network() -> NetworkConfig {
        NetworkConfig {
            hostname: "db".into(),
            interfaces: vec![InterfaceConfig {
                mac: [2, 1, 2, 3, 4, 5],
                address: Some((Ipv4Addr::new(10, 77, 0, 2), 24)),
                gateway: Some(Ipv4Addr::new(10, 77, 0, 1)),
                dns: vec![Ipv4Addr::new(10, 77, 0, 1)],
            }],
            hosts: vec![("worker-1".into(), Ipv4Addr::new(10, 77, 0, 3))],
        }
    }

    #[test]
    fn network_config_roundtrips_and_is_checked() {
        roundtrip(HostMsg::Network(network()));
        roundtrip(GuestMsg::NetworkConfigured {
            interfaces: vec!["eth0".into()],
        });
        roundtrip(GuestMsg::NetworkUp {
            interfaces: vec![InterfaceUp {
                name: "eth0".into(),
                address: Some((Ipv4Addr::new(192, 0, 2, 57), 24)),
                dhcp: true,
            }],
        });
        assert_eq!(network().check(), Ok(()));
        let mut bad = network();
        bad.hosts
            .push(("evil\n10.0.0.1 bank".into(), Ipv4Addr::new(1, 1, 1, 1)));
        assert!(bad.check().unwrap_err().contains("not a valid name"));
        let mut bad = network();
        bad.hostname = "-x".into();
        assert!(bad.check().is_err());
        let mut bad = network();
        bad.interfaces.push(bad.interfaces[0].clone());
        assert!(bad.check().unwrap_err().contains("another's"));
        let mut bad = network();
        bad.interfaces[0].dns = vec![Ipv4Addr::LOCALHOST; 4];
        assert!(bad.check().is_err());
        let mut big = network();
        big.hosts = (0..MAX_HOSTS + 1)
            .map(|i| (format!("h{i}"), Ipv4Addr::new(10, 0, 0, 1)))
            .collect();
        assert!(big.check().is_err());
        // Even over the limit it fits a frame: a frame never carries more
        // than the agent will accept reading.
        assert!(encode(&HostMsg::Network(big)).is_ok());
        assert!(valid_hostname("a.b-c.d9") && !valid_hostname("a..b") && !valid_hostname(""));
    }

    #[test]
    fn identity_roundtrips_and_is_checked() {
        let id = CloneIdentity {
            seed: vec![7; 64],
            unix_time_ns: 1_700_000_000_000_000_000,
            machine_id: "0123456789abcdef0123456789abcdef".into(),
        };
        assert_eq!(id.check(), Ok(()));
        roundtrip(HostMsg::Identity(id.clone()));
        roundtrip(GuestMsg::IdentitySet { mounted_root: true });
        let mut bad = id.clone();
        bad.seed = vec![0; 8];
        assert!(bad.check().is_err());
        let mut bad = id.clone();
        bad.machine_id = "0123456789ABCDEF0123456789abcdef".into();
        assert!(bad.check().is_err());
        let mut bad = id;
        bad.machine_id = "../../etc/passwd\n".into();
        assert!(bad.check().is_err());
        assert_eq!(
            encode(&GuestMsg::IdentitySet {
                mounted_root: false
            })
            .unwrap()[6],
            15
        );
    }

    #[test]
    fn older_messages_keep_their_encoding() {
        // Variants were appended: what a version-1 peer sends decodes the same.
        assert_eq!(encode(&HostMsg::PowerOff).unwrap()[6..], [9]);
        assert_eq!(encode(&GuestMsg::Ready).unwrap()[6..], [12]);
        assert_eq!(encode(&HostMsg::Ping(7)).unwrap()[6..], [8, 7]);
        assert_eq!(encode(&HostMsg::Network(network())).unwrap()[6], 10);
    }

    #[test]
    fn several_frames_in_one_stream() {
        let mut buf = encode(&GuestMsg::Pong(1)).unwrap();
        buf.extend(encode(&GuestMsg::Pong(2)).unwrap());
        let mut r = Cursor::new(buf);
        assert_eq!(read_msg::<_, GuestMsg>(&mut r).unwrap(), GuestMsg::Pong(1));
        assert_eq!(read_msg::<_, GuestMsg>(&mut r).unwrap(), GuestMsg::Pong(2));
        assert!(matches!(
            read_msg::<_, GuestMsg>(&mut r),
            Err(ProtoError::Closed)
        ));
    }

    #[test]
    fn oversized_length_is_refused_without_reading_it() {
        let mut frame = b"SD".to_vec();
        frame.extend_from_slice(&u32::MAX.to_be_bytes());
        let err = read_msg::<_, GuestMsg>(&mut Cursor::new(frame)).unwrap_err();
        assert!(matches!(err, ProtoError::TooLarge(_)), "{err}");
    }

    #[test]
    fn bad_magic_and_garbage_are_errors_not_panics() {
        let err =
            read_msg::<_, GuestMsg>(&mut Cursor::new(b"[    0.0] Linux".to_vec())).unwrap_err();
        assert!(matches!(err, ProtoError::BadMagic(_)));
        let mut frame = b"SD".to_vec();
        frame.extend_from_slice(&3u32.to_be_bytes());
        frame.extend_from_slice(&[0xff, 0xff, 0xff]);
        let err = read_msg::<_, GuestMsg>(&mut Cursor::new(frame)).unwrap_err();
        assert!(matches!(err, ProtoError::Decode(_)), "{err}");
        // Every truncation of a valid frame is an error, never a panic.
        let whole = encode(&HostMsg::PutFile {
            path: "a/b".into(),
            mode: 0o644,
        })
        .unwrap();
        for cut in 1..whole.len() {
            assert!(read_msg::<_, HostMsg>(&mut Cursor::new(&whole[..cut])).is_err());
        }
    }

    #[test]
    fn encode_refuses_payloads_over_the_limit() {
        let err = encode(&GuestMsg::Stdout(vec![0; MAX_FRAME + 1])).unwrap_err();
        assert!(matches!(err, ProtoError::TooLarge(_)));
    }
}
