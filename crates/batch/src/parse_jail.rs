//! The root side never parses a user's text itself: it hands the text to
//! `sd-parse-request` (crate `sd-languages`), run as the job's owner with no
//! groups, no new privileges, and bounded memory, CPU, output and time. What
//! comes back is plain typed data ([`JobRequest`]), which serde checks field
//! by field. A flaw in the parser then gains nothing the user did not have
//! already, and a hostile JDL cannot stall or bloat a root hook.

use sd_host::owner::Owner;
use sd_request::JobRequest;
use sd_site::{Blame, Fault};
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The parser's name, next to the hook's own binary.
pub const PARSER: &str = "sd-parse-request";
/// How long a parse may take (a 2.3 MB JDL of 120k attributes takes 0.2 s).
pub const TIME_LIMIT: Duration = Duration::from_secs(10);
/// Address space of the parser (that JDL peaks at 44 MiB).
pub const MEMORY_LIMIT_BYTES: u64 = 512 << 20;
/// Its answer: a JobRequest or an error message.
pub const OUTPUT_LIMIT_BYTES: u64 = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum ParseFailure {
    /// The JDL is wrong, or too costly to parse: the user's to fix.
    #[error("{0}")]
    User(String),
    /// The parser could not be run or answered nonsense: the node's.
    #[error("the request parser {}: {reason}", parser.display())]
    Site { parser: PathBuf, reason: String },
}

impl Blame for ParseFailure {
    fn fault(&self) -> Fault {
        match self {
            ParseFailure::User(_) => Fault::User,
            ParseFailure::Site { .. } => Fault::Site,
        }
    }
}

/// Where the parser is: next to this binary (`target/release/`, or the
/// site's install directory); for a test binary in `deps/`, one up.
pub fn parser_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let here = dir.join(PARSER);
    if here.exists() || dir.file_name() != Some("deps".as_ref()) {
        return here;
    }
    dir.parent().unwrap_or(dir).join(PARSER)
}

/// Parses `text` (read from `path`, named in messages) with `owner`'s uid.
pub fn parse_jdl(owner: &Owner, path: &Path, text: &str) -> Result<JobRequest, ParseFailure> {
    parse_with(&parser_path(), owner, path, text)
}

pub fn parse_with(
    parser: &Path,
    owner: &Owner,
    path: &Path,
    text: &str,
) -> Result<JobRequest, ParseFailure> {
    let site = |reason: String| ParseFailure::Site {
        parser: parser.to_path_buf(),
        reason,
    };
    let (uid, gid) = match owner {
        Owner::Root => (0, 0),
        Owner::User(u) => (u.uid, u.gid),
    };
    let mut cmd = Command::new(parser);
    cmd.arg(path)
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || confine(uid, gid));
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| site(format!("cannot run it: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let text = text.to_string();
    // Written and read on threads, so that neither side blocks the other
    // and the deadline below holds whatever the parser does.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(text.as_bytes());
    });
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout)
            .take(OUTPUT_LIMIT_BYTES + 1)
            .read_to_end(&mut out);
        out
    });
    let errors = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = (&mut stderr).take(4096).read_to_end(&mut err);
        err
    });
    let deadline = Instant::now() + TIME_LIMIT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Err(e) => return Err(site(format!("cannot wait for it: {e}"))),
        }
    };
    let _ = writer.join();
    let out = reader.join().unwrap_or_default();
    let err = errors.join().unwrap_or_default();
    let name = path.display();
    let Some(status) = status else {
        return Err(ParseFailure::User(format!(
            "{name}: the JDL took more than {} s to parse; make it smaller",
            TIME_LIMIT.as_secs()
        )));
    };
    if out.len() as u64 > OUTPUT_LIMIT_BYTES {
        return Err(site(format!(
            "it wrote more than {OUTPUT_LIMIT_BYTES} bytes"
        )));
    }
    let out = String::from_utf8_lossy(&out);
    match status.code() {
        Some(0) => serde_json::from_str(out.trim_end())
            .map_err(|e| site(format!("its answer is no request: {e}"))),
        Some(2) => Err(ParseFailure::User(out.trim_end().to_string())),
        // Out of memory (an allocation failure aborts) or CPU time: the
        // JDL asked for more than any honest one needs.
        None if matches!(
            status.signal(),
            Some(libc::SIGABRT | libc::SIGXCPU | libc::SIGKILL | libc::SIGSEGV)
        ) =>
        {
            Err(ParseFailure::User(format!(
                "{name}: the JDL could not be parsed within the limits ({} MiB, {} s); make it smaller",
                MEMORY_LIMIT_BYTES >> 20,
                TIME_LIMIT.as_secs()
            )))
        }
        _ => Err(site(format!(
            "it failed ({status}): {}",
            String::from_utf8_lossy(&err).trim_end()
        ))),
    }
}

/// In the child, before exec: the owner's uid and primary group, no
/// supplementary groups (it opens no file), no way back to privileges, and
/// limits on memory, CPU, files and file size.
fn confine(uid: u32, gid: u32) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    let limit = |what, n: u64| {
        let l = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit with a valid pointer.
        check(unsafe { libc::setrlimit(what, &l) })
    };
    // SAFETY: plain system calls on this (single-threaded) child.
    unsafe {
        if libc::geteuid() == 0 && uid != 0 {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(gid))?;
            check(libc::setuid(uid))?;
        }
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    limit(libc::RLIMIT_AS, MEMORY_LIMIT_BYTES)?;
    limit(libc::RLIMIT_CPU, TIME_LIMIT.as_secs())?;
    limit(libc::RLIMIT_FSIZE, 0)?;
    limit(libc::RLIMIT_NOFILE, 16)?;
    limit(libc::RLIMIT_CORE, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<JobRequest, ParseFailure> {
        let parser = parser_path();
        assert!(
            parser.exists(),
            "{} is not built: `cargo build --workspace` (scripts/test does)",
            parser.display()
        );
        let nobody = Owner::of_uid(65534).expect("nobody in the user database");
        parse_with(&parser, &nobody, Path::new("job.jdl"), text)
    }

    #[test]
    fn a_jdl_comes_back_as_typed_data() {
        let r = parse(
            r#"[ Executable = "/bin/true"; VirtualOrganisation = "demo";
                 VirtualEnvironment = [ Image = "busybox"; Memory = 256 ] ]"#,
        )
        .unwrap();
        assert_eq!(r.vo.as_deref(), Some("demo"));
        assert_eq!(r.environment.image.as_deref(), Some("busybox"));
        assert_eq!(r.environment.memory_mib, Some(256));
    }

    #[test]
    fn a_bad_jdl_is_the_users_error_with_its_position() {
        let e = parse("[ Executable = ").unwrap_err();
        assert_eq!(e.fault(), Fault::User, "{e}");
        assert!(e.to_string().starts_with("job.jdl:1:"), "{e}");
    }

    #[test]
    fn a_missing_parser_is_the_sites_fault() {
        let e = parse_with(
            Path::new("/nonexistent/sd-parse-request"),
            &Owner::Root,
            Path::new("job.jdl"),
            "[]",
        )
        .unwrap_err();
        assert_eq!(e.fault(), Fault::Site, "{e}");
    }

    /// The confinement the parser gets, seen from inside: the owner's uid,
    /// its primary group only, and the memory limit.
    #[test]
    fn the_parser_runs_as_the_owner_with_no_groups_and_limits() {
        sd_host::needs_root("changing to another uid");
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", "id -u; id -G; ulimit -v"])
            .stdout(Stdio::piped());
        // SAFETY: as in parse_with.
        unsafe {
            cmd.pre_exec(|| confine(65534, 65534));
        }
        let out = cmd.output().unwrap();
        let out = String::from_utf8_lossy(&out.stdout);
        let kib = (MEMORY_LIMIT_BYTES >> 10).to_string();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            ["65534", "65534", kib.as_str()],
            "{out}"
        );
    }
}
