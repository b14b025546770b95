//! `sd-epilog`: Slurm `Epilog=`. Shuts the job's domain down and removes
//! everything its journal lists; idempotent, copes with a prolog that
//! failed or never ran. See `smartdomains::slurm`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(smartdomains::slurm::epilog() as u8)
}
