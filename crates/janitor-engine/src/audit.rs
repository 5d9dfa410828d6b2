//! The audit log's events, one serializable enum: every line `logs/audit.jsonl` can hold
//! (docs/cli.md, "What it writes"). `AuditLog::record` adds the `ts` field.

use serde::Serialize;

use crate::classify::Location;
use crate::reports::FullCleanupReport;

#[derive(Debug, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub(crate) enum AuditEvent<'a> {
    /// A cleanup run ended (completed, failed or interrupted), or a dry run previewed one.
    Run {
        command: &'a str,
        run_id: &'a str,
        dry_run: bool,
        outcome: &'a str,
        error: Option<String>,
        report: &'a FullCleanupReport,
    },
    /// One entry removed (and archived).
    Remove {
        run_id: &'a str,
        location: Location,
        key: String,
        task_id: Option<&'a str>,
        task_name: Option<&'a str>,
        owner_table: Option<&'a str>,
        owner_id: Option<&'a str>,
        reason: &'a str,
        archive_id: &'a str,
    },
    /// Owner rows marked lost.
    MarkLost {
        run_id: &'a str,
        table: &'a str,
        status: Option<&'a str>,
        ids: &'a [String],
    },
    /// One archived entry put back.
    Restore {
        run_id: &'a str,
        archive_id: &'a str,
        location: Location,
        key: String,
        task_id: Option<&'a str>,
    },
}
