//! `libsd_spank.so`: the SmartDomains SPANK plugin for Slurm.
//!
//! ```text
//! # plugstack.conf
//! required /opt/smartdomains/libsd_spank.so sd_exec=/opt/smartdomains/sd-exec
//! ```
//!
//! It adds one option to `srun`, `sbatch` and `salloc`:
//! `--sd-env=<JDL file | image name>`. A job without it is left alone.
//! With it:
//!
//! * **srun, sbatch, salloc** (local and allocator contexts), in
//!   `slurm_spank_init_post_opt`: `spank_job_control_setenv("SD_ENV", value)`,
//!   so that the Prolog and Epilog see `SPANK_SD_ENV=value` (the prolog deploys
//!   the job's domain from it). This is the only callback where it works for
//!   all three: the option callback has run by then, and the job is not
//!   submitted yet (`slurm_spank_local_user_init` is too late: srun has its
//!   allocation).
//! * **slurmstepd** (remote context), in `slurm_spank_task_init`: every task of
//!   every step (the batch script, srun steps) runs as `SD_EXEC -- ARGV...`.
//!   The option's value reaches slurmstepd through Slurm's own option
//!   forwarding (our option callback runs there too, before
//!   `slurm_spank_init_post_opt`); `spank_getenv("SPANK_SD_ENV")` does not see
//!   it (the job control environment is not the task's environment).
//!
//! How the task's argv gets its prefix depends on the Slurm it is built for:
//! Slurm >= 23.02.5 has `spank_prepend_task_argv()`, used when `spank.h`
//! declares it. Slurm 22.05 (Debian 12) has no way for a plugin to change a
//! task's argv: `S_JOB_ARGV` hands out the step's array, which cannot grow.
//! There the plugin does what Slurm would do next itself and `execve`s
//! `SD_EXEC -- ARGV...` with the task's environment from `slurm_spank_task_init`
//! (already the job's user, in the job's working directory, with the task's
//! stdio). What Slurm does between that hook and its own `execve` is then
//! skipped for these jobs: other plugins' `task_init` after ours (list this
//! plugin last), TaskProlog / `--task-prolog`, propagation of the submitting
//! shell's resource limits, and `--multi-prog` (not supported with `--sd-env`).
//!
//! Errors go to Slurm's log (`slurm_error`); a plugin error fails the job
//! rather than running it on the host. No Rust panic crosses into Slurm, and
//! Slurm never frees memory the plugin allocated.

mod config;

#[cfg(not(test))]
mod plugin;
