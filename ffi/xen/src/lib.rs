//! Safe layer over Xen's C libraries (through `sd-xen-sys`):
//!
//! - [`XenCtrl`]: an open `xc_interface` (libxenctrl), for the hypervisor's
//!   own view of domains (`xc_domain_getinfolist`);
//! - [`Libxl`]: a `libxl_ctx` (libxenlight), the toolstack that creates,
//!   shuts down, destroys, pauses domains and changes their memory target;
//! - [`DomainConfig`]: a `libxl_domain_config`, initialised and disposed
//!   with libxl's own `_init`/`_dispose`, filled through typed setters.
//!
//! Both contexts log through [`logger::TracingLogger`] into `tracing`, so
//! libxl's messages land in our logs instead of on a hook's discarded stderr.

mod config;
mod ctrl;
mod error;
mod light;
pub mod logger;

pub use config::{ChannelSpec, DiskSpec, DomainConfig, GuestType, NicSpec, VIF_BRIDGE_SCRIPT};
pub use ctrl::{DomainInfo, DomainState, XenCtrl};
pub use error::{LibxlError, XenError};
pub use light::{Domid, Libxl, ListedDomain};
