//! `cleanup-orphaned` and `full-cleanup`.
//!
//! One run: take the janitor lock, scan and classify, wait `grace_seconds`, re-check every orphan's
//! row (a row that appeared — a transaction that committed late — saves its entries), then remove
//! what is still orphaned with the compare-and-set Lua scripts, which archive each entry in the
//! same atomic step. `full-cleanup` also removes results older than `max_age_hours` and marks
//! lost rows. Every change is audited; the archive file is fsync'd before the run reports.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::archive::{b64, printable, stream_meta, ArchiveRecord};
use crate::classify::{Entry, Location, State};
use crate::error::{EngineError, Result};
use crate::janitor::Janitor;
use crate::progress::Progress;
use crate::redis_io::{RedisHandle, LOCK_TTL_MS};

/// Entries per Lua call: keeps each atomic step short so Redis stays responsive.
const BATCH: usize = 100;
/// Work cap of one list-removal call: elements and bytes compared. Keeps each atomic step short.
const SEARCH_ELEMENTS: i64 = 20_000;
const SEARCH_BYTES: i64 = 32 * 1024 * 1024;
/// Approximate cap of the Redis archive stream (the archive files keep everything).
const ARCHIVE_MAXLEN: u64 = 100_000;

#[derive(Debug, Clone, Default)]
pub struct CleanupOptions {
    pub dry_run: bool,
    /// Overrides `grace_seconds`.
    pub grace_seconds: Option<f64>,
    /// Overrides `max_age_hours` (full-cleanup).
    pub max_age_hours: Option<f64>,
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
}

pub(crate) struct Locks {
    held: Vec<(RedisHandle, Vec<u8>, String)>,
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

    async fn take_locks(&self) -> Result<Locks> {
        let key = self.own_key("lock");
        let mut held = Vec::new();
        let mut handles = vec![self.broker.clone()];
        if !self.shared_redis {
            handles.push(self.backend.clone());
        }
        for h in handles {
            match h.try_lock(&key, LOCK_TTL_MS).await? {
                Some(token) => held.push((h, key.clone(), token)),
                None => {
                    let locks = Locks { held };
                    self.release_locks(locks).await;
                    return Err(EngineError::Busy {
                        key: printable(&key),
                    });
                }
            }
        }
        Ok(Locks { held })
    }

    async fn refresh_locks(&self, locks: &Locks) -> Result<()> {
        for (h, key, token) in &locks.held {
            if !h
                .lock_cas(&self.scripts, key, token, Some(LOCK_TTL_MS))
                .await?
            {
                return Err(EngineError::Other(
                    "the janitor lock expired during the run; stopped before changing anything else".into(),
                ));
            }
        }
        Ok(())
    }

    /// Grace: waits until `grace` seconds have passed since the scan started (rows of apps that
    /// enqueue before committing appear meanwhile), then asks the database again. Entries whose
    /// row now exists become live. Waits only if there is something to confirm.
    pub(crate) async fn confirm(
        &self,
        candidates: &mut [Entry],
        since: Instant,
        grace: f64,
        locks: Option<&Locks>,
        progress: &dyn Progress,
    ) -> Result<()> {
        if candidates.is_empty() {
            return Ok(());
        }
        let deadline = since + Duration::from_secs_f64(grace);
        if Instant::now() < deadline {
            progress.phase(
                &format!("confirming {} orphans (grace {grace} s)", candidates.len()),
                None,
            );
        }
        while Instant::now() < deadline {
            let step = (deadline - Instant::now()).min(Duration::from_secs(10));
            tokio::time::sleep(step).await;
            if let Some(locks) = locks {
                self.refresh_locks(locks).await?;
            }
        }
        for chunk in candidates.chunks_mut(1000) {
            self.settle(chunk).await?;
        }
        Ok(())
    }

    async fn release_locks(&self, locks: Locks) {
        for (h, key, token) in locks.held {
            if let Err(e) = h.lock_cas(&self.scripts, &key, &token, None).await {
                tracing::warn!(error = %e, "could not release the janitor lock; it expires by itself");
            }
        }
    }

    fn lock_token<'a>(&self, locks: &'a Locks, backend: bool) -> &'a str {
        let i = if backend && !self.shared_redis { 1 } else { 0 };
        &locks.held[i].2
    }

    async fn run_cleanup(
        &self,
        opts: &CleanupOptions,
        full: bool,
        progress: &dyn Progress,
    ) -> Result<FullCleanupReport> {
        let run_id = Self::new_run_id();
        let locks = if opts.dry_run {
            None
        } else {
            Some(self.take_locks().await?)
        };
        let outcome = self
            .run_locked(&run_id, opts, full, locks.as_ref(), progress)
            .await;
        if let Some(locks) = locks {
            self.release_locks(locks).await;
        }
        let report = outcome?;
        self.audit.event(serde_json::json!({
            "action": "run",
            "command": if full { "full-cleanup" } else { "cleanup-orphaned" },
            "run_id": run_id,
            "dry_run": opts.dry_run,
            "report": report,
        }))?;
        self.audit.sync()?;
        progress.finish();
        Ok(report)
    }

    async fn run_locked(
        &self,
        run_id: &str,
        opts: &CleanupOptions,
        full: bool,
        locks: Option<&Locks>,
        progress: &dyn Progress,
    ) -> Result<FullCleanupReport> {
        let s = &self.settings;
        let grace = opts.grace_seconds.unwrap_or(s.grace_seconds);
        let max_age_hours = opts.max_age_hours.unwrap_or(s.max_age_hours);
        let cutoff = chrono::Utc::now()
            - chrono::Duration::milliseconds((max_age_hours * 3_600_000.0) as i64);

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

        let mut report = FullCleanupReport {
            run_id: run_id.to_owned(),
            dry_run: opts.dry_run,
            ..Default::default()
        };
        report.orphans.run_id = run_id.to_owned();
        report.orphans.dry_run = opts.dry_run;
        report.expired_results.max_age_hours = max_age_hours;

        let scan_started = Instant::now();
        let mut orphans: Vec<Entry> = Vec::new();
        let mut expired: Vec<Entry> = Vec::new();
        let mut undecidable = 0u64;
        let mut unaged = 0u64;
        self.scan(progress, &mut |e: Entry| {
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

        self.confirm(&mut orphans, scan_started, grace, locks, progress)
            .await?;
        let (confirmed, revived): (Vec<Entry>, Vec<Entry>) = orphans
            .into_iter()
            .partition(|e| e.state == State::Orphaned);
        report.orphans.skipped.revived = revived.len() as u64;

        match locks {
            None => {
                for e in &confirmed {
                    report.orphans.removed.add(e.location, 1);
                }
                report.expired_results.removed = expired.len() as u64;
                report.expired_results.without_ttl =
                    expired.iter().filter(|e| e.pttl == Some(-1)).count() as u64;
            }
            Some(locks) => {
                self.remove_entries(
                    run_id,
                    "orphaned",
                    confirmed,
                    locks,
                    &mut report.orphans,
                    progress,
                )
                .await?;
                if full {
                    let without_ttl = expired.iter().filter(|e| e.pttl == Some(-1)).count() as u64;
                    let mut sub = CleanupReport::default();
                    self.remove_entries(run_id, "expired", expired, locks, &mut sub, progress)
                        .await?;
                    report.expired_results.removed = sub.removed.result;
                    report.expired_results.archived = sub.archived;
                    report.expired_results.changed = sub.skipped.changed;
                    report.expired_results.without_ttl = without_ttl.min(sub.removed.result);
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
            let marked = if opts.dry_run {
                batches.iter().map(|(_, _, ids)| ids.clone()).collect()
            } else {
                self.db.mark_lost(&batches).await?
            };
            for ((_, rule, _), changed) in batches.iter().zip(marked) {
                if !opts.dry_run && !changed.is_empty() {
                    self.audit.event(serde_json::json!({
                        "action": "mark_lost",
                        "run_id": run_id,
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
        Ok(report)
    }

    /// Removes confirmed entries, per location, with the compare-and-set scripts.
    async fn remove_entries(
        &self,
        run_id: &str,
        reason: &str,
        entries: Vec<Entry>,
        locks: &Locks,
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
        // `unacked` first: once its orphans are gone, no worker's restore sweep can push them
        // back into the lists cleaned next.
        let mut revoke = Vec::new();
        if !unacked.is_empty() {
            revoke = self
                .remove_unacked(run_id, reason, unacked, locks, report, progress)
                .await?;
        }
        for (key, list) in lists {
            let taken = self
                .remove_from_list(run_id, reason, &key, list, locks, report, progress)
                .await?;
            revoke.extend(taken);
        }
        // Removing a copy does not stop a worker that already holds the message (prefetched,
        // waiting for its ETA, or just popped from a list): tell live workers to discard them.
        revoke.sort();
        revoke.dedup();
        if !revoke.is_empty() {
            report.revoke = Some(self.broadcast_revoke(&revoke).await?);
        }
        for batch in results.chunks(BATCH) {
            self.refresh_locks(locks).await?;
            self.remove_results(run_id, reason, batch, locks, report)
                .await?;
            progress.advance(batch.len() as u64);
        }
        self.audit.sync()?;
        Ok(())
    }

    /// Removes one list's confirmed orphans, tail first (see `remove_list_entries.lua`).
    /// Returns the task ids of orphans that were no longer there: most likely a worker took them.
    #[allow(clippy::too_many_arguments)]
    async fn remove_from_list(
        &self,
        run_id: &str,
        reason: &str,
        key: &[u8],
        mut entries: Vec<Entry>,
        locks: &Locks,
        report: &mut CleanupReport,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        let archive = self.own_key("archive");
        let lock_key = self.own_key("lock");
        let mut con = self.broker.con.clone();
        // Tail first: the consume end, where workers will take messages soonest.
        entries.sort_by_key(|e| std::cmp::Reverse(e.index.unwrap_or(0)));
        let mut pending: std::collections::VecDeque<(Entry, i64)> =
            entries.into_iter().map(|e| (e, 0)).collect();
        let mut removed: i64 = 0;
        let mut taken = Vec::new();
        while !pending.is_empty() {
            self.refresh_locks(locks).await?;
            let batch: Vec<(Entry, i64)> = pending.drain(..pending.len().min(BATCH)).collect();
            let tombstone = format!("celery-janitor:tombstone:{}", uuid::Uuid::new_v4());
            let mut inv = self.scripts.remove_list.key(key);
            inv.key(&archive).key(&lock_key);
            inv.arg(self.lock_token(locks, false))
                .arg(&tombstone)
                .arg(SEARCH_ELEMENTS)
                .arg(SEARCH_BYTES)
                .arg(ARCHIVE_MAXLEN);
            for (e, p) in &batch {
                let from_tail = e.list_len.unwrap_or(0) - 1 - e.index.unwrap_or(0);
                inv.arg(from_tail - removed)
                    .arg(*p)
                    .arg(&e.raw)
                    .arg(stream_meta(run_id, e, reason));
            }
            let reply: Vec<redis::Value> = inv.invoke_async(&mut con).await?;
            let mut records = Vec::new();
            let mut resume = Vec::new();
            for ((e, _), pair) in batch.into_iter().zip(reply.chunks(2)) {
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
                        records.push(
                            self.record(run_id, "broker", &e, archive_id, reason, None, None),
                        );
                        progress.advance(1);
                    }
                    None => {
                        report.skipped.changed += 1;
                        taken.extend(e.task_id.clone());
                        progress.advance(1);
                    }
                }
            }
            self.write_records(run_id, &records)?;
            // Targets the budget did not reach go first in the next call, from where it stopped.
            for item in resume.into_iter().rev() {
                pending.push_front(item);
            }
        }
        Ok(taken)
    }

    async fn remove_unacked(
        &self,
        run_id: &str,
        reason: &str,
        entries: Vec<Entry>,
        locks: &Locks,
        report: &mut CleanupReport,
        progress: &dyn Progress,
    ) -> Result<Vec<String>> {
        let layout = &self.broker_layout;
        let (hash, index, mutex) = (
            layout.unacked_key(),
            layout.unacked_index_key(),
            layout.unacked_mutex_key(),
        );
        let archive = self.own_key("archive");
        let lock_key = self.own_key("lock");
        let mut revoked = Vec::new();
        let mut con = self.broker.con.clone();
        for batch in entries.chunks(BATCH) {
            self.refresh_locks(locks).await?;
            let Some(mutex_token) = self.broker.take_unacked_mutex(&mutex).await? else {
                tracing::warn!(
                    "unacked_mutex stayed held by a worker's restore sweep; entries skipped"
                );
                report.skipped.busy += batch.len() as u64;
                continue;
            };
            let mut inv = self.scripts.remove_unacked.key(&hash);
            inv.key(&index).key(&mutex).key(&archive).key(&lock_key);
            inv.arg(self.lock_token(locks, false))
                .arg(&mutex_token)
                .arg(ARCHIVE_MAXLEN);
            for e in batch {
                inv.arg(e.field.as_deref().unwrap_or_default())
                    .arg(&e.raw)
                    .arg(stream_meta(run_id, e, reason));
            }
            let reply: Result<Vec<redis::Value>> =
                inv.invoke_async(&mut con).await.map_err(Into::into);
            // Release kombu's mutex whatever happened, by compare-and-delete.
            self.broker
                .lock_cas(&self.scripts, &mutex, &mutex_token, None)
                .await?;
            let reply = reply?;
            let mut records = Vec::new();
            for (e, pair) in batch.iter().zip(reply.chunks(2)) {
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
                        if let Some(t) = &e.task_id {
                            revoked.push(t.clone());
                        }
                        records.push(
                            self.record(run_id, "broker", e, archive_id, reason, score, None),
                        );
                    }
                    None => report.skipped.changed += 1,
                }
            }
            self.write_records(run_id, &records)?;
            progress.advance(batch.len() as u64);
        }
        revoked.sort();
        revoked.dedup();
        Ok(revoked)
    }

    async fn remove_results(
        &self,
        run_id: &str,
        reason: &str,
        batch: &[Entry],
        locks: &Locks,
        report: &mut CleanupReport,
    ) -> Result<()> {
        let archive = self.own_key("archive");
        let lock_key = self.own_key("lock");
        let mut inv = self.scripts.remove_results.key(&archive);
        inv.key(&lock_key);
        for e in batch {
            inv.key(&e.key);
        }
        inv.arg(self.lock_token(locks, true)).arg(ARCHIVE_MAXLEN);
        for e in batch {
            inv.arg(&e.raw).arg(stream_meta(run_id, e, reason));
        }
        let mut con = self.backend.con.clone();
        let reply: Vec<redis::Value> = inv.invoke_async(&mut con).await?;
        let mut records = Vec::new();
        for (e, pair) in batch.iter().zip(reply.chunks(2)) {
            let id = redis::from_redis_value_ref::<Option<String>>(&pair[0])
                .ok()
                .flatten();
            let pttl = redis::from_redis_value_ref::<i64>(&pair[1]).ok();
            match id {
                Some(archive_id) => {
                    report.removed.add(Location::Result, 1);
                    report.archived += 1;
                    records.push(self.record(run_id, "backend", e, archive_id, reason, None, pttl));
                }
                None => report.skipped.changed += 1,
            }
        }
        self.write_records(run_id, &records)
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
