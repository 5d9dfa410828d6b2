//! What a cleanup reports: the JSON shapes of `cleanup-orphaned --json` and `full-cleanup
//! --json` (docs/cli.md), also what a plan's preview (the dry run) returns.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::classify::Location;

/// Entries per location: found, removed, and a run record's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LocationCounts {
    pub queue: u64,
    pub unacked: u64,
    pub result: u64,
}

impl LocationCounts {
    pub(crate) fn add(&mut self, l: Location, n: u64) {
        match l {
            Location::Queue => self.queue += n,
            Location::Unacked => self.unacked += n,
            Location::Result => self.result += n,
        }
    }

    pub fn total(&self) -> u64 {
        self.queue + self.unacked + self.result
    }
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SkipCounts {
    /// The entry moved or changed before it could be removed (a worker took it).
    pub changed: u64,
    /// The owner row appeared during the grace period.
    pub revived: u64,
    /// kombu's `unacked_mutex` stayed held by a worker's restore sweep.
    pub busy: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RevokeReport {
    pub task_ids: u64,
    /// Live workers that received the revoke broadcast (0: none was listening).
    pub heard_by: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CleanupReport {
    pub run_id: String,
    pub dry_run: bool,
    /// Orphans found by the scan (before the grace re-check).
    pub found: LocationCounts,
    /// Removed (or, with `--dry-run`, that would be removed).
    pub removed: LocationCounts,
    pub archived: u64,
    pub skipped: SkipCounts,
    /// Entries whose owner could not be determined; never removed.
    pub undecidable: u64,
    pub revoke: Option<RevokeReport>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ExpiredResultsReport {
    pub max_age_hours: f64,
    pub removed: u64,
    pub archived: u64,
    /// Of those, keys that had no TTL.
    pub without_ttl: u64,
    pub changed: u64,
    /// Results that can't be aged (STARTED/RETRY, or not JSON); left alone.
    pub unaged: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LostRowsReport {
    pub marked: u64,
    pub by_table: BTreeMap<String, u64>,
    /// Tables skipped, with the reason (e.g. undecidable entries could belong to their rows).
    pub skipped_tables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FullCleanupReport {
    pub run_id: String,
    pub dry_run: bool,
    pub orphans: CleanupReport,
    pub expired_results: ExpiredResultsReport,
    pub lost_rows: LostRowsReport,
    /// A removal script was sent but its reply never came (Redis went away): it may have run,
    /// so the counts above may be short by one batch (the archive stream has it).
    #[serde(skip)]
    pub(crate) batch_in_doubt: bool,
}

impl FullCleanupReport {
    /// Entries removed and rows marked: what a run changed.
    pub fn changed(&self) -> u64 {
        self.orphans.removed.total() + self.expired_results.removed + self.lost_rows.marked
    }
}
