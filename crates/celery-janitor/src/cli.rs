//! Command-line syntax. Flags that are also settings are resolved by `janitor_config::resolve`
//! (flag > env > file > default); clap only parses.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "celery-janitor",
    version,
    about = "Find and safely remove orphaned Celery tasks in Redis",
    long_about = "Finds Celery work in Redis (queues, priority sub-lists, unacked, results) whose \
owning database row is gone, and removes it safely: confirmed after a grace period, atomic per \
entry, archived and audited.\n\nSettings: flag > environment > config file > default. \
Exit codes: 0 ok, 1 failure, 2 usage/config, 3 Redis unreachable, 4 database unreachable, \
5 another cleanup is running."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
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
    /// Print less: no progress bar
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Also log to standard error
    #[arg(short, long, global = true)]
    pub verbose: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Redis health and counts of tasks by state and location
    Status {
        /// Machine-readable output
        #[arg(long)]
        json: bool,
        /// Seconds an orphan's row must stay missing to count [env: CELERY_JANITOR_GRACE_SECONDS; default: 10]
        #[arg(long, value_name = "SECONDS")]
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
        /// Seconds an orphan's row must stay missing to count [env: CELERY_JANITOR_GRACE_SECONDS; default: 10]
        #[arg(long, value_name = "SECONDS")]
        grace: Option<f64>,
    },
    /// Remove confirmed orphans from queues, unacked and results
    CleanupOrphaned {
        #[command(flatten)]
        opts: CleanupArgs,
    },
    /// Orphans, results older than max_age_hours, and lost database rows
    FullCleanup {
        #[command(flatten)]
        opts: CleanupArgs,
        /// Remove results older than this [env: CELERY_JANITOR_MAX_AGE_HOURS; default: 24]
        #[arg(long, value_name = "H")]
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
}

#[derive(Debug, Args)]
pub struct CleanupArgs {
    /// Show what would be removed, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds an orphan's row must stay missing before removal [env: CELERY_JANITOR_GRACE_SECONDS; default: 10]
    #[arg(long, value_name = "SECONDS")]
    pub grace: Option<f64>,
    /// Machine-readable output
    #[arg(long)]
    pub json: bool,
}
