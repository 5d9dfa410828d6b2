//! The audit log's events, one serializable enum: every line `logs/audit.jsonl` can hold
//! (docs/cli.md, "What it writes"). [`AuditSink`] writes them (and the archive file) off the async threads; each line gets a `ts`.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use crate::archive::{ArchiveRecord, AuditLog};
use crate::classify::Location;
use crate::error::{EngineError, Result};
use crate::reports::FullCleanupReport;

#[derive(Debug, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub(crate) enum AuditEvent<'a> {
    /// A cleanup run ended (completed, failed or interrupted), or a dry run previewed one.
    Run {
        command: &'a str,
        run_id: &'a str,
        dry_run: bool,
        outcome: &'a str,
        error: Option<String>,
        report: &'a FullCleanupReport,
    },
    /// One entry removed (and archived).
    Remove {
        run_id: &'a str,
        location: Location,
        key: String,
        task_id: Option<&'a str>,
        task_name: Option<&'a str>,
        owner_table: Option<&'a str>,
        owner_id: Option<&'a str>,
        reason: &'a str,
        archive_id: &'a str,
    },
    /// Owner rows marked lost.
    MarkLost {
        run_id: &'a str,
        table: &'a str,
        status: Option<&'a str>,
        ids: &'a [String],
    },
    /// A mutating request to the HTTP API: who asked, which request, and how it ended (its
    /// run's own `run` line says what changed).
    ApiRequest(&'a RequestAudit),
    /// One archived entry put back.
    Restore {
        run_id: &'a str,
        archive_id: &'a str,
        location: Location,
        key: String,
        task_id: Option<&'a str>,
    },
    /// Durable revocations written (or, with `undo`, lifted) by `revoke`.
    /// (Its `actor` is the line's own, as on every line.)
    Revoke {
        undo: bool,
        task_ids: &'a [String],
        owners: &'a [crate::revoke::OwnerRef],
        /// The run that removed their queued copies, if it ran.
        run_id: Option<&'a str>,
    },
}

/// A mutating request to the HTTP API, as its `api_request` audit line records it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RequestAudit {
    /// The token's name or the JWT's `sub`.
    pub actor: String,
    /// How the actor authenticated: `token`, `jwt` or `none` (`--insecure-no-auth`).
    pub credential: String,
    /// The request's `X-Request-Id`.
    pub request_id: String,
    /// `POST /api/v1/cache/cleanup/orphaned-tasks`, …
    pub endpoint: String,
    /// The run the request started (or restored), when it got that far.
    pub run_id: Option<String>,
    pub dry_run: bool,
    /// The HTTP status answered.
    pub status: u16,
    /// `completed`, or the error code answered (`busy`, `bad_request`, …).
    pub outcome: String,
    /// The error message answered, scrubbed of secrets.
    pub error: Option<String>,
    /// Entries removed, restored or rows marked (`None`: not known, or nothing ran).
    pub changed: Option<u64>,
}

tokio::task_local! {
    /// The actor of the audit lines the current task writes, when its operation names one (a
    /// purge's `actor`: the HTTP API's caller); else the log's own (see `AuditLog::actor`).
    static ACTOR: String;
}

/// Runs `work` with its audit lines naming `actor` (when given) instead of the janitor's own:
/// per operation, so requests of several callers sharing one [`crate::Janitor`] don't mix.
pub(crate) async fn as_actor<F: std::future::Future>(actor: Option<String>, work: F) -> F::Output {
    match actor {
        Some(actor) => ACTOR.scope(actor, work).await,
        None => work.await,
    }
}

/// Runs `work` — any engine operation, or several — with its audit lines naming `actor` instead
/// of the janitor's own (see [`crate::Janitor::set_actor`]). For a front end whose callers share
/// one [`crate::Janitor`], such as the HTTP server: the actor is the task's, so concurrent
/// operations of different callers never mix.
pub async fn with_actor<F: std::future::Future>(actor: impl Into<String>, work: F) -> F::Output {
    as_actor(Some(actor.into()), work).await
}

/// Who the current operation is done for: its own actor (`as_actor`), else the log's.
pub(crate) fn current_actor(log: &AuditLog) -> String {
    ACTOR
        .try_with(String::clone)
        .unwrap_or_else(|_| log.actor())
}

/// Sets the line's `actor` when the current operation names one (`as_actor`).
fn name_actor(event: &mut Value) {
    if let (Ok(actor), Value::Object(map)) = (ACTOR.try_with(String::clone), event) {
        map.insert("actor".into(), Value::String(actor));
    }
}

/// The archive file and the audit log, written on tokio's blocking pool: a disk write or an
/// fsync never holds up the async threads (a server's requests, a worker's event loop).
#[derive(Clone)]
pub(crate) struct AuditSink(Arc<AuditLog>);

impl AuditSink {
    pub(crate) fn new(log: AuditLog) -> Self {
        AuditSink(Arc::new(log))
    }

    /// The files' names and other non-blocking parts.
    pub(crate) fn log(&self) -> &AuditLog {
        &self.0
    }

    async fn off_thread<T: Send + 'static>(
        &self,
        write: impl FnOnce(&AuditLog) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let log = self.0.clone();
        tokio::task::spawn_blocking(move || write(&log))
            .await
            .map_err(|e| EngineError::io("the audit writer stopped", std::io::Error::other(e)))?
    }

    /// Appends one audit event.
    pub(crate) async fn record(&self, event: &AuditEvent<'_>) -> Result<()> {
        let mut value = serde_json::to_value(event).expect("serializable");
        name_actor(&mut value);
        self.off_thread(move |log| log.event(value)).await
    }

    /// Appends removed entries to the run's archive file, then their audit events.
    pub(crate) async fn removals(
        &self,
        run_id: &str,
        records: Vec<ArchiveRecord>,
        mut events: Vec<Value>,
    ) -> Result<()> {
        events.iter_mut().for_each(name_actor);
        let run_id = run_id.to_owned();
        self.off_thread(move |log| {
            log.archive(&run_id, &records)?;
            events.into_iter().try_for_each(|e| log.event(e))
        })
        .await
    }

    /// Flushes both files to disk.
    pub(crate) async fn sync(&self) -> Result<()> {
        self.off_thread(AuditLog::sync).await
    }
}
