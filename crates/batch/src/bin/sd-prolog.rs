//! `sd-prolog`: Slurm `Prolog=`. Boots the job's domain on this node when
//! the job asked for one (`--sd-env=` or `--comment=sd-env:`). Logs to
//! LOG_DIR/sd-hooks.log and syslog; see `sd_batch::slurm`.

fn main() -> std::process::ExitCode {
    // Started by the prolog itself: the watcher that puts the domain in the
    // job's cgroups and pauses it while the job is suspended.
    if std::env::args().nth(1).as_deref() == Some(sd_batch::slurm::CONTAIN_ARG) {
        return std::process::ExitCode::from(sd_batch::slurm::contain() as u8);
    }
    std::process::ExitCode::from(sd_batch::slurm::prolog() as u8)
}
