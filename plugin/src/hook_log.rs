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
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// File name of the hooks' log in the site's log directory.
pub const LOG_FILE: &str = "sd-hooks.log";

#[derive(Clone)]
struct HookWriter {
    file: Option<Arc<Mutex<File>>>,
    syslog: bool,
}

impl Write for HookWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = &self.file {
            let _ = f.lock().unwrap_or_else(|e| e.into_inner()).write_all(buf);
        }
        if self.syslog {
            let line = String::from_utf8_lossy(buf);
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
        .and_then(|()| OpenOptions::new().create(true).append(true).open(&path))
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
