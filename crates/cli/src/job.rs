//! A JDL job inside a running domain: stage the input sandbox, run the
//! executable in the job directory, bring the output sandbox back.
//!
//! Sandbox names are checked here, before anything is created: a sandbox
//! file travels under its base name, and an output name is a plain name in
//! the job directory (no `/`, no `..`), so a request can neither read nor
//! write anywhere else.

use sd_host::fault_point;
use sd_host::user_files::{UserFileError, UserFiles};
use sd_languages::jdl::JobDescription;
use sd_proto::{RunRequest, StdinSource};
use sd_vmm::guest_link::{GuestLink, JobOutcome, LinkError};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The job's working directory inside the VO image.
pub const JOB_DIR: &str = "/sd-job";

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{0}")]
    BadSandbox(String),
    #[error(transparent)]
    File(#[from] UserFileError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl JobError {
    /// The user asked for something impossible (vs. the site failed).
    pub fn is_user_error(&self) -> bool {
        matches!(self, JobError::BadSandbox(_) | JobError::File(_))
    }
}

/// Everything needed to run one JDL job, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPlan {
    pub request: RunRequest,
    /// Host file → name in the job directory, file mode.
    pub inputs: Vec<(PathBuf, String, u32)>,
    /// Names in the job directory to copy back.
    pub outputs: Vec<String>,
    /// `StdOutput` / `StdError`: the stream goes to this file of the output
    /// directory instead of the terminal.
    pub stdout_file: Option<String>,
    pub stderr_file: Option<String>,
}

fn plain_name(what: &str, name: &str) -> Result<String, JobError> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0');
    if ok {
        Ok(name.to_string())
    } else {
        Err(JobError::BadSandbox(format!(
            "{what} {name:?} must be a plain file name (no '/', not '.' or '..')"
        )))
    }
}

/// Plans a job. Relative input sandbox paths are relative to `jdl_dir`.
pub fn plan(jdl: &JobDescription, jdl_dir: &Path, job_id: &str) -> Result<JobPlan, JobError> {
    let mut inputs = vec![];
    for entry in &jdl.input_sandbox {
        let host = jdl_dir.join(entry);
        let name = host.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
            JobError::BadSandbox(format!("InputSandbox entry {entry:?} names no file"))
        })?;
        let name = plain_name("InputSandbox file", name)?;
        if inputs.iter().any(|(_, n, _)| *n == name) {
            return Err(JobError::BadSandbox(format!(
                "InputSandbox has two files named {name:?}"
            )));
        }
        // The executable from the sandbox must be runnable, as gLite does.
        let mode = if name == jdl.executable { 0o755 } else { 0o644 };
        inputs.push((host, name, mode));
    }
    let outputs = jdl
        .output_sandbox
        .iter()
        .map(|n| plain_name("OutputSandbox file", n))
        .collect::<Result<Vec<_>, _>>()?;
    let staged = inputs.iter().any(|(_, n, _)| *n == jdl.executable);
    let program = if staged {
        format!("./{}", jdl.executable)
    } else {
        jdl.executable.clone()
    };
    let mut argv = vec![program];
    argv.extend(jdl.arguments.iter().cloned());
    let mut env = vec![
        ("HOME".to_string(), "/root".to_string()),
        ("SD_JOB_ID".to_string(), job_id.to_string()),
    ];
    env.extend(jdl.process_environment.iter().cloned());
    let stdin = match &jdl.std_input {
        Some(name) => StdinSource::File(plain_name("StdInput", name)?),
        None => StdinSource::Null,
    };
    let stdout_file = jdl
        .std_output
        .as_deref()
        .map(|n| plain_name("StdOutput", n))
        .transpose()?;
    let stderr_file = jdl
        .std_error
        .as_deref()
        .map(|n| plain_name("StdError", n))
        .transpose()?;
    Ok(JobPlan {
        request: RunRequest {
            argv,
            env,
            cwd: JOB_DIR.to_string(),
            stdin,
        },
        inputs,
        outputs,
        stdout_file,
        stderr_file,
    })
}

/// Opens every input sandbox file as the user, before a domain exists: a
/// missing or forbidden file is refused without creating anything.
pub fn open_inputs(
    plan: &JobPlan,
    files: &UserFiles,
) -> Result<Vec<(std::fs::File, String, u32)>, JobError> {
    plan.inputs
        .iter()
        .map(|(host, name, mode)| Ok((files.open_read(host)?, name.clone(), *mode)))
        .collect()
}

/// Runs the planned job in the domain behind `link`. Job output goes to
/// `stdout`/`stderr` (or the `StdOutput`/`StdError` files in `out_dir`);
/// the output sandbox is written to `out_dir` with the user's rights.
pub fn run(
    link: &GuestLink,
    plan: &JobPlan,
    inputs: Vec<(std::fs::File, String, u32)>,
    files: &UserFiles,
    out_dir: &Path,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> Result<JobOutcome, JobError> {
    for (mut file, name, mode) in inputs {
        link.put_file(&mut file, &format!("{JOB_DIR}/{name}"), mode)?;
    }
    fault_point::reached("job: input sandbox in");
    let mut out_file = match &plan.stdout_file {
        Some(n) => Some(files.create(&out_dir.join(n), 0o644)?),
        None => None,
    };
    let mut err_file = match &plan.stderr_file {
        Some(n) if plan.stdout_file.as_deref() == Some(n.as_str()) => None,
        Some(n) => Some(files.create(&out_dir.join(n), 0o644)?),
        None => None,
    };
    let same_file = plan.stderr_file.is_some() && plan.stderr_file == plan.stdout_file;
    let outcome = {
        let mut shared = out_file.as_ref().and_then(|f| f.try_clone().ok());
        let out: &mut dyn Write = match out_file.as_mut() {
            Some(f) => f,
            None => stdout,
        };
        let err: &mut dyn Write = match (err_file.as_mut(), same_file) {
            (Some(f), _) => f,
            (None, true) => shared.as_mut().unwrap(),
            (None, false) => stderr,
        };
        link.run(plan.request.clone(), out, err, None)?
    };
    fault_point::reached("job: ended");
    for name in &plan.outputs {
        let target = out_dir.join(name);
        let mut file = files.create(&target, 0o644)?;
        match link.get_file(&format!("{JOB_DIR}/{name}"), &mut file) {
            Ok((_, mode)) => {
                let _ = file.set_permissions(std::fs::Permissions::from_mode(mode & 0o755));
            }
            // gLite reports a missing output file and goes on with the others.
            Err(LinkError::Guest(message)) => {
                drop(file);
                let _ = std::fs::remove_file(&target);
                writeln!(
                    stderr,
                    "sd: OutputSandbox file {name:?} not retrieved: {message}"
                )?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    fault_point::reached("job: output sandbox out");
    Ok(outcome)
}
