//! Named exit codes (documented in docs/cli.md) and the mapping from errors to them.

use janitor_config::ConfigError;
use janitor_engine::EngineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
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
}

impl From<Code> for std::process::ExitCode {
    fn from(c: Code) -> Self {
        std::process::ExitCode::from(c as u8)
    }
}

impl Code {
    pub fn of(err: &anyhow::Error) -> Code {
        if err.downcast_ref::<ConfigError>().is_some() {
            return Code::Config;
        }
        match err.downcast_ref::<EngineError>() {
            Some(EngineError::RedisUnavailable { .. }) => Code::RedisUnavailable,
            Some(EngineError::DatabaseUnavailable { .. }) => Code::DatabaseUnavailable,
            Some(EngineError::NoDatabase) => Code::Config,
            Some(EngineError::Busy { .. }) => Code::Busy,
            _ => Code::Failure,
        }
    }
}

/// The error and its causes on one line.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        let text = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
    }
    parts.join(": ")
}

pub fn hint(err: &anyhow::Error) -> Option<&'static str> {
    match err.downcast_ref::<EngineError>() {
        Some(EngineError::RedisUnavailable { .. }) => {
            Some("check that Redis is running and REDIS_URL (or [redis] url) points at it")
        }
        Some(EngineError::DatabaseUnavailable { .. }) => {
            Some("check that the database is running and DATABASE_URL (or [database] url) is right")
        }
        Some(EngineError::Busy { .. }) => Some("wait for the other run to finish, then try again"),
        _ => None,
    }
}
