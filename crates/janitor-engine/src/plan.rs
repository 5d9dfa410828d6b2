//! A cleanup as a value: [`CleanupPlan`] holds what a run will remove (confirmed orphans,
//! expired results) and mark (lost rows), and what it will leave (revived, undecidable,
//! unaged). Planning reads and never writes; the dry run *is* a plan's [`CleanupPlan::preview`].
//!
//! A plan entry keeps where the entry is and a [`ValueSpec`] of its bytes, never the bytes, so
//! a plan's memory grows with the number of entries it names, not with their size. Applying
//! it is `apply.rs`.
//!
//! The scan feeds three small collectors, one per concern: orphans, expired results, and the
//! lost-row tracker (a candidate row with work in Redis is not lost).

use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};

use crate::classify::{Entry, Location, State};
use crate::context::RunCtx;
use crate::error::Result;
use crate::janitor::Janitor;
use crate::lock::RunLock;
use crate::reports::{FullCleanupReport, LocationCounts};
use crate::scan::ScanCtx;
use crate::spec::ValueSpec;

/// What a plan covers. `cleanup-orphaned` is [`PlanOptions::orphans`], `full-cleanup`
/// [`PlanOptions::full`]: one pipeline, two sets of options.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PlanOptions {
    /// Overrides the settings' `grace_seconds`.
    pub grace_seconds: Option<f64>,
    /// Also plan the removal of results older than `max_age_hours`.
    pub expired_results: bool,
    /// Overrides the settings' `max_age_hours`.
    pub max_age_hours: Option<f64>,
    /// Also plan marking lost rows.
    pub lost_rows: bool,
    /// Plan the removal of these revoked tasks' queued and `unacked` copies instead of orphans
    /// (`revoke`): the same removal path, archived and audited, reason `revoked`.
    pub revoked: Option<RevokedSelection>,
    /// Plan the removal of every message queued in this queue (its bare list and all its
    /// priority sub-lists) instead of orphans, whatever their owner's state (`purge-queue`):
    /// the same removal path, archived and audited, reason `purged`. Only the queue's lists are
    /// read; `unacked` and results are not. List elements that are not Celery messages are left
    /// alone (counted as `undecidable`), as a cleanup leaves them.
    pub purge_queue: Option<String>,
}

/// Messages to remove because they were revoked: by task id, or by owner row.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct RevokedSelection {
    pub task_ids: Vec<String>,
    /// (table, owner id) pairs.
    pub owners: Vec<(String, String)>,
}

impl RevokedSelection {
    /// Whether `e` is a queued or `unacked` copy of a selected task.
    fn selects(&self, e: &Entry) -> bool {
        if e.location == Location::Result {
            return false;
        }
        let by_id = e
            .task_id
            .as_ref()
            .is_some_and(|id| self.task_ids.contains(id));
        let by_owner = match (&e.owner_table, &e.owner_id, e.state) {
            (Some(table), Some(id), State::Live | State::Orphaned) => {
                self.owners.iter().any(|(t, i)| t == table && i == id)
            }
            _ => false,
        };
        by_id || by_owner
    }
}

impl PlanOptions {
    /// Orphans only (`cleanup-orphaned`).
    pub fn orphans() -> Self {
        PlanOptions::default()
    }

    /// Orphans, expired results and lost rows (`full-cleanup`).
    pub fn full() -> Self {
        PlanOptions {
            expired_results: true,
            lost_rows: true,
            ..PlanOptions::default()
        }
    }

    /// The command this plan is, for the audit log and the run record.
    pub(crate) fn command(&self) -> &'static str {
        if self.purge_queue.is_some() {
            "purge-queue"
        } else if self.revoked.is_some() {
            "revoke"
        } else if self.expired_results || self.lost_rows {
            "full-cleanup"
        } else {
            "cleanup-orphaned"
        }
    }
}

/// The numbers a plan runs with, checked before anything connects or locks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub(crate) grace: f64,
    pub(crate) max_age_hours: f64,
}

impl Limits {
    pub(crate) fn resolve(o: &PlanOptions, s: &janitor_config::Settings) -> Result<Self> {
        Ok(Limits {
            grace: janitor_config::validate_grace_seconds(
                o.grace_seconds.unwrap_or(s.grace_seconds),
            )?,
            max_age_hours: janitor_config::validate_max_age_hours(
                o.max_age_hours.unwrap_or(s.max_age_hours),
            )?,
        })
    }

    /// Results done before this are expired. `max_age_hours` is validated (at most ten years),
    /// so this does not overflow; if it did, nothing would count as expired.
    fn cutoff(&self) -> DateTime<Utc> {
        chrono::Duration::try_milliseconds((self.max_age_hours * 3_600_000.0) as i64)
            .and_then(|age| Utc::now().checked_sub_signed(age))
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }
}

/// Rows of one owner table to mark lost.
#[derive(Debug, Clone, Serialize)]
pub struct LostRows {
    pub table: String,
    /// Ids as the database spells them, sorted.
    pub ids: Vec<String>,
    #[serde(skip)]
    pub(crate) rule: usize,
}

/// A cleanup, planned: see the module docs.
#[derive(Debug, Serialize)]
pub struct CleanupPlan {
    pub run_id: String,
    pub options: PlanOptions,
    pub grace_seconds: f64,
    pub max_age_hours: f64,
    /// Orphans found by the scan (before the grace re-check).
    pub found: LocationCounts,
    /// Confirmed orphans: their owner row was still missing `grace_seconds` after they were read.
    #[serde(serialize_with = "planned_entries")]
    pub orphans: Vec<Entry>,
    /// Orphans whose owner row appeared during the grace period: left alone.
    pub revived: u64,
    /// Entries whose owner could not be determined: never removed.
    pub undecidable: u64,
    /// Results older than `max_age_hours` (only when planned).
    #[serde(serialize_with = "planned_entries")]
    pub expired: Vec<Entry>,
    /// Results that can't be aged (STARTED/RETRY, or not JSON): left alone.
    pub unaged: u64,
    /// Queued and `unacked` copies of revoked tasks (only with a revoked selection).
    #[serde(serialize_with = "planned_entries")]
    pub revoked: Vec<Entry>,
    /// Messages of the purged queue (only with `purge_queue`).
    #[serde(serialize_with = "planned_entries")]
    pub purged: Vec<Entry>,
    /// Rows to mark lost, per table (only when planned).
    pub lost_rows: Vec<LostRows>,
    /// Owner tables whose lost rows are not planned, with the reason.
    pub skipped_tables: BTreeMap<String, String>,
    /// Task ids (hashed) of work that is not orphaned: live, unowned or undecidable entries in a
    /// queue or `unacked`, or started results. An orphan sharing its task id with one of them
    /// (apps that choose their own task ids) is removed but never revoked: a revoke goes by
    /// task id, and would make a worker discard the live task too.
    #[serde(skip)]
    pub(crate) live_task_ids: HashSet<u64>,
    /// The run whose lock was held while this plan was made (none for a dry run).
    #[serde(skip)]
    pub(crate) locked_by: Option<String>,
    /// When the orphans' owners were last asked.
    #[serde(skip)]
    pub(crate) confirmed_at: Instant,
}

impl CleanupPlan {
    /// What applying this plan would report: the dry run.
    pub fn preview(&self) -> FullCleanupReport {
        let mut report = self.report_skeleton(true);
        for e in self.orphans.iter().chain(&self.revoked).chain(&self.purged) {
            report.orphans.removed.add(e.location, 1);
        }
        report.expired_results.removed = self.expired.len() as u64;
        report.expired_results.without_ttl = without_ttl(&self.expired);
        for rows in &self.lost_rows {
            report.lost_rows.marked += rows.ids.len() as u64;
            *report
                .lost_rows
                .by_table
                .entry(rows.table.clone())
                .or_default() += rows.ids.len() as u64;
        }
        report
    }

    /// Takes out the orphans whose owner row has appeared (the last owner lookup settled them
    /// live): their task ids join the live work. Returns how many.
    pub(crate) fn set_aside_revived(&mut self) -> u64 {
        let (orphans, revived): (Vec<Entry>, Vec<Entry>) = std::mem::take(&mut self.orphans)
            .into_iter()
            .partition(|e| e.state == State::Orphaned);
        self.orphans = orphans;
        let ids = revived.iter().filter_map(|e| e.task_id.as_deref());
        self.live_task_ids.extend(ids.map(task_id_hash));
        revived.len() as u64
    }

    /// The report's parts that the plan already knows, before anything is applied.
    pub(crate) fn report_skeleton(&self, dry_run: bool) -> FullCleanupReport {
        let mut report = FullCleanupReport {
            run_id: self.run_id.clone(),
            dry_run,
            ..Default::default()
        };
        report.orphans.run_id = self.run_id.clone();
        report.orphans.dry_run = dry_run;
        report.orphans.found = self.found;
        report.orphans.undecidable = self.undecidable;
        report.orphans.skipped.revived = self.revived;
        report.expired_results.max_age_hours = self.max_age_hours;
        report.expired_results.unaged = self.unaged;
        report.lost_rows.skipped_tables = self.skipped_tables.clone();
        report
    }
}

/// A task id as the plan remembers ids of live work: 8 bytes each, whatever the id's length. A
/// collision only ever spares an orphan its revoke.
pub(crate) fn task_id_hash(id: &str) -> u64 {
    crate::scan::hash64(id.as_bytes())
}

/// Work that a revoke by task id would also stop: a message (queued or in `unacked`) that is
/// not an orphan, or a started or retrying result whose owner row exists. An unowned or
/// undecidable result (without `result_extended` a result has no task name) is most likely the
/// task's own state — an orphan that is retrying — and does not count.
fn is_live_work(e: &Entry) -> bool {
    match e.location {
        Location::Queue | Location::Unacked => e.state != State::Orphaned,
        Location::Result => e.state == State::Live && e.holds_work(),
    }
}

/// Results among `entries` that had no TTL when read.
pub(crate) fn without_ttl(entries: &[Entry]) -> u64 {
    entries.iter().filter(|e| e.pttl == Some(-1)).count() as u64
}

/// A plan entry as the plan's JSON shows it: where it is and its spec, never its bytes.
#[derive(Serialize)]
struct PlannedEntry<'a> {
    location: Location,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<i64>,
    task_id: Option<&'a str>,
    task_name: Option<&'a str>,
    owner_table: Option<&'a str>,
    owner_id: Option<&'a str>,
    value: Option<&'a ValueSpec>,
}

fn planned_entries<S: Serializer>(entries: &[Entry], s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(entries.iter().map(|e| PlannedEntry {
        location: e.location,
        key: crate::archive::printable(&e.key),
        index: e.index,
        task_id: e.task_id.as_deref(),
        task_name: e.task_name.as_deref(),
        owner_table: e.owner_table.as_deref(),
        owner_id: e.owner_id.as_deref(),
        value: e.spec.as_ref(),
    }))
}

/// Lost-row candidates per rule, read before the scan, so any work the scan sees for them
/// (queued, unacked, STARTED/RETRY) clears them.
struct LostRowTracker {
    rules: Vec<LostCandidates>,
}

struct LostCandidates {
    rule: usize,
    ids: HashSet<String>,
    /// Set when an entry could belong to one of these rows but can't be told: then no row of
    /// this table is marked.
    unsafe_reason: Option<String>,
}

impl LostRowTracker {
    async fn read(janitor: &Janitor, planned: bool) -> Result<Self> {
        let mut rules = Vec::new();
        if planned {
            for (rule, r) in janitor.settings.owners.rules().iter().enumerate() {
                if r.lost.is_some() {
                    let ids = janitor.db.lost_candidates(r).await?;
                    rules.push(LostCandidates {
                        rule,
                        ids: ids.into_iter().collect(),
                        unsafe_reason: None,
                    });
                }
            }
        }
        Ok(LostRowTracker { rules })
    }

    fn observe(&mut self, e: &Entry) {
        for c in self.rules.iter_mut() {
            if e.owner_rule == Some(c.rule) {
                if !e.holds_work() {
                    continue;
                }
                // Only a looked-up id is spelled as the database spells it; any other
                // (unreadable, or not canonical for the id column) could be any row's.
                match (&e.owner_id, e.state) {
                    (Some(id), State::Live | State::Orphaned) => {
                        c.ids.remove(id);
                    }
                    _ if c.unsafe_reason.is_none() => {
                        c.unsafe_reason = Some(format!(
                            "an entry of this table's tasks has an unreadable owner id ({})",
                            e.reason.clone().unwrap_or_default()
                        ));
                    }
                    _ => {}
                }
            } else if e.state == State::Undecidable
                && e.task_name.is_none()
                && e.holds_work()
                && c.unsafe_reason.is_none()
            {
                c.unsafe_reason = Some(format!(
                    "an entry with an unreadable task name could belong to this table ({})",
                    e.reason.clone().unwrap_or_default()
                ));
            }
        }
    }

    fn finish(self, janitor: &Janitor) -> (Vec<LostRows>, BTreeMap<String, String>) {
        let mut planned = Vec::new();
        let mut skipped = BTreeMap::new();
        for c in self.rules {
            let table = janitor.settings.owners.rules()[c.rule].table.clone();
            if let Some(why) = c.unsafe_reason {
                skipped.insert(table, why);
                continue;
            }
            let mut ids: Vec<String> = c.ids.into_iter().collect();
            ids.sort();
            planned.push(LostRows {
                table,
                ids,
                rule: c.rule,
            });
        }
        (planned, skipped)
    }
}

/// Orphan candidates and expired results, as the scan hands entries over.
struct Collector {
    revoked_selection: Option<RevokedSelection>,
    revoked: Vec<Entry>,
    purge_queue: Option<String>,
    purged: Vec<Entry>,
    expired_results: bool,
    cutoff: DateTime<Utc>,
    found: LocationCounts,
    candidates: Vec<Entry>,
    undecidable: u64,
    expired: Vec<Entry>,
    unaged: u64,
    live_task_ids: HashSet<u64>,
}

impl Collector {
    fn observe(&mut self, mut e: Entry) {
        if let Some(queue) = &self.purge_queue {
            // A purge removes every message of the queue's lists, whoever owns it; what is not
            // a Celery message at all is left alone, as a cleanup leaves it.
            if e.location == Location::Queue && e.queue.as_deref() == Some(queue.as_str()) {
                if e.foreign {
                    self.undecidable += 1;
                } else {
                    self.found.add(e.location, 1);
                    e.keep_spec_only();
                    self.purged.push(e);
                }
            }
            return;
        }
        if let Some(selection) = &self.revoked_selection {
            // A revoke removes the selected tasks' copies, nothing else.
            if selection.selects(&e) {
                self.found.add(e.location, 1);
                e.keep_spec_only();
                self.revoked.push(e);
            }
            return;
        }
        if is_live_work(&e) {
            if let Some(id) = &e.task_id {
                self.live_task_ids.insert(task_id_hash(id));
            }
        }
        match e.state {
            State::Orphaned => {
                self.found.add(e.location, 1);
                e.keep_spec_only();
                self.candidates.push(e);
            }
            State::Undecidable => self.undecidable += 1,
            _ if self.expired_results && e.location == Location::Result => match e.date_done {
                Some(done) if done < self.cutoff => {
                    e.keep_spec_only();
                    self.expired.push(e);
                }
                Some(_) => {}
                None => self.unaged += 1,
            },
            _ => {}
        }
    }
}

impl Janitor {
    /// Plans a cleanup without taking the lock: what `--dry-run` previews. A real run plans
    /// with [`crate::Run::plan`], under its lock.
    pub async fn plan(&self, o: &PlanOptions, cx: &RunCtx<'_>) -> Result<CleanupPlan> {
        let limits = Limits::resolve(o, &self.settings)?;
        self.plan_with(o, limits, crate::apply::new_run_id(), None, cx)
            .await
    }

    /// Scans, classifies and confirms. With `lock`, the grace wait checks the lock is held.
    pub(crate) async fn plan_with(
        &self,
        o: &PlanOptions,
        limits: Limits,
        run_id: String,
        lock: Option<(&str, &RunLock)>,
        cx: &RunCtx<'_>,
    ) -> Result<CleanupPlan> {
        let mut lost = LostRowTracker::read(self, o.lost_rows).await?;
        let mut collector = Collector {
            revoked_selection: o.revoked.clone(),
            revoked: Vec::new(),
            purge_queue: o.purge_queue.clone(),
            purged: Vec::new(),
            expired_results: o.expired_results,
            cutoff: limits.cutoff(),
            found: LocationCounts::default(),
            candidates: Vec::new(),
            undecidable: 0,
            expired: Vec::new(),
            unaged: 0,
            live_task_ids: HashSet::new(),
        };
        let mut scan = ScanCtx::new(cx.progress, &cx.cancel);
        let mut sink = |e: Entry| {
            lost.observe(&e);
            collector.observe(e);
        };
        match &o.purge_queue {
            Some(queue) => self.scan_queue(queue, &mut scan, &mut sink).await?,
            None => self.scan(&mut scan, &mut sink).await?,
        }
        let mut candidates = std::mem::take(&mut collector.candidates);
        self.confirm(
            &mut candidates,
            limits.grace,
            lock.map(|(_, l)| l),
            &cx.cancel,
            cx.progress,
        )
        .await?;
        let confirmed_at = Instant::now();
        let (lost_rows, skipped_tables) = lost.finish(self);
        let mut plan = CleanupPlan {
            run_id,
            options: o.clone(),
            grace_seconds: limits.grace,
            max_age_hours: limits.max_age_hours,
            found: collector.found,
            orphans: candidates,
            revived: 0,
            undecidable: collector.undecidable,
            expired: collector.expired,
            unaged: collector.unaged,
            revoked: collector.revoked,
            purged: collector.purged,
            lost_rows,
            skipped_tables,
            live_task_ids: collector.live_task_ids,
            locked_by: lock.map(|(run_id, _)| run_id.to_owned()),
            confirmed_at,
        };
        plan.revived = plan.set_aside_revived();
        Ok(plan)
    }
}

impl Janitor {
    /// Lost rows alone, planned again by a fresh scan (see `Run::apply`).
    pub(crate) async fn plan_lost_rows(
        &self,
        cx: &RunCtx<'_>,
    ) -> Result<(Vec<LostRows>, BTreeMap<String, String>)> {
        let mut lost = LostRowTracker::read(self, true).await?;
        let mut scan = ScanCtx::new(cx.progress, &cx.cancel);
        self.scan(&mut scan, &mut |e: Entry| lost.observe(&e))
            .await?;
        Ok(lost.finish(self))
    }
}
