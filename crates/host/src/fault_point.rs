//! Named points in a deployment's making and unmaking where a test can
//! crash the process (`crates/cli/tests/fault_injection.rs`).
//!
//! Like a USDT probe, a point costs a branch and does nothing in a site's
//! binaries. It acts only when the test library `libsd_fault_points.so`
//! (`testing/fault-points`, built for the tests and never installed) is
//! preloaded into the process: that library defines `sd_fault_point`, which
//! counts the points reached, logs them and SIGKILLs the process at the one
//! the test chose. No code that kills, and no variable that arms it, is in
//! what a site runs.

use std::sync::OnceLock;

type Hook = unsafe extern "C" fn(name: *const u8, len: usize);

/// Marks point `name` (`"journal: tap"`, `"domain created"`, ...): the
/// resource named has been recorded, or the step named has been done.
pub fn reached(name: &str) {
    static HOOK: OnceLock<Option<Hook>> = OnceLock::new();
    let hook = HOOK.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; a non-null result is
        // the test library's `sd_fault_point`, which has this signature.
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"sd_fault_point".as_ptr()) };
        (!symbol.is_null())
            .then(|| unsafe { std::mem::transmute::<*mut libc::c_void, Hook>(symbol) })
    });
    if let Some(hook) = hook {
        // SAFETY: a pointer and length of a live &str.
        unsafe { hook(name.as_ptr(), name.len()) }
    }
}
