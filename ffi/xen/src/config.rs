//! `libxl_domain_config`: initialised with libxl's `_init`, freed with its
//! `_dispose`. libxl frees every string and array in it with `free()`, so
//! everything we put in is allocated with `malloc` (`strdup`, `calloc`).

use crate::XenError;
use sd_xen_sys as sys;
use std::ffi::{c_char, CString};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestType {
    /// Paravirtualised: runs without hardware virtualisation.
    Pv,
    /// PV in an HVM container: needs VT-x/SVM, no device model.
    Pvh,
}

#[derive(Debug, Clone)]
pub struct DiskSpec<'a> {
    pub target: &'a Path,
    /// `qcow2` (served by QEMU's qdisk backend in dom0) or `raw`.
    pub format: &'a str,
    /// The guest's device name, e.g. `xvda`.
    pub vdev: &'a str,
}

/// A PV channel whose dom0 end is a Unix socket served by the device model
/// (the guest sees it as `/dev/hvc1`, its name in xenstore).
#[derive(Debug, Clone)]
pub struct ChannelSpec<'a> {
    pub name: &'a str,
    pub socket: &'a Path,
}

/// A PV network interface (`xen-netfront` in the guest, `xen-netback` in
/// dom0) whose dom0 end, the vif, joins `bridge` through Xen's own hotplug
/// script `vif-bridge`.
#[derive(Debug, Clone)]
pub struct NicSpec<'a> {
    /// An existing bridge in dom0.
    pub bridge: &'a str,
    /// The guest's MAC.
    pub mac: [u8; 6],
    /// The vif's name in dom0 (at most 15 bytes): chosen by the caller, so
    /// that filters keyed by interface name exist before the vif does.
    pub vifname: &'a str,
}

/// Xen's hotplug script that puts a vif on its bridge (xen-utils).
pub const VIF_BRIDGE_SCRIPT: &str = "/etc/xen/scripts/vif-bridge";

pub struct DomainConfig {
    raw: Box<sys::libxl_domain_config>,
}

// Owned data only; libxl sees it during a call on the same thread.
unsafe impl Send for DomainConfig {}

fn c_string(what: &'static str, s: &str) -> Result<*mut c_char, XenError> {
    let c = CString::new(s).map_err(|_| XenError::Nul { what })?;
    // SAFETY: strdup copies a valid NUL-terminated string into malloc'd memory.
    let p = unsafe { libc::strdup(c.as_ptr()) };
    assert!(!p.is_null(), "out of memory");
    Ok(p)
}

fn c_path(what: &'static str, p: &Path) -> Result<*mut c_char, XenError> {
    c_string(what, p.to_str().ok_or(XenError::Nul { what })?)
}

/// Grows a malloc'd libxl device array by one initialised element.
unsafe fn push<T>(
    array: &mut *mut T,
    count: &mut i32,
    init: unsafe extern "C" fn(*mut T),
) -> *mut T {
    let n = *count as usize + 1;
    let p = unsafe { libc::realloc(array.cast(), n * std::mem::size_of::<T>()) } as *mut T;
    assert!(!p.is_null(), "out of memory");
    *array = p;
    *count = n as i32;
    let last = unsafe { p.add(n - 1) };
    unsafe { init(last) };
    last
}

impl DomainConfig {
    pub fn new(name: &str, guest: GuestType) -> Result<DomainConfig, XenError> {
        // SAFETY: zeroed memory is what libxl_domain_config_init expects to overwrite.
        let mut raw: Box<sys::libxl_domain_config> = Box::new(unsafe { std::mem::zeroed() });
        unsafe { sys::libxl_domain_config_init(&mut *raw) };
        let mut config = DomainConfig { raw };
        let kind = match guest {
            GuestType::Pv => sys::LIBXL_DOMAIN_TYPE_PV,
            GuestType::Pvh => sys::LIBXL_DOMAIN_TYPE_PVH,
        };
        config.raw.c_info.type_ = kind;
        config.raw.c_info.name = c_string("domain name", name)?;
        unsafe { sys::libxl_domain_build_info_init_type(&mut config.raw.b_info, kind) };
        // A per-job domain never restarts itself: whatever ends it, it is gone.
        config.raw.on_poweroff = sys::LIBXL_ACTION_ON_SHUTDOWN_DESTROY;
        config.raw.on_reboot = sys::LIBXL_ACTION_ON_SHUTDOWN_DESTROY;
        config.raw.on_crash = sys::LIBXL_ACTION_ON_SHUTDOWN_DESTROY;
        config.raw.on_watchdog = sys::LIBXL_ACTION_ON_SHUTDOWN_DESTROY;
        Ok(config)
    }

    /// Direct kernel boot: the kernel and initramfs are files in dom0.
    pub fn boot(
        &mut self,
        kernel: &Path,
        ramdisk: &Path,
        cmdline: &str,
    ) -> Result<&mut Self, XenError> {
        let b = &mut self.raw.b_info;
        b.kernel = c_path("kernel path", kernel)?;
        b.ramdisk = c_path("ramdisk path", ramdisk)?;
        b.cmdline = c_string("kernel command line", cmdline)?;
        Ok(self)
    }

    pub fn memory_mib(&mut self, mib: u64) -> &mut Self {
        self.raw.b_info.max_memkb = mib * 1024;
        self.raw.b_info.target_memkb = mib * 1024;
        self
    }

    pub fn vcpus(&mut self, n: u32) -> &mut Self {
        let b = &mut self.raw.b_info;
        b.max_vcpus = n as i32;
        // All of them online (libxl's default would be one). A libxl_bitmap
        // is `size` bytes at `map`, freed by libxl with free().
        let bytes = (n as usize).div_ceil(8);
        unsafe { libc::free(b.avail_vcpus.map.cast()) };
        let map = unsafe { libc::calloc(bytes.max(1), 1) } as *mut u8;
        assert!(!map.is_null(), "out of memory");
        for i in 0..n as usize {
            unsafe { *map.add(i / 8) |= 1 << (i % 8) };
        }
        b.avail_vcpus.map = map;
        b.avail_vcpus.size = bytes as u32;
        self
    }

    /// `xl`'s `cpuid = "host,NAME=VALUE,..."`: the host's policy with
    /// these features changed (e.g. `host,rdtscp=0`).
    pub fn cpuid(&mut self, policy: &str) -> Result<&mut Self, XenError> {
        for item in policy.split(',').filter(|i| !i.is_empty() && *i != "host") {
            let c = CString::new(item).map_err(|_| XenError::Nul {
                what: "cpuid policy",
            })?;
            // Returns 0, or 1 (unknown name) / 2 (bad value) / 3: not a libxl_error.
            let rc =
                unsafe { sys::libxl_cpuid_parse_config(&mut self.raw.b_info.cpuid, c.as_ptr()) };
            if rc != 0 {
                return Err(XenError::BadCpuid(item.to_string()));
            }
        }
        Ok(self)
    }

    pub fn add_disk(&mut self, disk: &DiskSpec) -> Result<&mut Self, XenError> {
        let format = match disk.format {
            "qcow2" => sys::LIBXL_DISK_FORMAT_QCOW2,
            "raw" => sys::LIBXL_DISK_FORMAT_RAW,
            other => return Err(XenError::UnsupportedDiskFormat(other.into())),
        };
        let target = c_path("disk path", disk.target)?;
        let vdev = c_string("disk vdev", disk.vdev)?;
        let raw = &mut *self.raw;
        let d = unsafe {
            &mut *push(
                &mut raw.disks,
                &mut raw.num_disks,
                sys::libxl_device_disk_init,
            )
        };
        d.pdev_path = target;
        d.vdev = vdev;
        d.format = format;
        // qdisk: QEMU in dom0 serves the file, qcow2 included, with no
        // loop device or hotplug script.
        d.backend = sys::LIBXL_DISK_BACKEND_QDISK;
        d.readwrite = 1;
        Ok(self)
    }

    pub fn add_channel(&mut self, channel: &ChannelSpec) -> Result<&mut Self, XenError> {
        let name = c_string("channel name", channel.name)?;
        let path = c_path("channel socket", channel.socket)?;
        let raw = &mut *self.raw;
        let c = unsafe {
            &mut *push(
                &mut raw.channels,
                &mut raw.num_channels,
                sys::libxl_device_channel_init,
            )
        };
        c.name = name;
        unsafe {
            sys::libxl_device_channel_init_connection(c, sys::LIBXL_CHANNEL_CONNECTION_SOCKET);
            c.u.socket.path = path;
        }
        Ok(self)
    }

    pub fn add_nic(&mut self, nic: &NicSpec) -> Result<&mut Self, XenError> {
        if nic.vifname.is_empty() || nic.vifname.len() > 15 {
            return Err(XenError::BadVifName(nic.vifname.to_string()));
        }
        // Checked before anything is allocated: nothing leaks on an error.
        if nic.bridge.contains('\0') {
            return Err(XenError::Nul { what: "nic bridge" });
        }
        if nic.vifname.contains('\0') {
            return Err(XenError::Nul {
                what: "nic vif name",
            });
        }
        let bridge = c_string("nic bridge", nic.bridge)?;
        let ifname = c_string("nic vif name", nic.vifname)?;
        let script = c_string("nic hotplug script", VIF_BRIDGE_SCRIPT)?;
        let raw = &mut *self.raw;
        let n = unsafe { &mut *push(&mut raw.nics, &mut raw.num_nics, sys::libxl_device_nic_init) };
        // devid stays -1 (libxl numbers them), backend domain 0.
        n.bridge = bridge;
        n.ifname = ifname;
        n.script = script;
        n.mac = nic.mac;
        n.nictype = sys::LIBXL_NIC_TYPE_VIF;
        Ok(self)
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut sys::libxl_domain_config {
        &mut *self.raw
    }

    pub fn name(&self) -> String {
        unsafe { std::ffi::CStr::from_ptr(self.raw.c_info.name) }
            .to_string_lossy()
            .into_owned()
    }

    pub fn num_disks(&self) -> usize {
        self.raw.num_disks as usize
    }

    pub fn num_channels(&self) -> usize {
        self.raw.num_channels as usize
    }

    pub fn num_nics(&self) -> usize {
        self.raw.num_nics as usize
    }

    pub fn memory_kib(&self) -> u64 {
        self.raw.b_info.target_memkb
    }
}

impl Drop for DomainConfig {
    fn drop(&mut self) {
        unsafe { sys::libxl_domain_config_dispose(&mut *self.raw) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libxl's init/dispose need no hypervisor, so building a config is
    /// testable anywhere, and dispose frees what we allocated (run under
    /// valgrind or ASan to see it).
    #[test]
    fn builds_and_disposes_a_pv_config() {
        let mut c = DomainConfig::new("sd-test", GuestType::Pv).unwrap();
        c.boot(Path::new("/k"), Path::new("/r"), "console=hvc0")
            .unwrap()
            .memory_mib(256)
            .vcpus(2);
        c.add_disk(&DiskSpec {
            target: Path::new("/d.qcow2"),
            format: "qcow2",
            vdev: "xvda",
        })
        .unwrap();
        c.add_channel(&ChannelSpec {
            name: "org.smartdomains.agent.0",
            socket: Path::new("/s"),
        })
        .unwrap();
        c.add_disk(&DiskSpec {
            target: Path::new("/e.raw"),
            format: "raw",
            vdev: "xvdb",
        })
        .unwrap();
        assert_eq!(c.name(), "sd-test");
        assert_eq!(c.num_disks(), 2);
        assert_eq!(c.num_channels(), 1);
        assert_eq!(c.memory_kib(), 256 * 1024);
        assert_eq!(c.raw.b_info.max_vcpus, 2);
        let second = unsafe { &*c.raw.disks.add(1) };
        assert_eq!(
            unsafe { std::ffi::CStr::from_ptr(second.vdev) }
                .to_str()
                .unwrap(),
            "xvdb"
        );
    }

    #[test]
    fn nics_get_bridge_mac_vifname_and_the_bridge_script() {
        let mut c = DomainConfig::new("sd-nic", GuestType::Pv).unwrap();
        for (i, vif) in ["sdtaaaa", "sdtbbbb"].iter().enumerate() {
            c.add_nic(&NicSpec {
                bridge: "sdn-nat",
                mac: [0x02, 0, 0, 0, 0, i as u8],
                vifname: vif,
            })
            .unwrap();
        }
        assert_eq!(c.num_nics(), 2);
        let second = unsafe { &*c.raw.nics.add(1) };
        let s = |p: *mut c_char| unsafe { std::ffi::CStr::from_ptr(p) }.to_str().unwrap();
        assert_eq!(s(second.bridge), "sdn-nat");
        assert_eq!(s(second.ifname), "sdtbbbb");
        assert_eq!(s(second.script), VIF_BRIDGE_SCRIPT);
        assert_eq!(second.mac, [0x02, 0, 0, 0, 0, 1]);
        assert_eq!(second.nictype, sys::LIBXL_NIC_TYPE_VIF);
        assert_eq!(second.devid, -1, "libxl numbers the devices");
        assert!(c
            .add_nic(&NicSpec {
                bridge: "b",
                mac: [2, 0, 0, 0, 0, 0],
                vifname: "a-name-longer-than-15",
            })
            .is_err());
        assert!(c
            .add_nic(&NicSpec {
                bridge: "b\0",
                mac: [2, 0, 0, 0, 0, 0],
                vifname: "ok",
            })
            .is_err());
        assert_eq!(c.num_nics(), 2, "a refused NIC is not added");
    }

    #[test]
    fn pvh_takes_a_cpuid_policy_and_refuses_nul() {
        let mut c = DomainConfig::new("sd-pvh", GuestType::Pvh).unwrap();
        c.cpuid("host,rdtscp=0").unwrap();
        assert!(!c.raw.b_info.cpuid.is_null());
        assert!(c.boot(Path::new("/k"), Path::new("/r"), "a\0b").is_err());
        assert!(c.cpuid("nonsense=").is_err());
    }
}
