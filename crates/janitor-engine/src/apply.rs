//! Applying a [`CleanupPlan`]: a [`Run`] holds the run lock (kept alive by a heartbeat) and
//! the run record; [`Run::apply`] removes what the plan names with the compare-and-set Lua
//! scripts (which archive each entry in the same atomic step), marks lost rows, and always
//! ends the run — audit event, run record, lock released — even when it fails partway, saying
//! how to undo what it did.
//!
//! A plan made under this run's lock and confirmed within `grace_seconds` is applied as it is;
//! any other plan has its orphans' owners asked again and its lost rows planned again first.

use std::collections::{BTreeMap, HashSet, VecDeque};

use crate::archive::{b64, printable, stream_meta, unb64, ArchiveRecord};
use crate::audit::AuditEvent;
use crate::cancel::Cancel;
use crate::classify::{Entry, Location};
use crate::context::RunCtx;
use crate::error::{EngineError, Result};
use crate::janitor::{Janitor, OwnKey, TOMBSTONE_PREFIX};
use crate::lock::RunLock;
use crate::plan::{task_id_hash, without_ttl, CleanupPlan, Limits, PlanOptions};
use crate::progress::Progress;
use crate::redis_io::RedisHandle;
use crate::reports::{CleanupReport, FullCleanupReport, RevokeReport};
use crate::scripts::{
    Common, ListOutcome, ListTarget, Removed, ResultOutcome, ResultTarget, SearchBudget,
    UnackedKeys, UnackedOutcome, UnackedTarget,
};

/// Entries per Lua call: keeps each atomic step short so Redis stays responsive.
const BATCH: usize = 100;
/// Work cap of one list-removal call. Keeps each atomic step short.
const SEARCH_BUDGET: SearchBudget = SearchBudget {
    elements: 20_000,
    bytes: 32 * 1024 * 1024,
};
/// Approximate cap of the Redis archive stream (the archive files keep everything).
const ARCHIVE_MAXLEN: u64 = 100_000;
/// Why entries are removed, as the archive and the audit log say.
const ORPHANED: &str = "orphaned";
const EXPIRED: &str = "expired";
const REVOKED: &str = "revoked";
const PURGED: &str = "purged";

/// A whole cleanup, as `cleanup-orphaned` and `full-cleanup` run it.
#[derive(Debug, Clone, Default)]
pub struct CleanupOptions {
    pub plan: PlanOptions,
    /// Plan and preview only: no lock, no changes (the audit log gets the preview).
    pub dry_run: bool,
    /// Take over a run lock left by a process of this host that no longer runs.
    pub take_over_lock: bool,
}

/// `YYYYmmddTHHMMSSZ-xxxxxxxx`: sorts by start time.
pub(crate) fn new_run_id() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        &id[..8]
    )
}

/// A cleanup run that holds the lock: plan with [`Run::plan`], then [`Run::apply`] (which ends
/// it), or end it with [`Run::fail`]. Dropped without either, its lock expires within 30 s and
/// its record stays "running" (the next run completes its archive file).
pub struct Run<'j> {
    janitor: &'j Janitor,
    run_id: String,
    options: PlanOptions,
    limits: Limits,
    lock: RunLock,
}

impl Janitor {
    /// Plans and applies a cleanup (or, with `dry_run`, previews the plan).
    pub async fn cleanup(&self, o: &CleanupOptions, cx: &RunCtx<'_>) -> Result<FullCleanupReport> {
        if o.dry_run {
            let plan = self.plan(&o.plan, cx).await?;
            return self.preview_audited(&plan, cx).await;
        }
        let run = self.begin_run(&o.plan, o.take_over_lock).await?;
        match run.plan(cx).await {
            Ok(plan) => run.apply(plan, cx).await,
            Err(e) => Err(run.fail(e, cx).await),
        }
    }

    /// A plan's preview (the dry run), with its audit line.
    pub(crate) async fn preview_audited(
        &self,
        plan: &CleanupPlan,
        cx: &RunCtx<'_>,
    ) -> Result<FullCleanupReport> {
        let report = plan.preview();
        self.audit
            .record(&AuditEvent::Run {
                command: plan.options.command(),
                run_id: &report.run_id,
                dry_run: true,
                outcome: "completed",
                error: None,
                report: &report,
            })
            .await?;
        self.audit.sync().await?;
        cx.progress.finish();
        Ok(report)
    }

    /// Takes the run lock and records the run. The options' numbers are checked first, so a
    /// bad value leaves no lock behind.
    pub async fn begin_run(&self, o: &PlanOptions, take_over_lock: bool) -> Result<Run<'_>> {
        let limits = Limits::resolve(o, &self.settings)?;
        let run_id = new_run_id();
        let lock = RunLock::take(
            &self.scripts.lock,
            self.lock_handles(),
            &self.own_key(OwnKey::Lock),
            &run_id,
            take_over_lock,
        )
        .await?;
        if let Err(e) = self.open_run_record(&run_id, o.command()).await {
            lock.release().await;
            return Err(e);
        }
        Ok(Run {
            janitor: self,
            run_id,
            options: o.clone(),
            limits,
            lock,
        })
    }

    /// The servers a run locks: the broker, and the backend when it is another Redis.
    pub(crate) fn lock_handles(&self) -> Vec<RedisHandle> {
        let mut handles = vec![self.broker.clone()];
        if !self.shared_redis {
            handles.push(self.backend.clone());
        }
        handles
    }
}

impl Run<'_> {
    pub fn id(&self) -> &str {
        &self.run_id
    }

    /// Plans under this run's lock (the grace wait checks it is still held).
    pub async fn plan(&self, cx: &RunCtx<'_>) -> Result<CleanupPlan> {
        self.janitor
            .plan_with(
                &self.options,
                self.limits,
                self.run_id.clone(),
                Some((&self.run_id, &self.lock)),
                cx,
            )
            .await
    }

    /// Applies `plan` and ends the run. Counts land in the report as they happen, so a run that
    /// stops partway reports what it did (as a [`EngineError::PartialRun`]).
    pub async fn apply(self, plan: CleanupPlan, cx: &RunCtx<'_>) -> Result<FullCleanupReport> {
        let mut report = plan.report_skeleton(false);
        report.run_id.clone_from(&self.run_id);
        report.orphans.run_id.clone_from(&self.run_id);
        let outcome = match self.apply_plan(plan, &mut report, cx).await {
            Ok(()) => self.janitor.audit.sync().await,
            Err(e) => Err(e),
        };
        self.end(report, outcome, cx).await
    }

    /// Ends a run that failed before it applied anything (the scan or the grace wait).
    pub async fn fail(self, error: EngineError, cx: &RunCtx<'_>) -> EngineError {
        let mut report = FullCleanupReport {
            run_id: self.run_id.clone(),
            ..Default::default()
        };
        report.orphans.run_id.clone_from(&self.run_id);
        report.expired_results.max_age_hours = self.limits.max_age_hours;
        match self.end(report, Err(error), cx).await {
            Err(e) => e,
            Ok(_) => unreachable!("a failed outcome ends as an error"),
        }
    }

    async fn apply_plan(
        &self,
        mut plan: CleanupPlan,
        report: &mut FullCleanupReport,
        cx: &RunCtx<'_>,
    ) -> Result<()> {
        self.refresh(&mut plan, report, cx).await?;
        let mut remover = Remover::new(self, cx, &plan.live_task_ids);
        let removed = remover
            .remove(
                ORPHANED,
                std::mem::take(&mut plan.orphans),
                &mut report.orphans,
            )
            .await;
        report.batch_in_doubt = remover.in_doubt;
        removed?;
        if !plan.revoked.is_empty() {
            let removed = remover
                .remove(
                    REVOKED,
                    std::mem::take(&mut plan.revoked),
                    &mut report.orphans,
                )
                .await;
            report.batch_in_doubt |= remover.in_doubt;
            removed?;
        }
        if !plan.purged.is_empty() {
            // A purge is not about dead work: a message a worker took first is running as it
            // should, and one removed comes back with `restore` — neither is revoked.
            remover.revoke_taken = false;
            let removed = remover
                .remove(
                    PURGED,
                    std::mem::take(&mut plan.purged),
                    &mut report.orphans,
                )
                .await;
            report.batch_in_doubt |= remover.in_doubt;
            removed?;
        }
        if plan.options.expired_results {
            let without_ttl = without_ttl(&plan.expired);
            let mut sub = CleanupReport::default();
            let removed = remover
                .remove(EXPIRED, std::mem::take(&mut plan.expired), &mut sub)
                .await;
            let expired = &mut report.expired_results;
            expired.removed = sub.removed.result;
            expired.archived = sub.archived;
            expired.changed = sub.skipped.changed;
            expired.without_ttl = without_ttl.min(sub.removed.result);
            report.batch_in_doubt |= remover.in_doubt;
            removed?;
        }
        if plan.options.lost_rows {
            self.mark_lost(&plan, report, &cx.cancel).await?;
        }
        Ok(())
    }

    /// Asks the orphans' owners again when the plan is older than `grace_seconds` or was not
    /// made under this run's lock (rows may have appeared since); plans lost rows again when
    /// the plan was not made under this run's lock (work may have appeared for them since).
    async fn refresh(
        &self,
        plan: &mut CleanupPlan,
        report: &mut FullCleanupReport,
        cx: &RunCtx<'_>,
    ) -> Result<()> {
        let ours = plan.locked_by.as_deref() == Some(self.run_id.as_str());
        if !ours || plan.confirmed_at.elapsed().as_secs_f64() > self.limits.grace {
            // The plan waited out the grace period when it was made: ask the owners again now.
            self.janitor
                .confirm(
                    &mut plan.orphans,
                    0.0,
                    Some(&self.lock),
                    &cx.cancel,
                    cx.progress,
                )
                .await?;
            report.orphans.skipped.revived += plan.set_aside_revived();
        }
        if !ours && plan.options.lost_rows {
            let (lost_rows, skipped) = self.janitor.plan_lost_rows(cx).await?;
            plan.lost_rows = lost_rows;
            report.lost_rows.skipped_tables.clone_from(&skipped);
            plan.skipped_tables = skipped;
        }
        Ok(())
    }

    /// Marks the plan's lost rows, each only if it is still active and old (the UPDATE checks).
    async fn mark_lost(
        &self,
        plan: &CleanupPlan,
        report: &mut FullCleanupReport,
        cancel: &Cancel,
    ) -> Result<()> {
        let rules = self.janitor.settings.owners.rules();
        let batches: Vec<_> = plan
            .lost_rows
            .iter()
            .map(|l| (l.rule, &rules[l.rule], l.ids.clone()))
            .collect();
        cancel.check()?;
        self.lock.confirm_held().await?;
        let marked = self.janitor.db.mark_lost(&batches).await?;
        for ((_, rule, _), changed) in batches.iter().zip(marked) {
            if !changed.is_empty() {
                self.janitor
                    .audit
                    .record(&AuditEvent::MarkLost {
                        run_id: &self.run_id,
                        table: &rule.table,
                        status: rule.lost.as_ref().map(|l| l.lost_status.as_str()),
                        ids: &changed,
                    })
                    .await?;
            }
            report.lost_rows.marked += changed.len() as u64;
            *report
                .lost_rows
                .by_table
                .entry(rule.table.clone())
                .or_default() += changed.len() as u64;
        }
        Ok(())
    }

    /// Writes the run's audit event and record and releases the lock, whatever the outcome.
    async fn end(
        self,
        report: FullCleanupReport,
        outcome: Result<()>,
        cx: &RunCtx<'_>,
    ) -> Result<FullCleanupReport> {
        let janitor = self.janitor;
        let (outcome_name, error) = match &outcome {
            Ok(()) => ("completed", None),
            Err(EngineError::Interrupted) => ("interrupted", Some("interrupted".to_owned())),
            Err(e) => ("failed", Some(e.to_string())),
        };
        let audited = janitor
            .audit
            .record(&AuditEvent::Run {
                command: self.options.command(),
                run_id: &self.run_id,
                dry_run: false,
                outcome: outcome_name,
                error: error.clone(),
                report: &report,
            })
            .await;
        let audited = match audited {
            Ok(()) => janitor.audit.sync().await,
            Err(e) => Err(e),
        };
        let recorded = janitor
            .close_run_record(&self.run_id, outcome_name, &report, error)
            .await;
        if outcome.is_ok() && self.options.revoked.is_none() && self.options.purge_queue.is_none() {
            janitor
                .note_completed_cleanup(&self.run_id, self.options.command())
                .await;
        }
        self.lock.release().await;
        cx.progress.finish();
        let run_id = self.run_id;
        let changed = report.changed();
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
}

/// Removes planned entries in batches, per location, and keeps the run's side records: the
/// archive file, the audit log, the revoked task ids.
struct Remover<'r> {
    janitor: &'r Janitor,
    run_id: &'r str,
    lock: &'r RunLock,
    cancel: &'r Cancel,
    progress: &'r dyn Progress,
    /// A script's reply was lost with the connection: it may have run.
    in_doubt: bool,
    /// Task ids revoked so far.
    revoked: HashSet<String>,
    /// Revoke what is removed from `unacked` or found taken from a list (not for a purge).
    revoke_taken: bool,
    /// Task ids (hashed) of live work: never revoked (see `CleanupPlan::live_task_ids`).
    live_task_ids: &'r HashSet<u64>,
}

impl<'r> Remover<'r> {
    fn new(run: &'r Run<'_>, cx: &'r RunCtx<'_>, live_task_ids: &'r HashSet<u64>) -> Self {
        Remover {
            janitor: run.janitor,
            run_id: &run.run_id,
            lock: &run.lock,
            cancel: &cx.cancel,
            progress: cx.progress,
            in_doubt: false,
            revoked: HashSet::new(),
            revoke_taken: true,
            live_task_ids,
        }
    }

    /// Checked before each batch: stop if asked to, or if the lock was lost.
    fn ready(&self) -> Result<()> {
        self.cancel.check()?;
        self.lock.ensure_held()
    }

    /// Notes a script call whose reply was lost: Redis may have run it.
    fn note<T>(&mut self, outcome: Result<T>) -> Result<T> {
        if let Err(e) = &outcome {
            self.in_doubt |= e.reply_lost();
        }
        outcome
    }

    /// `unacked` first: once its orphans are gone, no worker's restore sweep can push them
    /// back into the lists cleaned next.
    async fn remove(
        &mut self,
        reason: &'static str,
        entries: Vec<Entry>,
        report: &mut CleanupReport,
    ) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.progress.phase(
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
        self.remove_unacked(reason, unacked, report).await?;
        for (key, list) in lists {
            self.remove_from_list(reason, &key, list, report).await?;
        }
        for chunk in results.chunks(BATCH) {
            self.ready()?;
            self.remove_results(reason, chunk, report).await?;
            self.progress.advance(chunk.len() as u64);
        }
        self.janitor.audit.sync().await
    }

    fn common<'k>(&self, archive: &'k [u8], lock_key: &'k [u8]) -> Common<'k>
    where
        'r: 'k,
    {
        Common {
            archive,
            lock_key,
            lock_token: self.lock.token(),
            archive_maxlen: ARCHIVE_MAXLEN,
        }
    }

    async fn remove_unacked(
        &mut self,
        reason: &str,
        entries: Vec<Entry>,
        report: &mut CleanupReport,
    ) -> Result<()> {
        let j = self.janitor;
        let layout = &j.broker_layout;
        let (hash, index, mutex) = (
            layout.unacked_key(),
            layout.unacked_index_key(),
            layout.unacked_mutex_key(),
        );
        let (archive, lock_key) = (j.own_key(OwnKey::Archive), j.own_key(OwnKey::Lock));
        let mut con = j.broker.con.clone();
        for chunk in entries.chunks(BATCH) {
            self.ready()?;
            let Some(mutex_token) = j.broker.take_unacked_mutex(&mutex).await? else {
                tracing::warn!(
                    "unacked_mutex stayed held by a worker's restore sweep; entries skipped"
                );
                report.skipped.busy += chunk.len() as u64;
                continue;
            };
            let specs: Vec<_> = chunk.iter().map(Entry::value_spec).collect();
            let targets: Vec<UnackedTarget<'_>> = chunk
                .iter()
                .zip(&specs)
                .map(|(e, spec)| UnackedTarget {
                    delivery_tag: e.field.as_deref().unwrap_or_default(),
                    spec,
                    meta: stream_meta(self.run_id, e, reason),
                })
                .collect();
            let keys = UnackedKeys {
                hash: &hash,
                index: &index,
                mutex: &mutex,
                mutex_token: &mutex_token,
            };
            let common = self.common(&archive, &lock_key);
            let outcomes = j
                .scripts
                .remove_unacked
                .call(&mut con, &keys, &common, &targets)
                .await;
            let outcomes = self.note(outcomes);
            // Release kombu's mutex whatever happened, by compare-and-delete.
            j.broker
                .lock_cas(&j.scripts.lock, &mutex, &mutex_token, None)
                .await?;
            let mut records = Vec::new();
            let mut removed_ids = Vec::new();
            for (e, outcome) in chunk.iter().zip(outcomes?) {
                match outcome {
                    UnackedOutcome::Removed(removed, score) => {
                        report.removed.add(Location::Unacked, 1);
                        report.archived += 1;
                        removed_ids.extend(e.task_id.clone());
                        records.push(self.record(e, reason, removed, score, None));
                    }
                    UnackedOutcome::Gone => report.skipped.changed += 1,
                }
            }
            self.write_records(records).await?;
            self.revoke_now(removed_ids, report).await?;
            self.progress.advance(chunk.len() as u64);
        }
        Ok(())
    }

    /// Removes one list's orphans, tail first (see `remove_list_entries.lua`). Orphans that
    /// were no longer there (most likely a worker took them) are revoked.
    async fn remove_from_list(
        &mut self,
        reason: &str,
        key: &[u8],
        mut entries: Vec<Entry>,
        report: &mut CleanupReport,
    ) -> Result<()> {
        let j = self.janitor;
        let (archive, lock_key) = (j.own_key(OwnKey::Archive), j.own_key(OwnKey::Lock));
        let mut con = j.broker.con.clone();
        // Tail first: the consume end, where workers will take messages soonest.
        entries.sort_by_key(|e| std::cmp::Reverse(e.index.unwrap_or(0)));
        let mut pending: VecDeque<(Entry, i64)> = entries.into_iter().map(|e| (e, 0)).collect();
        let mut removed_so_far: i64 = 0;
        while !pending.is_empty() {
            self.ready()?;
            let chunk: Vec<(Entry, i64)> = pending.drain(..pending.len().min(BATCH)).collect();
            let tombstone = format!("{TOMBSTONE_PREFIX}{}", uuid::Uuid::new_v4());
            let specs: Vec<_> = chunk.iter().map(|(e, _)| e.value_spec()).collect();
            let targets: Vec<ListTarget<'_>> = chunk
                .iter()
                .zip(&specs)
                .map(|((e, resume), spec)| ListTarget {
                    from_tail: e.list_len.unwrap_or(0) - 1 - e.index.unwrap_or(0) - removed_so_far,
                    resume: *resume,
                    index: e.index.unwrap_or(0),
                    spec,
                    meta: stream_meta(self.run_id, e, reason),
                })
                .collect();
            let common = self.common(&archive, &lock_key);
            let outcomes = j
                .scripts
                .remove_list
                .call(&mut con, key, &common, &tombstone, SEARCH_BUDGET, &targets)
                .await;
            let outcomes = self.note(outcomes)?;
            let mut resume = Vec::new();
            let mut taken = Vec::new();
            let mut records = Vec::new();
            for ((e, _), outcome) in chunk.into_iter().zip(outcomes) {
                match outcome {
                    ListOutcome::Resume { resume: at } => resume.push((e, at)),
                    ListOutcome::Removed(removed) => {
                        removed_so_far += 1;
                        report.removed.add(Location::Queue, 1);
                        report.archived += 1;
                        records.push(self.record(&e, reason, removed, None, None));
                        self.progress.advance(1);
                    }
                    ListOutcome::Gone => {
                        report.skipped.changed += 1;
                        taken.extend(e.task_id);
                        self.progress.advance(1);
                    }
                }
            }
            self.write_records(records).await?;
            self.revoke_now(taken, report).await?;
            // Targets the budget did not reach go first in the next call, from where it stopped.
            for item in resume.into_iter().rev() {
                pending.push_front(item);
            }
        }
        Ok(())
    }

    async fn remove_results(
        &mut self,
        reason: &str,
        chunk: &[Entry],
        report: &mut CleanupReport,
    ) -> Result<()> {
        let j = self.janitor;
        let (archive, lock_key) = (j.own_key(OwnKey::Archive), j.own_key(OwnKey::Lock));
        let specs: Vec<_> = chunk.iter().map(Entry::value_spec).collect();
        let targets: Vec<ResultTarget<'_>> = chunk
            .iter()
            .zip(&specs)
            .map(|(e, spec)| ResultTarget {
                key: &e.key,
                spec,
                meta: stream_meta(self.run_id, e, reason),
            })
            .collect();
        let common = self.common(&archive, &lock_key);
        let mut con = j.backend.con.clone();
        let outcomes = j
            .scripts
            .remove_results
            .call(&mut con, &common, &targets)
            .await;
        let outcomes = self.note(outcomes)?;
        let mut records = Vec::new();
        for (e, outcome) in chunk.iter().zip(outcomes) {
            match outcome {
                ResultOutcome::Removed(removed, pttl) => {
                    report.removed.add(Location::Result, 1);
                    report.archived += 1;
                    records.push(self.record(e, reason, removed, None, pttl));
                }
                ResultOutcome::Gone => report.skipped.changed += 1,
            }
        }
        self.write_records(records).await
    }

    /// The archive file's record of one removal, from the entry and what the script answered
    /// (the exact bytes it archived: a plan holds only their spec).
    fn record(
        &self,
        e: &Entry,
        reason: &str,
        removed: Removed,
        score: Option<String>,
        pttl: Option<i64>,
    ) -> ArchiveRecord {
        let unacked = e.location == Location::Unacked;
        ArchiveRecord {
            archive_id: removed.archive_id,
            run_id: self.run_id.to_owned(),
            redis: if e.location == Location::Result {
                "backend"
            } else {
                "broker"
            }
            .to_owned(),
            location: e.location,
            key_b64: b64(&e.key),
            value_b64: b64(&removed.value),
            field_b64: e.field.as_deref().map(b64),
            index_key_b64: unacked.then(|| b64(&self.janitor.broker_layout.unacked_index_key())),
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
    async fn write_records(&self, records: Vec<ArchiveRecord>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let events = records
            .iter()
            .map(|r| {
                Ok(serde_json::to_value(AuditEvent::Remove {
                    run_id: self.run_id,
                    location: r.location,
                    key: printable(&unb64(&r.key_b64)?),
                    task_id: r.task_id.as_deref(),
                    task_name: r.task_name.as_deref(),
                    owner_table: r.owner_table.as_deref(),
                    owner_id: r.owner_id.as_deref(),
                    reason: &r.reason,
                    archive_id: &r.archive_id,
                })
                .expect("serializable"))
            })
            .collect::<Result<Vec<_>>>()?;
        self.janitor
            .audit
            .removals(self.run_id, records, events)
            .await
    }

    /// A revoke goes by task id: one that live work also carries is not sent (that live task
    /// would be discarded too).
    fn shares_id_with_live_work(&self, task_id: &str) -> bool {
        let shared = self.live_task_ids.contains(&task_id_hash(task_id));
        if shared {
            tracing::warn!(
                task_id,
                "not revoked: live work carries the same task id (a worker may still run the orphan)"
            );
        }
        shared
    }

    /// Removing a copy does not stop a worker that already holds the message (prefetched,
    /// waiting for its ETA, or just popped from a list): tell live workers to discard these
    /// tasks, right after the batch that removed them (or found them taken), so a worker has
    /// the least time to start one.
    async fn revoke_now(
        &mut self,
        task_ids: Vec<String>,
        report: &mut CleanupReport,
    ) -> Result<()> {
        if !self.revoke_taken {
            return Ok(());
        }
        let mut fresh: Vec<String> = task_ids
            .into_iter()
            .filter(|t| !self.revoked.contains(t) && !self.shares_id_with_live_work(t))
            .collect();
        fresh.sort();
        fresh.dedup();
        if fresh.is_empty() {
            return Ok(());
        }
        self.janitor.remember_revoked(self.run_id, &fresh).await?;
        let heard = self.janitor.broadcast_revoke(&fresh).await?;
        self.revoked.extend(fresh);
        let total = report.revoke.get_or_insert_with(RevokeReport::default);
        total.task_ids += heard.task_ids;
        total.heard_by = total.heard_by.max(heard.heard_by);
        Ok(())
    }
}
