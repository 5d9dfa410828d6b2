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

impl Code {
    pub(crate) fn of(err: &anyhow::Error) -> Code {
        if err.downcast_ref::<ConfigError>().is_some() {
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
            EngineError::NoDatabase | EngineError::InvalidOption(_) => Code::Config,
            EngineError::Busy { .. } => Code::Busy,
            EngineError::Interrupted => Code::Interrupted,
            _ => Code::Failure,
        }
    }
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
