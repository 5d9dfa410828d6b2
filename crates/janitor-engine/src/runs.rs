//! The run record: one JSON record per cleanup run in the Redis hash `celery-janitor:runs`
//! (field: the run id, which sorts by start time; value: a [`RunRecord`]).
//!
//! A run writes its record, outcome "running", as soon as it holds the lock, and rewrites it at
//! its end. A run that completed without changing anything deletes it, so a record exists for
//! every non-dry run that changed something, and for every run that did not finish. The record
//! serves:
//! - `restore`: its default run (the newest record), and the counts it checks what it found
//!   against (a run larger than the capped stream, or whose file is on another host);
//! - crash recovery: a record of this host whose archive file is not known to be complete
//!   (`file_synced` false: still "running" after a `kill -9`, or a failed run) names a file that
//!   may lack its last batch; [`Janitor::repair_archive_files`] appends what the stream has;
//! - later, the HTTP server's status and metrics and the worker start-up cleanup. Fields this
//!   version does not know are kept as they are when it rewrites a record.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::archive::{ArchiveFile, AuditLog};
use crate::classify::Location;
use crate::error::{EngineError, Result};
use crate::host::{hostname, pid_alive};
use crate::janitor::{Janitor, OwnKey};
use crate::reports::{FullCleanupReport, LocationCounts};

/// The newest this many records are kept.
pub const RUNS_KEPT: usize = 1000;

/// How a run ended, or that it has not (or crashed before it could say). Stored as its name:
/// "running", "completed", "failed", "interrupted"; a name written by a newer version is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum RunOutcome {
    Running,
    Completed,
    Failed,
    /// Stopped by Ctrl-C / SIGTERM between batches.
    Interrupted,
    /// Written by a newer version.
    Other(String),
}

impl RunOutcome {
    pub fn as_str(&self) -> &str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Completed => "completed",
            RunOutcome::Failed => "failed",
            RunOutcome::Interrupted => "interrupted",
            RunOutcome::Other(s) => s,
        }
    }
}

impl From<String> for RunOutcome {
    fn from(s: String) -> Self {
        match s.as_str() {
            "running" => RunOutcome::Running,
            "completed" => RunOutcome::Completed,
            "failed" => RunOutcome::Failed,
            "interrupted" => RunOutcome::Interrupted,
            _ => RunOutcome::Other(s),
        }
    }
}

impl From<RunOutcome> for String {
    fn from(o: RunOutcome) -> Self {
        o.as_str().to_owned()
    }
}

/// One run, as kept in `celery-janitor:runs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RunRecord {
    /// `YYYYmmddTHHMMSSZ-xxxxxxxx`: sorts by start time, to the second (records are ordered by
    /// `started_at`).
    pub run_id: String,
    /// `cleanup-orphaned`, `full-cleanup`, …
    pub command: String,
    /// The host the run ran on: its archive file is there.
    pub host: String,
    pub pid: u32,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub ended_at: Option<DateTime<Utc>>,
    /// Absolute path of the run's archive file, on `host`.
    pub archive_file: String,
    /// "running", "completed", "failed", "interrupted" (or a newer version's name).
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub outcome: RunOutcome,
    /// Entries removed (and archived), per location: orphans and expired results.
    #[serde(default)]
    pub removed: LocationCounts,
    #[serde(default)]
    pub archived: u64,
    #[serde(default)]
    pub lost_rows_marked: u64,
    #[serde(default)]
    pub error: Option<String>,
    /// The archive file holds every entry the run archived, and is fsync'd.
    #[serde(default)]
    pub file_synced: bool,
    /// The queue a `purge-queue` run emptied (`None` for other runs).
    #[serde(default)]
    pub queue: Option<String>,
    /// Fields added by other components or versions, kept as they are.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What a run reports at its end (see [`Janitor::record_run_end`]).
#[derive(Debug, Clone)]
pub(crate) struct RunEnd {
    pub outcome: RunOutcome,
    /// Entries removed per location: orphans and expired results.
    pub removed: LocationCounts,
    pub archived: u64,
    pub lost_rows_marked: u64,
    pub error: Option<String>,
}

impl RunEnd {
    fn changed_something(&self) -> bool {
        self.removed.total() + self.archived + self.lost_rows_marked > 0
    }
}

fn run_error(key: &[u8], e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> EngineError {
    EngineError::RunRecord {
        key: crate::archive::printable(key),
        source: e.into(),
    }
}

impl Janitor {
    /// Records the run as started (the "open" marker: its archive file may lack entries until
    /// it ends) and first completes the archive files of earlier runs that crashed.
    pub(crate) async fn open_run_record(&self, run_id: &str, command: &str) -> Result<()> {
        match self.repair_archive_files().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                entries = n,
                "completed the archive files of earlier runs that stopped before writing them"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "could not check the archive files of earlier runs")
            }
        }
        self.record_run_start(run_id, command).await
    }

    /// Records how the run ended, with its counts.
    pub(crate) async fn close_run_record(
        &self,
        run_id: &str,
        outcome: &str,
        report: &FullCleanupReport,
        error: Option<String>,
    ) -> Result<()> {
        let mut removed = report.orphans.removed;
        removed.result += report.expired_results.removed;
        let end = RunEnd {
            outcome: RunOutcome::from(outcome.to_owned()),
            removed,
            archived: report.orphans.archived + report.expired_results.archived,
            lost_rows_marked: report.lost_rows.marked,
            error,
        };
        self.record_run_end(run_id, end).await
    }

    /// Writes the record of a run that starts now, outcome "running". Until the run ends, this
    /// is also the marker that its archive file may lack its last batch.
    pub(crate) async fn record_run_start(&self, run_id: &str, command: &str) -> Result<()> {
        self.put_run(&self.new_record(run_id, command)).await
    }

    /// The record of a run of this process that starts now.
    fn new_record(&self, run_id: &str, command: &str) -> RunRecord {
        RunRecord {
            run_id: run_id.to_owned(),
            command: command.to_owned(),
            host: hostname(),
            pid: crate::host::pid(),
            started_at: Utc::now(),
            ended_at: None,
            archive_file: self
                .audit
                .log()
                .archive_path(run_id)
                .to_string_lossy()
                .into_owned(),
            outcome: RunOutcome::Running,
            removed: LocationCounts::default(),
            archived: 0,
            lost_rows_marked: 0,
            error: None,
            file_synced: false,
            queue: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Writes the end of a run. A run that completed without changing anything leaves no
    /// record. Otherwise the archive file is fsync'd — for a run that did not complete, first
    /// completed from the stream (a removal whose reply was lost is only there) — and the
    /// record says so (`file_synced`), unless that failed: then the next run or `restore`
    /// completes it.
    pub(crate) async fn record_run_end(&self, run_id: &str, end: RunEnd) -> Result<()> {
        let key = self.own_key(OwnKey::Runs);
        let completed = end.outcome == RunOutcome::Completed;
        if completed && !end.changed_something() {
            let mut con = self.broker.con.clone();
            let _: i64 = redis::cmd("HDEL")
                .arg(&key)
                .arg(run_id)
                .query_async(&mut con)
                .await
                .map_err(|e| run_error(&key, e))?;
            return Ok(());
        }
        let mut record = match self.run_record(run_id).await? {
            Some(r) => r,
            None => {
                // Written at the start unless that failed; keep what is known.
                self.record_run_start(run_id, "unknown").await?;
                self.run_record(run_id)
                    .await?
                    .ok_or_else(|| run_error(&key, "the record vanished"))?
            }
        };
        record.ended_at = Some(Utc::now());
        record.outcome = end.outcome;
        record.removed = end.removed;
        record.archived = end.archived;
        record.lost_rows_marked = end.lost_rows_marked;
        record.error = end.error;
        let complete = if completed {
            Ok(())
        } else {
            match self
                .complete_archive_files(std::slice::from_ref(&record))
                .await
            {
                Ok(mut n) => n.pop().unwrap_or(Ok(0)).map(drop),
                Err(e) => Err(e),
            }
        };
        let synced = match complete {
            Ok(()) => self.audit.sync().await,
            Err(e) => Err(e),
        };
        if let Err(e) = &synced {
            tracing::warn!(run_id, error = %e, "the archive file may be incomplete; the next run or `restore` completes it");
        }
        record.file_synced = synced.is_ok();
        self.put_run(&record).await
    }

    /// Records a run archived by an earlier version (it has no record) once `restore` has
    /// restored it, so the next `restore` finds it again as the newest run and restores
    /// nothing, instead of moving on to an older one. `archived`: what restore found of it.
    pub(crate) async fn adopt_unrecorded_run(
        &self,
        run_id: &str,
        removed: LocationCounts,
        archived: u64,
        file_here: bool,
    ) -> Result<()> {
        let started_at = run_id
            .get(..16)
            .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%SZ").ok())
            .map_or_else(Utc::now, |t| t.and_utc());
        let mut record = self.new_record(run_id, "unknown");
        if !file_here {
            record.host = String::new();
        }
        record.pid = 0;
        record.started_at = started_at;
        record.outcome = RunOutcome::Other("unknown".into());
        record.removed = removed;
        record.archived = archived;
        record.file_synced = true;
        record.extra.insert("recorded_by".into(), "restore".into());
        self.put_run(&record).await
    }

    /// Names, in a running purge's record, the queue it empties (kept when the run ends).
    pub(crate) async fn note_run_queue(&self, run_id: &str, queue: &str) -> Result<()> {
        if let Some(mut record) = self.run_record(run_id).await? {
            record.queue = Some(queue.to_owned());
            self.put_run(&record).await?;
        }
        Ok(())
    }

    /// The newest `limit` run records, newest first.
    pub async fn runs(&self, limit: usize) -> Result<Vec<RunRecord>> {
        let mut all = self.all_runs().await?;
        all.reverse();
        all.truncate(limit);
        Ok(all)
    }

    /// One run's record, if it has one.
    pub async fn run_record(&self, run_id: &str) -> Result<Option<RunRecord>> {
        let key = self.own_key(OwnKey::Runs);
        let mut con = self.broker.con.clone();
        let raw: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&key)
            .arg(run_id)
            .query_async(&mut con)
            .await
            .map_err(|e| run_error(&key, e))?;
        Ok(raw.and_then(|raw| parse_record(run_id, &raw)))
    }

    /// The newest recorded run that archived something (or may have: one still "running"),
    /// the one `restore` undoes by default. Runs that removed nothing (a failed run, a
    /// full-cleanup that only marked lost rows) have nothing to restore and are passed over.
    pub(crate) async fn latest_restorable_run(&self) -> Result<Option<String>> {
        Ok(self
            .all_runs()
            .await?
            .into_iter()
            .rev()
            .find(|r| r.archived > 0 || r.removed.total() > 0 || r.outcome == RunOutcome::Running)
            .map(|r| r.run_id))
    }

    /// Completes the archive files of this host's runs that may lack their last batch (a run
    /// killed before it could write it): appends the archive-stream entries of each such run
    /// that its file lacks, fsyncs it and marks the record `file_synced`. A run that still holds
    /// the janitor lock is running and left alone; a record still "running" without it belongs
    /// to a run that died: it becomes "failed", with the counts its completed archive file
    /// shows. Returns how many entries were appended. Files that can't be written are logged
    /// and left for next time.
    pub(crate) async fn repair_archive_files(&self) -> Result<u64> {
        let host = hostname();
        let candidates: Vec<RunRecord> = self
            .all_runs()
            .await?
            .into_iter()
            .filter(|r| r.host == host && !r.file_synced)
            .collect();
        if candidates.is_empty() {
            return Ok(0);
        }
        let holder = self.lock_holder_run().await;
        let todo: Vec<RunRecord> = candidates
            .into_iter()
            .filter(|r| {
                let live = match &holder {
                    Ok(holder) => holder.as_deref() == Some(r.run_id.as_str()),
                    // A lock value this version can't read: trust the pid.
                    Err(()) => pid_alive(r.pid),
                };
                !(r.outcome == RunOutcome::Running && live)
            })
            .collect();
        let appended = self.complete_archive_files(&todo).await?;
        let mut total = 0;
        for (mut record, n) in todo.into_iter().zip(appended) {
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(run_id = %record.run_id, error = %e, "cannot complete the archive file; left for next time");
                    continue;
                }
            };
            total += n;
            if n > 0 {
                tracing::warn!(
                    run_id = %record.run_id,
                    appended = n,
                    file = %record.archive_file,
                    "completed the archive file of an interrupted run from the archive stream"
                );
            }
            if record.outcome == RunOutcome::Running {
                record.outcome = RunOutcome::Failed;
                record.error = Some(format!(
                    "the run stopped without recording its end (process {} on {} is gone); \
                     its counts are those of its archive file",
                    record.pid, record.host
                ));
                let file = ArchiveFile::read(Path::new(&record.archive_file)).unwrap_or_default();
                let mine = file.records.iter().filter(|r| r.run_id == record.run_id);
                record.removed = LocationCounts::default();
                for r in mine {
                    match r.location {
                        Location::Queue => record.removed.queue += 1,
                        Location::Unacked => record.removed.unacked += 1,
                        Location::Result => record.removed.result += 1,
                    }
                }
                record.archived = record.removed.total();
            }
            record.file_synced = true;
            self.put_run(&record).await?;
        }
        Ok(total)
    }

    /// The run id of the janitor lock's holder (`Ok(None)`: not held; `Err`: a value this
    /// version can't read).
    async fn lock_holder_run(&self) -> std::result::Result<Option<String>, ()> {
        let mut con = self.broker.con.clone();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(self.own_key(OwnKey::Lock))
            .query_async(&mut con)
            .await
            .map_err(|_| ())?;
        let Some(value) = value else {
            return Ok(None);
        };
        let holder: serde_json::Value = serde_json::from_slice(&value).map_err(|_| ())?;
        holder
            .get("run_id")
            .and_then(|r| r.as_str())
            .map(|r| Some(r.to_owned()))
            .ok_or(())
    }

    /// For each record, appends to its archive file the stream entries of its run the file
    /// lacks (one pass over the stream for all of them). Returns, per record, the count
    /// appended or why its file could not be completed.
    async fn complete_archive_files(&self, records: &[RunRecord]) -> Result<Vec<Result<u64>>> {
        let wanted: HashSet<String> = records.iter().map(|r| r.run_id.clone()).collect();
        let mut by_run: BTreeMap<String, Vec<crate::archive::ArchiveRecord>> = BTreeMap::new();
        for r in self
            .archived_in_streams(&|run| wanted.contains(run))
            .await?
        {
            by_run.entry(r.run_id.clone()).or_default().push(r);
        }
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let entries = by_run.remove(&record.run_id).unwrap_or_default();
            out.push(AuditLog::append_missing(
                Path::new(&record.archive_file),
                &entries,
            ));
        }
        Ok(out)
    }

    /// Every record, oldest first (by start time: two runs can start in the same second, and
    /// their ids then sort at random). Unreadable records are skipped with a warning.
    async fn all_runs(&self) -> Result<Vec<RunRecord>> {
        let key = self.own_key(OwnKey::Runs);
        let mut con = self.broker.con.clone();
        let raw: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut con)
            .await
            .map_err(|e| run_error(&key, e))?;
        let mut all: Vec<RunRecord> = raw
            .into_iter()
            .filter_map(|(id, raw)| parse_record(&id, &raw))
            .collect();
        all.sort_by(|a, b| (a.started_at, &a.run_id).cmp(&(b.started_at, &b.run_id)));
        Ok(all)
    }

    /// Writes a record, then trims the hash to the newest [`RUNS_KEPT`].
    async fn put_run(&self, record: &RunRecord) -> Result<()> {
        let key = self.own_key(OwnKey::Runs);
        let json = serde_json::to_string(record).expect("serializable");
        let mut con = self.broker.con.clone();
        let (_, len): (i64, usize) = redis::pipe()
            .cmd("HSET")
            .arg(&key)
            .arg(&record.run_id)
            .arg(json)
            .cmd("HLEN")
            .arg(&key)
            .query_async(&mut con)
            .await
            .map_err(|e| run_error(&key, e))?;
        if len > RUNS_KEPT {
            // Unreadable records sort first, so they go first.
            let readable = self.all_runs().await?;
            let mut ids: Vec<String> = redis::cmd("HKEYS")
                .arg(&key)
                .query_async(&mut con)
                .await
                .map_err(|e| run_error(&key, e))?;
            let order: HashMap<&str, usize> = readable
                .iter()
                .enumerate()
                .map(|(i, r)| (r.run_id.as_str(), i + 1))
                .collect();
            ids.sort_by_key(|id| (order.get(id.as_str()).copied().unwrap_or(0), id.clone()));
            let oldest = &ids[..ids.len().saturating_sub(RUNS_KEPT)];
            if !oldest.is_empty() {
                let _: i64 = redis::cmd("HDEL")
                    .arg(&key)
                    .arg(oldest)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| run_error(&key, e))?;
            }
        }
        Ok(())
    }
}

fn parse_record(run_id: &str, raw: &[u8]) -> Option<RunRecord> {
    match serde_json::from_slice(raw) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(run_id, error = %e, "skipped an unreadable run record");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_fields_it_does_not_know() {
        let raw = br#"{"run_id":"20260101T000000Z-abcdef01","command":"cleanup-orphaned",
            "host":"h","pid":7,"started_at":"2026-01-01T00:00:00Z","archive_file":"/a/x.jsonl",
            "outcome":"paused","removed":{"queue":2},"server":{"trigger":"api"}}"#;
        let r = parse_record("x", raw).unwrap();
        assert_eq!(r.outcome, RunOutcome::Other("paused".into()));
        assert_eq!(r.removed.total(), 2);
        assert!(!r.file_synced);
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["server"]["trigger"], "api");
        assert_eq!(back["outcome"], "paused");
    }
}
