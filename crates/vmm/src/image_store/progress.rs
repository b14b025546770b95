//! How long work of the store (compressing a save, decompressing on first
//! use) says how far it got. The store only calls a [`Progress`]; what
//! shows it is the program's: the CLI draws a bar at a terminal
//! ([`set_ui`]), and otherwise (the batch-system hooks) it is logged.

use std::cell::Cell;
use std::sync::OnceLock;

/// Reports of one piece of work, in bytes.
pub trait Progress {
    /// The work starts: `total` bytes to go.
    fn started(&self, total: u64);
    /// `done` bytes of the total are done so far (never fewer than before).
    fn advanced_to(&self, done: u64);
    /// All of it is done (not called when the work failed).
    fn finished(&self);
}

/// Reports to nobody.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn started(&self, _: u64) {}
    fn advanced_to(&self, _: u64) {}
    fn finished(&self) {}
}

/// Logs (`tracing::info!`, for the batch-system hooks' logs) `label: N%
/// (done of total bytes)` at the start and at every further 10%.
#[derive(Debug)]
pub struct LogProgress {
    label: String,
    total: Cell<u64>,
    last_step: Cell<Option<u64>>,
}

impl LogProgress {
    pub fn new(label: &str) -> Self {
        LogProgress {
            label: label.to_string(),
            total: Cell::new(0),
            last_step: Cell::new(None),
        }
    }

    fn log(&self, done: u64) {
        let total = self.total.get();
        let step = progress_step(done, total);
        if self.last_step.get().is_some_and(|l| l >= step) {
            return;
        }
        self.last_step.set(Some(step));
        tracing::info!("{}: {}% ({done} of {total} bytes)", self.label, step * 10);
    }
}

impl Progress for LogProgress {
    fn started(&self, total: u64) {
        self.total.set(total);
        self.log(0);
    }

    fn advanced_to(&self, done: u64) {
        self.log(done);
    }

    fn finished(&self) {}
}

/// Tenths done: 0..=10 (10 when `total` is 0).
pub(super) fn progress_step(done: u64, total: u64) -> u64 {
    if total == 0 {
        return 10;
    }
    ((done.min(total) as u128 * 10) / total as u128) as u64
}

/// How a program shows progress to a person, given the work's label
/// (`saving NAME`, `decompressing NAME`): a [`Progress`], or `None` when
/// it cannot (no terminal), and the work is logged instead.
pub type ProgressUi = fn(&str) -> Option<Box<dyn Progress>>;

static UI: OnceLock<ProgressUi> = OnceLock::new();

/// Installs the program's way of showing progress (the CLI's bar), once,
/// before any work; a second call is ignored.
pub fn set_ui(ui: ProgressUi) {
    let _ = UI.set(ui);
}

/// What reports the work `label`: the installed UI's, else [`LogProgress`].
pub fn progress(label: &str) -> Box<dyn Progress> {
    UI.get()
        .and_then(|ui| ui(label))
        .unwrap_or_else(|| Box::new(LogProgress::new(label)))
}
