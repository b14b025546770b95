//! The image store's progress, shown at a terminal: an indicatif bar on
//! stderr (`label`, bytes done of total, rate, time left). The store only
//! reports through [`Progress`]; `sd` installs [`terminal_bar`] as its UI.

use std::io::IsTerminal;

use sd_vmm::image_store::Progress;

/// A bar for the work `label` when stderr is a terminal; `None` (and the
/// work is logged) when it is not.
pub fn terminal_bar(label: &str) -> Option<Box<dyn Progress>> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    Some(Box::new(Bar::new(label)))
}

/// A progress bar on stderr, finished when all is done.
struct Bar(indicatif::ProgressBar);

impl Bar {
    fn new(label: &str) -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .expect("a valid template")
            .progress_chars("=> "),
        );
        bar.set_message(label.to_string());
        Bar(bar)
    }
}

impl Progress for Bar {
    fn started(&self, total: u64) {
        if self.0.is_finished() {
            return;
        }
        self.0.set_length(total);
        self.0.set_position(0);
    }

    fn advanced_to(&self, done: u64) {
        if self.0.is_finished() {
            return;
        }
        self.0.set_position(done);
        if self.0.length().is_some_and(|total| done >= total) {
            self.0.finish();
        }
    }

    fn finished(&self) {
        if !self.0.is_finished() {
            self.0.finish();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_takes_what_the_store_reports() {
        let bar = Bar::new("decompressing x");
        bar.started(1);
        bar.advanced_to(1);
        bar.advanced_to(2);
        bar.finished();
        bar.finished();
        // Not a terminal under cargo test: the work is logged instead.
        assert!(std::io::stderr().is_terminal() || terminal_bar("saving x").is_none());
    }
}
