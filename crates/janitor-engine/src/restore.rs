//! `restore`: puts archived entries back, byte for byte, where they were — queue messages at the
//! consume end of their list (as kombu's own restore does), `unacked` entries with their index
//! score, results with their remaining TTL.
//!
//! Which run: the newest in the run record (`runs.rs`) unless `--run`, `--all` or `--from-file`
//! says otherwise; the report names it. Where from: this host's archive file of the run when it
//! has it, else the Redis archive stream — in both cases with the stream entries of the run the
//! file lacks. Each archive id is restored at most once: restored ids are kept per run, in
//! `celery-janitor:restored:<run id>` (ids restored by earlier versions are in
//! `celery-janitor:restored`, which is still honoured), so a second `restore` finds nothing left.
//! What was found — left to restore plus already restored — is checked against the run record's
//! counts: entries missing (a run larger than the capped stream, whose file is on another host or
//! gone) are reported with the command that restores them, and the command exits 1.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::archive::{
    printable, stream_id_order, stream_record, unb64, ArchiveFile, ArchiveRecord, StreamEntry,
};
use crate::audit::AuditEvent;
use crate::classify::Location;
use crate::context::RunCtx;
use crate::error::{EngineError, Result};
use crate::host::hostname;
use crate::janitor::{Janitor, OwnKey};
use crate::lock::RunLock;
use crate::redis_io::{RedisHandle, WrongTypeReply};
use crate::reports::LocationCounts;
use crate::runs::{RunOutcome, RunRecord};
use crate::scripts::{RestoreKeys, RestoreOutcome, RestoreTarget};

/// How long a set of restored archive ids is kept.
const RESTORED_KEEP_SECONDS: u64 = 30 * 24 * 3600;
/// Commands per pipelined round trip.
const PIPELINE: usize = 1000;

#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Restore this run's entries (default: the newest run in the run record).
    pub run_id: Option<String>,
    /// Restore every archived entry.
    pub all: bool,
    /// Only entries of these task ids.
    pub task_ids: Vec<String>,
    /// Read the entries from this archive file (with the stream entries of the run it lacks).
    pub from_file: Option<PathBuf>,
    pub dry_run: bool,
    /// Take over a run lock that is stale (see `CleanupOptions::take_over_lock`).
    pub take_over_lock: bool,
}

/// Where the entries were read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RestoreSource {
    /// An archive file (completed with the run's stream entries it lacks).
    File,
    /// The Redis archive stream.
    #[default]
    Stream,
}

#[derive(Debug, Clone, Default, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RestoreReport {
    /// The run restored (`None` with `--all`, or when no run is archived).
    pub run_id: Option<String>,
    pub dry_run: bool,
    pub restored: BTreeMap<&'static str, u64>,
    /// The target was occupied (a result key or unacked field exists again): left alone.
    pub skipped: u64,
    pub source: RestoreSource,
    /// The archive file read, when `source` is "file".
    pub archive_file: Option<String>,
    /// Entries the run archived, from its run record (`None`: unknown — no record, a run that
    /// never ended, `--all` or `--task-id`).
    pub expected: Option<u64>,
    /// Entries of the run restored before (by an earlier `restore`).
    pub already_restored: u64,
    /// `expected` less what was found (left to restore + already restored): entries that
    /// neither the file read nor the stream holds.
    pub missing: u64,
    /// When entries are missing: where they are and the command that restores them.
    pub hint: Option<String>,
    /// Lines of the archive file that could not be read, and other problems worked around.
    pub warnings: Vec<String>,
}

impl RestoreReport {
    pub fn restored_total(&self) -> u64 {
        self.restored.values().sum()
    }
}

/// One archived entry, decoded, ready for `restore_entry.lua`.
struct Archived {
    id: String,
    backend: bool,
    location: Location,
    key: Vec<u8>,
    value: Vec<u8>,
    field: Vec<u8>,
    index_key: Vec<u8>,
    score: String,
    pttl: i64,
    run_id: String,
    task_id: Option<String>,
    /// The owner row (table, id) the removal named.
    owner: Option<(String, String)>,
}

/// A message put back: the run that removed it, its task id and owner row.
pub(crate) type RestoredTask = (String, String, Option<(String, String)>);

impl Archived {
    fn decode(r: ArchiveRecord) -> Result<Archived> {
        let opt = |v: Option<String>| -> Result<Vec<u8>> {
            Ok(v.as_deref().map(unb64).transpose()?.unwrap_or_default())
        };
        Ok(Archived {
            backend: r.redis == "backend",
            location: r.location,
            key: unb64(&r.key_b64)?,
            value: unb64(&r.value_b64)?,
            field: opt(r.field_b64)?,
            index_key: opt(r.index_key_b64)?,
            score: r.score.unwrap_or_default(),
            pttl: r.pttl.unwrap_or(-1),
            task_id: r.task_id,
            owner: r.owner_table.zip(r.owner_id),
            run_id: r.run_id,
            id: r.archive_id,
        })
    }
}

/// Where a restore's entries are (see `Janitor::locate_run`).
struct Located {
    run_id: Option<String>,
    record: Option<RunRecord>,
    /// No run record names the run: archives of an earlier version.
    unrecorded: bool,
    file: Option<(PathBuf, Vec<ArchiveRecord>)>,
    stream: Vec<ArchiveRecord>,
}

/// The file's entries first, then the stream entries it lacks; one entry per archive id, of
/// the run and task ids asked for.
fn select_entries(
    opts: &RestoreOptions,
    located: Located,
    report: &mut RestoreReport,
) -> Vec<Archived> {
    let mut seen = HashSet::new();
    let mut records = Vec::new();
    if let Some((path, from_file)) = located.file {
        report.source = RestoreSource::File;
        report.archive_file = Some(path.display().to_string());
        records.extend(from_file);
    }
    records.extend(located.stream);
    let run_id = located.run_id;
    records.retain(|r| {
        run_id.as_ref().is_none_or(|run| &r.run_id == run)
            && (opts.task_ids.is_empty()
                || r.task_id
                    .as_ref()
                    .is_some_and(|t| opts.task_ids.contains(t)))
            && seen.insert(r.archive_id.clone())
    });
    let mut entries = Vec::with_capacity(records.len());
    for r in records {
        let id = r.archive_id.clone();
        match Archived::decode(r) {
            Ok(e) => entries.push(e),
            Err(e) => report
                .warnings
                .push(format!("skipped archive entry {id}: {e}")),
        }
    }
    entries
}

/// A `CJWRONGTYPE`/`CJBADARG` reply of `restore_entry.lua`, with the key named.
fn script_error(e: redis::RedisError, keys: &[&[u8]], archive_id: &str) -> EngineError {
    match WrongTypeReply::parse(&e, keys) {
        Some(WrongTypeReply {
            key: Some(key),
            found,
            expected,
        }) => EngineError::Restore {
            archive_id: archive_id.to_owned(),
            message: format!("key {key} is a {found}, expected a {expected} (or no key); nothing was written for this entry"),
        },
        _ => EngineError::Restore {
            archive_id: archive_id.to_owned(),
            message: e.to_string(),
        },
    }
}

impl Janitor {
    pub async fn restore(&self, opts: &RestoreOptions, cx: &RunCtx<'_>) -> Result<RestoreReport> {
        if opts.dry_run {
            return self.restore_holding_lock(opts, cx).await;
        }
        // Under the run lock: a cleanup in progress would otherwise be undone halfway (its run
        // is "running", so the newest), and the messages put back would move under its feet.
        let id = uuid::Uuid::new_v4().simple().to_string();
        let lock = RunLock::take(
            &self.scripts.lock,
            self.lock_handles(),
            &self.own_key(OwnKey::Lock),
            &format!("restore-{}", &id[..8]),
            opts.take_over_lock,
        )
        .await?;
        let outcome = self.restore_holding_lock(opts, cx).await;
        lock.release().await;
        outcome
    }

    async fn restore_holding_lock(
        &self,
        opts: &RestoreOptions,
        cx: &RunCtx<'_>,
    ) -> Result<RestoreReport> {
        let progress = cx.progress;
        let mut report = RestoreReport {
            dry_run: opts.dry_run,
            ..Default::default()
        };
        for l in Location::ALL {
            report.restored.insert(l.as_str(), 0);
        }
        // An interrupted run's archive file may lack its last batch: complete it first. This
        // only appends to the janitor's own files, so a dry run skips it and reads the stream.
        if !opts.dry_run {
            self.repair_archive_files().await?;
        }
        let located = self.locate_run(opts, &mut report).await?;
        let (run_id, record, unrecorded) = (
            located.run_id.clone(),
            located.record.clone(),
            located.unrecorded,
        );
        let entries = select_entries(opts, located, &mut report);
        let pending = self
            .not_yet_restored(
                opts,
                run_id.as_deref(),
                record.as_ref(),
                entries,
                &mut report,
            )
            .await?;

        let pending = consume_order(pending);
        let mut found = LocationCounts::default();
        for e in &pending {
            found.add(e.location, 1);
        }
        let found_total = found.total() + report.already_restored;

        progress.phase("restoring", Some(pending.len() as u64));
        let mut restored_tasks = Vec::new();
        let outcome =
            self.restore_entries(pending, opts.dry_run, &mut report, &mut restored_tasks, cx);
        let outcome = outcome.await;
        self.audit.sync().await?;
        outcome?;
        self.warn_of_revoked(&restored_tasks, &mut report).await;
        self.warn_of_durable_revocations(&restored_tasks, &mut report)
            .await;
        if let (true, false, None, Some(run)) = (unrecorded, opts.dry_run, &record, &run_id) {
            if found_total > 0 && opts.task_ids.is_empty() {
                let file_here = report.source == RestoreSource::File;
                self.adopt_unrecorded_run(run, found, found_total, file_here)
                    .await?;
            }
        }
        progress.finish();
        Ok(report)
    }

    /// Which run to restore and where its archived entries are: the archive file named, or
    /// this host's archive file of the run, and the archive stream(s).
    async fn locate_run(
        &self,
        opts: &RestoreOptions,
        report: &mut RestoreReport,
    ) -> Result<Located> {
        let mut file: Option<(PathBuf, Vec<ArchiveRecord>)> = None;
        if let Some(path) = &opts.from_file {
            file = Some((path.clone(), self.read_file(path, report)?));
        }
        let mut run_id = if opts.all {
            None
        } else if let Some(run) = &opts.run_id {
            Some(run.clone())
        } else if let Some((_, records)) = &file {
            records.iter().map(|r| r.run_id.clone()).max()
        } else {
            self.latest_restorable_run().await?
        };
        let mut stream = Vec::new();
        let unrecorded = run_id.is_none() && !opts.all && file.is_none();
        if unrecorded {
            // No run recorded: archives of an earlier version. The run of the newest entry.
            stream = self.archived_in_streams(&|_| true).await?;
            run_id = stream
                .iter()
                .max_by_key(|r| stream_id_order(&r.archive_id))
                .map(|r| r.run_id.clone());
            stream.retain(|r| Some(&r.run_id) == run_id.as_ref());
        } else if let Some(run) = &run_id {
            stream = self.archived_in_streams(&|r| r == run).await?;
        } else if file.is_none() {
            stream = self.archived_in_streams(&|_| true).await?;
        }
        let record = match &run_id {
            Some(run) => self.run_record(run).await?,
            None => None,
        };
        if let (None, Some(run)) = (&file, &run_id) {
            let own = match &record {
                Some(r) if r.host == hostname() => Some(PathBuf::from(&r.archive_file)),
                Some(_) => None,
                None => Some(self.audit.log().archive_path(run)),
            };
            if let Some(path) = own.filter(|p| p.is_file()) {
                let records = self.read_file(&path, report)?;
                file = Some((path, records));
            }
        }
        report.run_id = run_id.clone();
        Ok(Located {
            run_id,
            record,
            unrecorded,
            file,
            stream,
        })
    }

    /// The entries not restored yet: by archive id, in the run's set or (earlier versions) the
    /// global set. Counts the others, and what is missing, in `report`.
    async fn not_yet_restored(
        &self,
        opts: &RestoreOptions,
        run_id: Option<&str>,
        record: Option<&RunRecord>,
        entries: Vec<Archived>,
        report: &mut RestoreReport,
    ) -> Result<Vec<Archived>> {
        let restored_before = self.restored_flags(&entries).await?;
        let mut legacy = 0;
        let mut pending = Vec::new();
        for (e, (in_run_set, in_global)) in entries.into_iter().zip(restored_before) {
            if in_run_set || in_global {
                if !in_run_set {
                    legacy += 1;
                }
                if !opts.task_ids.is_empty() || run_id.is_none() {
                    report.already_restored += 1;
                }
            } else {
                pending.push(e);
            }
        }
        if let (Some(run), true) = (run_id, opts.task_ids.is_empty()) {
            // Restored entries leave the stream, so count them by the run's set.
            report.already_restored = self.restored_count(run).await? + legacy;
            report.expected = record.and_then(expected_entries);
            let found = pending.len() as u64 + report.already_restored;
            report.missing = report.expected.unwrap_or(0).saturating_sub(found);
            if report.missing > 0 {
                report.hint = Some(missing_hint(
                    run,
                    report.missing,
                    report.expected.unwrap_or(0),
                    record,
                    report.archive_file.as_deref(),
                ));
            }
        }
        Ok(pending)
    }

    /// Restores each entry; `restored_tasks` gets the (run id, task id) of each message put back.
    async fn restore_entries(
        &self,
        entries: Vec<Archived>,
        dry_run: bool,
        report: &mut RestoreReport,
        restored_tasks: &mut Vec<RestoredTask>,
        cx: &RunCtx<'_>,
    ) -> Result<()> {
        let archive = self.own_key(OwnKey::Archive);
        let global_set = self.own_key(OwnKey::RestoredBefore);
        let progress = cx.progress;
        for e in entries {
            // Between entries: each restore is one atomic script.
            cx.cancel.check()?;
            if dry_run {
                *report.restored.entry(e.location.as_str()).or_default() += 1;
                progress.advance(1);
                continue;
            }
            let run_set = self.restored_key(&e.run_id);
            let index_key = if e.index_key.is_empty() {
                &e.key
            } else {
                &e.index_key
            };
            let keys = RestoreKeys {
                archive: &archive,
                restored_before: &global_set,
                target: &e.key,
                index: index_key,
                restored: &run_set,
            };
            let target = RestoreTarget {
                archive_id: &e.id,
                kind: e.location.as_str(),
                value: &e.value,
                field: &e.field,
                score: &e.score,
                pttl: e.pttl,
            };
            let mut con = self.handle(e.backend).con.clone();
            let outcome = self
                .scripts
                .restore
                .call(&mut con, &keys, &target, RESTORED_KEEP_SECONDS)
                .await
                .map_err(|err| script_error(err, &keys.as_array(), &e.id))?;
            match outcome {
                RestoreOutcome::Restored => {
                    *report.restored.entry(e.location.as_str()).or_default() += 1;
                    if let (Location::Queue | Location::Unacked, Some(task)) =
                        (e.location, &e.task_id)
                    {
                        restored_tasks.push((e.run_id.clone(), task.clone(), e.owner.clone()));
                    }
                    self.audit
                        .record(&AuditEvent::Restore {
                            run_id: &e.run_id,
                            archive_id: &e.id,
                            location: e.location,
                            key: printable(&e.key),
                            task_id: e.task_id.as_deref(),
                        })
                        .await?;
                }
                // Restored meanwhile by another `restore`.
                RestoreOutcome::AlreadyRestored => report.already_restored += 1,
                RestoreOutcome::Occupied => report.skipped += 1,
            }
            progress.advance(1);
        }
        Ok(())
    }

    /// The cleanup revoked some of these tasks (see `revoke_now`): live workers that heard it
    /// discard them when they arrive, until restarted. Restoring can't take a revoke back, so
    /// say so.
    async fn warn_of_revoked(&self, restored: &[RestoredTask], report: &mut RestoreReport) {
        if restored.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (run, task, _) in restored {
            pipe.cmd("SISMEMBER").arg(self.revoked_key(run)).arg(task);
        }
        let mut con = self.broker.con.clone();
        let flags: Vec<bool> = match pipe.query_async(&mut con).await {
            Ok(flags) => flags,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell which restored tasks were revoked");
                return;
            }
        };
        let revoked = flags.iter().filter(|f| **f).count();
        if revoked > 0 {
            let (was, them, they, these) = if revoked == 1 {
                ("tasks was", "it", "it", "this task reaches")
            } else {
                ("tasks were", "them", "them", "these tasks reach")
            };
            report.warnings.push(format!(
                "{revoked} of the restored {was} revoked by the cleanup: Celery workers that \
                 were running then discard {them} when they receive {they} (Celery remembers \
                 revokes for 3 hours, or across restarts with --statedb). Restart those workers \
                 (without their revoke state file) before {these} them, or send {they} anew"
            ));
        }
    }

    fn handle(&self, backend: bool) -> &RedisHandle {
        if backend {
            &self.backend
        } else {
            &self.broker
        }
    }

    /// The Redis connections holding archives: the broker, and the backend when separate.
    fn archive_handles(&self) -> Vec<(&RedisHandle, bool)> {
        let mut handles = vec![(&self.broker, false)];
        if !self.shared_redis {
            handles.push((&self.backend, true));
        }
        handles
    }

    /// The set of archive ids of `run_id` restored so far (the global set for entries whose
    /// stream metadata lost their run id).
    fn restored_key(&self, run_id: &str) -> Vec<u8> {
        if run_id.is_empty() {
            self.own_key(OwnKey::RestoredBefore)
        } else {
            self.own_key(OwnKey::Restored(run_id))
        }
    }

    /// How many archive ids of `run_id` were restored (both Redis servers).
    pub async fn restored_count(&self, run_id: &str) -> Result<u64> {
        let key = self.restored_key(run_id);
        let mut total = 0;
        for (h, _) in self.archive_handles() {
            let mut con = h.con.clone();
            let n: u64 = redis::cmd("SCARD").arg(&key).query_async(&mut con).await?;
            total += n;
        }
        Ok(total)
    }

    /// For each entry: whether its id is in its run's restored set, and in the global one.
    async fn restored_flags(&self, entries: &[Archived]) -> Result<Vec<(bool, bool)>> {
        let mut flags = vec![(false, false); entries.len()];
        let global = self.own_key(OwnKey::RestoredBefore);
        for (h, backend) in self.archive_handles() {
            let on_this: Vec<usize> = (0..entries.len())
                .filter(|&i| self.shared_redis || entries[i].backend == backend)
                .collect();
            for chunk in on_this.chunks(PIPELINE / 2) {
                let mut pipe = redis::pipe();
                for &i in chunk {
                    let e = &entries[i];
                    pipe.cmd("SISMEMBER")
                        .arg(self.restored_key(&e.run_id))
                        .arg(&e.id);
                    pipe.cmd("SISMEMBER").arg(&global).arg(&e.id);
                }
                let mut con = h.con.clone();
                let replies: Vec<bool> = pipe.query_async(&mut con).await?;
                for (&i, pair) in chunk.iter().zip(replies.chunks(2)) {
                    flags[i] = (pair[0], pair[1]);
                }
            }
        }
        Ok(flags)
    }

    fn read_file(&self, path: &Path, report: &mut RestoreReport) -> Result<Vec<ArchiveRecord>> {
        let file = ArchiveFile::read(path)?;
        report.warnings.extend(file.warnings);
        Ok(file.records)
    }

    /// Archived entries in the Redis archive stream(s) whose run id `want_run` accepts, as the
    /// archive file would hold them, oldest first.
    pub(crate) async fn archived_in_streams(
        &self,
        want_run: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<Vec<ArchiveRecord>> {
        let mut out = Vec::new();
        let key = self.own_key(OwnKey::Archive);
        for (h, _) in self.archive_handles() {
            let mut con = h.con.clone();
            let mut start = "-".to_string();
            loop {
                let page: Vec<StreamEntry> = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(500)
                    .query_async(&mut con)
                    .await
                    .map_err(|e| EngineError::ArchiveStream {
                        key: printable(&key),
                        source: e.into(),
                    })?;
                let n = page.len();
                for (id, fields) in page {
                    start = format!("({id}");
                    if let Some(r) = stream_record(id, fields) {
                        if want_run(&r.run_id) {
                            out.push(r);
                        }
                    }
                }
                if n < 500 {
                    break;
                }
            }
        }
        Ok(out)
    }
}

/// The order to restore in: queue messages go back to the consume end of their list (RPUSH),
/// so the one archived last is pushed first — removals go tail first, so a list's messages come
/// back in the order they were queued (a purged queue as it was). Other entries keep their
/// order, ahead of the messages.
fn consume_order(entries: Vec<Archived>) -> Vec<Archived> {
    let (mut queued, mut rest): (Vec<Archived>, Vec<Archived>) = entries
        .into_iter()
        .partition(|e| e.location == Location::Queue);
    queued.sort_by_key(|e| std::cmp::Reverse(stream_id_order(&e.id)));
    rest.extend(queued);
    rest
}

/// The number of entries a run archived, if its record knows it.
fn expected_entries(r: &RunRecord) -> Option<u64> {
    (r.outcome != RunOutcome::Running).then(|| r.archived.max(r.removed.total()))
}

fn missing_hint(
    run: &str,
    missing: u64,
    expected: u64,
    record: Option<&RunRecord>,
    read_file: Option<&str>,
) -> String {
    let head = format!("run {run}: {missing} of its {expected} archived entries were not found");
    let Some(r) = record else {
        return head;
    };
    let command = format!(
        "celery-janitor restore --run {run} --from-file {}",
        r.archive_file
    );
    let read = match read_file {
        Some(f) => format!("in the archive file {f} nor "),
        None => String::new(),
    };
    if r.host != hostname() {
        format!(
            "{head} {read}in the Redis archive (it keeps about 100,000 entries); its archive file \
             is on host {}: run there: {command}",
            r.host
        )
    } else if read_file == Some(r.archive_file.as_str()) {
        format!(
            "{head} {read}in the Redis archive; if you have another copy of the archive file \
             (a backup), restore the rest from it: celery-janitor restore --run {run} --from-file COPY"
        )
    } else if Path::new(&r.archive_file).is_file() {
        format!("{head} {read}in the Redis archive; run: {command}")
    } else {
        format!(
            "{head} {read}in the Redis archive (it keeps about 100,000 entries), and its archive \
             file {} is gone from this host; put it back (from a backup), then run: {command}",
            r.archive_file
        )
    }
}
