//! `sd-prolog`: Slurm `Prolog=`. Boots the job's domain on this node when
//! the job asked for one (`--sd-env=` or `--comment=sd-env:`). Logs to
//! LOG_DIR/sd-hooks.log and syslog; see `sd_batch::slurm`.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(sd_batch::slurm::prolog() as u8)
}
