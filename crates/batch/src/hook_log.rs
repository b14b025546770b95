//! Logging for the batch-system hooks, whose stdout nobody reads.
//!
//! Every line goes to `LOG_DIR/sd-hooks.log` (when writable) and to syslog
//! (facility daemon, tag `sd-prolog` etc.), and carries the job id:
//!
//! ```text
//! 2026-11-24T16:50:01.123456Z  INFO sd-prolog{job=42}: domain up in 4.9 s under tcg
//! ```

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// File name of the hooks' log in the site's log directory.
pub const LOG_FILE: &str = "sd-hooks.log";

#[derive(Clone)]
struct HookWriter {
    file: Option<Arc<Mutex<File>>>,
    syslog: bool,
}

/// One event as one line: control characters inside it (a newline in a
/// user's file name, say) are escaped, so user text cannot forge log lines.
fn one_line(event: &[u8]) -> Vec<u8> {
    let body = event.strip_suffix(b"\n").unwrap_or(event);
    let mut out = Vec::with_capacity(event.len() + 1);
    for &b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.push(b'\t'),
            0..=0x1f | 0x7f => out.extend_from_slice(format!("\\x{b:02x}").as_bytes()),
            _ => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

impl Write for HookWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let event = one_line(buf);
        if let Some(f) = &self.file {
            let _ = f
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .write_all(&event);
        }
        if self.syslog {
            let line = String::from_utf8_lossy(&event);
            // The timestamp is syslog's own; drop ours.
            let line = line
                .trim_end()
                .split_once(' ')
                .map_or("", |(_, rest)| rest)
                .trim_start();
            if let Ok(c) = CString::new(line.replace('\0', " ")) {
                // SAFETY: a constant format string and a valid C string.
                unsafe { libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), c.as_ptr()) };
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Installs the hook logger; returns the log file in use (if any). Call
/// once, early; keep the returned guard's span entered for the whole hook.
pub fn init(
    hook: &'static str,
    log_dir: &Path,
    job_id: &str,
) -> (Option<PathBuf>, tracing::span::EnteredSpan) {
    let path = log_dir.join(LOG_FILE);
    let file = std::fs::create_dir_all(log_dir)
        .and_then(|()| {
            // Root's and the admin group's: lines name users, jobs and files.
            OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o640)
                .open(&path)
        })
        .ok();
    let used = file.as_ref().map(|_| path);
    // SAFETY: openlog keeps the pointer: the ident is a 'static C string.
    let ident: &'static std::ffi::CStr = match hook {
        "sd-prolog" => c"sd-prolog",
        "sd-epilog" => c"sd-epilog",
        "sd-exec" => c"sd-exec",
        "sd-node-service" => c"sd-node-service",
        _ => c"smartdomains",
    };
    unsafe { libc::openlog(ident.as_ptr(), libc::LOG_PID, libc::LOG_DAEMON) };
    let writer = HookWriter {
        file: file.map(|f| Arc::new(Mutex::new(f))),
        syslog: true,
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SD_LOG").unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let span = tracing::info_span!("sd", %hook, job = %job_id);
    (used, span.entered())
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn user_text_cannot_forge_a_line() {
        let event = b"2026-12-02T13:00:00Z  WARN sd-prolog{job=7}: refused: x.jdl\n2026-12-02T13:00:01Z  INFO forged\x1b[31m\n";
        assert_eq!(
            String::from_utf8(one_line(event)).unwrap(),
            "2026-12-02T13:00:00Z  WARN sd-prolog{job=7}: refused: x.jdl\\n2026-12-02T13:00:01Z  INFO forged\\x1b[31m\n"
        );
        assert_eq!(one_line(b"plain\n"), b"plain\n");
    }
}
