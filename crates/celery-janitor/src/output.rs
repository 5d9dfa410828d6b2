//! What the commands print: the JSON shapes of docs/cli.md, and the human reports.

use std::io::Write;

use anyhow::Result;
use janitor_config::Settings;
use janitor_engine::{
    ArchivePage, CleanupReport, FullCleanupReport, Page, RestoreReport, RestoreSource, RunRecord,
    StatusReport, TaskRow,
};
use serde::Serialize;

fn print_json<T: Serialize>(out: &mut dyn Write, value: &T) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value)?;
    writeln!(out)?;
    Ok(())
}

fn human_bytes(n: Option<u64>) -> String {
    let Some(n) = n else { return "unknown".into() };
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < units.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

fn by_location(map: &std::collections::BTreeMap<&'static str, u64>) -> String {
    ["queue", "unacked", "result"]
        .iter()
        .map(|l| format!("{l} {}", map.get(l).copied().unwrap_or(0)))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn status(
    out: &mut dyn Write,
    r: &StatusReport,
    settings: &Settings,
    json: bool,
) -> Result<()> {
    if json {
        return print_json(out, r);
    }
    status_header(out, r, settings)?;
    status_tasks(out, r, settings)?;
    status_notes(out, r, settings)?;
    Ok(())
}

/// The report's title, the config file used, and Redis.
fn status_header(out: &mut dyn Write, r: &StatusReport, settings: &Settings) -> Result<()> {
    writeln!(
        out,
        "Cache status report ({})",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    )?;
    match (&settings.config_path, settings.config_origin) {
        (Some(path), Some(origin)) => writeln!(
            out,
            "Config file: {} ({})",
            path.display(),
            origin.describe()
        )?,
        _ => writeln!(
            out,
            "Config file: none (settings from flags and the environment)"
        )?,
    }
    writeln!(out)?;
    writeln!(out, "Redis")?;
    writeln!(
        out,
        "  connection:          {}",
        if r.redis.connected {
            "connected"
        } else {
            "not connected"
        }
    )?;
    writeln!(
        out,
        "  memory used:         {}",
        human_bytes(r.redis.used_memory_bytes)
    )?;
    writeln!(
        out,
        "  client connections:  {}",
        r.redis
            .connected_clients
            .map_or("unknown".into(), |c| c.to_string())
    )?;
    writeln!(out)?;
    Ok(())
}

/// Counts by state and location.
fn status_tasks(out: &mut dyn Write, r: &StatusReport, settings: &Settings) -> Result<()> {
    let t = &r.tasks;
    writeln!(out, "Tasks")?;
    writeln!(
        out,
        "  Celery tasks in Redis: {:>6}   ({})",
        t.in_redis,
        by_location(&t.by_location)
    )?;
    writeln!(
        out,
        "  orphaned:              {:>6}   ({})",
        t.orphaned,
        by_location(&t.orphaned_by_location)
    )?;
    writeln!(out, "  live:                  {:>6}", t.live)?;
    writeln!(
        out,
        "  unowned:               {:>6}   (no [[owners]] rule; never removed)",
        t.unowned
    )?;
    writeln!(
        out,
        "  undecidable:           {:>6}   (owner unreadable; never removed)",
        t.undecidable
    )?;
    let tables: Vec<&str> = settings
        .owners
        .rules()
        .iter()
        .map(|r| r.table.as_str())
        .collect();
    writeln!(
        out,
        "  tasks in the database: {:>6}   ({})",
        t.in_database,
        tables.join(", ")
    )?;
    writeln!(out)?;
    Ok(())
}

/// What to do about what the counts show.
fn status_notes(out: &mut dyn Write, r: &StatusReport, settings: &Settings) -> Result<()> {
    let t = &r.tasks;
    if t.orphaned > 0 {
        writeln!(
            out,
            "WARNING: found {} orphaned task{}; cleanup recommended: celery-janitor cleanup-orphaned (preview with --dry-run)",
            t.orphaned,
            if t.orphaned == 1 { "" } else { "s" }
        )?;
    } else {
        writeln!(out, "No orphaned tasks.")?;
    }
    if r.results.unnamed > 0 {
        writeln!(
            out,
            "NOTE: {} result key{} carry no task name, so their owner can't be checked. Set \
             result_extended=True in your Celery config (or claim_unnamed_results = true on the \
             owner whose id_from is \"task_id\").",
            r.results.unnamed,
            if r.results.unnamed == 1 { "" } else { "s" }
        )?;
    }
    if r.results.groups + r.results.chords_in_progress > 0 {
        writeln!(
            out,
            "Groups: {} saved group result{}, {} chord{} in progress (never removed).",
            r.results.groups,
            if r.results.groups == 1 { "" } else { "s" },
            r.results.chords_in_progress,
            if r.results.chords_in_progress == 1 {
                ""
            } else {
                "s"
            }
        )?;
    }
    if settings.owners.is_empty() {
        writeln!(out, "NOTE: no [[owners]] rules are configured: every task is unowned. See `celery-janitor init`.")?;
    }
    let wrong = &r.wrong_type_keys;
    if wrong.count > 0 {
        let examples: Vec<String> = wrong
            .examples
            .iter()
            .take(3)
            .map(|w| format!("{} is a {}, expected a {}", w.key, w.found, w.expected))
            .collect();
        let (noun, verb, them) = if wrong.count == 1 {
            ("key", "holds", "it was")
        } else {
            ("keys", "hold", "they were")
        };
        writeln!(
            out,
            "WARNING: {} {noun} where Celery keeps its data {verb} another type, so {them} skipped (e.g. {}). Something other than Celery wrote {}.",
            wrong.count,
            examples.join("; "),
            if wrong.count == 1 { "it" } else { "them" }
        )?;
    }
    Ok(())
}

pub(crate) fn tasks(out: &mut dyn Write, rows: &[TaskRow], json: bool) -> Result<()> {
    if json {
        return print_json(out, &rows);
    }
    if rows.is_empty() {
        writeln!(out, "No tasks.")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<12} {:<8} {:<14} {:<38} {:<32} OWNER",
        "STATE", "WHERE", "QUEUE", "TASK ID", "TASK"
    )?;
    for r in rows {
        let owner = match (&r.owner_table, &r.owner_id) {
            (Some(t), Some(id)) => format!("{t}#{id}"),
            (Some(t), None) => format!("{t}#?"),
            _ => "-".into(),
        };
        writeln!(
            out,
            "{:<12} {:<8} {:<14} {:<38} {:<32} {}",
            r.state.as_str(),
            r.location.as_str(),
            match (&r.queue, r.priority_step) {
                (Some(q), Some(step)) => format!("{q} (p{step})"),
                (Some(q), None) => q.clone(),
                (None, _) => "-".into(),
            },
            r.task_id.as_deref().unwrap_or("-"),
            r.task_name.as_deref().unwrap_or("-"),
            owner
        )?;
    }
    writeln!(
        out,
        "{} entr{}",
        rows.len(),
        if rows.len() == 1 { "y" } else { "ies" }
    )?;
    Ok(())
}

/// `tasks --page`: with `--json`, `{"items": [...], "next_cursor": ...}`; else the table and,
/// when more rows follow, the cursor of the next page.
pub(crate) fn tasks_page(out: &mut dyn Write, page: &Page<TaskRow>, json: bool) -> Result<()> {
    if json {
        #[derive(Serialize)]
        struct Json<'a> {
            items: &'a [TaskRow],
            next_cursor: Option<String>,
        }
        let next_cursor = page.next_cursor.as_ref().map(ToString::to_string);
        return print_json(
            out,
            &Json {
                items: &page.rows,
                next_cursor,
            },
        );
    }
    tasks(out, &page.rows, false)?;
    if let Some(cursor) = &page.next_cursor {
        writeln!(out, "Next page: --cursor {cursor}")?;
    }
    Ok(())
}

fn cleanup_lines(out: &mut dyn Write, r: &CleanupReport) -> Result<()> {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    writeln!(
        out,
        "Orphans: found {} (queue {}, unacked {}, result {})",
        r.found.total(),
        r.found.queue,
        r.found.unacked,
        r.found.result
    )?;
    writeln!(
        out,
        "  {verb} {} (queue {}, unacked {}, result {}); archived {}",
        r.removed.total(),
        r.removed.queue,
        r.removed.unacked,
        r.removed.result,
        r.archived
    )?;
    if r.skipped.revived + r.skipped.changed + r.skipped.busy > 0 {
        writeln!(
            out,
            "  kept: {} whose row appeared during the grace period, {} taken or changed by a worker, {} skipped while a worker held unacked_mutex",
            r.skipped.revived, r.skipped.changed, r.skipped.busy
        )?;
    }
    if r.undecidable > 0 {
        writeln!(
            out,
            "  {} undecidable entries were left alone (see `celery-janitor tasks`)",
            r.undecidable
        )?;
    }
    if let Some(rv) = &r.revoke {
        writeln!(
            out,
            "  revoke broadcast for {} task id{} heard by {} live worker{}",
            rv.task_ids,
            if rv.task_ids == 1 { "" } else { "s" },
            rv.heard_by,
            if rv.heard_by == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

fn run_footer(out: &mut dyn Write, run_id: &str, dry_run: bool) -> Result<()> {
    if dry_run {
        writeln!(out, "Dry run: nothing was changed.")?;
    } else {
        writeln!(
            out,
            "Run {run_id}. Undo with: celery-janitor restore --run {run_id}"
        )?;
    }
    Ok(())
}

pub(crate) fn cleanup(out: &mut dyn Write, r: &CleanupReport, json: bool) -> Result<()> {
    if json {
        return print_json(out, r);
    }
    cleanup_lines(out, r)?;
    run_footer(out, &r.run_id, r.dry_run)?;
    Ok(())
}

/// `purge-queue`: the cleanup report's JSON; a report of its own for people.
pub(crate) fn purge(out: &mut dyn Write, queue: &str, r: &CleanupReport, json: bool) -> Result<()> {
    if json {
        return print_json(out, r);
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    writeln!(
        out,
        "Queue {queue}: found {} message{} (every priority sub-list)",
        r.found.queue,
        if r.found.queue == 1 { "" } else { "s" }
    )?;
    writeln!(out, "  {verb} {}; archived {}", r.removed.queue, r.archived)?;
    if r.skipped.changed > 0 {
        writeln!(
            out,
            "  kept: {} taken by a worker before their removal",
            r.skipped.changed
        )?;
    }
    if r.undecidable > 0 {
        writeln!(
            out,
            "  {} list element{} that {} not Celery messages left alone",
            r.undecidable,
            if r.undecidable == 1 { "" } else { "s" },
            if r.undecidable == 1 { "is" } else { "are" }
        )?;
    }
    run_footer(out, &r.run_id, r.dry_run)
}

/// `archive`: `{"items": [...], "next_cursor": ...}` with `--json`; else a table and, when more
/// entries follow, the cursor of the next page.
pub(crate) fn archive(out: &mut dyn Write, page: &ArchivePage, json: bool) -> Result<()> {
    if json {
        return print_json(out, page);
    }
    if page.items.is_empty() {
        writeln!(out, "No archived entries.")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<20} {:<26} {:<8} {:<10} {:<24} {:<38} {:<28} OWNER",
        "ARCHIVE ID", "RUN", "WHERE", "REASON", "KEY", "TASK ID", "TASK"
    )?;
    for i in &page.items {
        let owner = i
            .owner
            .as_ref()
            .map_or_else(|| "-".to_owned(), |o| format!("{}#{}", o.table, o.id));
        writeln!(
            out,
            "{:<20} {:<26} {:<8} {:<10} {:<24} {:<38} {:<28} {}",
            i.archive_id,
            i.run_id.as_deref().unwrap_or("-"),
            i.location.as_str(),
            i.reason.as_deref().unwrap_or("-"),
            i.key,
            i.task_id.as_deref().unwrap_or("-"),
            i.task_name.as_deref().unwrap_or("-"),
            owner
        )?;
    }
    writeln!(
        out,
        "{} entr{}",
        page.items.len(),
        if page.items.len() == 1 { "y" } else { "ies" }
    )?;
    if let Some(cursor) = &page.next_cursor {
        writeln!(out, "Next page: --cursor {cursor}")?;
    }
    Ok(())
}

/// `runs`: the records as stored with `--json`; else one line per run.
pub(crate) fn runs(out: &mut dyn Write, runs: &[RunRecord], json: bool) -> Result<()> {
    if json {
        return print_json(out, &runs);
    }
    if runs.is_empty() {
        writeln!(out, "No runs recorded.")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<26} {:<17} {:<11} {:<20} {:<20} {:>7} {:>8} {:>6}  HOST",
        "RUN", "COMMAND", "OUTCOME", "STARTED", "ENDED", "REMOVED", "ARCHIVED", "MARKED"
    )?;
    let time = |t: &chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S").to_string();
    for r in runs {
        writeln!(
            out,
            "{:<26} {:<17} {:<11} {:<20} {:<20} {:>7} {:>8} {:>6}  {}",
            r.run_id,
            r.command,
            r.outcome.as_str(),
            time(&r.started_at),
            r.ended_at.as_ref().map_or_else(|| "-".to_owned(), time),
            r.removed.total(),
            r.archived,
            r.lost_rows_marked,
            r.host
        )?;
        if let Some(error) = &r.error {
            writeln!(out, "  error: {error}")?;
        }
    }
    Ok(())
}

pub(crate) fn full_cleanup(out: &mut dyn Write, r: &FullCleanupReport, json: bool) -> Result<()> {
    if json {
        return print_json(out, r);
    }
    writeln!(out, "Full cleanup report")?;
    cleanup_lines(out, &r.orphans)?;
    let e = &r.expired_results;
    writeln!(
        out,
        "Results older than {} h: {} {} ({} without TTL); {} could not be aged",
        e.max_age_hours,
        if r.dry_run { "would remove" } else { "removed" },
        e.removed,
        e.without_ttl,
        e.unaged
    )?;
    let l = &r.lost_rows;
    writeln!(
        out,
        "Lost rows: {} {}",
        if r.dry_run { "would mark" } else { "marked" },
        l.marked
    )?;
    for (table, n) in &l.by_table {
        writeln!(out, "  {table}: {n}")?;
    }
    for (table, why) in &l.skipped_tables {
        writeln!(out, "  {table}: skipped: {why}")?;
    }
    run_footer(out, &r.run_id, r.dry_run)?;
    Ok(())
}

fn entries(n: u64) -> String {
    format!("{n} entr{}", if n == 1 { "y" } else { "ies" })
}

/// The human report of `revoke`.
pub(crate) fn revoke(
    out: &mut dyn Write,
    r: &janitor_engine::DurableRevokeReport,
    json: bool,
) -> Result<()> {
    if json {
        return print_json(out, r);
    }
    let targets: Vec<String> = r
        .task_ids
        .iter()
        .cloned()
        .chain(r.owners.iter().map(|o| format!("{}:{}", o.table, o.id)))
        .collect();
    if r.undo {
        writeln!(
            out,
            "Lifted {} of {} revocation(s): {}",
            r.keys,
            targets.len(),
            targets.join(", ")
        )?;
        return Ok(());
    }
    writeln!(
        out,
        "Revoked {} for {} days: {}",
        targets.len(),
        r.ttl_days.unwrap_or_default(),
        targets.join(", ")
    )?;
    if let Some(b) = &r.broadcast {
        writeln!(
            out,
            "Celery revoke broadcast for {} task id(s), heard by {} worker(s)",
            b.task_ids, b.heard_by
        )?;
    }
    match (&r.removal, &r.removal_skipped) {
        (Some(c), _) => writeln!(
            out,
            "Removed {} queued, {} unacked (archived {}); run {}",
            c.removed.queue, c.removed.unacked, c.archived, c.run_id
        )?,
        (None, Some(why)) => writeln!(out, "Removal of queued copies skipped: {why}")?,
        (None, None) => {}
    }
    Ok(())
}

/// The human report of `restore`. Missing entries and warnings go to standard error (see
/// `commands.rs`).
pub(crate) fn restore(out: &mut dyn Write, r: &RestoreReport, json: bool) -> Result<()> {
    if json {
        return print_json(out, r);
    }
    let total = r.restored_total();
    if total == 0 && r.skipped == 0 {
        match &r.run_id {
            Some(id) if r.already_restored > 0 => writeln!(
                out,
                "Run {id}: nothing left to restore ({} already restored).",
                entries(r.already_restored)
            )?,
            Some(id) => writeln!(
                out,
                "Run {id}: nothing to restore: the archive holds no entry of it."
            )?,
            None => writeln!(
                out,
                "Nothing to restore: the archive holds no matching entry."
            )?,
        }
        return Ok(());
    }
    let source = match (r.source, &r.archive_file) {
        (RestoreSource::File, Some(path)) => format!("archive file {path}"),
        _ => "the Redis archive".to_owned(),
    };
    writeln!(
        out,
        "{} {} (queue {}, unacked {}, result {}){} from {source}.",
        if r.dry_run {
            "Would restore"
        } else {
            "Restored"
        },
        entries(total),
        r.restored.get("queue").unwrap_or(&0),
        r.restored.get("unacked").unwrap_or(&0),
        r.restored.get("result").unwrap_or(&0),
        r.run_id
            .as_ref()
            .map(|id| format!(" of run {id}"))
            .unwrap_or_default(),
    )?;
    if r.already_restored > 0 {
        writeln!(
            out,
            "  {} already restored before",
            entries(r.already_restored)
        )?;
    }
    if r.skipped > 0 {
        writeln!(
            out,
            "  {} skipped: the result key or unacked field exists again (left alone)",
            entries(r.skipped)
        )?;
    }
    Ok(())
}
