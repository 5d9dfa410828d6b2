//! The endpoints: each one calls the shared [`Janitor`] and answers with the engine's report
//! type, so the body is what the CLI's `--json` prints. The OpenAPI document is generated from
//! these handlers and the engine's types ([`ApiDoc`]), so it cannot drift from them.
//!
//! Cleanups and restores run on a task of their own and are awaited: a client that disconnects
//! or gives up does not stop them halfway (the timeout applies to reads only), and the run record
//! (`GET /api/v1/cache/runs`) tells the outcome afterwards.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Extension;
use janitor_config::{validate_grace_seconds, validate_max_age_hours};
use janitor_engine::{
    ArchiveItem, ArchiveOwner, ArchivePage, ArchiveQuery, CleanupOptions, CleanupReport, Cursor,
    EngineError, FullCleanupReport, ListOptions, Location, PlanOptions, PurgeOptions, ReadOptions,
    RequestAudit, RestoreOptions, RestoreReport, RunRecord, State as EntryState, StatusReport,
    TaskRow, RUNS_KEPT,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::auth::Actor;
use crate::error::{ApiError, ErrorBody};
use crate::json::{pretty, Body, Pretty, Query};
use crate::AppState;

type Shared = State<Arc<AppState>>;

/// Page size of `celery-tasks` unless `limit` says otherwise…
pub const DEFAULT_PAGE: usize = 100;
/// … and the largest it may say.
pub const MAX_PAGE: usize = 10_000;
/// Runs listed unless `limit` says otherwise.
pub const DEFAULT_RUNS: usize = 20;
/// How long `/healthz` waits for Redis and the database.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The request's id (`X-Request-Id`, set by the server when the client sent none).
fn request_id(headers: &HeaderMap) -> &str {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
}

/// The OpenAPI document of this server.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "celery-janitor",
        description = "Find and safely remove orphaned Celery tasks in Redis. Every /api endpoint \
                       needs `Authorization: Bearer <token>` (an API token or a JWT); errors are \
                       `{\"error\": {\"code\", \"message\"}}` with an `X-Request-Id` header."
    ),
    paths(
        status,
        celery_tasks,
        cleanup_orphaned,
        cleanup_full,
        restore,
        purge_queue,
        archive,
        runs,
        metrics,
        healthz,
        openapi_json
    ),
    components(schemas(ErrorBody, ArchiveItem, ArchiveOwner)),
    modifiers(&BearerAuth),
    tags((name = "cache", description = "Celery's Redis state and its cleanup"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token ([[api.tokens]]) or a JWT of the host application ([api.jwt])",
                    ))
                    .build(),
            ),
        );
    }
}

/// `GET /api/v1/cache/status`: what `status --json` prints.
#[utoipa::path(
    get,
    path = "/api/v1/cache/status",
    tag = "cache",
    responses(
        (status = 200, description = "The `status --json` report", body = StatusReport),
        (status = 401, description = "No, or an invalid, bearer token", body = ErrorBody),
        (status = 403, description = "The token grants no role", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "Redis or the database is unreachable", body = ErrorBody),
        (status = 504, description = "The read took too long", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn status(State(s): Shared) -> Result<Pretty<StatusReport>, ApiError> {
    let _turn = s.scan_turn().await?;
    let cx = s.run_ctx();
    s.janitor
        .status(&ReadOptions::default(), &cx)
        .await
        .map(Pretty)
        .map_err(|e| s.engine_error(&e))
}

/// The query of `GET /api/v1/cache/celery-tasks`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct TasksQuery {
    /// Only orphaned entries (`state=orphaned`).
    orphaned: Option<bool>,
    /// Comma-separated states: `live`, `orphaned`, `unowned`, `undecidable`.
    state: Option<String>,
    /// Comma-separated locations: `queue`, `unacked`, `result`.
    location: Option<String>,
    /// Only entries of this queue: queued in it, or unacked after delivery from it (results are
    /// left out).
    queue: Option<String>,
    /// Entries per page, 1–10000 (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// One page of `GET /api/v1/cache/celery-tasks`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskPage {
    /// Entries as `tasks --json` prints them.
    pub items: Vec<TaskRow>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(value_type = Option<String>)]
    pub next_cursor: Option<Cursor>,
}

fn parse_list<T: Copy>(
    param: &str,
    text: &str,
    all: &[T],
    name: fn(T) -> &'static str,
) -> Result<Vec<T>, ApiError> {
    let mut out = Vec::new();
    for word in text.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let found = all
            .iter()
            .copied()
            .find(|&v| name(v) == word)
            .ok_or_else(|| {
                let names: Vec<&str> = all.iter().map(|&v| name(v)).collect();
                ApiError::bad_request(format!(
                    "{param}: unknown value {word:?} (expected one of: {})",
                    names.join(", ")
                ))
            })?;
        out.push(found);
    }
    Ok(out)
}

impl TasksQuery {
    fn options(&self) -> Result<ListOptions, ApiError> {
        let mut states = match &self.state {
            Some(text) => parse_list("state", text, &EntryState::ALL, EntryState::as_str)?,
            None => Vec::new(),
        };
        if self.orphaned == Some(true) {
            if states.is_empty() || states.contains(&EntryState::Orphaned) {
                states = vec![EntryState::Orphaned];
            } else {
                return Err(ApiError::bad_request(
                    "orphaned=true conflicts with the state filter",
                ));
            }
        }
        let locations = match &self.location {
            Some(text) => parse_list("location", text, &Location::ALL, Location::as_str)?,
            None => Vec::new(),
        };
        let limit = self.limit.unwrap_or(DEFAULT_PAGE);
        if !(1..=MAX_PAGE).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit: must be from 1 to {MAX_PAGE}, got {limit}"
            )));
        }
        let cursor = self
            .cursor
            .as_deref()
            .map(str::parse::<Cursor>)
            .transpose()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(ListOptions {
            states,
            locations,
            queue: self.queue.clone().filter(|q| !q.is_empty()),
            limit: Some(limit),
            cursor,
            ..Default::default()
        })
    }
}

/// `GET /api/v1/cache/celery-tasks`: entries a page at a time, as `tasks --json` prints them.
#[utoipa::path(
    get,
    path = "/api/v1/cache/celery-tasks",
    tag = "cache",
    params(TasksQuery),
    responses(
        (status = 200, description = "One page of entries", body = TaskPage),
        (status = 400, description = "A bad filter, limit or cursor", body = ErrorBody),
        (status = 401, description = "No, or an invalid, bearer token", body = ErrorBody),
        (status = 403, description = "The token grants no role", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "Redis or the database is unreachable", body = ErrorBody),
        (status = 504, description = "The read took too long", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn celery_tasks(
    State(s): Shared,
    Query(q): Query<TasksQuery>,
) -> Result<Pretty<TaskPage>, ApiError> {
    let options = q.options()?;
    let _turn = s.scan_turn().await?;
    let cx = s.run_ctx();
    let page = s
        .janitor
        .list(&options, &cx)
        .await
        .map_err(|e| s.engine_error(&e))?;
    Ok(Pretty(TaskPage {
        items: page.rows,
        next_cursor: page.next_cursor,
    }))
}

/// The body of `POST /api/v1/cache/cleanup/orphaned-tasks` (every field optional; an empty body
/// is `{}`).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CleanupBody {
    /// Preview only: change nothing (default false).
    pub dry_run: Option<bool>,
    /// Seconds an orphan's row must stay missing, 0–86400 (default: `[cleanup] grace_seconds`).
    #[schema(minimum = 0, maximum = 86400)]
    pub grace_seconds: Option<f64>,
}

/// The body of `POST /api/v1/cache/cleanup/full` (every field optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FullCleanupBody {
    /// Preview only: change nothing (default false).
    pub dry_run: Option<bool>,
    /// Seconds an orphan's row must stay missing, 0–86400 (default: `[cleanup] grace_seconds`).
    #[schema(minimum = 0, maximum = 86400)]
    pub grace_seconds: Option<f64>,
    /// Results older than this many hours are removed, 0–87600 (default: `[cleanup]
    /// max_age_hours`).
    #[schema(minimum = 0, maximum = 87600)]
    pub max_age_hours: Option<f64>,
}

fn grace(v: Option<f64>) -> Result<Option<f64>, ApiError> {
    v.map(validate_grace_seconds)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A run's report with its `X-Run-Id`.
fn with_run_id<T: Serialize>(run_id: Option<&str>, report: &T) -> Response {
    let mut response = pretty(StatusCode::OK, report);
    if let Some(value) = run_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        response.headers_mut().insert("x-run-id", value);
    }
    response
}

/// `POST /api/v1/cache/cleanup/orphaned-tasks`: what `cleanup-orphaned --json` prints.
#[utoipa::path(
    post,
    path = "/api/v1/cache/cleanup/orphaned-tasks",
    tag = "cache",
    request_body(content = CleanupBody, description = "Optional; an empty body is `{}`"),
    responses(
        (status = 200, description = "The `cleanup-orphaned --json` report",
         body = CleanupReport, headers(("x-run-id" = String, description = "The run's id"))),
        (status = 400, description = "A bad body or value", body = ErrorBody),
        (status = 401, description = "No, or an invalid, bearer token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "Another cleanup holds the lock (its holder is named)", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "Redis or the database is unreachable, or the server is stopping", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cleanup_orphaned(
    State(s): Shared,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Body(body): Body<CleanupBody>,
) -> Result<Response, ApiError> {
    let options = CleanupOptions {
        plan: PlanOptions {
            grace_seconds: grace(body.grace_seconds)?,
            ..PlanOptions::orphans()
        },
        dry_run: body.dry_run.unwrap_or(false),
        take_over_lock: false,
    };
    let dry_run = options.dry_run;
    let mutation = Mutation::new(
        &actor,
        &headers,
        "cleanup-orphaned",
        "POST /api/v1/cache/cleanup/orphaned-tasks",
        dry_run,
    );
    let report = s
        .run_audited(
            mutation,
            cleanup_work(&s, options, |r| r.orphans),
            |r: &CleanupReport| (Some(r.run_id.clone()), Some(r.removed.total())),
        )
        .await?;
    Ok(with_run_id(Some(&report.run_id), &report))
}

/// `POST /api/v1/cache/cleanup/full`: what `full-cleanup --json` prints.
#[utoipa::path(
    post,
    path = "/api/v1/cache/cleanup/full",
    tag = "cache",
    request_body(content = FullCleanupBody, description = "Optional; an empty body is `{}`"),
    responses(
        (status = 200, description = "The `full-cleanup --json` report",
         body = FullCleanupReport, headers(("x-run-id" = String, description = "The run's id"))),
        (status = 400, description = "A bad body or value", body = ErrorBody),
        (status = 401, description = "No, or an invalid, bearer token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "Another cleanup holds the lock (its holder is named)", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "Redis or the database is unreachable, or the server is stopping", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn cleanup_full(
    State(s): Shared,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Body(body): Body<FullCleanupBody>,
) -> Result<Response, ApiError> {
    let max_age_hours = body
        .max_age_hours
        .map(validate_max_age_hours)
        .transpose()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let options = CleanupOptions {
        plan: PlanOptions {
            grace_seconds: grace(body.grace_seconds)?,
            max_age_hours,
            ..PlanOptions::full()
        },
        dry_run: body.dry_run.unwrap_or(false),
        take_over_lock: false,
    };
    let dry_run = options.dry_run;
    let mutation = Mutation::new(
        &actor,
        &headers,
        "full-cleanup",
        "POST /api/v1/cache/cleanup/full",
        dry_run,
    );
    let report = s
        .run_audited(
            mutation,
            cleanup_work(&s, options, |r| r),
            |r: &FullCleanupReport| (Some(r.run_id.clone()), Some(r.changed())),
        )
        .await?;
    Ok(with_run_id(Some(&report.run_id), &report))
}

/// The body of `POST /api/v1/cache/archive/restore`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreBody {
    /// The run to restore (required).
    pub run_id: Option<String>,
    /// Only these task ids of the run (default: all of them).
    pub task_ids: Option<Vec<String>>,
    /// Say what would be restored, changing nothing (default false).
    pub dry_run: Option<bool>,
}

/// `POST /api/v1/cache/archive/restore`: what `restore --json` prints.
#[utoipa::path(
    post,
    path = "/api/v1/cache/archive/restore",
    tag = "cache",
    request_body(content = RestoreBody),
    responses(
        (status = 200, description = "The `restore --json` report (`missing` counts entries that could not be restored from here)",
         body = RestoreReport, headers(("x-run-id" = String, description = "The run restored"))),
        (status = 400, description = "A bad body or value", body = ErrorBody),
        (status = 401, description = "No, or an invalid, bearer token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "A cleanup holds the lock (its holder is named)", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "Redis or the database is unreachable, or the server is stopping", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn restore(
    State(s): Shared,
    Extension(actor): Extension<Actor>,
    headers: HeaderMap,
    Body(body): Body<RestoreBody>,
) -> Result<Response, ApiError> {
    let run_id = body
        .run_id
        .filter(|r| !r.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("run_id is required"))?;
    if run_id.len() > 128 {
        return Err(ApiError::bad_request("run_id is too long"));
    }
    let task_ids = body.task_ids.unwrap_or_default();
    if task_ids.len() > MAX_PAGE {
        return Err(ApiError::bad_request(format!(
            "task_ids: at most {MAX_PAGE} per request"
        )));
    }
    let options = RestoreOptions {
        run_id: Some(run_id),
        task_ids,
        dry_run: body.dry_run.unwrap_or(false),
        ..Default::default()
    };
    let dry_run = options.dry_run;
    let janitor = s.janitor.clone();
    let cancel = s.cancel.clone();
    let work = async move {
        let cx = janitor_engine::RunCtx::new(&janitor_engine::NoProgress, cancel);
        janitor.restore(&options, &cx).await
    };
    let mutation = Mutation::new(
        &actor,
        &headers,
        "restore",
        "POST /api/v1/cache/archive/restore",
        dry_run,
    );
    let report = s
        .run_audited(mutation, work, |r: &RestoreReport| {
            (r.run_id.clone(), Some(r.restored_total()))
        })
        .await?;
    Ok(with_run_id(report.run_id.as_deref(), &report))
}

/// The body of `POST /api/v1/cache/queues/{name}/purge`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurgeBody {
    /// The queue's name again (required): without it, or with another name, nothing changes.
    pub confirm: Option<String>,
    /// Purge even when the queue holds more than `[api] purge_max` messages (default false).
    pub force: Option<bool>,
    /// Say what would be removed, changing nothing (default false).
    pub dry_run: Option<bool>,
}

/// The longest queue name taken (Redis keys may be longer; Celery's queue names are not).
const MAX_QUEUE_NAME: usize = 1024;

/// `POST /api/v1/cache/queues/{name}/purge`: removes every message queued in the queue when
/// the purge starts (all priority sub-lists; archived, restorable; `unacked` untouched), and
/// answers what `purge-queue --json` prints (the `cleanup-orphaned --json` report).
#[utoipa::path(
    post,
    path = "/api/v1/cache/queues/{name}/purge",
    tag = "cache",
    params(("name" = String, Path, description = "The queue's name, as Celery names it")),
    request_body(content = PurgeBody, description = "`confirm` must be the queue's name"),
    responses(
        (status = 200, description = "The purge report (the `cleanup-orphaned --json` shape)",
         body = CleanupReport, headers(("x-run-id" = String, description = "The run's id"))),
        (status = 400, description = "No matching `confirm`, a bad body, or more than `[api] purge_max` messages without `force`; nothing changed", body = ErrorBody),
        (status = 401, description = "No, or an invalid, bearer token", body = ErrorBody),
        (status = 403, description = "Not an admin", body = ErrorBody),
        (status = 409, description = "Another cleanup holds the lock (its holder is named)", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "Redis or the database is unreachable, or the server is stopping", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn purge_queue(
    State(s): Shared,
    Extension(actor): Extension<Actor>,
    name: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    Body(body): Body<PurgeBody>,
) -> Result<Response, ApiError> {
    let axum::extract::Path(name) =
        name.map_err(|e| ApiError::bad_request(format!("bad queue name: {}", e.body_text())))?;
    if name.is_empty() || name.len() > MAX_QUEUE_NAME {
        return Err(ApiError::bad_request(format!(
            "the queue name must be 1 to {MAX_QUEUE_NAME} bytes"
        )));
    }
    match body.confirm.as_deref() {
        Some(confirm) if confirm == name => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "confirm is not the queue's name; nothing was changed",
            ))
        }
        None => {
            return Err(ApiError::bad_request(
                "confirm is required: the queue's name, to purge it; nothing was changed",
            ))
        }
    }
    let options = PurgeOptions {
        dry_run: body.dry_run.unwrap_or(false),
        force: body.force.unwrap_or(false),
        max: s.janitor.settings().api.purge_max,
        actor: Some(actor.name.clone()),
        ..PurgeOptions::new(name)
    };
    let dry_run = options.dry_run;
    let janitor = s.janitor.clone();
    let cancel = s.cancel.clone();
    let work = async move {
        let cx = janitor_engine::RunCtx::new(&janitor_engine::NoProgress, cancel);
        janitor.purge_queue(&options, &cx).await
    };
    let mutation = Mutation::new(
        &actor,
        &headers,
        "purge-queue",
        "POST /api/v1/cache/queues/{name}/purge",
        dry_run,
    );
    let report = s
        .run_audited(mutation, work, |r: &CleanupReport| {
            (Some(r.run_id.clone()), Some(r.removed.total()))
        })
        .await?;
    Ok(with_run_id(Some(&report.run_id), &report))
}

/// The query of `GET /api/v1/cache/archive`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ArchiveParams {
    /// Only entries archived by this run.
    run_id: Option<String>,
    /// Entries per page, 1–10000 (default 100).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// The previous page's `next_cursor`.
    cursor: Option<String>,
}

/// `GET /api/v1/cache/archive`: archived entries, newest first, a page at a time — metadata
/// only, never the stored bytes (which may hold secrets).
#[utoipa::path(
    get,
    path = "/api/v1/cache/archive",
    tag = "cache",
    params(ArchiveParams),
    responses(
        (status = 200, description = "One page of the archive, newest first", body = ArchivePage),
        (status = 400, description = "A bad limit or cursor", body = ErrorBody),
        (status = 401, description = "No, or an invalid, bearer token", body = ErrorBody),
        (status = 403, description = "The token grants no role", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
        (status = 504, description = "The read took too long", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn archive(
    State(s): Shared,
    Query(q): Query<ArchiveParams>,
) -> Result<Pretty<ArchivePage>, ApiError> {
    let limit = q.limit.unwrap_or(ArchiveQuery::DEFAULT_LIMIT);
    if !(1..=ArchiveQuery::MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be from 1 to {}, got {limit}",
            ArchiveQuery::MAX_LIMIT
        )));
    }
    if let Some(cursor) = &q.cursor {
        ArchiveQuery::check_cursor(cursor).map_err(|e| s.engine_error(&e))?;
    }
    if q.run_id.as_ref().is_some_and(|r| r.len() > 128) {
        return Err(ApiError::bad_request("run_id is too long"));
    }
    let query = ArchiveQuery {
        run_id: q.run_id.filter(|r| !r.is_empty()),
        limit,
        cursor: q.cursor,
    };
    s.janitor
        .archive_entries(&query)
        .await
        .map(Pretty)
        .map_err(|e| s.engine_error(&e))
}

/// The query of `GET /api/v1/cache/runs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct RunsQuery {
    /// Runs to list, newest first, 1–1000 (default 20).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// `GET /api/v1/cache/runs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    /// Run records, newest first.
    pub items: Vec<RunRecord>,
}

/// `GET /api/v1/cache/runs`: recent runs from the run record (a client that timed out finds its
/// run's outcome here).
#[utoipa::path(
    get,
    path = "/api/v1/cache/runs",
    tag = "cache",
    params(RunsQuery),
    responses(
        (status = 200, description = "Recent runs, newest first", body = RunList),
        (status = 400, description = "A bad limit", body = ErrorBody),
        (status = 401, description = "No, or an invalid, bearer token", body = ErrorBody),
        (status = 403, description = "The token grants no role", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn runs(
    State(s): Shared,
    Query(q): Query<RunsQuery>,
) -> Result<Pretty<RunList>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_RUNS);
    if !(1..=RUNS_KEPT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit: must be from 1 to {RUNS_KEPT}, got {limit}"
        )));
    }
    let items = s
        .janitor
        .runs(limit)
        .await
        .map_err(|e| s.engine_error(&e))?;
    Ok(Pretty(RunList { items }))
}

/// The body of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok` or `unavailable`.
    pub status: &'static str,
}

/// `GET /healthz`: 200 when Redis and the database answer, 503 otherwise. No authentication;
/// says nothing else.
#[utoipa::path(
    get,
    path = "/healthz",
    responses(
        (status = 200, description = "Redis and the database answer", body = Health),
        (status = 503, description = "Redis or the database does not answer", body = Health),
    )
)]
pub(crate) async fn healthz(State(s): Shared) -> Response {
    let ok = matches!(
        tokio::time::timeout(HEALTH_TIMEOUT, s.janitor.ping()).await,
        Ok(Ok(()))
    );
    if ok {
        pretty(StatusCode::OK, &Health { status: "ok" })
    } else {
        pretty(
            StatusCode::SERVICE_UNAVAILABLE,
            &Health {
                status: "unavailable",
            },
        )
    }
}

/// `GET /metrics`: the cached figures in the Prometheus text format (see the `metrics` module:
/// a scrape reads one Redis key, never the keyspace).
#[utoipa::path(
    get,
    path = "/metrics",
    responses(
        (status = 200, description = "Prometheus text exposition 0.0.4", content_type = "text/plain", body = String),
        (status = 401, description = "No, or an invalid, bearer token (unless on `[api] metrics_bind`)", body = ErrorBody),
        (status = 403, description = "The token grants no role", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody),
        (status = 503, description = "Redis is unreachable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub(crate) async fn metrics(State(s): Shared) -> Result<Response, ApiError> {
    let figures = crate::metrics::stored(&s.janitor)
        .await
        .map_err(|e| s.engine_error(&e))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let text = crate::metrics::render(figures.as_ref(), now);
    let mut response = axum::response::IntoResponse::into_response((StatusCode::OK, text));
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> Response {
    static DOC: OnceLock<utoipa::openapi::OpenApi> = OnceLock::new();
    pretty(StatusCode::OK, DOC.get_or_init(ApiDoc::openapi))
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such endpoint")
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}

/// A mutating request, as its audit line names it.
struct Mutation {
    actor: Actor,
    request_id: String,
    endpoint: &'static str,
    dry_run: bool,
}

impl Mutation {
    /// A mutating request for `command` (the CLI's name for it), logged as it starts.
    fn new(
        actor: &Actor,
        headers: &HeaderMap,
        command: &str,
        endpoint: &'static str,
        dry_run: bool,
    ) -> Self {
        tracing::info!(
            actor = %actor.name,
            via = actor.via.as_str(),
            request_id = request_id(headers),
            dry_run,
            "{command} requested"
        );
        Mutation {
            actor: actor.clone(),
            request_id: request_id(headers).to_owned(),
            endpoint,
            dry_run,
        }
    }
}

/// A cleanup with `options`, its report picked by `pick`, as work for [`AppState::run_audited`].
fn cleanup_work<T>(
    s: &AppState,
    options: CleanupOptions,
    pick: fn(FullCleanupReport) -> T,
) -> impl Future<Output = Result<T, EngineError>> + Send + 'static
where
    T: Send + 'static,
{
    let janitor = s.janitor.clone();
    let cancel = s.cancel.clone();
    async move {
        let cx = janitor_engine::RunCtx::new(&janitor_engine::NoProgress, cancel);
        janitor.cleanup(&options, &cx).await.map(pick)
    }
}

impl AppState {
    /// Waits for a turn to scan the keyspace (see `AppState::scans`).
    async fn scan_turn(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.scans
            .acquire()
            .await
            .map_err(|_| ApiError::internal("the server is stopping"))
    }

    /// Runs `work` on a tracked task of its own — it finishes, and its audit line is written,
    /// even when the client goes away; shutdown waits for it — and awaits its answer. `facts`
    /// reads the run id and the count of changes from a success, for the audit line.
    async fn run_audited<T: Send + 'static>(
        self: &Arc<Self>,
        m: Mutation,
        work: impl Future<Output = Result<T, EngineError>> + Send + 'static,
        facts: fn(&T) -> (Option<String>, Option<u64>),
    ) -> Result<T, ApiError> {
        let s = self.clone();
        // Every audit line of the run names the caller, not the server's process.
        let actor = m.actor.name.clone();
        let task = self
            .tasks
            .spawn(janitor_engine::with_actor(actor, async move {
                let result = work.await.map_err(|e| s.engine_error(&e));
                let entry = audit_entry(&m, &result, facts);
                s.write_audit(&entry).await;
                result
            }));
        match task.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "a run's task failed");
                Err(ApiError::internal(
                    "the run's task failed; see the server log",
                ))
            }
        }
    }

    /// Writes the `api_request` audit line of a mutating request, and its log line.
    async fn write_audit(&self, entry: &RequestAudit) {
        tracing::info!(
            actor = %entry.actor,
            request_id = %entry.request_id,
            run_id = ?entry.run_id,
            status = entry.status,
            outcome = %entry.outcome,
            changed = ?entry.changed,
            "{} answered",
            entry.endpoint
        );
        if let Err(e) = self.janitor.audit_request(entry).await {
            tracing::error!(
                error = %self.scrub(&e.to_string()),
                "cannot write the audit line of a request"
            );
        }
    }
}

/// The `api_request` audit line of a mutating request that ended with `result`.
fn audit_entry<T>(
    m: &Mutation,
    result: &Result<T, ApiError>,
    facts: fn(&T) -> (Option<String>, Option<u64>),
) -> RequestAudit {
    let mut entry = RequestAudit {
        actor: m.actor.name.clone(),
        credential: m.actor.via.as_str().to_owned(),
        request_id: m.request_id.clone(),
        endpoint: m.endpoint.to_owned(),
        dry_run: m.dry_run,
        ..Default::default()
    };
    match result {
        Ok(value) => {
            (entry.run_id, entry.changed) = facts(value);
            entry.status = StatusCode::OK.as_u16();
            entry.outcome = "completed".to_owned();
        }
        Err(e) => {
            entry.run_id.clone_from(&e.run_id);
            entry.status = e.status.as_u16();
            entry.outcome = e.code.to_owned();
            entry.error = Some(e.message.clone());
        }
    }
    entry
}
