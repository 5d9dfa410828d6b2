//! What the commands print: the JSON shapes of docs/cli.md, and the human reports.

use std::io::Write;

use anyhow::Result;
use janitor_config::Settings;
use janitor_engine::{
    CleanupReport, FullCleanupReport, RestoreReport, RestoreSource, StatusReport, TaskRow,
};
use serde::Serialize;

fn print_json<T: Serialize>(value: &T) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
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

pub(crate) fn status(r: &StatusReport, settings: &Settings, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    status_header(r, settings);
    status_tasks(r, settings);
    status_notes(r, settings);
    Ok(())
}

/// The report's title, the config file used, and Redis.
fn status_header(r: &StatusReport, settings: &Settings) {
    println!(
        "Cache status report ({})",
        chrono::Utc::now().format("%Y-%m-%d %H:%M:%S UTC")
    );
    match (&settings.config_path, settings.config_origin) {
        (Some(path), Some(origin)) => {
            println!("Config file: {} ({})", path.display(), origin.describe())
        }
        _ => println!("Config file: none (settings from flags and the environment)"),
    }
    println!();
    println!("Redis");
    println!(
        "  connection:          {}",
        if r.redis.connected {
            "connected"
        } else {
            "not connected"
        }
    );
    println!(
        "  memory used:         {}",
        human_bytes(r.redis.used_memory_bytes)
    );
    println!(
        "  client connections:  {}",
        r.redis
            .connected_clients
            .map_or("unknown".into(), |c| c.to_string())
    );
    println!();
}

/// Counts by state and location.
fn status_tasks(r: &StatusReport, settings: &Settings) {
    let t = &r.tasks;
    println!("Tasks");
    println!(
        "  Celery tasks in Redis: {:>6}   ({})",
        t.in_redis,
        by_location(&t.by_location)
    );
    println!(
        "  orphaned:              {:>6}   ({})",
        t.orphaned,
        by_location(&t.orphaned_by_location)
    );
    println!("  live:                  {:>6}", t.live);
    println!(
        "  unowned:               {:>6}   (no [[owners]] rule; never removed)",
        t.unowned
    );
    println!(
        "  undecidable:           {:>6}   (owner unreadable; never removed)",
        t.undecidable
    );
    let tables: Vec<&str> = settings
        .owners
        .rules()
        .iter()
        .map(|r| r.table.as_str())
        .collect();
    println!(
        "  tasks in the database: {:>6}   ({})",
        t.in_database,
        tables.join(", ")
    );
    println!();
}

/// What to do about what the counts show.
fn status_notes(r: &StatusReport, settings: &Settings) {
    let t = &r.tasks;
    if t.orphaned > 0 {
        println!(
            "WARNING: found {} orphaned task{}; cleanup recommended: celery-janitor cleanup-orphaned (preview with --dry-run)",
            t.orphaned,
            if t.orphaned == 1 { "" } else { "s" }
        );
    } else {
        println!("No orphaned tasks.");
    }
    if r.results.unnamed > 0 {
        println!(
            "NOTE: {} result key{} carry no task name, so their owner can't be checked. Set \
             result_extended=True in your Celery config (or claim_unnamed_results = true on the \
             owner whose id_from is \"task_id\").",
            r.results.unnamed,
            if r.results.unnamed == 1 { "" } else { "s" }
        );
    }
    if r.results.groups + r.results.chords_in_progress > 0 {
        println!(
            "Groups: {} saved group result{}, {} chord{} in progress (never removed).",
            r.results.groups,
            if r.results.groups == 1 { "" } else { "s" },
            r.results.chords_in_progress,
            if r.results.chords_in_progress == 1 {
                ""
            } else {
                "s"
            }
        );
    }
    if settings.owners.is_empty() {
        println!("NOTE: no [[owners]] rules are configured: every task is unowned. See `celery-janitor init`.");
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
        println!(
            "WARNING: {} {noun} where Celery keeps its data {verb} another type, so {them} skipped (e.g. {}). Something other than Celery wrote {}.",
            wrong.count,
            examples.join("; "),
            if wrong.count == 1 { "it" } else { "them" }
        );
    }
}

pub(crate) fn tasks(rows: &[TaskRow], json: bool) -> Result<()> {
    if json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("No tasks.");
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
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

fn cleanup_lines(r: &CleanupReport) {
    let verb = if r.dry_run { "would remove" } else { "removed" };
    println!(
        "Orphans: found {} (queue {}, unacked {}, result {})",
        r.found.total(),
        r.found.queue,
        r.found.unacked,
        r.found.result
    );
    println!(
        "  {verb} {} (queue {}, unacked {}, result {}); archived {}",
        r.removed.total(),
        r.removed.queue,
        r.removed.unacked,
        r.removed.result,
        r.archived
    );
    if r.skipped.revived + r.skipped.changed + r.skipped.busy > 0 {
        println!(
            "  kept: {} whose row appeared during the grace period, {} taken or changed by a worker, {} skipped while a worker held unacked_mutex",
            r.skipped.revived, r.skipped.changed, r.skipped.busy
        );
    }
    if r.undecidable > 0 {
        println!(
            "  {} undecidable entries were left alone (see `celery-janitor tasks`)",
            r.undecidable
        );
    }
    if let Some(rv) = &r.revoke {
        println!(
            "  revoke broadcast for {} task id{} heard by {} live worker{}",
            rv.task_ids,
            if rv.task_ids == 1 { "" } else { "s" },
            rv.heard_by,
            if rv.heard_by == 1 { "" } else { "s" }
        );
    }
}

fn run_footer(run_id: &str, dry_run: bool) {
    if dry_run {
        println!("Dry run: nothing was changed.");
    } else {
        println!("Run {run_id}. Undo with: celery-janitor restore --run {run_id}");
    }
}

pub(crate) fn cleanup(r: &CleanupReport, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    cleanup_lines(r);
    run_footer(&r.run_id, r.dry_run);
    Ok(())
}

pub(crate) fn full_cleanup(r: &FullCleanupReport, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    println!("Full cleanup report");
    cleanup_lines(&r.orphans);
    let e = &r.expired_results;
    println!(
        "Results older than {} h: {} {} ({} without TTL); {} could not be aged",
        e.max_age_hours,
        if r.dry_run { "would remove" } else { "removed" },
        e.removed,
        e.without_ttl,
        e.unaged
    );
    let l = &r.lost_rows;
    println!(
        "Lost rows: {} {}",
        if r.dry_run { "would mark" } else { "marked" },
        l.marked
    );
    for (table, n) in &l.by_table {
        println!("  {table}: {n}");
    }
    for (table, why) in &l.skipped_tables {
        println!("  {table}: skipped: {why}");
    }
    run_footer(&r.run_id, r.dry_run);
    Ok(())
}

fn entries(n: u64) -> String {
    format!("{n} entr{}", if n == 1 { "y" } else { "ies" })
}

/// The human report of `restore`. Missing entries and warnings go to standard error (see
/// `commands.rs`).
pub(crate) fn revoke(r: &janitor_engine::DurableRevokeReport, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    let targets: Vec<String> = r
        .task_ids
        .iter()
        .cloned()
        .chain(r.owners.iter().map(|o| format!("{}:{}", o.table, o.id)))
        .collect();
    if r.undo {
        println!(
            "Lifted {} of {} revocation(s): {}",
            r.keys,
            targets.len(),
            targets.join(", ")
        );
        return Ok(());
    }
    println!(
        "Revoked {} for {} days: {}",
        targets.len(),
        r.ttl_days.unwrap_or_default(),
        targets.join(", ")
    );
    if let Some(b) = &r.broadcast {
        println!(
            "Celery revoke broadcast for {} task id(s), heard by {} worker(s)",
            b.task_ids, b.heard_by
        );
    }
    match (&r.removal, &r.removal_skipped) {
        (Some(c), _) => {
            println!(
                "Removed {} queued, {} unacked (archived {}); run {}",
                c.removed.queue, c.removed.unacked, c.archived, c.run_id
            );
        }
        (None, Some(why)) => println!("Removal of queued copies skipped: {why}"),
        (None, None) => {}
    }
    Ok(())
}

pub(crate) fn restore(r: &RestoreReport, json: bool) -> Result<()> {
    if json {
        return print_json(r);
    }
    let total = r.restored_total();
    if total == 0 && r.skipped == 0 {
        match &r.run_id {
            Some(id) if r.already_restored > 0 => println!(
                "Run {id}: nothing left to restore ({} already restored).",
                entries(r.already_restored)
            ),
            Some(id) => println!("Run {id}: nothing to restore: the archive holds no entry of it."),
            None => println!("Nothing to restore: the archive holds no matching entry."),
        }
        return Ok(());
    }
    let source = match (r.source, &r.archive_file) {
        (RestoreSource::File, Some(path)) => format!("archive file {path}"),
        _ => "the Redis archive".to_owned(),
    };
    println!(
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
    );
    if r.already_restored > 0 {
        println!("  {} already restored before", entries(r.already_restored));
    }
    if r.skipped > 0 {
        println!(
            "  {} skipped: the result key or unacked field exists again (left alone)",
            entries(r.skipped)
        );
    }
    Ok(())
}
