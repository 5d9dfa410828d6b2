//! Runs one command: resolve settings, connect, call the engine, print.

use anyhow::{Context, Result};
use janitor_config::{Flags, Settings};
use janitor_engine::{
    Cancel, CleanupOptions, Janitor, ListOptions, PlanOptions, ReadOptions, RestoreOptions, RunCtx,
    State,
};

use crate::cli::{Cli, Command};
use crate::exit::Code;
use crate::output;
use crate::progress::Bar;

pub(crate) fn run(cli: Cli) -> Result<Code> {
    let Cli { global, command } = cli;
    if let Command::Init { path, force } = &command {
        return init(path, *force);
    }
    if let Command::Token { name, role, .. } = &command {
        return token_new(name, *role);
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
    let get_env = |k: &str| std::env::var(k).ok();
    let discovery = janitor_config::Discovery::standard(&get_env);
    let settings = janitor_config::resolve_with(&flags, &get_env, &discovery)?;
    let _ = SECRETS.set(
        [&settings.broker_url, &settings.backend_url]
            .into_iter()
            .chain(settings.database_url.as_ref())
            .cloned()
            .collect(),
    );
    crate::logging::init(&settings.app_log, global.verbose);
    tracing::info!(
        command = ?command_name(&command),
        config = ?settings.config_path.as_ref().map(|p| p.display().to_string()),
        config_origin = ?settings.config_origin.map(|o| o.describe()),
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
    if let Command::Serve {
        bind,
        insecure_no_auth,
    } = command
    {
        return runtime.block_on(serve(settings, bind, insecure_no_auth));
    }
    runtime.block_on(async move { dispatch(settings, command, quiet).await })
}

/// `serve`: the server's start-up refusals are configuration errors (exit 2); the engine's
/// errors keep their codes.
async fn serve(
    settings: Settings,
    bind: Option<std::net::SocketAddr>,
    insecure_no_auth: bool,
) -> Result<Code> {
    match janitor_server::serve(settings, bind, insecure_no_auth).await {
        Ok(()) => Ok(Code::Success),
        Err(janitor_server::ServeError::Startup(e)) => {
            eprintln!("celery-janitor: error: {}", scrub(&e.to_string()));
            Ok(Code::Config)
        }
        Err(janitor_server::ServeError::Engine(e)) => Err(e.into()),
        Err(janitor_server::ServeError::Io(e)) => Err(e.into()),
    }
}

/// `token new`: the token once on standard output, then the table to paste.
fn token_new(name: &str, role: crate::cli::TokenRole) -> Result<Code> {
    let role = match role {
        crate::cli::TokenRole::Admin => janitor_config::ApiRole::Admin,
        crate::cli::TokenRole::Viewer => janitor_config::ApiRole::Viewer,
    };
    let new = match janitor_server::new_token(name, role) {
        Ok(new) => new,
        Err(message) => {
            eprintln!("celery-janitor: error: {message}");
            return Ok(Code::Config);
        }
    };
    println!("{}", new.token);
    eprintln!();
    eprintln!("Keep the token above: it is shown only this once. Add this to the config file:");
    eprintln!();
    print!("{}", new.toml);
    Ok(Code::Success)
}

/// The URLs of the resolved settings, so the last error line can be scrubbed of their secrets
/// whatever layer wrote it (see `main`).
static SECRETS: std::sync::OnceLock<Vec<janitor_config::SecretUrl>> = std::sync::OnceLock::new();

/// `text` with every configured URL shown redacted and its password, in any spelling, as `****`.
pub(crate) fn scrub(text: &str) -> String {
    SECRETS
        .get()
        .into_iter()
        .flatten()
        .fold(text.to_owned(), |text, url| url.scrub(&text))
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Status { .. } => "status",
        Command::Tasks { .. } => "tasks",
        Command::CleanupOrphaned { .. } => "cleanup-orphaned",
        Command::FullCleanup { .. } => "full-cleanup",
        Command::Restore { .. } => "restore",
        Command::Init { .. } => "init",
        Command::Serve { .. } => "serve",
        Command::Token { .. } => "token",
    }
}

async fn dispatch(settings: Settings, command: Command, quiet: bool) -> Result<Code> {
    let janitor = Janitor::connect(settings).await?;
    match command {
        Command::Status { json, .. } => {
            let bar = Bar::new(!json && !quiet);
            let cx = RunCtx::new(&bar, Cancel::new());
            let report = janitor.status(&ReadOptions::default(), &cx).await?;
            output::status(&report, janitor.settings(), json)?;
        }
        Command::Tasks {
            orphaned,
            json,
            limit,
            ..
        } => {
            let bar = Bar::new(!json && !quiet);
            let options = ListOptions {
                states: if orphaned {
                    vec![State::Orphaned]
                } else {
                    Vec::new()
                },
                limit,
                ..Default::default()
            };
            // Ctrl-C keeps its default meaning here: a listing changes nothing, so it just quits.
            let page = janitor
                .list(&options, &RunCtx::new(&bar, Cancel::new()))
                .await?;
            output::tasks(&page.rows, json)?;
        }
        Command::CleanupOrphaned { opts } => {
            let bar = Bar::new(!opts.json && !quiet);
            let options = CleanupOptions {
                plan: PlanOptions {
                    grace_seconds: opts.grace,
                    ..PlanOptions::orphans()
                },
                dry_run: opts.dry_run,
                take_over_lock: opts.take_over_lock,
            };
            let cx = RunCtx::new(&bar, cancel_on_signals());
            let report = janitor.cleanup(&options, &cx).await?.orphans;
            tracing::info!(run_id = %report.run_id, removed = report.removed.total(), "cleanup-orphaned done");
            output::cleanup(&report, opts.json)?;
        }
        Command::FullCleanup {
            opts,
            max_age_hours,
        } => {
            let bar = Bar::new(!opts.json && !quiet);
            let options = CleanupOptions {
                plan: PlanOptions {
                    grace_seconds: opts.grace,
                    max_age_hours,
                    ..PlanOptions::full()
                },
                dry_run: opts.dry_run,
                take_over_lock: opts.take_over_lock,
            };
            let cx = RunCtx::new(&bar, cancel_on_signals());
            let report = janitor.cleanup(&options, &cx).await?;
            tracing::info!(run_id = %report.run_id, "full-cleanup done");
            output::full_cleanup(&report, opts.json)?;
        }
        Command::Restore {
            run,
            all,
            task_ids,
            from_file,
            dry_run,
            take_over_lock,
            json,
        } => {
            let options = RestoreOptions {
                run_id: run,
                all,
                task_ids,
                from_file,
                dry_run,
                take_over_lock,
            };
            return restore(&janitor, &options, json, quiet).await;
        }
        Command::Init { .. } | Command::Serve { .. } | Command::Token { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(Code::Success)
}

/// `restore`: exits 1 when some archived entries could not be restored from here.
async fn restore(
    janitor: &Janitor,
    options: &RestoreOptions,
    json: bool,
    quiet: bool,
) -> Result<Code> {
    let bar = Bar::new(!json && !quiet);
    let report = janitor
        .restore(options, &RunCtx::new(&bar, Cancel::new()))
        .await?;
    output::restore(&report, json)?;
    for warning in &report.warnings {
        eprintln!("celery-janitor: warning: {warning}");
    }
    if report.missing > 0 {
        // What was found is restored; the rest needs the archive file (see the hint).
        eprintln!(
            "celery-janitor: error: {} archived entr{} of run {} could not be restored from here",
            report.missing,
            if report.missing == 1 { "y" } else { "ies" },
            report.run_id.as_deref().unwrap_or("?")
        );
        if let Some(hint) = &report.hint {
            eprintln!("  hint: {hint}");
        }
        return Ok(Code::Failure);
    }
    Ok(Code::Success)
}

/// Ctrl-C or SIGTERM during a cleanup: the first asks the run to stop at its next safe point
/// (between batches; it then writes its audit event and run record and releases the lock); a
/// second quits at once, leaving the lock to expire by itself.
fn cancel_on_signals() -> Cancel {
    let cancel = Cancel::new();
    let asked = cancel.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut signals = 0;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match term.as_mut() {
                        Some(t) => { t.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
            signals += 1;
            if signals == 1 {
                eprintln!("celery-janitor: stopping after the current batch (interrupt again to quit at once)");
                asked.cancel();
            } else {
                eprintln!(
                    "celery-janitor: quitting now; the run lock expires by itself within 30 s"
                );
                std::process::exit(Code::Interrupted as i32);
            }
        }
    });
    cancel
}

fn init(path: &std::path::Path, force: bool) -> Result<Code> {
    if path.exists() && !force {
        eprintln!(
            "celery-janitor: error: {} already exists (use --force to overwrite)",
            path.display()
        );
        return Ok(Code::Config);
    }
    // 0600 in directories created 0700: the config holds database and Redis passwords.
    janitor_engine::write_private_file(path, janitor_config::STARTER_CONFIG.as_bytes(), force)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("Wrote {}.", path.display());
    println!("Edit its [redis], [database] and [[owners]] sections, then run:");
    if path == std::path::Path::new(janitor_config::DEFAULT_CONFIG_FILE) {
        // Found from this directory without being named (see `Discovery`).
        println!("  celery-janitor status");
    } else {
        println!(
            "  CELERY_JANITOR_CONFIG={} celery-janitor status",
            path.display()
        );
    }
    Ok(Code::Success)
}

#[cfg(test)]
mod scrub_tests {
    #[test]
    fn the_last_error_line_loses_configured_passwords() {
        let url = janitor_config::SecretUrl::parse_redis("redis://:s3cr%2Ft@cache:6379/0").unwrap();
        let _ = super::SECRETS.set(vec![url]);
        let line =
            super::scrub("cannot reach redis://:s3cr%2Ft@cache:6379/0: password s3cr/t refused");
        assert!(!line.contains("s3cr"), "{line}");
    }
}
