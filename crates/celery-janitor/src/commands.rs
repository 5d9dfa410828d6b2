//! Runs one command: resolve settings, connect, call the engine, print.

use anyhow::{Context, Result};
use janitor_config::{Flags, Settings};
use janitor_engine::{CleanupOptions, Janitor, RestoreOptions, State};

use crate::cli::{Cli, Command};
use crate::exit::Code;
use crate::output;
use crate::progress::Bar;

pub fn run(cli: Cli) -> Result<Code> {
    let Cli { global, command } = cli;
    if let Command::Init { path, force } = &command {
        return init(path, *force);
    }
    let mut flags = Flags {
        config: global.config.clone(),
        redis_url: global.redis_url.clone(),
        database_url: global.database_url.clone(),
        app_log: global.log_file.clone(),
        audit_log: global.audit_log.clone(),
        archive_dir: global.archive_dir.clone(),
        ..Default::default()
    };
    match &command {
        Command::Status { grace, .. } | Command::Tasks { grace, .. } => {
            flags.grace_seconds = *grace
        }
        Command::CleanupOrphaned { opts } => flags.grace_seconds = opts.grace,
        Command::FullCleanup {
            opts,
            max_age_hours,
        } => {
            flags.grace_seconds = opts.grace;
            flags.max_age_hours = *max_age_hours;
        }
        _ => {}
    }
    let settings = janitor_config::resolve(&flags, &|k| std::env::var(k).ok())?;
    crate::logging::init(&settings.app_log, global.verbose);
    tracing::info!(
        command = ?command_name(&command),
        broker = %settings.broker_url,
        database = ?settings.database_url.as_ref().map(|u| u.to_string()),
        "starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let quiet = global.quiet;
    runtime.block_on(async move { dispatch(settings, command, quiet).await })
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Status { .. } => "status",
        Command::Tasks { .. } => "tasks",
        Command::CleanupOrphaned { .. } => "cleanup-orphaned",
        Command::FullCleanup { .. } => "full-cleanup",
        Command::Restore { .. } => "restore",
        Command::Init { .. } => "init",
    }
}

async fn dispatch(settings: Settings, command: Command, quiet: bool) -> Result<Code> {
    let janitor = Janitor::connect(settings).await?;
    match command {
        Command::Status { json, .. } => {
            let bar = Bar::new(!json && !quiet);
            let grace = janitor.settings().grace_seconds;
            let report = janitor.status(grace, &bar).await?;
            output::status(&report, janitor.settings(), json)?;
        }
        Command::Tasks {
            orphaned,
            json,
            limit,
            ..
        } => {
            let bar = Bar::new(!json && !quiet);
            let mut rows = Vec::new();
            let limit = limit.unwrap_or(usize::MAX);
            let grace = janitor.settings().grace_seconds;
            janitor
                .entries(grace, false, &bar, &mut |e| {
                    if rows.len() < limit && (!orphaned || e.state == State::Orphaned) {
                        rows.push(output::TaskRow::from(&e));
                    }
                })
                .await?;
            output::tasks(&rows, json)?;
        }
        Command::CleanupOrphaned { opts } => {
            let bar = Bar::new(!opts.json && !quiet);
            let options = CleanupOptions {
                dry_run: opts.dry_run,
                grace_seconds: opts.grace,
                max_age_hours: None,
            };
            let report = janitor.cleanup_orphans(&options, &bar).await?;
            tracing::info!(run_id = %report.run_id, removed = report.removed.total(), "cleanup-orphaned done");
            output::cleanup(&report, opts.json)?;
        }
        Command::FullCleanup {
            opts,
            max_age_hours,
        } => {
            let bar = Bar::new(!opts.json && !quiet);
            let options = CleanupOptions {
                dry_run: opts.dry_run,
                grace_seconds: opts.grace,
                max_age_hours,
            };
            let report = janitor.full_cleanup(&options, &bar).await?;
            tracing::info!(run_id = %report.run_id, "full-cleanup done");
            output::full_cleanup(&report, opts.json)?;
        }
        Command::Restore {
            run,
            all,
            task_ids,
            from_file,
            dry_run,
            json,
        } => {
            let bar = Bar::new(!json && !quiet);
            let options = RestoreOptions {
                run_id: run,
                all,
                task_ids,
                from_file,
                dry_run,
            };
            let report = janitor.restore(&options, &bar).await?;
            output::restore(&report, json)?;
        }
        Command::Init { .. } => unreachable!("handled before connecting"),
    }
    Ok(Code::Success)
}

fn init(path: &std::path::Path, force: bool) -> Result<Code> {
    if path.exists() && !force {
        eprintln!(
            "celery-janitor: error: {} already exists (use --force to overwrite)",
            path.display()
        );
        return Ok(Code::Config);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, janitor_config::STARTER_CONFIG)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("Wrote {}.", path.display());
    println!("Edit its [[owners]] rules, then run:");
    println!(
        "  CELERY_JANITOR_CONFIG={} celery-janitor status",
        path.display()
    );
    Ok(Code::Success)
}
