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

/// Bumped on any incompatible change of the messages below.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest payload a frame may carry.
pub const MAX_FRAME: usize = 1 << 20;
/// Output and file data are sent in chunks of at most this size.
pub const CHUNK: usize = 64 * 1024;
const MAGIC: [u8; 2] = *b"SD";
/// Name of the virtio-serial port the agent listens on.
pub const VIRTIO_PORT_NAME: &str = "org.smartdomains.agent.0";

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
