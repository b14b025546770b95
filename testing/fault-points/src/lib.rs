//! The fault-injection test's half of `sd_host::fault_point`. Preloaded
//! (`LD_PRELOAD`) into one `sd`, `sd-prolog` or `sd-epilog` process, it
//! defines the `sd_fault_point` that the binaries look up:
//!
//! * every point reached is appended to `$SD_FAULT_LOG` as `N name`;
//! * at point number `$SD_FAULT_AT` (counting from 1) the process is killed
//!   with SIGKILL, right after its line is written.
//!
//! Only the process it is preloaded into counts: when loaded it takes
//! itself out of `LD_PRELOAD`, so what that process starts (QEMU, qemu-img,
//! the parse jail, a watcher) runs without it.

use std::ffi::CStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

struct Settings {
    kill_at: Option<u32>,
    log: Option<std::ffi::CString>,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();
static REACHED: AtomicU32 = AtomicU32::new(0);

fn env(name: &CStr) -> Option<std::ffi::CString> {
    // SAFETY: getenv with a NUL-terminated name; the value is copied at once.
    let value = unsafe { libc::getenv(name.as_ptr()) };
    (!value.is_null()).then(|| unsafe { CStr::from_ptr(value) }.to_owned())
}

extern "C" fn init() {
    SETTINGS.get_or_init(|| Settings {
        kill_at: env(c"SD_FAULT_AT").and_then(|v| v.to_str().ok()?.parse().ok()),
        log: env(c"SD_FAULT_LOG"),
    });
    // SAFETY: at load time, before the program's main runs its threads.
    unsafe { libc::unsetenv(c"LD_PRELOAD".as_ptr()) };
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

/// # Safety
/// `name` points to `len` bytes of UTF-8 (a Rust `&str`).
#[no_mangle]
pub unsafe extern "C" fn sd_fault_point(name: *const u8, len: usize) {
    let Some(settings) = SETTINGS.get() else {
        return;
    };
    let n = REACHED.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(log) = &settings.log {
        let name = std::slice::from_raw_parts(name, len);
        let mut line = format!("{n} ").into_bytes();
        line.extend_from_slice(name);
        line.push(b'\n');
        // One append per line: the lines of two threads do not mix.
        let fd = libc::open(
            log.as_ptr(),
            libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT | libc::O_CLOEXEC,
            0o600,
        );
        if fd >= 0 {
            libc::write(fd, line.as_ptr().cast(), line.len());
            libc::fsync(fd);
            libc::close(fd);
        }
    }
    if settings.kill_at == Some(n) {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
}
