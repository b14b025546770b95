//! The symbols Slurm looks up in the plugin, and the SPANK callbacks.
//! Not built for unit tests: a test executable cannot link the `spank_*`
//! functions, which only exist inside Slurm's own programs.

use crate::config::{self, c_string_lossy, PluginArgs};
use std::ffi::{c_char, c_int, c_uint, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

#[allow(
    dead_code,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    clippy::all
)]
mod sys {
    include!(concat!(env!("OUT_DIR"), "/spank.rs"));
}

use sys::spank_context::{S_CTX_ALLOCATOR, S_CTX_LOCAL, S_CTX_REMOTE};
use sys::spank_t;

// What SPANK_PLUGIN(smartdomains, 1) defines in C.

/// `const char plugin_name[]`
#[no_mangle]
pub static plugin_name: [u8; 13] = *b"smartdomains\0";
/// `const char plugin_type[]`
#[no_mangle]
pub static plugin_type: [u8; 6] = *b"spank\0";
/// `const unsigned int plugin_version`: Slurm loads only plugins built for its release.
#[no_mangle]
pub static plugin_version: c_uint = sys::SLURM_VERSION_NUMBER;
/// `const unsigned int spank_plugin_version`
#[no_mangle]
pub static spank_plugin_version: c_uint = 1;

const ESPANK_SUCCESS: sys::spank_err_t = sys::ESPANK_SUCCESS as sys::spank_err_t;
const SLURM_ERROR: c_int = -1;

/// What one Slurm process (srun, sbatch, salloc, slurmstepd) knows.
struct State {
    args: Option<PluginArgs>,
    /// The value of `--sd-env`, set by the option callback.
    request: Option<CString>,
}

static STATE: Mutex<State> = Mutex::new(State {
    args: None,
    request: None,
});

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn log_error(message: &str) {
    let m = c_string_lossy(&format!("smartdomains: {message}"));
    // SAFETY: a constant format with one string argument.
    unsafe { sys::slurm_error(c"%s".as_ptr(), m.as_ptr()) }
}

fn log_info(message: &str) {
    let m = c_string_lossy(&format!("smartdomains: {message}"));
    // SAFETY: a constant format with one string argument.
    unsafe { sys::slurm_info(c"%s".as_ptr(), m.as_ptr()) }
}

fn spank_error(rc: sys::spank_err_t) -> String {
    // SAFETY: spank_strerror returns a static string for any code.
    let s = unsafe { sys::spank_strerror(rc) };
    if s.is_null() {
        format!("SPANK error {rc}")
    } else {
        // SAFETY: non-null, NUL-terminated, static.
        unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned()
    }
}

/// Runs a callback's body; a panic becomes an error return, never an unwind into C.
fn guard(callback: &str, body: impl FnOnce() -> c_int) -> c_int {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(rc) => rc,
        Err(_) => {
            log_error(&format!("internal error in {callback}"));
            SLURM_ERROR
        }
    }
}

/// The plugin's arguments from plugstack.conf.
///
/// # Safety
/// `av` holds `ac` NUL-terminated strings (or is null).
unsafe fn plugin_args(ac: c_int, av: *mut *mut c_char) -> Vec<String> {
    let mut args = Vec::new();
    if av.is_null() {
        return args;
    }
    for i in 0..usize::try_from(ac).unwrap_or(0) {
        let a = *av.add(i);
        if !a.is_null() {
            args.push(CStr::from_ptr(a).to_string_lossy().into_owned());
        }
    }
    args
}

fn context() -> sys::spank_context_t {
    // SAFETY: no arguments; valid in every callback.
    unsafe { sys::spank_context() }
}

/// `--sd-env=VALUE`: called by srun/sbatch/salloc while they parse their
/// options (`remote` = 0), and by slurmstepd from the forwarded options
/// (`remote` = 1), in both before `slurm_spank_init_post_opt`.
unsafe extern "C" fn option_cb(_val: c_int, optarg: *const c_char, remote: c_int) -> c_int {
    guard("the --sd-env option", || {
        let value = if optarg.is_null() {
            String::new()
        } else {
            // SAFETY: Slurm passes the option's NUL-terminated argument.
            unsafe { CStr::from_ptr(optarg) }
                .to_string_lossy()
                .into_owned()
        };
        match config::check_request(&value) {
            Ok(v) => {
                state().request = Some(c_string_lossy(v));
                0
            }
            Err(e) if remote == 0 => {
                log_error(&e);
                SLURM_ERROR
            }
            // Checked where the user typed it; on the node, ignore.
            Err(_) => 0,
        }
    })
}

/// Reads the plugin's arguments; registers `--sd-env` where options exist.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init(sp: spank_t, ac: c_int, av: *mut *mut c_char) -> c_int {
    guard("slurm_spank_init", || {
        // SAFETY: Slurm passes the argument vector of the plugstack.conf line.
        let args = unsafe { plugin_args(ac, av) };
        match config::parse_args(args.iter().map(String::as_str)) {
            Ok(a) => state().args = Some(a),
            Err(e) => {
                log_error(&format!("plugstack.conf: {e}"));
                return SLURM_ERROR;
            }
        }
        let ctx = context();
        if ctx != S_CTX_LOCAL && ctx != S_CTX_REMOTE && ctx != S_CTX_ALLOCATOR {
            return 0; // slurmd, prolog/epilog: no options there
        }
        let mut option = sys::spank_option {
            name: c"sd-env".as_ptr().cast_mut(),
            arginfo: c"JDL|IMAGE[:NETWORK,...]".as_ptr().cast_mut(),
            usage: c"Run the job inside a SmartDomains VM: a JDL file (relative to the \
                     working directory) or an image name from the site catalogue, with \
                     the site networks to join after a colon (busybox:nat)"
                .as_ptr()
                .cast_mut(),
            has_arg: 1,
            val: 0,
            cb: Some(option_cb),
        };
        // SAFETY: Slurm copies the option and its strings; the callback is 'static.
        let rc = unsafe { sys::spank_option_register(sp, &mut option) };
        if rc != ESPANK_SUCCESS {
            log_error(&format!("cannot register --sd-env: {}", spank_error(rc)));
            return SLURM_ERROR;
        }
        0
    })
}

/// srun, sbatch, salloc: hands the request to the Prolog and Epilog as
/// `SPANK_SD_ENV`, through the job control environment.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_init_post_opt(
    sp: spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    guard("slurm_spank_init_post_opt", || {
        let ctx = context();
        if ctx != S_CTX_LOCAL && ctx != S_CTX_ALLOCATOR {
            return 0;
        }
        let Some(request) = state().request.clone() else {
            return 0;
        };
        // SAFETY: valid handle, NUL-terminated strings, which Slurm copies.
        let rc =
            unsafe { sys::spank_job_control_setenv(sp, c"SD_ENV".as_ptr(), request.as_ptr(), 1) };
        if rc != ESPANK_SUCCESS {
            log_error(&format!(
                "cannot pass --sd-env={} to the prolog: {}",
                request.to_string_lossy(),
                spank_error(rc)
            ));
            return SLURM_ERROR;
        }
        // srun inside an allocation made without --sd-env: its prolog has
        // deployed no domain, so sd-exec will have none to run the step in.
        if ctx == S_CTX_LOCAL
            && std::env::var_os("SLURM_JOB_ID").is_some()
            && std::env::var_os("SLURM_SPANK_SD_ENV").is_none()
        {
            log_info(&format!(
                "warning: job {} was allocated without --sd-env, so it has no SmartDomains \
                 VM for this step; give --sd-env to salloc or sbatch",
                std::env::var("SLURM_JOB_ID").unwrap_or_default()
            ));
        }
        0
    })
}

/// slurmstepd, in the task's process as the job's user just before Slurm
/// runs the task: run it under sd-exec.
#[no_mangle]
pub unsafe extern "C" fn slurm_spank_task_init(
    sp: spank_t,
    _ac: c_int,
    _av: *mut *mut c_char,
) -> c_int {
    guard("slurm_spank_task_init", || {
        if context() != S_CTX_REMOTE {
            return 0;
        }
        let (request, args) = {
            let s = state();
            (s.request.clone(), s.args.clone().unwrap_or_default())
        };
        let Some(request) = request else {
            return 0; // a plain job: untouched
        };
        let sd_exec = c_string_lossy(&args.sd_exec);
        // SAFETY: a NUL-terminated path.
        if unsafe { libc::access(sd_exec.as_ptr(), libc::X_OK) } != 0 {
            log_error(&format!(
                "the job asked for --sd-env={} but {} cannot be run: {} \
                 (sd_exec= in plugstack.conf)",
                request.to_string_lossy(),
                args.sd_exec,
                config::os_error_text(&std::io::Error::last_os_error())
            ));
            return SLURM_ERROR;
        }
        // SAFETY: a valid handle in the task_init callback.
        unsafe { run_under(sp, &sd_exec) }
    })
}

/// Slurm >= 23.02.5: prepend `SD_EXEC --` to the task's argv; Slurm execs it.
///
/// # Safety
/// `sp` is the handle of a task_init callback.
#[cfg(spank_prepend_task_argv)]
unsafe fn run_under(sp: spank_t, sd_exec: &CStr) -> c_int {
    let mut prefix = [sd_exec.as_ptr(), c"--".as_ptr()];
    // SAFETY: two NUL-terminated strings, which Slurm copies.
    let rc = unsafe { sys::spank_prepend_task_argv(sp, 2, prefix.as_mut_ptr()) };
    if rc != ESPANK_SUCCESS {
        log_error(&format!(
            "cannot run the task under {}: {}",
            sd_exec.to_string_lossy(),
            spank_error(rc)
        ));
        return SLURM_ERROR;
    }
    0
}

/// Slurm < 23.02.5 cannot prepend to a task's argv: exec `SD_EXEC -- ARGV...`
/// here, with the environment Slurm would have used. Returns only on failure.
///
/// # Safety
/// `sp` is the handle of a task_init callback, in the task's process.
#[cfg(not(spank_prepend_task_argv))]
unsafe fn run_under(sp: spank_t, sd_exec: &CStr) -> c_int {
    use sys::spank_item::{S_JOB_ARGV, S_JOB_ENV};

    let mut argc: c_int = 0;
    let mut argv: *mut *mut c_char = std::ptr::null_mut();
    // SAFETY: S_JOB_ARGV takes (int *, char ***).
    let rc = unsafe { sys::spank_get_item(sp, S_JOB_ARGV, &mut argc as *mut c_int, &mut argv) };
    if rc != ESPANK_SUCCESS || argv.is_null() || argc < 1 {
        log_error(&format!(
            "cannot read the task's command: {}",
            spank_error(rc)
        ));
        return SLURM_ERROR;
    }
    let mut env: *mut *mut c_char = std::ptr::null_mut();
    // SAFETY: S_JOB_ENV takes (char ***).
    let rc = unsafe { sys::spank_get_item(sp, S_JOB_ENV, &mut env) };
    if rc != ESPANK_SUCCESS || env.is_null() {
        log_error(&format!(
            "cannot read the task's environment: {}",
            spank_error(rc)
        ));
        return SLURM_ERROR;
    }
    // SAFETY: Slurm's arrays: argc strings, and a NULL-terminated environment.
    let (task_argv, task_env) = unsafe {
        let a: Vec<&CStr> = (0..argc as usize)
            .map(|i| *argv.add(i))
            .take_while(|p| !p.is_null())
            .map(|p| CStr::from_ptr(p))
            .collect();
        let mut e: Vec<&CStr> = Vec::new();
        let mut p = env;
        while !(*p).is_null() {
            e.push(CStr::from_ptr(*p));
            p = p.add(1);
        }
        (a, e)
    };
    let new_argv = config::wrapped_argv(sd_exec, &task_argv);
    let new_env = config::task_env(&task_env);
    let mut argv_ptrs: Vec<*const c_char> = new_argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const c_char> = new_env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of NUL-terminated strings that outlive the call.
    unsafe { libc::execve(sd_exec.as_ptr(), argv_ptrs.as_ptr(), env_ptrs.as_ptr()) };
    log_error(&format!(
        "execve({}): {}",
        sd_exec.to_string_lossy(),
        config::os_error_text(&std::io::Error::last_os_error())
    ));
    SLURM_ERROR
}
