//! Links libxenlight, libxenctrl and libxentoollog (found with pkg-config,
//! which Debian's libxen-dev ships `.pc` files for) and provides the bindings:
//!
//! - default: the checked-in `bindings/xen-<major.minor>.rs` for the installed
//!   `xenlight` version, so that no libclang is needed;
//! - feature `bindgen`: generated now from the installed headers (libclang).
//!   `SD_XEN_SYS_WRITE_BINDINGS=1` also writes them to `bindings/`, which is
//!   how a new Xen version's file is made.
//!
//! libxl's struct layouts change between Xen minor versions, so bindings are
//! per version; a version without a file fails here with a hint.

use std::env;
use std::path::{Path, PathBuf};

const LIBRARIES: [&str; 3] = ["xenlight", "xencontrol", "xentoollog"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=wrapper.h");
    println!("cargo::rerun-if-env-changed=SD_XEN_SYS_WRITE_BINDINGS");

    let mut version = None;
    for lib in LIBRARIES {
        let found = pkg_config::Config::new().probe(lib).unwrap_or_else(|e| {
            panic!(
                "cannot find Xen's {lib} library with pkg-config: {e}\n\
                     The Xen backend needs Debian's libxen-dev (scripts/setup installs it).\n\
                     To build SmartDomains without the Xen backend: \
                     cargo build --no-default-features (QEMU only)."
            )
        });
        if lib == "xenlight" {
            version = Some(found.version);
        }
    }
    let version = version.expect("xenlight probed above");
    let major_minor: String = version.split('.').take(2).collect::<Vec<_>>().join(".");
    let out =
        PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("bindings.rs");
    let checked_in = Path::new("bindings").join(format!("xen-{major_minor}.rs"));
    println!("cargo::rerun-if-changed={}", checked_in.display());

    if cfg!(feature = "bindgen") {
        generate(&out);
        if env::var_os("SD_XEN_SYS_WRITE_BINDINGS").is_some() {
            std::fs::copy(&out, &checked_in).expect("write bindings/");
        }
    } else if checked_in.exists() {
        std::fs::copy(&checked_in, &out).expect("copy bindings");
    } else {
        panic!(
            "no checked-in bindings for Xen {version} (looked for ffi/xen-sys/{}).\n\
             Generate them from the installed headers: install libclang-dev, then\n\
             SD_XEN_SYS_WRITE_BINDINGS=1 cargo build -p sd-xen-sys --features bindgen",
            checked_in.display()
        );
    }
}

#[cfg(feature = "bindgen")]
fn generate(out: &Path) {
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        // Only what the safe layer (ffi/xen) uses, and the types they reach.
        .allowlist_function("xc_interface_(open|close)")
        .allowlist_function("xc_domain_getinfolist")
        .allowlist_function("xtl_logger_destroy")
        .allowlist_function("libxl_ctx_(alloc|free)")
        .allowlist_function("libxl_domain_config_(init|dispose)")
        .allowlist_function("libxl_domain_build_info_init_type")
        .allowlist_function("libxl_device_(disk|channel|nic)_init")
        .allowlist_function("libxl_device_channel_init_connection")
        .allowlist_function("libxl_domain_create_new")
        .allowlist_function("libxl_domain_(destroy|shutdown|pause|unpause)")
        .allowlist_function("libxl_(name_to_domid|domid_to_name)")
        .allowlist_function("libxl_list_domain")
        .allowlist_function("libxl_dominfo_list_free")
        .allowlist_function("libxl_(set|get)_memory_target")
        .allowlist_function("libxl_cpuid_parse_config")
        .allowlist_function("libxl_defbool_set")
        .allowlist_function("libxl_error_to_string")
        .allowlist_type("xentoollog_logger")
        .allowlist_type("xc_domaininfo_t")
        .allowlist_var("XEN_DOMINF_.*")
        .allowlist_var("LIBXL_VERSION")
        .allowlist_var("LIBXL_MEMKB_DEFAULT")
        .allowlist_type("libxl_error")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .generate()
        .expect("bindgen over Xen's headers (is libclang-dev installed?)");
    bindings.write_to_file(out).expect("write bindings");
}

#[cfg(not(feature = "bindgen"))]
fn generate(_: &Path) {
    unreachable!("feature bindgen is off")
}
