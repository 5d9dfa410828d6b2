//! Progress reporting for long scans, implemented by the CLI (a terminal bar) and ignored
//! elsewhere.

pub trait Progress: Send + Sync {
    /// A new phase starts; `total` is known for some phases (list lengths, hash sizes).
    fn phase(&self, name: &str, total: Option<u64>);
    /// `n` more items of the current phase are done.
    fn advance(&self, n: u64);
    /// The whole operation is done.
    fn finish(&self) {}
}

/// Reports nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}
