//! libxenlight: the toolstack library `xl` itself is built on.

use crate::config::DomainConfig;
use crate::error::check;
use crate::logger::TracingLogger;
use crate::XenError;
use sd_xen_sys as sys;
use std::ffi::CStr;

pub type Domid = u32;

/// A `libxl_ctx`, freed on drop.
pub struct Libxl {
    ctx: *mut sys::libxl_ctx,
    // Declared after ctx: dropped after libxl_ctx_free, which may still log.
    _logger: Box<TracingLogger>,
}

// A libxl_ctx may be used from any thread (libxl locks inside).
unsafe impl Send for Libxl {}

#[derive(Debug, Clone)]
pub struct ListedDomain {
    pub domid: Domid,
    pub name: String,
    pub current_memory_kib: u64,
}

impl Libxl {
    pub fn open() -> Result<Libxl, XenError> {
        let mut logger = TracingLogger::new();
        let mut ctx = std::ptr::null_mut();
        let rc = unsafe {
            sys::libxl_ctx_alloc(&mut ctx, sys::LIBXL_VERSION as i32, 0, logger.as_ptr())
        };
        if rc != 0 || ctx.is_null() {
            return Err(XenError::Unavailable {
                what: "libxl_ctx_alloc",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Libxl {
            ctx,
            _logger: logger,
        })
    }

    /// Creates the domain, **paused** (as libxl leaves it: `xl create`
    /// unpauses it afterwards unless `-p`); returns once it and its device
    /// model are set up. Synchronous: no `ao_how`.
    pub fn create(&self, config: &mut DomainConfig) -> Result<Domid, XenError> {
        let mut domid: u32 = sys::INVALID_DOMID;
        let rc = unsafe {
            sys::libxl_domain_create_new(
                self.ctx,
                config.as_mut_ptr(),
                &mut domid,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        check("libxl_domain_create_new", rc)?;
        Ok(domid)
    }

    /// Destroys at once; also kills its device model and removes its
    /// backends.
    pub fn destroy(&self, domid: Domid) -> Result<(), XenError> {
        check("libxl_domain_destroy", unsafe {
            sys::libxl_domain_destroy(self.ctx, domid, std::ptr::null())
        })
    }

    /// Asks the guest to shut down (PV control node); returns at once.
    pub fn shutdown(&self, domid: Domid) -> Result<(), XenError> {
        check("libxl_domain_shutdown", unsafe {
            sys::libxl_domain_shutdown(self.ctx, domid, std::ptr::null())
        })
    }

    pub fn pause(&self, domid: Domid) -> Result<(), XenError> {
        check("libxl_domain_pause", unsafe {
            sys::libxl_domain_pause(self.ctx, domid, std::ptr::null())
        })
    }

    pub fn unpause(&self, domid: Domid) -> Result<(), XenError> {
        check("libxl_domain_unpause", unsafe {
            sys::libxl_domain_unpause(self.ctx, domid, std::ptr::null())
        })
    }

    /// Sets the balloon target; the guest's balloon driver follows it.
    pub fn set_memory_target(&self, domid: Domid, kib: u64) -> Result<(), XenError> {
        let rc = unsafe { sys::libxl_set_memory_target(self.ctx, domid, kib as i64, 0, 1) };
        check("libxl_set_memory_target", rc)
    }

    pub fn memory_target(&self, domid: Domid) -> Result<u64, XenError> {
        let mut kib = 0u64;
        check("libxl_get_memory_target", unsafe {
            sys::libxl_get_memory_target(self.ctx, domid, &mut kib)
        })?;
        Ok(kib)
    }

    /// Every domain, with its name (dom0 is `Domain-0`).
    pub fn list(&self) -> Result<Vec<ListedDomain>, XenError> {
        let mut n = 0;
        let infos = unsafe { sys::libxl_list_domain(self.ctx, &mut n) };
        if infos.is_null() {
            return Err(XenError::Unavailable {
                what: "libxl_list_domain",
                source: std::io::Error::last_os_error(),
            });
        }
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n as usize {
            let info = unsafe { &*infos.add(i) };
            let name_ptr = unsafe { sys::libxl_domid_to_name(self.ctx, info.domid) };
            let name = if name_ptr.is_null() {
                String::new()
            } else {
                let s = unsafe { CStr::from_ptr(name_ptr) }
                    .to_string_lossy()
                    .into_owned();
                unsafe { libc::free(name_ptr.cast()) };
                s
            };
            out.push(ListedDomain {
                domid: info.domid,
                name,
                current_memory_kib: info.current_memkb,
            });
        }
        unsafe { sys::libxl_dominfo_list_free(infos, n) };
        Ok(out)
    }

    pub fn domid_of(&self, name: &str) -> Result<Option<Domid>, XenError> {
        Ok(self
            .list()?
            .into_iter()
            .find(|d| d.name == name)
            .map(|d| d.domid))
    }
}

impl Drop for Libxl {
    fn drop(&mut self) {
        unsafe { sys::libxl_ctx_free(self.ctx) };
    }
}
