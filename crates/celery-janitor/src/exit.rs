//! Named exit codes (documented in docs/cli.md) and the mapping from errors to them.

use janitor_config::ConfigError;
use janitor_engine::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Code {
    /// The command succeeded.
    Success = 0,
    /// The command failed at run time.
    Failure = 1,
    /// Usage or configuration error.
    Config = 2,
    /// Redis could not be reached.
    RedisUnavailable = 3,
    /// The database could not be reached.
    DatabaseUnavailable = 4,
    /// Another cleanup holds the janitor lock; nothing was changed.
    Busy = 5,
    /// Stopped by Ctrl-C or SIGTERM (between batches; what was done is archived and recorded).
    Interrupted = 130,
}

impl From<Code> for std::process::ExitCode {
    fn from(c: Code) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

// The list and the meanings are the contract of docs/cli.md's exit-code table, which the tests
// below hold against them; the binary itself only needs the codes.
#[cfg_attr(
    not(test),
    expect(dead_code, reason = "read by the docs/cli.md check in the tests")
)]
impl Code {
    /// Every exit code, in the order of docs/cli.md's table.
    pub(crate) const ALL: [Code; 7] = [
        Code::Success,
        Code::Failure,
        Code::Config,
        Code::RedisUnavailable,
        Code::DatabaseUnavailable,
        Code::Busy,
        Code::Interrupted,
    ];

    /// What the code means, as docs/cli.md says it.
    pub(crate) fn meaning(self) -> &'static str {
        match self {
            Code::Success => "success",
            Code::Failure => "the command failed at run time",
            Code::Config => "usage or configuration error",
            Code::RedisUnavailable => "Redis unreachable",
            Code::DatabaseUnavailable => "database unreachable",
            Code::Busy => "another cleanup holds the janitor lock; nothing was changed",
            Code::Interrupted => {
                "interrupted by Ctrl-C or SIGTERM between batches; what was done is archived, \
                 audited and recorded"
            }
        }
    }
}

/// A command line that can't be run as given, found after clap parsed it (`purge-queue`
/// without `--yes` and no terminal to ask on): a usage error, exit 2.
#[derive(Debug)]
pub(crate) struct Refused(pub(crate) String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

impl Code {
    pub(crate) fn of(err: &anyhow::Error) -> Code {
        if err.downcast_ref::<ConfigError>().is_some() || err.downcast_ref::<Refused>().is_some() {
            return Code::Config;
        }
        let Some(err) = err.downcast_ref::<EngineError>() else {
            return Code::Failure;
        };
        if err.is_redis_connection() {
            return Code::RedisUnavailable;
        }
        if err.is_database_connection() {
            return Code::DatabaseUnavailable;
        }
        match err.root() {
            EngineError::NoDatabase
            | EngineError::InvalidOption(_)
            | EngineError::BadCursor { .. }
            | EngineError::BadArchiveCursor { .. }
            | EngineError::PurgeTooLarge { .. } => Code::Config,
            EngineError::Busy { .. } => Code::Busy,
            EngineError::Interrupted => Code::Interrupted,
            _ => Code::Failure,
        }
    }
}

impl Code {
    /// The kind of failure an exit code means, for callers that match on names (the Python
    /// package's `JanitorError.kind`); [`kind`] refines it from the error itself.
    pub(crate) fn kind(self) -> &'static str {
        match self {
            Code::Success | Code::Failure => "failed",
            Code::Config => "config",
            Code::RedisUnavailable => "redis_unreachable",
            Code::DatabaseUnavailable => "database_unreachable",
            Code::Busy => "busy",
            Code::Interrupted => "interrupted",
        }
    }
}

/// The kind of a failed command's error, from its type (never its text): one of `config`,
/// `bad_cursor`, `redis_unreachable`, `database_unreachable`, `busy`, `interrupted`, `failed`
/// (`usage`: a command line clap refused, decided before any error of this kind exists, or one
/// refused as given — [`Refused`]).
pub(crate) fn kind(err: &anyhow::Error) -> &'static str {
    if err.downcast_ref::<Refused>().is_some() {
        return "usage";
    }
    if let Some(EngineError::BadCursor { .. } | EngineError::BadArchiveCursor { .. }) =
        err.downcast_ref::<EngineError>().map(EngineError::root)
    {
        return "bad_cursor";
    }
    Code::of(err).kind()
}

/// The error and its causes on one line.
pub(crate) fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

pub(crate) fn hint(err: &anyhow::Error) -> Option<&'static str> {
    match err.downcast_ref::<EngineError>().map(EngineError::root) {
        Some(EngineError::RedisUnavailable { .. }) => {
            Some("check that Redis is running and REDIS_URL (or [redis] url) points at it")
        }
        Some(EngineError::DatabaseUnavailable { .. }) => {
            Some("check that the database is running and DATABASE_URL (or [database] url) is right")
        }
        Some(EngineError::Busy { stale: true, .. }) => Some(
            "the lock is stale (its holder ran on this host and is gone, or it never expires): run again with --take-over-lock to take it over",
        ),
        Some(EngineError::Busy {
            expires_in_ms: Some(-1),
            ..
        }) => Some(
            "the lock key holds something celery-janitor never writes and never expires: inspect it (TYPE, GET) and delete it by hand",
        ),
        Some(EngineError::Busy { .. }) => Some(
            "wait for the other run to finish, then try again (a lock whose holder died expires within 30 s)",
        ),
        Some(EngineError::WrongType { .. }) => Some(
            "something other than Celery and celery-janitor wrote that key; inspect it (TYPE, then DUMP) and rename or delete it",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::Code;
    use janitor_testkit::docs::{table, Doc};

    /// docs/cli.md's exit-code table is exactly [`Code::ALL`] with its meanings, in order.
    #[test]
    fn the_exit_code_table_of_the_docs_is_the_code() {
        let doc = Doc::cli();
        let documented: Vec<(String, String)> = table(doc.section("## Exit codes"))
            .into_iter()
            .map(|row| match row.as_slice() {
                [code, meaning] => (code.clone(), meaning.clone()),
                other => panic!("an exit-code row has two cells: {other:?}"),
            })
            .collect();
        let code: Vec<(String, String)> = Code::ALL
            .iter()
            .map(|&c| ((c as u8).to_string(), c.meaning().to_owned()))
            .collect();
        assert_eq!(
            documented, code,
            "docs/cli.md's exit codes differ from Code::ALL (crates/celery-janitor/src/exit.rs)"
        );
    }

    /// `--help`'s one-line summary names the same codes.
    #[test]
    fn the_help_summary_names_every_exit_code() {
        use clap::CommandFactory;
        let about = crate::cli::Cli::command()
            .get_long_about()
            .expect("a long about")
            .to_string();
        let summary = about
            .split_once("Exit codes: ")
            .expect("the long about lists the exit codes")
            .1;
        let named: Vec<u8> = summary
            .split(", ")
            .map(|item| item.split(' ').next().unwrap().parse().expect(item))
            .collect();
        let all: Vec<u8> = Code::ALL.iter().map(|&c| c as u8).collect();
        assert_eq!(named, all, "{summary}");
    }
}
