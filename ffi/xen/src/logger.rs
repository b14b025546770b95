//! A `xentoollog_logger` that forwards to `tracing`.
//!
//! libxl and libxenctrl log through a struct of C callbacks; the message
//! arrives as a printf format and a `va_list`, which only C's `vsnprintf`
//! can format.

use sd_xen_sys as sys;
use std::ffi::{c_char, c_int, c_ulong, CStr};

unsafe extern "C" {
    fn vsnprintf(
        buf: *mut c_char,
        size: usize,
        format: *const c_char,
        ap: *mut sys::__va_list_tag,
    ) -> c_int;
}

/// Boxed so that the address libxl keeps stays put; `base` is first so a
/// pointer to it is a pointer to the whole.
#[repr(C)]
pub struct TracingLogger {
    base: sys::xentoollog_logger,
}

impl TracingLogger {
    pub fn new() -> Box<TracingLogger> {
        Box::new(TracingLogger {
            base: sys::xentoollog_logger {
                vmessage: Some(vmessage),
                progress: Some(progress),
                destroy: Some(destroy),
            },
        })
    }

    pub fn as_ptr(&mut self) -> *mut sys::xentoollog_logger {
        &mut self.base
    }
}

unsafe extern "C" fn vmessage(
    _logger: *mut sys::xentoollog_logger,
    level: sys::xentoollog_level,
    errnoval: c_int,
    context: *const c_char,
    format: *const c_char,
    al: *mut sys::__va_list_tag,
) {
    let mut buf = [0 as c_char; 1024];
    // SAFETY: buf is writable for its length; format and al come from libxl.
    unsafe { vsnprintf(buf.as_mut_ptr(), buf.len(), format, al) };
    let text = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let context = if context.is_null() {
        "xen".into()
    } else {
        unsafe { CStr::from_ptr(context) }.to_string_lossy()
    };
    let errno = if errnoval >= 0 {
        format!(": {}", std::io::Error::from_raw_os_error(errnoval))
    } else {
        String::new()
    };
    match level {
        l if l >= sys::XTL_ERROR => tracing::error!(target: "xen", "{context}: {text}{errno}"),
        l if l >= sys::XTL_WARN => tracing::warn!(target: "xen", "{context}: {text}{errno}"),
        l if l >= sys::XTL_NOTICE => tracing::info!(target: "xen", "{context}: {text}{errno}"),
        l if l >= sys::XTL_DETAIL => tracing::debug!(target: "xen", "{context}: {text}{errno}"),
        _ => tracing::trace!(target: "xen", "{context}: {text}{errno}"),
    }
}

unsafe extern "C" fn progress(
    _logger: *mut sys::xentoollog_logger,
    context: *const c_char,
    doing_what: *const c_char,
    percent: c_int,
    _done: c_ulong,
    _total: c_ulong,
) {
    let text = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    tracing::debug!(target: "xen", "{}: {} {percent}%", text(context), text(doing_what));
}

/// The Box owns the memory; libxl calling destroy changes nothing.
unsafe extern "C" fn destroy(_logger: *mut sys::xentoollog_logger) {}
