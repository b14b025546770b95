//! libxl's error codes as typed errors that say what to do.

use sd_xen_sys as sys;

#[derive(Debug, thiserror::Error)]
pub enum XenError {
    /// No hypervisor under us, or its control devices are missing.
    #[error(
        "Xen is not available here: {what} failed ({source}); this machine does not run \
         under the Xen hypervisor, or dom0's xen modules (xen-privcmd, xenfs) are not loaded \
         — use backend qemu, or `auto`"
    )]
    Unavailable {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{call}: {error}")]
    Libxl {
        call: &'static str,
        error: LibxlError,
    },
    #[error("{what} contains a NUL byte")]
    Nul { what: &'static str },
    #[error("cpuid policy item {0:?}: expected NAME=VALUE with a feature name libxl knows (e.g. rdtscp=0)")]
    BadCpuid(String),
    #[error("vif name {0:?}: expected 1 to 15 bytes (a dom0 interface name)")]
    BadVifName(String),
    #[error("disk format {0:?}: expected qcow2 or raw")]
    UnsupportedDiskFormat(String),
}

/// A libxl error code (`libxl_error`, negative).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LibxlError(pub i32);

impl LibxlError {
    fn advice(self) -> &'static str {
        match self.0 {
            sys::ERROR_NOMEM => "Xen has not enough free memory for the domain: lower its memory or stop other domains (`xl info` free_memory)",
            sys::ERROR_INVAL => "libxl refused an argument: the domain may already be gone, or the configuration is inconsistent",
            sys::ERROR_DOMAIN_NOTFOUND => "the domain does not exist (already destroyed?)",
            sys::ERROR_TIMEDOUT | sys::ERROR_GUEST_TIMEDOUT => "timed out waiting for the guest or a backend (device model, hotplug)",
            sys::ERROR_DEVICE_EXISTS => "a device with this id already exists",
            sys::ERROR_NOPARAVIRT => "the guest kernel has no paravirtualised drivers for this request",
            sys::ERROR_LOCK_FAIL => "cannot take libxl's lock under /var/lib/xen or /run/xen: are they writable?",
            sys::ERROR_FAIL | sys::ERROR_NONSPECIFIC => "see the libxl messages logged just before (hook log / sd -v)",
            _ => "see the libxl messages logged just before",
        }
    }
}

impl std::fmt::Display for LibxlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // libxl_error_to_string returns a static string for known codes.
        let name = unsafe { sys::libxl_error_to_string(self.0) };
        let name = if name.is_null() {
            "unknown".into()
        } else {
            unsafe { std::ffi::CStr::from_ptr(name) }.to_string_lossy()
        };
        write!(f, "libxl error {} ({name}): {}", self.0, self.advice())
    }
}

/// Turns a libxl return code into a `Result`.
pub(crate) fn check(call: &'static str, rc: i32) -> Result<(), XenError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(XenError::Libxl {
            call,
            error: LibxlError(rc),
        })
    }
}
