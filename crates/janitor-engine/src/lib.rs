//! The reconcile engine: reads Celery's Redis state, decides who owns each entry from the
//! `[[owners]]` rules and the owner rows, and removes or repairs what is confirmed orphaned,
//! expired or lost — atomically, archived and audited.
//!
//! The binary, the HTTP server and the Python package all drive this crate through
//! [`Janitor`]; none of them talks to Redis or the database directly.

mod archive;
mod cancel;
mod classify;
mod cleanup;
mod context;
mod error;
mod host;
mod janitor;
mod list;
mod lock;
mod owners_db;
mod progress;
mod redis_io;
mod restore;
mod runs;
mod scan;

pub use archive::{
    create_private_dir_all, open_private_append, printable, write_private_file, ArchiveFile,
    ArchiveRecord, AuditLog,
};
pub use cancel::Cancel;
pub use classify::{Entry, Location, State};
pub use cleanup::{
    CleanupOptions, CleanupReport, ExpiredResultsReport, FullCleanupReport, LocationCounts,
    LostRowsReport, RevokeReport, SkipCounts,
};
pub use context::RunCtx;
pub use error::EngineError;
pub use janitor::{Janitor, RedisInfo, ResultCounts, StatusReport, TaskCounts};
pub use list::{Cursor, ListOptions, Page, TaskRow};
pub use lock::Holder;
pub use progress::{NoProgress, Progress};
pub use restore::{RestoreOptions, RestoreReport, RestoreSource};
pub use runs::{RunCounts, RunEnd, RunOutcome, RunRecord, RUNS_KEPT};
pub use scan::{ScanFilter, WrongTypeKey, WrongTypeKeys};

/// Prefix of every key celery-janitor itself writes (after the broker's `global_keyprefix`).
pub const OWN_KEY_PREFIX: &str = "celery-janitor:";
