//! Command-line syntax. Flags that are also settings are resolved by `janitor_config::resolve`
//! (flag > env > file > default); clap only parses.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use janitor_engine::{Location, State};

/// `--state`: live, orphaned, unowned or undecidable.
fn parse_state(text: &str) -> Result<State, String> {
    State::ALL
        .into_iter()
        .find(|s| s.as_str() == text)
        .ok_or_else(|| one_of(State::ALL.map(State::as_str)))
}

/// `--location`: queue, unacked or result.
fn parse_location(text: &str) -> Result<Location, String> {
    Location::ALL
        .into_iter()
        .find(|l| l.as_str() == text)
        .ok_or_else(|| one_of(Location::ALL.map(Location::as_str)))
}

fn one_of<const N: usize>(names: [&str; N]) -> String {
    format!("expected one of: {}", names.join(", "))
}

#[derive(Debug, Parser)]
#[command(
    name = "celery-janitor",
    version,
    about = "Find and safely remove orphaned Celery tasks in Redis",
    long_about = "Finds Celery work in Redis (queues, priority sub-lists, unacked, results) whose \
owning database row is gone, and removes it safely: confirmed after a grace period, atomic per \
entry, archived and audited.\n\nSettings: flag > environment > config file > default. \
Exit codes: 0 ok, 1 failure, 2 usage/config, 3 Redis unreachable, 4 database unreachable, \
5 another cleanup is running, 130 interrupted (Ctrl-C/SIGTERM)."
)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Config file (TOML) [env: CELERY_JANITOR_CONFIG]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Redis URL for broker and result backend [env: REDIS_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub redis_url: Option<String>,
    /// Database URL of the owner tables [env: DATABASE_URL]
    #[arg(long, global = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Application log file [default: logs/app.log]
    #[arg(long, global = true, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// Audit log file, one JSON line per change [default: logs/audit.jsonl]
    #[arg(long, global = true, value_name = "PATH")]
    pub audit_log: Option<PathBuf>,
    /// Directory for archive files of removed entries [default: archive]
    #[arg(long, global = true, value_name = "DIR")]
    pub archive_dir: Option<PathBuf>,
    /// Who the changes are done for, recorded as `actor` in the audit log [default: the OS user]
    #[arg(long, global = true, value_name = "NAME")]
    pub actor: Option<String>,
    /// Print less: no progress bar
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Also log to standard error
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Redis health and counts of tasks by state and location
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        /// Seconds an orphan's row must stay missing to count, 0-86400 [env: CELERY_JANITOR_GRACE_SECONDS; default: 10]
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        grace: Option<f64>,
    },
    /// List tasks in Redis with their owner and state
    Tasks {
        /// Only orphaned entries
        #[arg(long)]
        orphaned: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        /// At most N entries
        #[arg(long, value_name = "N")]
        limit: Option<usize>,
        /// Seconds an orphan's row must stay missing to count, 0-86400 [env: CELERY_JANITOR_GRACE_SECONDS; default: 10]
        #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
        grace: Option<f64>,
        /// Only entries in this state (repeatable)
        #[arg(long = "state", value_name = "STATE", value_parser = parse_state)]
        states: Vec<State>,
        /// Only entries in this location (repeatable)
        #[arg(long = "location", value_name = "LOC", value_parser = parse_location)]
        locations: Vec<Location>,
        /// Only entries of this queue: queued in it, or unacked from it
        #[arg(long, value_name = "NAME")]
        queue: Option<String>,
        /// Print one page: with --json, {"items": [...], "next_cursor": ...}
        #[arg(long)]
        page: bool,
        /// Start where a page of the same listing ended (its next_cursor)
        #[arg(long, value_name = "CURSOR", requires = "page")]
        cursor: Option<String>,
    },
    /// Remove confirmed orphans from queues, unacked and results
    CleanupOrphaned {
        #[command(flatten)]
        opts: CleanupArgs,
        /// Worker start-up cleanup: exit 0 without a run when cleanup_on_startup is false, a cleanup completed less than startup_min_interval ago, or another run holds the lock
        #[arg(long, conflicts_with = "dry_run")]
        startup: bool,
    },
    /// Orphans, results older than max_age_hours, and lost database rows
    FullCleanup {
        #[command(flatten)]
        opts: CleanupArgs,
        /// Remove results older than this many hours, 0-87600 [env: CELERY_JANITOR_MAX_AGE_HOURS; default: 24]
        #[arg(long, value_name = "H", allow_negative_numbers = true)]
        max_age_hours: Option<f64>,
    },
    /// Put archived entries back
    Restore {
        /// The run to restore (default: the most recent run)
        #[arg(long, value_name = "RUN_ID", conflicts_with = "all")]
        run: Option<String>,
        /// Restore every archived entry of every run
        #[arg(long)]
        all: bool,
        /// Only entries of this task id (repeatable)
        #[arg(long = "task-id", value_name = "ID")]
        task_ids: Vec<String>,
        /// Read entries from this archive file instead of the Redis archive
        #[arg(long, value_name = "PATH")]
        from_file: Option<PathBuf>,
        /// Show what would be restored, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Take over a run lock that is stale (its holder ran on this host and is gone, or it never expires)
        #[arg(long)]
        take_over_lock: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Revoke tasks durably, so guarded workers skip them (also ones started later)
    Revoke {
        /// Task ids to revoke
        #[arg(value_name = "TASK_ID", required_unless_present = "owners")]
        task_ids: Vec<String>,
        /// Revoke every task of this owner row (repeatable)
        #[arg(long = "owner", value_name = "TABLE:ID", value_parser = parse_owner)]
        owners: Vec<(String, String)>,
        /// Lift these revocations instead
        #[arg(long)]
        undo: bool,
        /// Take over a run lock that is stale (its holder ran on this host and is gone, or it never expires)
        #[arg(long)]
        take_over_lock: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Remove every message of one queue, all priorities (archived, restorable)
    PurgeQueue {
        /// The queue's name (e.g. celery)
        #[arg(value_name = "NAME")]
        queue: String,
        /// Purge without asking to type the queue name
        #[arg(long)]
        yes: bool,
        /// Purge even when the queue holds more than purge_max messages (100000)
        #[arg(long)]
        force: bool,
        /// Show what would be removed, change nothing (asks nothing)
        #[arg(long)]
        dry_run: bool,
        /// Take over a run lock that is stale (its holder ran on this host and is gone, or it never expires)
        #[arg(long)]
        take_over_lock: bool,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// List archived entries, newest first (metadata only, never their bytes)
    Archive {
        /// Only entries of this run
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
        /// At most N entries, 1-10000
        #[arg(long, value_name = "N", default_value_t = 100, value_parser = parse_limit)]
        limit: usize,
        /// Start where the previous page ended (its next_cursor)
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// List recent runs from the run record, newest first
    Runs {
        /// At most N runs, 1-1000
        #[arg(long, value_name = "N", default_value_t = 20, value_parser = parse_runs_limit)]
        limit: usize,
        /// Machine-readable output
        #[arg(long)]
        json: bool,
    },
    /// Write a commented starter config file
    Init {
        /// Where to write it
        #[arg(default_value = "celery-janitor.toml")]
        path: PathBuf,
        /// Overwrite an existing file
        #[arg(long)]
        force: bool,
    },
    /// Serve the HTTP API until SIGINT or SIGTERM
    Serve {
        /// Address to listen on [default: [api] bind, else 127.0.0.1:8000]
        #[arg(long, value_name = "ADDR")]
        bind: Option<std::net::SocketAddr>,
        /// Serve without authentication (refused on a non-loopback address)
        #[arg(long)]
        insecure_no_auth: bool,
        /// Also run full-cleanup every DURATION (e.g. 24h), once per slot across instances
        #[arg(long, value_name = "DURATION", value_parser = parse_every)]
        cleanup_every: Option<janitor_server::schedule::Schedule>,
    },
    /// Run full-cleanup on a schedule, once per slot across instances
    Watch {
        /// The interval (e.g. 24h, 30m, 2s): slots are its multiples since the Unix epoch
        #[arg(long, value_name = "DURATION", value_parser = parse_every)]
        every: janitor_server::schedule::Schedule,
    },
    /// `token new`: print a new API token and its config table
    Token {
        #[arg(value_enum)]
        action: TokenAction,
        /// The token's name: the actor in the audit log
        #[arg(long, value_name = "NAME")]
        name: String,
        /// What the token may do
        #[arg(long, value_enum)]
        role: TokenRole,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum TokenAction {
    /// Generate a new token
    New,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum TokenRole {
    /// Every endpoint
    Admin,
    /// Only reads (GET)
    Viewer,
}

impl Command {
    /// Whether the command was given `--json` (`init`, `serve`, `watch` and `token` have no such
    /// flag).
    pub(crate) fn json(&self) -> bool {
        match self {
            Command::Status { json, .. }
            | Command::Tasks { json, .. }
            | Command::Restore { json, .. }
            | Command::Revoke { json, .. }
            | Command::PurgeQueue { json, .. }
            | Command::Archive { json, .. }
            | Command::Runs { json, .. } => *json,
            Command::CleanupOrphaned { opts, .. } | Command::FullCleanup { opts, .. } => opts.json,
            Command::Init { .. }
            | Command::Serve { .. }
            | Command::Watch { .. }
            | Command::Token { .. } => false,
        }
    }
}

/// A schedule's interval: whole seconds, at least 1.
fn parse_every(text: &str) -> Result<janitor_server::schedule::Schedule, String> {
    janitor_server::schedule::Schedule::parse_every(text)
}

/// A page size from 1 to `max`.
fn parse_count(text: &str, max: usize) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!("expected a whole number from 1 to {max}")),
    }
}

/// `archive --limit`: 1 to 10000.
fn parse_limit(text: &str) -> Result<usize, String> {
    parse_count(text, janitor_engine::ArchiveQuery::MAX_LIMIT)
}

/// `runs --limit`: 1 to the number of runs the record keeps.
fn parse_runs_limit(text: &str) -> Result<usize, String> {
    parse_count(text, janitor_engine::RUNS_KEPT)
}

/// `TABLE:ID`, split at the first `:` (a table name has none; an id may).
fn parse_owner(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((table, id)) if !table.is_empty() && !id.is_empty() => {
            Ok((table.to_owned(), id.to_owned()))
        }
        _ => Err(format!("{text:?}: expected TABLE:ID")),
    }
}

#[derive(Debug, Args)]
pub(crate) struct CleanupArgs {
    /// Show what would be removed, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds an orphan's row must stay missing before removal, 0-86400 [env: CELERY_JANITOR_GRACE_SECONDS; default: 10]
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub grace: Option<f64>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
    /// Take over a run lock left by a celery-janitor process of this host that is no longer running
    #[arg(long)]
    pub take_over_lock: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use janitor_config::{resolve, ConfigError, Flags};
    use proptest::prelude::*;

    #[test]
    fn the_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    /// The number flags of a parsed command line, as `commands::run` hands them to `resolve`.
    fn number_flags(cli: &Cli) -> Flags {
        let (grace_seconds, max_age_hours) = match &cli.command {
            Command::Status { grace, .. } | Command::Tasks { grace, .. } => (*grace, None),
            Command::CleanupOrphaned { opts, .. } => (opts.grace, None),
            Command::FullCleanup {
                opts,
                max_age_hours,
            } => (opts.grace, *max_age_hours),
            _ => (None, None),
        };
        Flags {
            grace_seconds,
            max_age_hours,
            ..Default::default()
        }
    }

    #[test]
    fn negative_numbers_reach_the_range_check() {
        let cli = Cli::try_parse_from(["celery-janitor", "status", "--grace", "-1"]).unwrap();
        let env = |k: &str| (k == "REDIS_URL").then(|| "redis://h".to_owned());
        let err = resolve(&number_flags(&cli), &env).unwrap_err().to_string();
        assert!(err.contains("from 0 to 86400"), "{err}");
    }

    /// Numbers of every kind, and text that is not a number.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<f64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:e}")),
            any::<i64>().prop_map(|v| v.to_string()),
            prop::sample::select(vec![
                "nan",
                "NaN",
                "inf",
                "-inf",
                "infinity",
                "1e20",
                "1e15",
                "1e400",
                "-1",
                "-0",
                "86400",
                "86400.5",
                "87600",
                "87601",
                "",
                " ",
                "--",
                "-",
                "redis://:a/b@h",
            ])
            .prop_map(str::to_owned),
            "\\PC{0,12}",
        ]
    }

    fn flag() -> impl Strategy<Value = Vec<String>> {
        let name = prop::sample::select(vec![
            "--grace",
            "--max-age-hours",
            "--limit",
            "--run",
            "--task-id",
            "--redis-url",
            "--database-url",
            "--config",
            "--json",
            "--dry-run",
            "--all",
            "-q",
            "-v",
        ]);
        (name, value(), any::<bool>()).prop_map(|(name, value, joined)| {
            if joined {
                vec![format!("{name}={value}")]
            } else {
                vec![name.to_owned(), value]
            }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any command line parses or is a usage error (exit 2; 0 for help), never a panic; the
        /// grace and max-age flags then resolve to a value in range or a configuration error.
        #[test]
        fn any_flags_parse_and_resolve_without_panic(
            command in prop::sample::select(vec![
                "status", "tasks", "cleanup-orphaned", "full-cleanup", "restore", "init",
            ]),
            flags in prop::collection::vec(flag(), 0..5),
        ) {
            let mut argv = vec!["celery-janitor".to_owned(), command.to_owned()];
            argv.extend(flags.into_iter().flatten());
            match Cli::try_parse_from(&argv) {
                Ok(cli) => {
                    let env = |k: &str| (k == "REDIS_URL").then(|| "redis://h".to_owned());
                    match resolve(&number_flags(&cli), &env) {
                        Ok(s) => {
                            prop_assert!((0.0..=86_400.0).contains(&s.grace_seconds));
                            prop_assert!((0.0..=87_600.0).contains(&s.max_age_hours));
                        }
                        Err(e) => prop_assert!(matches!(e, ConfigError::Invalid { .. }), "{e}"),
                    }
                }
                Err(e) => {
                    let _ = e.to_string();
                    prop_assert!([0, 2].contains(&e.exit_code()), "{argv:?}: {e}");
                }
            }
        }
    }
}
