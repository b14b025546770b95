//! libxenctrl: the hypervisor's own list of domains.

use crate::logger::TracingLogger;
use crate::XenError;
use sd_xen_sys as sys;

/// An open `xc_interface`, closed on drop.
pub struct XenCtrl {
    xch: *mut sys::xc_interface,
    _logger: Box<TracingLogger>,
}

/// What the hypervisor says about a domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    Running,
    /// Waiting for an event (an idle guest is mostly here).
    Blocked,
    Paused,
    /// Shut down by itself; the reason is the guest's (`SHUTDOWN_*`).
    Shutdown {
        reason: u32,
    },
    Crashed,
    /// Being torn down; gone soon.
    Dying,
}

#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub domid: u32,
    pub state: DomainState,
    pub memory_kib: u64,
    pub max_memory_kib: u64,
    pub online_vcpus: u32,
    pub cpu_time_ns: u64,
}

/// `SHUTDOWN_crash` in xen/sched.h.
const SHUTDOWN_CRASH: u32 = 3;

impl DomainState {
    pub fn from_flags(flags: u32) -> DomainState {
        let reason = (flags >> sys::XEN_DOMINF_shutdownshift) & sys::XEN_DOMINF_shutdownmask;
        if flags & sys::XEN_DOMINF_dying != 0 {
            DomainState::Dying
        } else if flags & sys::XEN_DOMINF_shutdown != 0 {
            if reason == SHUTDOWN_CRASH {
                DomainState::Crashed
            } else {
                DomainState::Shutdown { reason }
            }
        } else if flags & sys::XEN_DOMINF_paused != 0 {
            DomainState::Paused
        } else if flags & sys::XEN_DOMINF_blocked != 0 {
            DomainState::Blocked
        } else {
            DomainState::Running
        }
    }

    /// Still doing the guest's work (running or blocked waiting for it).
    pub fn is_live(self) -> bool {
        matches!(
            self,
            DomainState::Running | DomainState::Blocked | DomainState::Paused
        )
    }
}

// The handle is used from one thread at a time (&mut or owned).
unsafe impl Send for XenCtrl {}

impl XenCtrl {
    pub fn open() -> Result<XenCtrl, XenError> {
        let mut logger = TracingLogger::new();
        let xch = unsafe { sys::xc_interface_open(logger.as_ptr(), logger.as_ptr(), 0) };
        if xch.is_null() {
            return Err(XenError::Unavailable {
                what: "xc_interface_open",
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(XenCtrl {
            xch,
            _logger: logger,
        })
    }

    /// Every domain the hypervisor knows, dom0 included.
    pub fn domains(&self) -> Result<Vec<DomainInfo>, XenError> {
        const BATCH: u32 = 256;
        let mut all = Vec::new();
        let mut first = 0u32;
        loop {
            let mut infos = vec![sys::xc_domaininfo_t::default(); BATCH as usize];
            let n =
                unsafe { sys::xc_domain_getinfolist(self.xch, first, BATCH, infos.as_mut_ptr()) };
            if n < 0 {
                return Err(XenError::Unavailable {
                    what: "xc_domain_getinfolist",
                    source: std::io::Error::last_os_error(),
                });
            }
            let page_kib = 4u64;
            for info in &infos[..n as usize] {
                all.push(DomainInfo {
                    domid: u32::from(info.domain),
                    state: DomainState::from_flags(info.flags),
                    memory_kib: info.tot_pages * page_kib,
                    max_memory_kib: info.max_pages.saturating_mul(page_kib),
                    online_vcpus: info.nr_online_vcpus,
                    cpu_time_ns: info.cpu_time,
                });
            }
            if (n as u32) < BATCH {
                return Ok(all);
            }
            first = all.last().map(|d| d.domid + 1).unwrap_or(0);
        }
    }

    pub fn domain(&self, domid: u32) -> Result<Option<DomainInfo>, XenError> {
        Ok(self.domains()?.into_iter().find(|d| d.domid == domid))
    }
}

impl Drop for XenCtrl {
    fn drop(&mut self) {
        unsafe { sys::xc_interface_close(self.xch) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_map_to_states() {
        assert_eq!(
            DomainState::from_flags(sys::XEN_DOMINF_running),
            DomainState::Running
        );
        assert_eq!(
            DomainState::from_flags(sys::XEN_DOMINF_blocked),
            DomainState::Blocked
        );
        assert_eq!(
            DomainState::from_flags(sys::XEN_DOMINF_dying | sys::XEN_DOMINF_shutdown),
            DomainState::Dying
        );
        let crashed = sys::XEN_DOMINF_shutdown | (SHUTDOWN_CRASH << sys::XEN_DOMINF_shutdownshift);
        assert_eq!(DomainState::from_flags(crashed), DomainState::Crashed);
        assert_eq!(
            DomainState::from_flags(sys::XEN_DOMINF_shutdown),
            DomainState::Shutdown { reason: 0 }
        );
        assert!(!DomainState::Crashed.is_live());
        assert!(DomainState::Blocked.is_live());
    }

    #[test]
    fn without_a_hypervisor_open_says_so() {
        if std::path::Path::new("/proc/xen/capabilities").exists() {
            return; // running in dom0: covered by the Xen test host
        }
        let err = XenCtrl::open().err().expect("no hypervisor here");
        assert!(
            err.to_string().contains("Xen is not available here"),
            "{err}"
        );
    }
}
