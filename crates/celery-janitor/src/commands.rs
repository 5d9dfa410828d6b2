//! Runs one command: resolve settings, connect, call the engine, print to the caller's writer.

use std::io::Write;

use anyhow::{Context, Result};
use janitor_config::{Flags, Settings};
use janitor_engine::{
    ArchiveQuery, Cancel, CleanupOptions, Janitor, ListOptions, PlanOptions, PurgeOptions,
    ReadOptions, RestoreOptions, RevokeOptions, RunCtx, State,
};

use crate::cli::{Cli, Command};
use crate::exit::Code;
use crate::output;
use crate::progress::Bar;
use crate::Host;

/// Where a command runs and what may stop it.
pub(crate) struct Invocation<'a> {
    pub host: Host,
    /// Stops the run at its next safe point when cancelled. `None`: in a [`Host::Process`],
    /// Ctrl-C and SIGTERM stop a cleanup (see [`cancel_on_signals`]); embedded, nothing does.
    pub cancel: Option<Cancel>,
    /// Where the report goes (standard output, or a buffer for `run_json`).
    pub out: &'a mut dyn Write,
    /// What the Celery app's own configuration says (the Python package's worker
    /// integration), used where flags, environment and file are silent.
    pub app: Option<janitor_config::AppDefaults>,
}

pub(crate) fn run(cli: Cli, inv: Invocation<'_>) -> Result<Code> {
    let Cli { global, command } = cli;
    if let Command::Init { path, force } = &command {
        return init(inv.out, path, *force);
    }
    if let Command::Token { name, role, .. } = &command {
        return token_new(inv.out, name, *role);
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
        Command::CleanupOrphaned { opts, .. } => flags.grace_seconds = opts.grace,
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
    let settings = janitor_config::resolve_for_app(&flags, &get_env, &discovery, inv.app.as_ref())?;
    remember_secrets(
        [&settings.broker_url, &settings.backend_url]
            .into_iter()
            .chain(settings.database_url.as_ref()),
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
    let (quiet, actor) = (global.quiet, global.actor);
    if let Command::Serve {
        bind,
        insecure_no_auth,
        cleanup_every,
    } = command
    {
        return runtime.block_on(serve(
            settings,
            bind,
            insecure_no_auth,
            actor,
            inv.host,
            cleanup_every,
        ));
    }
    if let Command::Watch { every } = command {
        return runtime.block_on(watch(settings, every, actor, inv.host));
    }
    runtime.block_on(async move { dispatch(settings, command, quiet, actor, inv).await })
}

/// `serve`: the server's start-up refusals are configuration errors (exit 2); the engine's
/// errors keep their codes. It runs in a process of its own only: it answers until SIGINT or
/// SIGTERM.
async fn serve(
    settings: Settings,
    bind: Option<std::net::SocketAddr>,
    insecure_no_auth: bool,
    actor: Option<String>,
    host: Host,
    cleanup_every: Option<janitor_server::schedule::Schedule>,
) -> Result<Code> {
    if host == Host::Embedded {
        anyhow::bail!(janitor_config::ConfigError::Invalid {
            key: "serve".into(),
            message: "the server runs in a process of its own: run the celery-janitor command"
                .into(),
        });
    }
    match janitor_server::serve(settings, bind, insecure_no_auth, actor, cleanup_every).await {
        Ok(()) => Ok(Code::Success),
        Err(janitor_server::ServeError::Startup(e)) => {
            eprintln!("celery-janitor: error: {}", scrub(&e.to_string()));
            Ok(Code::Config)
        }
        Err(janitor_server::ServeError::Engine(e)) => Err(e.into()),
        Err(janitor_server::ServeError::Io(e)) => Err(e.into()),
    }
}

/// `watch`: scheduled `full-cleanup` until SIGINT or SIGTERM, in a process of its own only.
async fn watch(
    settings: Settings,
    every: janitor_server::schedule::Schedule,
    actor: Option<String>,
    host: Host,
) -> Result<Code> {
    if host == Host::Embedded {
        anyhow::bail!(janitor_config::ConfigError::Invalid {
            key: "watch".into(),
            message: "watch runs in a process of its own: run the celery-janitor command".into(),
        });
    }
    match janitor_server::watch(settings, every, actor).await {
        Ok(()) => Ok(Code::Success),
        Err(janitor_server::ServeError::Startup(e)) => {
            eprintln!("celery-janitor: error: {}", scrub(&e.to_string()));
            Ok(Code::Config)
        }
        Err(janitor_server::ServeError::Engine(e)) => Err(e.into()),
        Err(janitor_server::ServeError::Io(e)) => Err(e.into()),
    }
}

/// `token new`: the token once, then the table to paste, on `out`; the advice on standard error.
fn token_new(out: &mut dyn Write, name: &str, role: crate::cli::TokenRole) -> Result<Code> {
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
    writeln!(out, "{}", new.token)?;
    out.flush()?;
    eprintln!();
    eprintln!("Keep the token above: it is shown only this once. Add this to the config file:");
    eprintln!();
    write!(out, "{}", new.toml)?;
    Ok(Code::Success)
}

/// The URLs of every settings resolved in this process (one for the binary; one per call for an
/// embedding host, whose calls may name other configs), so the last error line can be scrubbed
/// of their secrets whatever layer wrote it (see `main_with_args` and `run_json`).
static SECRETS: std::sync::Mutex<Vec<janitor_config::SecretUrl>> =
    std::sync::Mutex::new(Vec::new());

fn remember_secrets<'a>(urls: impl Iterator<Item = &'a janitor_config::SecretUrl>) {
    let mut known = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    for url in urls {
        if !known.contains(url) {
            known.push(url.clone());
        }
    }
}

/// `text` with every configured URL shown redacted and its password, in any spelling, as `****`.
pub(crate) fn scrub(text: &str) -> String {
    SECRETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .fold(text.to_owned(), |text, url| url.scrub(&text))
}

fn command_name(c: &Command) -> &'static str {
    match c {
        Command::Status { .. } => "status",
        Command::Tasks { .. } => "tasks",
        Command::CleanupOrphaned { .. } => "cleanup-orphaned",
        Command::FullCleanup { .. } => "full-cleanup",
        Command::Restore { .. } => "restore",
        Command::Revoke { .. } => "revoke",
        Command::PurgeQueue { .. } => "purge-queue",
        Command::Archive { .. } => "archive",
        Command::Runs { .. } => "runs",
        Command::Init { .. } => "init",
        Command::Serve { .. } => "serve",
        Command::Watch { .. } => "watch",
        Command::Token { .. } => "token",
    }
}

async fn dispatch(
    settings: Settings,
    command: Command,
    quiet: bool,
    actor: Option<String>,
    inv: Invocation<'_>,
) -> Result<Code> {
    let Invocation {
        host, cancel, out, ..
    } = inv;
    // Read-only commands: Ctrl-C keeps its default meaning in a process (a listing changes
    // nothing, so it just quits); an embedding host may still cancel them.
    let reading = || cancel.clone().unwrap_or_default();
    // Cleanups stop between batches when asked.
    let cleaning = || match (&cancel, host) {
        (Some(c), _) => c.clone(),
        (None, Host::Process) => cancel_on_signals(),
        (None, Host::Embedded) => Cancel::new(),
    };
    // A cursor that is no cursor at all is refused before connecting to anything.
    if let Command::Tasks {
        cursor: Some(cursor),
        ..
    } = &command
    {
        cursor.parse::<janitor_engine::Cursor>()?;
    }
    // A purge nobody confirmed is refused before connecting to anything.
    if let Command::PurgeQueue {
        queue,
        yes: false,
        dry_run: false,
        ..
    } = &command
    {
        if host == Host::Embedded || !interactive() {
            return Err(crate::exit::Refused(format!(
                "not purging queue {queue:?} without confirmation: there is no terminal to ask \
                 on; pass --yes to purge it (or --dry-run to see what it would remove)"
            ))
            .into());
        }
    }
    if let Command::Archive {
        cursor: Some(cursor),
        ..
    } = &command
    {
        // A mistyped cursor is refused before connecting, like `tasks --cursor`.
        janitor_engine::ArchiveQuery::check_cursor(cursor)?;
    }
    let janitor = Janitor::connect(settings).await?;
    if let Some(actor) = actor {
        janitor.set_actor(actor);
    }
    match command {
        Command::Status { json, .. } => {
            let bar = Bar::new(!json && !quiet);
            let cx = RunCtx::new(&bar, reading());
            let report = janitor.status(&ReadOptions::default(), &cx).await?;
            output::status(out, &report, janitor.settings(), json)?;
        }
        Command::Tasks {
            orphaned,
            mut states,
            locations,
            queue,
            json,
            limit,
            page,
            cursor,
            ..
        } => {
            let bar = Bar::new(!json && !quiet);
            if orphaned && !states.contains(&State::Orphaned) {
                states.push(State::Orphaned);
            }
            let options = ListOptions {
                states,
                locations,
                queue,
                limit,
                cursor: cursor.as_deref().map(str::parse).transpose()?,
                ..Default::default()
            };
            let listed = janitor
                .list(&options, &RunCtx::new(&bar, reading()))
                .await?;
            if page {
                output::tasks_page(out, &listed, json)?;
            } else {
                output::tasks(out, &listed.rows, json)?;
            }
        }
        Command::CleanupOrphaned { opts, startup } => {
            if startup {
                if let Some(reason) = janitor.startup_skip_reason().await? {
                    return startup_skipped(out, &reason, opts.json);
                }
            }
            let bar = Bar::new(!opts.json && !quiet);
            let options = CleanupOptions {
                plan: PlanOptions {
                    grace_seconds: opts.grace,
                    ..PlanOptions::orphans()
                },
                dry_run: opts.dry_run,
                take_over_lock: opts.take_over_lock,
            };
            let cx = RunCtx::new(&bar, cleaning());
            let report = match janitor.cleanup(&options, &cx).await {
                // Another node's start-up cleanup took the lock first.
                Err(e @ janitor_engine::EngineError::Busy { .. }) if startup => {
                    return startup_skipped(out, &e.to_string(), opts.json);
                }
                other => other?.orphans,
            };
            tracing::info!(run_id = %report.run_id, removed = report.removed.total(), "cleanup-orphaned done");
            output::cleanup(out, &report, opts.json)?;
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
            let cx = RunCtx::new(&bar, cleaning());
            let report = janitor.cleanup(&options, &cx).await?;
            tracing::info!(run_id = %report.run_id, "full-cleanup done");
            output::full_cleanup(out, &report, opts.json)?;
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
            let bar = Bar::new(!json && !quiet);
            let cx = RunCtx::new(&bar, reading());
            return restore(out, &janitor, &options, json, &cx).await;
        }
        Command::Revoke {
            task_ids,
            owners,
            undo,
            take_over_lock,
            json,
        } => {
            let options = RevokeOptions {
                task_ids,
                owners,
                undo,
                // The revocation names the janitor's actor (`--actor`, else the OS user).
                actor: None,
                take_over_lock,
            };
            let bar = Bar::new(!json && !quiet);
            let report = janitor
                .revoke(&options, &RunCtx::new(&bar, cleaning()))
                .await?;
            tracing::info!(undo, keys = report.keys, "revoke done");
            output::revoke(out, &report, json)?;
        }
        Command::PurgeQueue {
            queue,
            yes,
            force,
            dry_run,
            take_over_lock,
            json,
        } => {
            let options = PurgeOptions {
                dry_run,
                force,
                take_over_lock,
                max: janitor.settings().api.purge_max,
                ..PurgeOptions::new(queue)
            };
            if !yes && !dry_run && !confirm_purge(&janitor, &options).await? {
                eprintln!(
                    "celery-janitor: aborted: the name typed is not {:?}; nothing was changed",
                    options.queue
                );
                return Ok(Code::Failure);
            }
            let bar = Bar::new(!json && !quiet);
            let report = janitor
                .purge_queue(&options, &RunCtx::new(&bar, cleaning()))
                .await?;
            tracing::info!(run_id = %report.run_id, queue = %options.queue, removed = report.removed.total(), "purge-queue done");
            output::purge(out, &options.queue, &report, json)?;
        }
        Command::Archive {
            run,
            limit,
            cursor,
            json,
        } => {
            let page = janitor
                .archive_entries(&ArchiveQuery {
                    run_id: run,
                    limit,
                    cursor,
                })
                .await?;
            output::archive(out, &page, json)?;
        }
        Command::Runs { limit, json } => {
            let runs = janitor.runs(limit).await?;
            output::runs(out, &runs, json)?;
        }
        Command::Init { .. }
        | Command::Serve { .. }
        | Command::Watch { .. }
        | Command::Token { .. } => {
            unreachable!("handled before connecting")
        }
    }
    Ok(Code::Success)
}

/// Whether a person can be asked: standard input and standard error are terminals.
fn interactive() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Asks on the terminal for the queue's name; true when it was typed exactly. A purge of more
/// than `max` messages without `--force` is not asked about: the engine refuses it.
async fn confirm_purge(janitor: &Janitor, o: &PurgeOptions) -> Result<bool> {
    let messages = janitor.queue_length(&o.queue).await?;
    if messages > o.max && !o.force {
        return Ok(true);
    }
    eprintln!(
        "Purge queue {:?}: {messages} message{} in its lists (every priority sub-list) will be \
         removed; each is archived, and `celery-janitor restore --run RUN_ID` puts them back. \
         unacked is not touched.",
        o.queue,
        if messages == 1 { "" } else { "s" }
    );
    eprint!("Type the queue name to confirm: ");
    let mut typed = String::new();
    let queue = o.queue.clone();
    // Read off the async threads; an unreadable terminal counts as no answer.
    let typed =
        tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut typed).map(|_| typed))
            .await
            .context("the terminal reader stopped")?
            .unwrap_or_default();
    Ok(typed.trim_end_matches(['\n', '\r']) == queue)
}

/// `cleanup-orphaned --startup` that does not run: exit 0, saying why.
fn startup_skipped(out: &mut dyn Write, reason: &str, json: bool) -> Result<Code> {
    tracing::info!(reason, "start-up cleanup skipped");
    if json {
        writeln!(out, "{}", serde_json::json!({ "startup_skipped": reason }))?;
    } else {
        writeln!(out, "Start-up cleanup skipped: {reason}.")?;
    }
    Ok(Code::Success)
}

/// `restore`: exits 1 when some archived entries could not be restored from here.
async fn restore(
    out: &mut dyn Write,
    janitor: &Janitor,
    options: &RestoreOptions,
    json: bool,
    cx: &RunCtx<'_>,
) -> Result<Code> {
    let report = janitor.restore(options, cx).await?;
    output::restore(out, &report, json)?;
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
/// second quits at once, leaving the lock to expire by itself. Only for a [`Host::Process`]: the
/// handlers are process-wide and outlive the command.
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

fn init(out: &mut dyn Write, path: &std::path::Path, force: bool) -> Result<Code> {
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
    writeln!(out, "Wrote {}.", path.display())?;
    writeln!(
        out,
        "Edit its [redis], [database] and [[owners]] sections, then run:"
    )?;
    if path == std::path::Path::new(janitor_config::DEFAULT_CONFIG_FILE) {
        // Found from this directory without being named (see `Discovery`).
        writeln!(out, "  celery-janitor status")?;
    } else {
        writeln!(
            out,
            "  CELERY_JANITOR_CONFIG={} celery-janitor status",
            path.display()
        )?;
    }
    Ok(Code::Success)
}

#[cfg(test)]
mod scrub_tests {
    #[test]
    fn the_last_error_line_loses_configured_passwords() {
        let url = janitor_config::SecretUrl::parse_redis("redis://:s3cr%2Ft@cache:6379/0").unwrap();
        super::remember_secrets([&url].into_iter());
        let line =
            super::scrub("cannot reach redis://:s3cr%2Ft@cache:6379/0: password s3cr/t refused");
        assert!(!line.contains("s3cr"), "{line}");
    }
}
