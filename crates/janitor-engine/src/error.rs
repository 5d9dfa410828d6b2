//! Typed engine errors. The binary maps each variant to a named exit code; messages never
//! contain credentials (URLs are shown through `SecretUrl`).

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot connect to Redis at {url}: {message}")]
    RedisUnavailable { url: String, message: String },
    #[error("cannot connect to the database at {url}: {message}")]
    DatabaseUnavailable { url: String, message: String },
    #[error("no database configured: set DATABASE_URL, --database-url or [database] url")]
    NoDatabase,
    #[error("another cleanup is running (lock {key} is held); nothing was changed")]
    Busy { key: String },
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database error on {table}: {message}")]
    Database { table: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
