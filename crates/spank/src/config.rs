//! The pure part of the plugin: its arguments in plugstack.conf, the
//! `--sd-env` value, and the wrapped command line. No FFI here, so that it
//! is unit-tested without Slurm.

use std::ffi::{CStr, CString};

/// Where sd-exec is when plugstack.conf does not say.
pub const DEFAULT_SD_EXEC: &str = "/usr/local/bin/sd-exec";

/// The plugin's arguments: `required /path/libsd_spank.so sd_exec=/abs/path/sd-exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginArgs {
    /// Absolute path of the wrapper every task of a job with `--sd-env` runs under.
    pub sd_exec: String,
}

impl Default for PluginArgs {
    fn default() -> Self {
        PluginArgs {
            sd_exec: DEFAULT_SD_EXEC.to_string(),
        }
    }
}

/// Parses the arguments after the plugin's path in plugstack.conf.
pub fn parse_args<'a>(args: impl IntoIterator<Item = &'a str>) -> Result<PluginArgs, String> {
    let mut parsed = PluginArgs::default();
    let mut seen = false;
    for arg in args {
        match arg.split_once('=') {
            Some(("sd_exec", path)) => {
                if seen {
                    return Err("sd_exec= is given twice".to_string());
                }
                seen = true;
                if !path.starts_with('/') {
                    return Err(format!(
                        "sd_exec={path:?} must be an absolute path (sd_exec=/abs/path/sd-exec)"
                    ));
                }
                parsed.sd_exec = path.to_string();
            }
            _ => {
                return Err(format!(
                    "unknown argument {arg:?}: the plugin takes sd_exec=/abs/path/sd-exec"
                ))
            }
        }
    }
    Ok(parsed)
}

/// Checks the value of `--sd-env` as the user typed it.
pub fn check_request(value: &str) -> Result<&str, String> {
    if value.trim().is_empty() {
        return Err(
            "--sd-env needs a JDL file (relative to the working directory) \
                    or an image name from the site catalogue"
                .to_string(),
        );
    }
    Ok(value)
}

/// The task's command line run under the wrapper: `SD_EXEC -- ARGV...`.
#[cfg_attr(spank_prepend_task_argv, allow(dead_code))]
pub fn wrapped_argv(sd_exec: &CStr, argv: &[&CStr]) -> Vec<CString> {
    let mut out = Vec::with_capacity(argv.len() + 2);
    out.push(sd_exec.to_owned());
    out.push(c"--".to_owned());
    out.extend(argv.iter().map(|a| (*a).to_owned()));
    out
}

/// The task's environment as Slurm would have finished it after the SPANK
/// task_init hook: Slurm sets `TMPDIR=/tmp` when the job has no TMPDIR.
#[cfg_attr(spank_prepend_task_argv, allow(dead_code))]
pub fn task_env(env: &[&CStr]) -> Vec<CString> {
    let mut out: Vec<CString> = env.iter().map(|e| (*e).to_owned()).collect();
    if !env.iter().any(|e| e.to_bytes().starts_with(b"TMPDIR=")) {
        out.push(c"TMPDIR=/tmp".to_owned());
    }
    out
}

/// The text of an OS error, without Rust's " (os error N)".
pub fn os_error_text(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// `text` as a C string, NUL bytes (which C strings cannot hold) shown as `\0`.
pub fn c_string_lossy(text: &str) -> CString {
    CString::new(text.replace('\0', "\\0")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_means_the_default_sd_exec() {
        assert_eq!(parse_args([]), Ok(PluginArgs::default()));
        assert_eq!(PluginArgs::default().sd_exec, "/usr/local/bin/sd-exec");
    }

    #[test]
    fn sd_exec_must_be_absolute() {
        assert_eq!(
            parse_args(["sd_exec=/opt/smartdomains/sd-exec"]),
            Ok(PluginArgs {
                sd_exec: "/opt/smartdomains/sd-exec".into()
            })
        );
        for bad in [
            "sd_exec=sd-exec",
            "sd_exec=./sd-exec",
            "sd_exec=",
            "sd_exec=~/sd-exec",
        ] {
            let err = parse_args([bad]).unwrap_err();
            assert!(err.contains("absolute path"), "{bad}: {err}");
        }
    }

    #[test]
    fn unknown_and_repeated_arguments_are_refused() {
        let err = parse_args(["sd-exec=/x"]).unwrap_err();
        assert!(err.contains("unknown argument \"sd-exec=/x\""), "{err}");
        assert!(parse_args(["/usr/bin/sd-exec"]).is_err());
        assert!(parse_args(["sd_exec=/a", "sd_exec=/b"])
            .unwrap_err()
            .contains("twice"));
    }

    #[test]
    fn a_path_may_contain_equals_signs() {
        assert_eq!(
            parse_args(["sd_exec=/opt/a=b/sd-exec"]).unwrap().sd_exec,
            "/opt/a=b/sd-exec"
        );
    }

    #[test]
    fn request_must_not_be_empty() {
        assert_eq!(check_request("jobs/hello.jdl"), Ok("jobs/hello.jdl"));
        assert_eq!(check_request("busybox"), Ok("busybox"));
        assert!(check_request("").is_err());
        assert!(check_request("  ").unwrap_err().contains("JDL file"));
    }

    #[test]
    fn argv_is_prefixed_with_the_wrapper() {
        let argv = wrapped_argv(c"/opt/sd-exec", &[c"echo", c"hi there"]);
        assert_eq!(
            argv,
            [c"/opt/sd-exec", c"--", c"echo", c"hi there"].map(CStr::to_owned)
        );
        let batch = wrapped_argv(
            c"/opt/sd-exec",
            &[c"/var/spool/slurmd/job00012/slurm_script"],
        );
        assert_eq!(batch.len(), 3);
        assert_eq!(batch[1].as_c_str(), c"--");
    }

    #[test]
    fn tmpdir_defaults_like_slurm() {
        assert_eq!(
            task_env(&[c"PATH=/bin"]),
            [c"PATH=/bin", c"TMPDIR=/tmp"].map(CStr::to_owned)
        );
        assert_eq!(
            task_env(&[c"TMPDIR=/scratch", c"A=1"]),
            [c"TMPDIR=/scratch", c"A=1"].map(CStr::to_owned)
        );
        // A variable that only ends in TMPDIR is not TMPDIR.
        assert_eq!(task_env(&[c"MY_TMPDIR=/x"]).len(), 2);
    }

    #[test]
    fn os_errors_read_like_c() {
        let e = std::io::Error::from_raw_os_error(2);
        assert_eq!(os_error_text(&e), "No such file or directory");
    }

    #[test]
    fn nul_bytes_do_not_lose_a_message() {
        assert_eq!(c_string_lossy("a\0b").as_c_str(), c"a\\0b");
    }
}
