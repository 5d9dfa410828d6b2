//! Typed engine errors. The binary maps each variant to a named exit code; messages never
//! contain credentials (URLs are shown through `SecretUrl`).

use crate::lock::Holder;

/// Driver messages of connection failures are kept as scrubbed text (`message`), not as
/// sources: a driver may echo the URL, password included.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    #[error("cannot connect to Redis at {url}: {message}")]
    RedisUnavailable { url: String, message: String },
    #[error("cannot connect to the database at {url}: {message}")]
    DatabaseUnavailable { url: String, message: String },
    #[error("lost the database connection (table {table}): {message}")]
    DatabaseLost { table: String, message: String },
    #[error("no database configured: set DATABASE_URL, --database-url or [database] url")]
    NoDatabase,
    #[error("invalid option: {0}")]
    InvalidOption(#[from] janitor_config::ConfigError),
    #[error("another cleanup is running: {}; nothing was changed", describe_busy(.key, .holder, *.expires_in_ms))]
    Busy {
        key: String,
        /// Who holds the lock, when it says (locks of older versions don't).
        holder: Option<Box<Holder>>,
        /// Milliseconds until the lock expires unless its holder refreshes it.
        expires_in_ms: Option<i64>,
        /// The holder ran on this host and its process is gone: the lock may be taken over.
        stale: bool,
    },
    #[error("the janitor lock was lost during the run (another process took or deleted it); stopped before changing anything else")]
    LockLost,
    #[error("interrupted (Ctrl-C or SIGTERM)")]
    Interrupted,
    #[error("{key} is a Redis {found}, expected {expected} (or missing); that removal step changed nothing")]
    WrongType {
        key: String,
        found: String,
        expected: String,
    },
    #[error(
        "could not write the archive stream {key} ({message}); that removal step changed nothing"
    )]
    ArchiveWrite { key: String, message: String },
    #[error("{source}; {}", describe_partial(.run_id, *.changed, *.in_doubt))]
    PartialRun {
        run_id: String,
        /// Entries removed (and archived) or rows marked before the run stopped.
        changed: u64,
        /// The last removal script's reply was lost: it may have removed more.
        in_doubt: bool,
        #[source]
        source: Box<EngineError>,
    },
    #[error("Redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("database error on {table}: {message}")]
    Database { table: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{script} answered {got} values for {} entries (expected {expected}); stopped", .expected / 2)]
    ScriptReply {
        script: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("kombu's unacked_mutex was lost during a removal (a worker's restore sweep took it after it expired); stopped before changing anything else")]
    MutexLost,
    #[error("cannot restore archive entry {archive_id}: {message}")]
    Restore { archive_id: String, message: String },
    #[error("cannot update the run record {key}: {source}")]
    RunRecord {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot read the archive stream {key}: {source}")]
    ArchiveStream {
        key: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("archive record is not valid base64: {0}")]
    ArchiveEncoding(#[from] base64::DecodeError),
    /// A queue purge of more messages than allowed (`[api] purge_max`) without `force`:
    /// nothing was changed.
    #[error("queue {queue} holds {messages} messages, more than the {max} a purge removes without force; nothing was changed (purge it anyway with --force, or \"force\": true over the API)")]
    PurgeTooLarge {
        queue: String,
        /// Messages in the queue's lists when counted.
        messages: u64,
        /// The limit (`[api] purge_max`).
        max: u64,
    },
    /// An archive listing's cursor that is not one [`Janitor::archive_entries`] handed out.
    ///
    /// [`Janitor::archive_entries`]: crate::Janitor::archive_entries
    #[error("invalid archive cursor {cursor:?}: {reason}")]
    BadArchiveCursor {
        /// The cursor as given (its first 64 characters).
        cursor: String,
        reason: &'static str,
    },
    /// A listing's cursor that is not one [`Janitor::list`](crate::Janitor::list) handed out for
    /// this listing (mistyped, from another version, or for other states or locations).
    #[error("invalid cursor {cursor:?}: {reason}")]
    BadCursor {
        /// The cursor as given (its first 64 characters).
        cursor: String,
        reason: &'static str,
    },
}

fn describe_busy(key: &str, holder: &Option<Box<Holder>>, expires_in_ms: Option<i64>) -> String {
    let mut text = match holder {
        Some(h) => format!(
            "lock {key} is held by run {} (pid {} on {}) since {}",
            h.run_id, h.pid, h.host, h.since
        ),
        None => format!("lock {key} is held"),
    };
    if expires_in_ms == Some(-1) {
        text.push_str("; it never expires (no TTL), so no running celery-janitor holds it");
    } else if let Some(ms) = expires_in_ms.filter(|ms| *ms >= 0) {
        text.push_str(&format!(
            "; it expires in {:.0} s unless its holder refreshes it",
            (ms as f64 / 1000.0).ceil()
        ));
    }
    text
}

fn describe_partial(run_id: &str, changed: u64, in_doubt: bool) -> String {
    if in_doubt {
        format!(
            "run {run_id} stopped partway: {changed} changes were confirmed, and its last removal \
             batch may have been applied too (Redis went away before answering; the archive \
             stream has whatever it removed). See what was removed with `celery-janitor restore \
             --run {run_id} --dry-run` once Redis is back (this run's lock expires within 30 s); \
             undo it with `celery-janitor restore --run {run_id}`, or run the cleanup again to \
             finish"
        )
    } else if changed == 0 {
        format!("run {run_id} stopped before changing anything")
    } else {
        format!(
            "run {run_id} stopped partway: {changed} changes were made, each archived and audited; \
             undo them with `celery-janitor restore --run {run_id}`, or run the cleanup again to finish"
        )
    }
}

impl EngineError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        EngineError::Io {
            context: context.into(),
            source,
        }
    }

    /// The error behind a partial run's summary.
    pub fn root(&self) -> &EngineError {
        match self {
            EngineError::PartialRun { source, .. } => source.root(),
            e => e,
        }
    }

    /// Redis went away (connection refused, dropped, timed out), as opposed to a command error.
    pub fn is_redis_connection(&self) -> bool {
        match self.root() {
            EngineError::RedisUnavailable { .. } => true,
            EngineError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_connection_refusal()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
            }
            _ => false,
        }
    }

    /// A script call failed without an answer from the script (the connection broke or timed
    /// out): Redis may have run it.
    pub fn reply_lost(&self) -> bool {
        match self {
            EngineError::Redis(e) => {
                e.is_io_error()
                    || e.is_connection_dropped()
                    || e.is_timeout()
                    || e.is_unrecoverable_error()
            }
            _ => false,
        }
    }

    /// The database went away.
    pub fn is_database_connection(&self) -> bool {
        matches!(
            self.root(),
            EngineError::DatabaseUnavailable { .. } | EngineError::DatabaseLost { .. }
        )
    }
}

pub(crate) type Result<T, E = EngineError> = std::result::Result<T, E>;
