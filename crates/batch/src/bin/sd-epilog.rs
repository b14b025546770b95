//! `sd-epilog`: Slurm `Epilog=`. Shuts the job's domain down and removes
//! everything its journal lists; idempotent, copes with a prolog that
//! failed or never ran. See `sd_batch::slurm`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(sd_batch::slurm::epilog() as u8)
}
