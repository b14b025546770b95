//! Generates the bindings to the installed `<slurm/spank.h>` and
//! `<slurm/slurm_version.h>` (Debian: libslurm-dev) with bindgen, allowing
//! only what the plugin uses.
//!
//! `SLURM_INCLUDE_DIR` (default `/usr/include`) is the directory holding
//! `slurm/spank.h`, for a Slurm installed elsewhere (`/opt/slurm/include`).
//!
//! Slurm 23.02.5 added `spank_prepend_task_argv()`; when the header declares
//! it, the crate is built with `cfg(spank_prepend_task_argv)` and uses it.
//! Older Slurm (Debian 12's 22.05) has no way to change a task's argv, and
//! the plugin execs the wrapper itself (see src/lib.rs).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=SLURM_INCLUDE_DIR");
    println!("cargo::rustc-check-cfg=cfg(spank_prepend_task_argv)");

    let include = env::var_os("SLURM_INCLUDE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/include"));
    let spank_h = include.join("slurm/spank.h");
    let version_h = include.join("slurm/slurm_version.h");
    for h in [&spank_h, &version_h] {
        println!("cargo::rerun-if-changed={}", h.display());
    }
    let spank_text = std::fs::read_to_string(&spank_h).unwrap_or_else(|e| {
        panic!(
            "cannot read {}: {e}\n\
             The SPANK plugin is built against Slurm's headers: install libslurm-dev \
             (scripts/setup does), or set SLURM_INCLUDE_DIR to the directory holding slurm/spank.h.",
            spank_h.display()
        )
    });
    // Its declaration, not a mention in a comment.
    let has_prepend = spank_text.lines().any(|l| {
        l.trim_start()
            .strip_prefix("spank_err_t")
            .is_some_and(|rest| rest.trim_start().starts_with("spank_prepend_task_argv"))
    });
    if has_prepend {
        println!("cargo::rustc-cfg=spank_prepend_task_argv");
    }

    let mut functions = vec![
        "spank_option_register",
        "spank_context",
        "spank_get_item",
        "spank_job_control_setenv",
        "spank_strerror",
        "slurm_error",
        "slurm_info",
    ];
    if has_prepend {
        functions.push("spank_prepend_task_argv");
    }
    let bindings = bindgen::Builder::default()
        .header_contents(
            "sd_spank.h",
            "#include <slurm/spank.h>\n#include <slurm/slurm_version.h>\n",
        )
        .clang_arg(format!("-I{}", include.display()))
        .allowlist_recursively(false)
        .allowlist_function(functions.join("|"))
        .allowlist_type("spank_t|spank_handle|spank_option|spank_opt_cb_f")
        .allowlist_type("spank_context|spank_context_t|spank_item|spank_item_t")
        .allowlist_type("slurm_err_t|spank_err_t")
        .allowlist_var("SLURM_VERSION_NUMBER|ESPANK_SUCCESS")
        .constified_enum_module("spank_context|spank_item|slurm_err_t")
        .opaque_type("spank_handle")
        .layout_tests(false)
        .generate_comments(false)
        .generate()
        .unwrap_or_else(|e| panic!("bindgen on {}: {e}", spank_h.display()));
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("spank.rs");
    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
