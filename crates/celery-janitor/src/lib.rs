//! The celery-janitor CLI as a library, so the same command line runs as the `celery-janitor`
//! binary ([`Host::Process`]) and inside another program, e.g. the Python package's extension
//! module ([`Host::Embedded`]): [`main_with_args`] is the whole CLI, [`run_json`] runs one
//! `--json` command and hands back its output or a typed [`Failure`] instead of printing.

mod cli;
mod commands;
mod exit;
mod logging;
mod output;
mod progress;

use std::ffi::OsString;

use clap::Parser;

/// A Celery app's own settings, for [`run_json_for_app`].
pub use janitor_config::AppDefaults;
/// A cancellation token for [`main_with_cancel`] and [`run_json_with_cancel`].
pub use janitor_engine::Cancel;

use crate::commands::Invocation;
use crate::exit::Code;

/// What the CLI runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// Its own process (the binary): Ctrl-C and SIGTERM stop a cleanup between batches, a second
    /// one exits the process at once.
    Process,
    /// Someone else's process (a Python interpreter): no signal handler is installed and the
    /// process is never exited; the caller stops a run through a [`Cancel`] token. Logging is
    /// set up by the first call of the process; later calls log through it.
    Embedded,
}

/// Why [`run_json`] produced no JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code the CLI would have ended with (docs/cli.md, "Exit codes").
    pub code: i32,
    /// The error on one line, every configured URL's password scrubbed.
    pub message: String,
    /// What to do about it, when the CLI knows.
    pub hint: Option<String>,
    /// `usage`, `config`, `bad_cursor`, `redis_unreachable`, `database_unreachable`, `busy`
    /// (another run holds the lock), `interrupted` or `failed`.
    pub kind: &'static str,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// Every kind a failure can have.
    pub const KINDS: [&'static str; 8] = [
        "usage",
        "config",
        "bad_cursor",
        "redis_unreachable",
        "database_unreachable",
        "busy",
        "interrupted",
        "failed",
    ];

    fn of(err: &anyhow::Error) -> Self {
        Failure {
            code: Code::of(err) as i32,
            message: commands::scrub(&exit::one_line(err)),
            hint: exit::hint(err).map(str::to_owned),
            kind: exit::kind(err),
        }
    }

    /// A command line clap refused: its first line, and its tip as the hint.
    fn usage(err: &clap::Error) -> Self {
        let text = err.render().to_string();
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let message = lines
            .next()
            .unwrap_or("invalid command line")
            .trim_start_matches("error: ")
            .to_owned();
        let hint = lines
            .find_map(|l| l.strip_prefix("tip: "))
            .map(str::to_owned);
        Failure {
            code: err.exit_code(),
            message: commands::scrub(&message),
            hint,
            kind: "usage",
        }
    }
}

/// Runs the CLI on `args` (the program name first) and returns its exit code. With
/// [`Host::Process`] this is the binary; with [`Host::Embedded`] it never exits the process and
/// installs no signal handler.
pub fn main_with_args(args: Vec<OsString>, host: Host) -> i32 {
    main_with_cancel(args, host, None)
}

/// [`main_with_args`], stopped at the next safe point when `cancel` is cancelled (the embedding
/// host's Ctrl-C). `None`: as [`main_with_args`].
pub fn main_with_cancel(args: Vec<OsString>, host: Host, cancel: Option<Cancel>) -> i32 {
    let cli = match cli::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(err) => {
            // Help and version go to standard output, errors to standard error, as clap does.
            let _ = err.print();
            return err.exit_code();
        }
    };
    let mut stdout = std::io::stdout();
    let invocation = Invocation {
        host,
        cancel,
        out: &mut stdout,
        app: None,
    };
    let code = match commands::run(cli, invocation) {
        Ok(code) => code,
        Err(err) => {
            let code = Code::of(&err);
            // Every layer scrubs what it knows; this is the last net for a driver message that
            // echoed a configured URL.
            eprintln!(
                "celery-janitor: error: {}",
                commands::scrub(&exit::one_line(&err))
            );
            if let Some(hint) = exit::hint(&err) {
                eprintln!("  hint: {hint}");
            }
            code
        }
    };
    // An embedding host's stdout may be read as soon as this returns.
    let _ = std::io::Write::flush(&mut stdout);
    code as i32
}

/// Runs one command given `--json` (args: the program name first) in [`Host::Embedded`] mode and
/// returns what it would have printed to standard output.
pub fn run_json(args: Vec<OsString>) -> Result<String, Failure> {
    run_json_with_cancel(args, None)
}

/// [`run_json`], stopped at the next safe point when `cancel` is cancelled (then a failure of
/// kind `interrupted`).
pub fn run_json_with_cancel(
    args: Vec<OsString>,
    cancel: Option<Cancel>,
) -> Result<String, Failure> {
    run_json_for_app(args, None, cancel)
}

/// [`run_json_with_cancel`] for a Celery app: `app` (its `app.conf`) fills in the Redis URLs,
/// key prefixes and priority steps where flags, environment and config file are silent, and is
/// a `config` failure where they disagree (the worker integration's start-up cleanup).
pub fn run_json_for_app(
    args: Vec<OsString>,
    app: Option<AppDefaults>,
    cancel: Option<Cancel>,
) -> Result<String, Failure> {
    let cli = cli::Cli::try_parse_from(args).map_err(|e| Failure::usage(&e))?;
    if !cli.command.json() {
        return Err(Failure {
            code: Code::Config as i32,
            message: "run_json runs a command given --json".to_owned(),
            hint: Some("add --json to the command line".to_owned()),
            kind: "usage",
        });
    }
    let mut buffer = Vec::new();
    let invocation = Invocation {
        host: Host::Embedded,
        cancel,
        out: &mut buffer,
        app,
    };
    match commands::run(cli, invocation) {
        Ok(Code::Success) => String::from_utf8(buffer).map_err(|e| Failure {
            code: Code::Failure as i32,
            message: format!("the command printed text that is not UTF-8: {e}"),
            hint: None,
            kind: "failed",
        }),
        // A command that reported its failure itself (restore's missing entries, on standard
        // error) rather than as an error.
        Ok(code) => Err(Failure {
            code: code as i32,
            message: format!(
                "the command failed (exit code {}; see standard error)",
                code as i32
            ),
            hint: None,
            kind: code.kind(),
        }),
        Err(err) => Err(Failure::of(&err)),
    }
}
