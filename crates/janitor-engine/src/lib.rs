//! The reconcile engine: reads Celery's Redis state, decides who owns each entry from the
//! `[[owners]]` rules and the owner rows, and removes or repairs what is confirmed orphaned,
//! expired or lost — atomically, archived and audited.
//!
//! The binary, the HTTP server and the Python package all drive this crate through
//! [`Janitor`]; none of them talks to Redis or the database directly.

// The flow (see README.md): `janitor` connects; `scan` reads Redis and `classify` says what
// each entry is, asking `owners_db`; `plan` collects what to do; `apply` does it through
// `scripts` (the Lua), under `lock`, writing `archive` and `audit`; `revoke` tells workers;
// `runs` records each run; `restore` undoes one; `list` pages the entries. `guard` answers a
// worker about one task before it runs; `revoke` also keeps durable revocations for it;
// `startup` decides whether a worker's start-up cleanup runs. `purge` empties one queue through
// the same plan/apply path; `archive_list` pages the archive stream's metadata.
mod apply;
mod archive;
mod archive_list;
mod audit;
mod cancel;
mod classify;
mod context;
mod error;
mod guard;
mod host;
mod janitor;
mod list;
mod lock;
mod owners_db;
mod plan;
mod progress;
mod purge;
mod redis_io;
mod reports;
mod restore;
mod revoke;
mod runs;
mod scan;
mod scripts;
mod shared;
mod spec;
mod startup;

pub use apply::{CleanupOptions, Run};
pub use archive::{open_private_append, printable, write_private_file, ArchiveRecord};
pub use archive_list::{ArchiveItem, ArchiveOwner, ArchivePage, ArchiveQuery};
pub use audit::{with_actor, RequestAudit};
pub use cancel::Cancel;
pub use classify::{Entry, Location, State};
pub use context::RunCtx;
pub use error::EngineError;
pub use guard::{
    guard_target, GuardError, GuardEvent, GuardEventKind, GuardRecorded, GuardStats, GuardTarget,
    GuardVerdict, RecentGuardEvent, RevokedBy,
};
pub use host::hostname;
pub use janitor::{Janitor, ReadOptions, RedisInfo, ResultCounts, StatusReport, TaskCounts};
pub use list::{Cursor, ListOptions, Page, TaskRow};
pub use lock::Holder;
pub use plan::{CleanupPlan, LostRows, PlanOptions, RevokedSelection};
pub use progress::{NoProgress, Progress};
pub use purge::{PurgeOptions, DEFAULT_PURGE_MAX};
pub use reports::{
    CleanupReport, ExpiredResultsReport, FullCleanupReport, LocationCounts, LostRowsReport,
    RevokeReport, SkipCounts,
};
pub use restore::{RestoreOptions, RestoreReport, RestoreSource};
pub use revoke::{DurableRevokeReport, OwnerRef, Revocation, RevokeOptions};
pub use runs::{RunOutcome, RunRecord, RUNS_KEPT};
pub use scan::{WrongTypeKey, WrongTypeKeys};
pub use spec::ValueSpec;
pub use startup::LastCleanup;

/// Prefix of every key celery-janitor itself writes (after the broker's `global_keyprefix`).
pub const OWN_KEY_PREFIX: &str = "celery-janitor:";
