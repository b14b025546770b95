//! Writes the seed corpora of the frame targets: one stream of frames per
//! file, as each side really sends them. Rerun after a protocol change:
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example seed_frames
use sd_proto::{encode, GuestMsg, HostMsg, RunRequest, StdinSource, PROTOCOL_VERSION};
use std::path::Path;

fn write<M: serde::Serialize>(dir: &Path, name: &str, msgs: &[M]) {
    let mut stream = Vec::new();
    for m in msgs {
        stream.extend(encode(m).unwrap());
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), stream).unwrap();
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let host = corpus.join("host_msg");
    write(&host, "hello", &[HostMsg::Hello { version: PROTOCOL_VERSION, hostname: "node1".into() }]);
    write(&host, "run-stdin", &[
        HostMsg::Run(RunRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), "cat; echo done".into()],
            env: vec![("PATH".into(), "/usr/bin:/bin".into()), ("SD_JOB".into(), "42".into())],
            cwd: "/sd-job".into(),
            stdin: StdinSource::Stream,
        }),
        HostMsg::Stdin(b"input\n".to_vec()),
        HostMsg::Stdin(vec![]),
        HostMsg::Signal(15),
    ]);
    write(&host, "run-file", &[HostMsg::Run(RunRequest {
        argv: vec!["./run.sh".into()],
        env: vec![],
        cwd: "/sd-job".into(),
        stdin: StdinSource::File("in.txt".into()),
    })]);
    write(&host, "files", &[
        HostMsg::PutFile { path: "/sd-job/run.sh".into(), mode: 0o755 },
        HostMsg::FileChunk(b"#!/bin/sh\necho hi\n".to_vec()),
        HostMsg::FileEnd,
        HostMsg::GetFile { path: "/sd-job/out.txt".into() },
    ]);
    write(&host, "ping-poweroff", &[HostMsg::Ping(u64::MAX), HostMsg::PowerOff]);

    let guest = corpus.join("guest_msg");
    write(&guest, "hello", &[
        GuestMsg::Ready,
        GuestMsg::Hello {
            version: PROTOCOL_VERSION,
            kernel_release: "6.1.0-18-amd64".into(),
            hostname: "node1".into(),
            vcpus: 2,
            mem_total_kib: 1_000_000,
        },
    ]);
    write(&guest, "job", &[
        GuestMsg::Started { pid: 123 },
        GuestMsg::Stdout(b"hello\n".to_vec()),
        GuestMsg::Stderr(b"warning\n".to_vec()),
        GuestMsg::Exited { code: 0 },
        GuestMsg::Killed { signal: 9 },
    ]);
    write(&guest, "files", &[
        GuestMsg::FileStored,
        GuestMsg::FileBegin { size: 3, mode: 0o644 },
        GuestMsg::FileChunk(b"abc".to_vec()),
        GuestMsg::FileEnd,
    ]);
    write(&guest, "errors", &[
        GuestMsg::Pong(7),
        GuestMsg::Error { message: "open /x: No such file or directory".into() },
    ]);
}
