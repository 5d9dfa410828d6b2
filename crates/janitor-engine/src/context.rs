//! [`RunCtx`]: what every engine operation takes besides its options — where to report progress
//! and when to stop. One calling convention for the CLI, the server, the scheduler and Python.

use crate::cancel::Cancel;
use crate::progress::{NoProgress, Progress};

/// The run context of one operation: progress reporting and a cancellation token, honoured
/// between scan pages, during the grace wait and between removal batches.
#[derive(Clone)]
pub struct RunCtx<'a> {
    pub progress: &'a dyn Progress,
    pub cancel: Cancel,
}

impl<'a> RunCtx<'a> {
    pub fn new(progress: &'a dyn Progress, cancel: Cancel) -> Self {
        RunCtx { progress, cancel }
    }
}

impl RunCtx<'static> {
    /// Reports nothing and is never cancelled (tests, one-off calls).
    pub fn quiet() -> Self {
        RunCtx {
            progress: &NoProgress,
            cancel: Cancel::default(),
        }
    }
}

impl std::fmt::Debug for RunCtx<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCtx")
            .field("cancel", &self.cancel)
            .finish_non_exhaustive()
    }
}
