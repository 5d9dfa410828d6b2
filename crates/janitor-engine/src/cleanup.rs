//! `cleanup-orphaned` and `full-cleanup`.
//!
//! One run: take the janitor lock (kept alive by a heartbeat), record the run, scan and
//! classify, wait until `grace_seconds` have passed since the last candidate was read, re-check
//! every orphan's row (a row that appeared — a transaction that committed late — saves its
//! entries), then remove what is still orphaned with the compare-and-set Lua scripts, which
//! archive each entry in the same atomic step. `full-cleanup` also removes results older than
//! `max_age_hours` and marks lost rows. Every change is audited; the archive file is fsync'd
//! before the run reports. A run that stops partway (an error, a lost connection, Ctrl-C) still
//! writes its audit event and run record, and says how to undo what it did.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::archive::{b64, printable, stream_meta, ArchiveRecord};
use crate::cancel::Cancel;
use crate::classify::{Entry, Location, State};
use crate::error::{EngineError, Result};
use crate::janitor::{Janitor, OwnKey, TOMBSTONE_PREFIX};
use crate::lock::RunLock;
use crate::progress::Progress;
use crate::redis_io::WrongTypeReply;
use crate::runs::{RunCounts, RunEnd, RunOutcome};
use crate::scan::ScanCtx;

/// Entries per Lua call: keeps each atomic step short so Redis stays responsive.
const BATCH: usize = 100;
/// Work cap of one list-removal call: elements and bytes compared. Keeps each atomic step short.
const SEARCH_ELEMENTS: i64 = 20_000;
const SEARCH_BYTES: i64 = 32 * 1024 * 1024;
/// How long a run's revoked task ids are kept for `restore`'s warning: longer than Celery
/// remembers a revoke (3 hours), with room for workers that keep them in a state file.
const REVOKED_KEEP_SECONDS: u64 = 7 * 24 * 3600;
/// Approximate cap of the Redis archive stream (the archive files keep everything).
const ARCHIVE_MAXLEN: u64 = 100_000;

#[derive(Debug, Clone, Default)]
pub struct CleanupOptions {
    pub dry_run: bool,
    /// Overrides `grace_seconds`.
    pub grace_seconds: Option<f64>,
    /// Overrides `max_age_hours` (full-cleanup).
    pub max_age_hours: Option<f64>,
    /// Take over a run lock left by a process of this host that no longer runs.
    pub take_over_lock: bool,
    /// Stops the run at its next safe point (grace wait, scan page, removal batch).
    pub cancel: Cancel,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LocationCounts {
    pub queue: u64,
    pub unacked: u64,
    pub result: u64,
}

impl LocationCounts {
    fn add(&mut self, l: Location, n: u64) {
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
pub struct SkipCounts {
    /// The entry moved or changed before it could be removed (a worker took it).
    pub changed: u64,
    /// The owner row appeared during the grace period.
    pub revived: u64,
    /// kombu's `unacked_mutex` stayed held by a worker's restore sweep.
    pub busy: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RevokeReport {
    pub task_ids: u64,
    /// Live workers that received the revoke broadcast (0: none was listening).
    pub heard_by: i64,
}

#[derive(Debug, Clone, Default, Serialize)]
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
pub struct LostRowsReport {
    pub marked: u64,
    pub by_table: BTreeMap<String, u64>,
    /// Tables skipped, with the reason (e.g. undecidable entries could belong to their rows).
    pub skipped_tables: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Serialize)]
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

impl Janitor {
    pub async fn cleanup_orphans(
        &self,
        opts: &CleanupOptions,
        progress: &dyn Progress,
    ) -> Result<CleanupReport> {
        Ok(self.run_cleanup(opts, false, progress).await?.orphans)
    }

    pub async fn full_cleanup(
        &self,
        opts: &CleanupOptions,
        progress: &dyn Progress,
    ) -> Result<FullCleanupReport> {
        self.run_cleanup(opts, true, progress).await
    }

    fn new_run_id() -> String {
        let id = uuid::Uuid::new_v4().simple().to_string();
        format!(
            "{}-{}",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
            &id[..8]
        )
    }

    /// The task ids a run revoked (see `remember_revoked`).
    pub(crate) fn revoked_key(&self, run_id: &str) -> Vec<u8> {
        self.own_key(OwnKey::Revoked(run_id))
    }

    /// The servers a run locks: the broker, and the backend when it is another Redis.
    pub(crate) fn lock_handles(&self) -> Vec<crate::redis_io::RedisHandle> {
        let mut handles = vec![self.broker.clone()];
        if !self.shared_redis {
            handles.push(self.backend.clone());
        }
        handles
    }

    /// Grace: waits until `grace` seconds have passed since the last candidate was read (rows
    /// of apps that enqueue before committing appear meanwhile), then asks the database again.
    /// Entries whose row now exists become live. Waits only if there is something to confirm.
    pub(crate) async fn confirm(
        &self,
        candidates: &mut [Entry],
        grace: f64,
        lock: Option<&RunLock>,
        cancel: &Cancel,
        progress: &dyn Progress,
    ) -> Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        // Every candidate carries its read time; the latest bounds them all, so each one's
        // owner is asked again at least `grace` after that entry was read.
        let last_read = candidates
            .iter()
            .filter_map(|e| e.read_at)
            .max()
            .unwrap_or_else(Instant::now);
        let deadline = last_read + Duration::from_secs_f64(grace);
        if Instant::now() < deadline {
            progress.phase(
                &format!("confirming {} orphans (grace {grace} s)", candidates.len()),
                None,
            );
        }
        loop {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let step = (deadline - now).min(Duration::from_secs(1));
            tokio::select! {
                _ = tokio::time::sleep(step) => {}
                _ = cancel.cancelled() => return Err(EngineError::Interrupted),
            }
            if let Some(lock) = lock {
                lock.ensure_held()?;
            }
        }
        cancel.check()?;
        for chunk in candidates.chunks_mut(1000) {
            self.settle(chunk).await?;
        }
        Ok(())
    }

    async fn run_cleanup(
        &self,
        opts: &CleanupOptions,
        full: bool,
        progress: &dyn Progress,
    ) -> Result<FullCleanupReport> {
        let s = &self.settings;
        // Checked before the lock is taken: a bad value must not leave a lock behind.
        let grace =
            janitor_config::validate_grace_seconds(opts.grace_seconds.unwrap_or(s.grace_seconds))?;
        let max_age_hours =
            janitor_config::validate_max_age_hours(opts.max_age_hours.unwrap_or(s.max_age_hours))?;
        let command = if full {
            "full-cleanup"
        } else {
            "cleanup-orphaned"
        };
        let run_id = Self::new_run_id();
        let mut report = FullCleanupReport {
            run_id: run_id.clone(),
            dry_run: opts.dry_run,
            ..Default::default()
        };
        report.orphans.run_id = run_id.clone();
        report.orphans.dry_run = opts.dry_run;
        report.expired_results.max_age_hours = max_age_hours;
        let params = RunParams {
            grace,
            max_age_hours,
            full,
            cancel: &opts.cancel,
        };

        if opts.dry_run {
            // A preview changes nothing, so it takes no lock and keeps no run record.
            self.run_locked(&mut report, &params, None, progress)
                .await?;
            self.audit.event(serde_json::json!({
                "action": "run",
                "command": command,
                "run_id": run_id,
                "dry_run": true,
                "outcome": "completed",
                "report": report,
            }))?;
            self.audit.sync()?;
            progress.finish();
            return Ok(report);
        }

        let lock = RunLock::take(
            &self.scripts.lock,
            self.lock_handles(),
            &self.own_key(OwnKey::Lock),
            &run_id,
            opts.take_over_lock,
        )
        .await?;
        if let Err(e) = self.begin_run(&run_id, command).await {
            lock.release().await;
            return Err(e);
        }
        let outcome = self
            .run_locked(&mut report, &params, Some(&lock), progress)
            .await;
        let outcome = outcome.and_then(|()| self.audit.sync());
        let changed = report.orphans.removed.total()
            + report.expired_results.removed
            + report.lost_rows.marked;
        let (outcome_name, error) = match &outcome {
            Ok(()) => ("completed", None),
            Err(EngineError::Interrupted) => ("interrupted", Some("interrupted".to_owned())),
            Err(e) => ("failed", Some(e.to_string())),
        };
        let audited = self
            .audit
            .event(serde_json::json!({
                "action": "run",
                "command": command,
                "run_id": run_id,
                "dry_run": false,
                "outcome": outcome_name,
                "error": error,
                "report": report,
            }))
            .and_then(|()| self.audit.sync());
        let recorded = self
            .end_run(&run_id, outcome_name, &report, error.clone())
            .await;
        lock.release().await;
        progress.finish();
        match outcome {
            // The changes are made; failing to record them still names the run to undo.
            Ok(()) => match audited.and(recorded) {
                Ok(()) => Ok(report),
                Err(e) => Err(EngineError::PartialRun {
                    run_id,
                    changed,
                    in_doubt: false,
                    source: Box::new(e),
                }),
            },
            Err(e) => {
                for failure in [audited.err(), recorded.err()].into_iter().flatten() {
                    tracing::error!(error = %failure, run_id = %run_id, "could not record the end of a failed run");
                }
                Err(EngineError::PartialRun {
                    run_id,
                    changed,
                    in_doubt: report.batch_in_doubt,
                    source: Box::new(e),
                })
            }
        }
    }

    async fn run_locked(
        &self,
        report: &mut FullCleanupReport,
        params: &RunParams<'_>,
        lock: Option<&RunLock>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let s = &self.settings;
        let RunParams {
            grace,
            max_age_hours,
            full,
            cancel,
        } = *params;
        let cutoff = chrono::Duration::try_milliseconds((max_age_hours * 3_600_000.0) as i64)
            .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
            .ok_or_else(|| {
                EngineError::Other(format!("max_age_hours {max_age_hours} is out of range"))
            })?;

        // Lost-row candidates are read before the scan, so any work the scan sees for them
        // (queued, unacked, STARTED/RETRY) clears them.
        let mut lost: Vec<(usize, HashSet<String>, Option<String>)> = Vec::new();
        if full {
            for (i, rule) in s.owners.rules().iter().enumerate() {
                if rule.lost.is_some() {
                    let ids = self.db.lost_candidates(rule).await?;
                    lost.push((i, ids.into_iter().collect(), None));
                }
            }
        }

        let mut orphans: Vec<Entry> = Vec::new();
        let mut expired: Vec<Entry> = Vec::new();
        let mut undecidable = 0u64;
        let mut unaged = 0u64;
        let mut ctx = ScanCtx::new(progress, cancel);
        self.scan(&mut ctx, &mut |e: Entry| {
            if full {
                for (rule, candidates, unsafe_reason) in lost.iter_mut() {
                    if e.owner_rule == Some(*rule) {
                        if !e.holds_work() {
                            continue;
                        }
                        // Only a looked-up id is spelled as the database spells it; any other
                        // (unreadable, or not canonical for the id column) could be any row's.
                        match (&e.owner_id, e.state) {
                            (Some(id), State::Live | State::Orphaned) => {
                                candidates.remove(id);
                            }
                            _ if unsafe_reason.is_none() => {
                                *unsafe_reason = Some(format!(
                                    "an entry of this table's tasks has an unreadable owner id ({})",
                                    e.reason.clone().unwrap_or_default()
                                ));
                            }
                            _ => {}
                        }
                    } else if e.state == State::Undecidable
                        && e.task_name.is_none()
                        && e.holds_work()
                        && unsafe_reason.is_none()
                    {
                        *unsafe_reason = Some(format!(
                            "an entry with an unreadable task name could belong to this table ({})",
                            e.reason.clone().unwrap_or_default()
                        ));
                    }
                }
            }
            match e.state {
                State::Orphaned => {
                    report.orphans.found.add(e.location, 1);
                    orphans.push(e);
                }
                State::Undecidable => undecidable += 1,
                _ => {
                    if full && e.location == Location::Result {
                        match e.date_done {
                            Some(done) if done < cutoff => expired.push(e),
                            Some(_) => {}
                            None => unaged += 1,
                        }
                    }
                }
            }
        })
        .await?;
        report.orphans.undecidable = undecidable;
        report.expired_results.unaged = unaged;

        self.confirm(&mut orphans, grace, lock, cancel, progress)
            .await?;
        let (confirmed, revived): (Vec<Entry>, Vec<Entry>) = orphans
            .into_iter()
            .partition(|e| e.state == State::Orphaned);
        report.orphans.skipped.revived = revived.len() as u64;

        match lock {
            None => {
                for e in &confirmed {
                    report.orphans.removed.add(e.location, 1);
                }
                report.expired_results.removed = expired.len() as u64;
                report.expired_results.without_ttl =
                    expired.iter().filter(|e| e.pttl == Some(-1)).count() as u64;
            }
            Some(lock) => {
                let run_id = report.run_id.clone();
                let batch = Batch {
                    run_id: &run_id,
                    lock,
                    cancel,
                    in_doubt: AtomicBool::new(false),
                };
                let removed = self
                    .remove_entries(&batch, "orphaned", confirmed, &mut report.orphans, progress)
                    .await;
                report.batch_in_doubt = batch.in_doubt.load(Ordering::SeqCst);
                removed?;
                if full {
                    let without_ttl = expired.iter().filter(|e| e.pttl == Some(-1)).count() as u64;
                    let mut sub = CleanupReport::default();
                    let removed = self
                        .remove_entries(&batch, "expired", expired, &mut sub, progress)
                        .await;
                    report.expired_results.removed = sub.removed.result;
                    report.expired_results.archived = sub.archived;
                    report.expired_results.changed = sub.skipped.changed;
                    report.expired_results.without_ttl = without_ttl.min(sub.removed.result);
                    report.batch_in_doubt |= batch.in_doubt.load(Ordering::SeqCst);
                    removed?;
                }
            }
        }

        if full {
            let mut batches = Vec::new();
            for (rule_idx, candidates, unsafe_reason) in lost {
                let rule = &s.owners.rules()[rule_idx];
                if let Some(why) = unsafe_reason {
                    report
                        .lost_rows
                        .skipped_tables
                        .insert(rule.table.clone(), why);
                    continue;
                }
                let mut ids: Vec<String> = candidates.into_iter().collect();
                ids.sort();
                batches.push((rule_idx, rule, ids));
            }
            let marked = match lock {
                None => batches.iter().map(|(_, _, ids)| ids.clone()).collect(),
                Some(lock) => {
                    cancel.check()?;
                    lock.confirm_held().await?;
                    self.db.mark_lost(&batches).await?
                }
            };
            for ((_, rule, _), changed) in batches.iter().zip(marked) {
                if lock.is_some() && !changed.is_empty() {
                    self.audit.event(serde_json::json!({
                        "action": "mark_lost",
                        "run_id": report.run_id,
                        "table": rule.table,
                        "status": rule.lost.as_ref().map(|l| l.lost_status.clone()),
                        "ids": changed,
                    }))?;
                }
                report.lost_rows.marked += changed.len() as u64;
                *report
                    .lost_rows
                    .by_table
                    .entry(rule.table.clone())
                    .or_default() += changed.len() as u64;
            }
        }
        Ok(())
    }

    /// Removes confirmed entries, per location, with the compare-and-set scripts. Counts land
    /// in `report` as they happen, so a run that stops partway reports what it did.
    async fn remove_entries(
        &self,
        batch: &Batch<'_>,
        reason: &str,
        entries: Vec<Entry>,
        report: &mut CleanupReport,
        progress: &dyn Progress,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        progress.phase(
            &format!("removing {reason} entries"),
            Some(entries.len() as u64),
        );
        let mut lists: BTreeMap<Vec<u8>, Vec<Entry>> = BTreeMap::new();
        let mut unacked = Vec::new();
        let mut results = Vec::new();
        for e in entries {
            match e.location {
                Location::Queue => lists.entry(e.key.clone()).or_default().push(e),
                Location::Unacked => unacked.push(e),
                Location::Result => results.push(e),
            }
        }
        let mut revoked = HashSet::new();
        self.remove_broker_entries(
            batch,
            reason,
            unacked,
            lists,
            report,
            &mut revoked,
            progress,
        )
        .await?;
        for chunk in results.chunks(BATCH) {
            batch.ready()?;
            self.remove_results(batch, reason, chunk, report).await?;
            progress.advance(chunk.len() as u64);
        }
        self.audit.sync()?;
        Ok(())
    }

    /// `unacked` first: once its orphans are gone, no worker's restore sweep can push them back
    /// into the lists cleaned next. `revoked` holds the task ids revoked so far.
    #[allow(clippy::too_many_arguments)]
    async fn remove_broker_entries(
        &self,
        batch: &Batch<'_>,
        reason: &str,
        unacked: Vec<Entry>,
        lists: BTreeMap<Vec<u8>, Vec<Entry>>,
        report: &mut CleanupReport,
        revoked: &mut HashSet<String>,
        progress: &dyn Progress,
    ) -> Result<()> {
        if !unacked.is_empty() {
            self.remove_unacked(batch, reason, unacked, report, revoked, progress)
                .await?;
        }
        for (key, list) in lists {
            self.remove_from_list(batch, reason, &key, list, report, revoked, progress)
                .await?;
        }
        Ok(())
    }

    /// Removing a copy does not stop a worker that already holds the message (prefetched,
    /// waiting for its ETA, or just popped from a list): tell live workers to discard these
    /// tasks, right after the batch that removed them (or found them taken), so a worker has
    /// the least time to start one.
    async fn revoke_now(
        &self,
        run_id: &str,
        task_ids: Vec<String>,
        revoked: &mut HashSet<String>,
        report: &mut CleanupReport,
    ) -> Result<()> {
        let mut fresh: Vec<String> = task_ids
            .into_iter()
            .filter(|t| !revoked.contains(t))
            .collect();
        fresh.sort();
        fresh.dedup();
        if fresh.is_empty() {
            return Ok(());
        }
        self.remember_revoked(run_id, &fresh).await?;
        let heard = self.broadcast_revoke(&fresh).await?;
        revoked.extend(fresh);
        let total = report.revoke.get_or_insert_with(RevokeReport::default);
        total.task_ids += heard.task_ids;
        total.heard_by = total.heard_by.max(heard.heard_by);
        Ok(())
    }

    /// Removes one list's confirmed orphans, tail first (see `remove_list_entries.lua`).
    /// Orphans that were no longer there (most likely a worker took them) are revoked.
    #[allow(clippy::too_many_arguments)]
    async fn remove_from_list(
        &self,
        batch: &Batch<'_>,
        reason: &str,
        key: &[u8],
        mut entries: Vec<Entry>,
        report: &mut CleanupReport,
        revoked: &mut HashSet<String>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let archive = self.own_key(OwnKey::Archive);
        let lock_key = self.own_key(OwnKey::Lock);
        let mut con = self.broker.con.clone();
        // Tail first: the consume end, where workers will take messages soonest.
        entries.sort_by_key(|e| std::cmp::Reverse(e.index.unwrap_or(0)));
        let mut pending: std::collections::VecDeque<(Entry, i64)> =
            entries.into_iter().map(|e| (e, 0)).collect();
        let mut removed: i64 = 0;
        while !pending.is_empty() {
            batch.ready()?;
            let chunk: Vec<(Entry, i64)> = pending.drain(..pending.len().min(BATCH)).collect();
            let tombstone = format!("{TOMBSTONE_PREFIX}{}", uuid::Uuid::new_v4());
            let mut inv = self.scripts.remove_list.key(key);
            inv.key(&archive).key(&lock_key);
            inv.arg(batch.lock.token(false))
                .arg(&tombstone)
                .arg(SEARCH_ELEMENTS)
                .arg(SEARCH_BYTES)
                .arg(ARCHIVE_MAXLEN);
            for (e, p) in &chunk {
                let from_tail = e.list_len.unwrap_or(0) - 1 - e.index.unwrap_or(0);
                inv.arg(from_tail - removed)
                    .arg(*p)
                    .arg(e.index.unwrap_or(0))
                    .arg(&e.raw)
                    .arg(stream_meta(batch.run_id, e, reason));
            }
            let reply: Vec<redis::Value> = inv.invoke_async(&mut con).await.map_err(|e| {
                batch.note(&e);
                script_error(e, &[key, &archive, &lock_key], &archive)
            })?;
            expect_pairs(&reply, chunk.len(), "remove_list_entries.lua")?;
            let mut records = Vec::new();
            let mut resume = Vec::new();
            let mut taken = Vec::new();
            for ((e, _), pair) in chunk.into_iter().zip(reply.chunks(2)) {
                let p = redis::from_redis_value_ref::<i64>(&pair[1]).unwrap_or(0);
                match redis::from_redis_value_ref::<Option<String>>(&pair[0])
                    .ok()
                    .flatten()
                {
                    Some(status) if status == "resume" => resume.push((e, p)),
                    Some(archive_id) => {
                        removed += 1;
                        report.removed.add(Location::Queue, 1);
                        report.archived += 1;
                        records.push(self.record(
                            batch.run_id,
                            "broker",
                            &e,
                            archive_id,
                            reason,
                            None,
                            None,
                        ));
                        progress.advance(1);
                    }
                    None => {
                        report.skipped.changed += 1;
                        taken.extend(e.task_id.clone());
                        progress.advance(1);
                    }
                }
            }
            self.write_records(batch.run_id, &records)?;
            self.revoke_now(batch.run_id, taken, revoked, report)
                .await?;
            // Targets the budget did not reach go first in the next call, from where it stopped.
            for item in resume.into_iter().rev() {
                pending.push_front(item);
            }
        }
        Ok(())
    }

    async fn remove_unacked(
        &self,
        batch: &Batch<'_>,
        reason: &str,
        entries: Vec<Entry>,
        report: &mut CleanupReport,
        revoked: &mut HashSet<String>,
        progress: &dyn Progress,
    ) -> Result<()> {
        let layout = &self.broker_layout;
        let (hash, index, mutex) = (
            layout.unacked_key(),
            layout.unacked_index_key(),
            layout.unacked_mutex_key(),
        );
        let archive = self.own_key(OwnKey::Archive);
        let lock_key = self.own_key(OwnKey::Lock);
        let mut con = self.broker.con.clone();
        for chunk in entries.chunks(BATCH) {
            batch.ready()?;
            let Some(mutex_token) = self.broker.take_unacked_mutex(&mutex).await? else {
                tracing::warn!(
                    "unacked_mutex stayed held by a worker's restore sweep; entries skipped"
                );
                report.skipped.busy += chunk.len() as u64;
                continue;
            };
            let mut inv = self.scripts.remove_unacked.key(&hash);
            inv.key(&index).key(&mutex).key(&archive).key(&lock_key);
            inv.arg(batch.lock.token(false))
                .arg(&mutex_token)
                .arg(ARCHIVE_MAXLEN);
            for e in chunk {
                inv.arg(e.field.as_deref().unwrap_or_default())
                    .arg(&e.raw)
                    .arg(stream_meta(batch.run_id, e, reason));
            }
            let reply: Result<Vec<redis::Value>> = inv.invoke_async(&mut con).await.map_err(|e| {
                batch.note(&e);
                script_error(e, &[&hash, &index, &mutex, &archive, &lock_key], &archive)
            });
            // Release kombu's mutex whatever happened, by compare-and-delete.
            self.broker
                .lock_cas(&self.scripts.lock, &mutex, &mutex_token, None)
                .await?;
            let reply = reply?;
            expect_pairs(&reply, chunk.len(), "remove_unacked_entries.lua")?;
            let mut records = Vec::new();
            let mut removed_ids = Vec::new();
            for (e, pair) in chunk.iter().zip(reply.chunks(2)) {
                let id = redis::from_redis_value_ref::<Option<String>>(&pair[0])
                    .ok()
                    .flatten();
                let score = redis::from_redis_value_ref::<String>(&pair[1])
                    .ok()
                    .filter(|s| !s.is_empty());
                match id {
                    Some(archive_id) => {
                        report.removed.add(Location::Unacked, 1);
                        report.archived += 1;
                        removed_ids.extend(e.task_id.clone());
                        records.push(self.record(
                            batch.run_id,
                            "broker",
                            e,
                            archive_id,
                            reason,
                            score,
                            None,
                        ));
                    }
                    None => report.skipped.changed += 1,
                }
            }
            self.write_records(batch.run_id, &records)?;
            self.revoke_now(batch.run_id, removed_ids, revoked, report)
                .await?;
            progress.advance(chunk.len() as u64);
        }
        Ok(())
    }

    async fn remove_results(
        &self,
        batch: &Batch<'_>,
        reason: &str,
        chunk: &[Entry],
        report: &mut CleanupReport,
    ) -> Result<()> {
        let archive = self.own_key(OwnKey::Archive);
        let lock_key = self.own_key(OwnKey::Lock);
        let mut inv = self.scripts.remove_results.key(&archive);
        inv.key(&lock_key);
        for e in chunk {
            inv.key(&e.key);
        }
        inv.arg(batch.lock.token(true)).arg(ARCHIVE_MAXLEN);
        for e in chunk {
            inv.arg(&e.raw).arg(stream_meta(batch.run_id, e, reason));
        }
        let mut con = self.backend.con.clone();
        let mut keys: Vec<&[u8]> = vec![&archive, &lock_key];
        keys.extend(chunk.iter().map(|e| e.key.as_slice()));
        let reply: Vec<redis::Value> = inv.invoke_async(&mut con).await.map_err(|e| {
            batch.note(&e);
            script_error(e, &keys, &archive)
        })?;
        expect_pairs(&reply, chunk.len(), "remove_results.lua")?;
        let mut records = Vec::new();
        for (e, pair) in chunk.iter().zip(reply.chunks(2)) {
            let id = redis::from_redis_value_ref::<Option<String>>(&pair[0])
                .ok()
                .flatten();
            let pttl = redis::from_redis_value_ref::<i64>(&pair[1]).ok();
            match id {
                Some(archive_id) => {
                    report.removed.add(Location::Result, 1);
                    report.archived += 1;
                    records.push(self.record(
                        batch.run_id,
                        "backend",
                        e,
                        archive_id,
                        reason,
                        None,
                        pttl,
                    ));
                }
                None => report.skipped.changed += 1,
            }
        }
        self.write_records(batch.run_id, &records)
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        run_id: &str,
        redis: &str,
        e: &Entry,
        archive_id: String,
        reason: &str,
        score: Option<String>,
        pttl: Option<i64>,
    ) -> ArchiveRecord {
        let unacked = e.location == Location::Unacked;
        ArchiveRecord {
            archive_id,
            run_id: run_id.to_owned(),
            redis: redis.to_owned(),
            location: e.location,
            key_b64: b64(&e.key),
            value_b64: b64(&e.raw),
            field_b64: e.field.as_deref().map(b64),
            index_key_b64: unacked.then(|| b64(&self.broker_layout.unacked_index_key())),
            score,
            pttl,
            task_id: e.task_id.clone(),
            task_name: e.task_name.clone(),
            owner_table: e.owner_table.clone(),
            owner_id: e.owner_id.clone(),
            reason: reason.to_owned(),
            removed_at: chrono::Utc::now().to_rfc3339(),
        }
    }

    /// Archive file first, then one audit line per removal.
    fn write_records(&self, run_id: &str, records: &[ArchiveRecord]) -> Result<()> {
        self.audit.archive(run_id, records)?;
        for r in records {
            self.audit.event(serde_json::json!({
                "action": "remove",
                "run_id": run_id,
                "location": r.location,
                "key": printable(&crate::archive::unb64(&r.key_b64)?),
                "task_id": r.task_id,
                "task_name": r.task_name,
                "owner_table": r.owner_table,
                "owner_id": r.owner_id,
                "reason": r.reason,
                "archive_id": r.archive_id,
            }))?;
        }
        Ok(())
    }

    /// Records the run as started (the "open" marker: its archive file may lack entries until
    /// it ends) and first completes the archive files of earlier runs that crashed.
    async fn begin_run(&self, run_id: &str, command: &str) -> Result<()> {
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
    async fn end_run(
        &self,
        run_id: &str,
        outcome: &str,
        report: &FullCleanupReport,
        error: Option<String>,
    ) -> Result<()> {
        let mut removed = RunCounts::from(&report.orphans.removed);
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

    /// Keeps the run's revoked task ids (as long as Celery remembers a revoke), so `restore`
    /// can warn that workers will discard those tasks.
    async fn remember_revoked(&self, run_id: &str, task_ids: &[String]) -> Result<()> {
        let key = self.revoked_key(run_id);
        let mut con = self.broker.con.clone();
        redis::pipe()
            .cmd("SADD")
            .arg(&key)
            .arg(task_ids)
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(REVOKED_KEEP_SECONDS)
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// Tells live workers to discard these tasks: removing an `unacked` entry does not stop a
    /// worker that already holds the message (prefetched or waiting for its ETA).
    async fn broadcast_revoke(&self, task_ids: &[String]) -> Result<RevokeReport> {
        let body = serde_json::json!({
            "method": "revoke",
            "arguments": {"task_id": task_ids},
            "destination": null, "pattern": null, "matcher": null,
        });
        let envelope = serde_json::json!({
            "body": b64(body.to_string().as_bytes()),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {},
            "properties": {
                "delivery_tag": uuid::Uuid::new_v4().to_string(),
                "body_encoding": "base64",
                "delivery_info": {"exchange": "celery.pidbox", "routing_key": ""},
            },
        });
        let channel = [
            self.settings.broker_prefix.as_slice(),
            format!("/{}.celery.pidbox", self.broker.db).as_bytes(),
        ]
        .concat();
        let heard_by = self
            .broker
            .publish(&channel, envelope.to_string().as_bytes())
            .await?;
        Ok(RevokeReport {
            task_ids: task_ids.len() as u64,
            heard_by,
        })
    }
}

/// The validated settings of one run.
#[derive(Clone, Copy)]
struct RunParams<'a> {
    grace: f64,
    max_age_hours: f64,
    full: bool,
    cancel: &'a Cancel,
}

/// What every removal batch needs: the run, its lock, and the cancellation token.
struct Batch<'a> {
    run_id: &'a str,
    lock: &'a RunLock,
    cancel: &'a Cancel,
    /// Set when a script's reply was lost with the connection: it may have run.
    in_doubt: AtomicBool,
}

impl Batch<'_> {
    /// Checked before each batch: stop if asked to, or if the lock was lost.
    fn ready(&self) -> Result<()> {
        self.cancel.check()?;
        self.lock.ensure_held()
    }

    /// Notes a script call that failed without an answer from the script (the connection
    /// broke or timed out): Redis may have run it.
    fn note(&self, err: &redis::RedisError) {
        if err.is_io_error()
            || err.is_connection_dropped()
            || err.is_timeout()
            || err.is_unrecoverable_error()
        {
            self.in_doubt.store(true, Ordering::SeqCst);
        }
    }
}

/// A removal script answers two values per target; anything else is an error, never a silent
/// "gone" (the archive stream holds whatever the call removed).
fn expect_pairs(reply: &[redis::Value], targets: usize, script: &str) -> Result<()> {
    if reply.len() == 2 * targets {
        Ok(())
    } else {
        Err(EngineError::Other(format!(
            "{script} answered {} values for {targets} entries (expected {}); stopped",
            reply.len(),
            2 * targets
        )))
    }
}

/// Turns a removal script's error reply into a typed error naming the key (see checks.lua).
fn script_error(err: redis::RedisError, keys: &[&[u8]], archive: &[u8]) -> EngineError {
    if let Some(wrong) = WrongTypeReply::parse(&err, keys) {
        return EngineError::WrongType {
            key: wrong.key.unwrap_or_else(|| "a key".into()),
            found: wrong.found,
            expected: wrong.expected,
        };
    }
    let detail = err.detail().unwrap_or_default().to_owned();
    match err.code() {
        Some("LOCKLOST") => EngineError::LockLost,
        Some("CJARCHIVE") => EngineError::ArchiveWrite {
            key: printable(archive),
            message: detail,
        },
        _ => err.into(),
    }
}
