//! celery-janitor's HTTP API (`celery-janitor serve`): the engine's operations over HTTP, behind
//! bearer authentication, as one process sharing one [`Janitor`] (one connection pool, the same
//! engine as the CLI). See docs/server.md.
//!
//! - `routes`: the endpoints and the generated OpenAPI document ([`ApiDoc`]);
//! - `auth`: API tokens and JWTs; `throttle`: the brake on failed authentications;
//! - `startup`: the rules checked before listening ([`check_bind`]);
//! - `error`: the one error shape; `json`: bodies in and out; `token`: `token new`.
//!
//! Layers, outermost first: request id (`X-Request-Id`, kept when the client sent one, echoed on
//! every answer), trace, body limit, authentication (on `/api/…`), and a timeout on reads only:
//! cleanups and restores run on tracked tasks that finish even when the client goes away, and
//! shutdown waits for them (asking them to stop after their current batch).

mod auth;
mod error;
mod json;
pub mod metrics;
mod routes;
pub mod schedule;
mod startup;
mod throttle;
mod token;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use janitor_config::{ApiRole, IpRange, SecretUrl, Settings};
use janitor_engine::{Cancel, EngineError, Janitor, NoProgress, RunCtx};
use tokio_util::task::TaskTracker;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use auth::{
    claim_matches, token_digest_hex, Actor, AuthSetupError, Authenticator, Credential, Refusal,
    JWT_LEEWAY_SECONDS,
};
pub use error::{ApiError, ErrorBody, ErrorDetail, LockHolder};
pub use routes::{
    ApiDoc, CleanupBody, FullCleanupBody, Health, PurgeBody, RestoreBody, RunList, TaskPage,
    DEFAULT_PAGE, DEFAULT_RUNS, MAX_PAGE,
};
pub use startup::{check_bind, ServeOptions, StartupError, DEFAULT_BODY_LIMIT};
pub use throttle::{client_ip, Throttle, BLOCK, MAX_FAILURES, WINDOW};
pub use token::{new_token, NewToken, TOKEN_PREFIX};

/// What every request shares: the engine, the credentials, and the tracked runs.
pub(crate) struct AppState {
    janitor: Arc<Janitor>,
    auth: Authenticator,
    throttle: Throttle,
    trusted_proxies: Vec<IpRange>,
    /// The configured URLs, whose secrets every error message is scrubbed of.
    secrets: Vec<SecretUrl>,
    /// Cleanups and restores in flight: shutdown waits for them.
    tasks: TaskTracker,
    /// Cancelled at shutdown: runs stop after their current batch, reads stop.
    cancel: Cancel,
    read_timeout: Duration,
    /// Whole-keyspace reads (`status`, `celery-tasks`) running at once: each scans Redis, so
    /// more wait their turn (within the read timeout) rather than pile onto Redis.
    scans: tokio::sync::Semaphore,
}

/// Whole-keyspace reads served at once.
pub const CONCURRENT_SCANS: usize = 2;

impl AppState {
    fn run_ctx(&self) -> RunCtx<'static> {
        RunCtx::new(&NoProgress, self.cancel.clone())
    }

    fn engine_error(&self, e: &EngineError) -> ApiError {
        let error = ApiError::from_engine(e, &|text| self.scrub(text));
        if error.status.is_server_error() {
            tracing::warn!(code = error.code, error = %error.message, "request failed");
        }
        error
    }

    /// `text` with every configured URL's password hidden.
    fn scrub(&self, text: &str) -> String {
        self.secrets
            .iter()
            .fold(text.to_owned(), |text, url| url.scrub(&text))
    }
}

/// The default read timeout: a read may wait out the grace period once.
fn default_read_timeout(settings: &Settings) -> Duration {
    Duration::from_secs_f64(settings.grace_seconds + 60.0).max(Duration::from_secs(120))
}

/// Authentication and authorization of `/api/…`: 401 without valid credentials, 403 for a
/// viewer's non-GET, 429 for a peer that failed too often.
async fn require_auth(State(s): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    // Every `X-Forwarded-For` line, in order: a proxy appends to the last one, and a client may
    // have sent lines of its own before it.
    let forwarded: Vec<&str> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().unwrap_or("invalid"))
        .collect();
    let forwarded = (!forwarded.is_empty()).then(|| forwarded.join(","));
    let ip = client_ip(peer, forwarded.as_deref(), &s.trusted_proxies);
    let now = Instant::now();
    if let Some(seconds) = s.throttle.blocked(ip, now) {
        return ApiError::too_many_requests(seconds).into_response();
    }
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    match s.auth.authenticate(authorization) {
        Ok(actor) => {
            let reads = [Method::GET, Method::HEAD];
            if actor.role == ApiRole::Viewer && !reads.contains(req.method()) {
                return ApiError::forbidden("a viewer may only read (GET)").into_response();
            }
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
        Err(Refusal::Unauthorized(message)) => {
            if s.throttle.fail(ip, now) {
                tracing::warn!(peer = %ip, "too many failed authentications: blocked for 60 s");
            }
            ApiError::unauthorized(message).into_response()
        }
        Err(Refusal::Forbidden(message)) => ApiError::forbidden(message).into_response(),
    }
}

/// Reads answer within the timeout or get `504 timeout` (the work is dropped: reads change
/// nothing).
async fn read_timeout(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(s.read_timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            axum::http::StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            format!(
                "the read took longer than {} s",
                s.read_timeout.as_secs_f64()
            ),
        )
        .into_response(),
    }
}

/// The router of the whole API over `state`.
fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    let reads = Router::new()
        .route("/api/v1/cache/status", get(routes::status))
        .route("/api/v1/cache/celery-tasks", get(routes::celery_tasks))
        .route("/api/v1/cache/runs", get(routes::runs))
        .route("/api/v1/cache/archive", get(routes::archive))
        .route_layer(middleware::from_fn_with_state(state.clone(), read_timeout));
    let writes = Router::new()
        .route(
            "/api/v1/cache/cleanup/orphaned-tasks",
            post(routes::cleanup_orphaned),
        )
        .route("/api/v1/cache/cleanup/full", post(routes::cleanup_full))
        .route("/api/v1/cache/archive/restore", post(routes::restore))
        .route(
            "/api/v1/cache/queues/{name}/purge",
            post(routes::purge_queue),
        );
    let api = reads
        .merge(writes)
        .route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    Router::new()
        .merge(api)
        .route("/healthz", get(routes::healthz))
        .route("/openapi.json", get(routes::openapi_json))
        .route(
            "/metrics",
            get(routes::metrics)
                .route_layer(middleware::from_fn_with_state(state.clone(), require_auth)),
        )
        .fallback(routes::not_found)
        .method_not_allowed_fallback(routes::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %id,
                    )
                }))
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

/// Why `serve` stopped or never started.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A start-up rule refused (the CLI exits 2).
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The engine could not connect.
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A server bound to its address, not yet answering.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    body_limit: usize,
    /// HTTPS (rustls) when `[api] tls_cert` and `tls_key` are set.
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    /// `[api] metrics_bind`: `/metrics` alone, without authentication, on a listener of its own.
    metrics_listener: Option<tokio::net::TcpListener>,
    /// `--cleanup-every`: scheduled `full-cleanup`.
    schedule: Option<schedule::Schedule>,
}

impl Server {
    /// Checks the start-up rules and binds. `janitor` is the connected engine all requests share.
    pub async fn bind(
        janitor: Janitor,
        auth: Authenticator,
        options: &ServeOptions,
    ) -> Result<Server, ServeError> {
        check_bind(options, auth.has_credentials())?;
        let tls = match &options.tls {
            Some((cert, key)) => Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .map_err(|e| {
                        StartupError::Tls(format!("{} / {}: {e}", cert.display(), key.display()))
                    })?,
            ),
            None => None,
        };
        let settings = janitor.settings();
        let secrets = [&settings.broker_url, &settings.backend_url]
            .into_iter()
            .chain(settings.database_url.as_ref())
            .cloned()
            .collect();
        let read_timeout = options
            .request_timeout
            .unwrap_or_else(|| default_read_timeout(settings));
        let trusted_proxies = settings.api.trusted_proxies.clone();
        let auth = if options.insecure_no_auth {
            Authenticator::open()
        } else {
            auth
        };
        let listener = tokio::net::TcpListener::bind(options.bind)
            .await
            .map_err(|e| StartupError::Bind {
                addr: options.bind,
                message: e.to_string(),
            })?;
        let metrics_listener =
            match settings.api.metrics_bind {
                Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                    StartupError::Bind {
                        addr,
                        message: e.to_string(),
                    }
                })?),
                None => None,
            };
        Ok(Server {
            listener,
            metrics_listener,
            schedule: None,
            state: Arc::new(AppState {
                janitor: Arc::new(janitor),
                auth,
                throttle: Throttle::default(),
                trusted_proxies,
                secrets,
                tasks: TaskTracker::new(),
                cancel: Cancel::new(),
                read_timeout,
                scans: tokio::sync::Semaphore::new(CONCURRENT_SCANS),
            }),
            body_limit: options.body_limit,
            tls,
        })
    }

    /// Whether it answers HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Runs `full-cleanup` on `schedule` beside the API (`serve --cleanup-every`).
    pub fn with_schedule(mut self, schedule: Option<schedule::Schedule>) -> Self {
        self.schedule = schedule;
        self
    }

    /// The address of the `/metrics` listener of `[api] metrics_bind`, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// The address it listens on (the port when bound to port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Answers requests until `shutdown` resolves; then stops accepting, asks runs in flight to
    /// stop after their current batch, and returns once they and every open request are done.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let Server {
            listener,
            state,
            body_limit,
            tls,
            metrics_listener,
            schedule,
        } = self;
        let cancel = state.cancel.clone();
        let refresh = Duration::from_secs_f64(state.janitor.settings().api.refresh_seconds);
        state.tasks.spawn(metrics::refresher(
            state.janitor.clone(),
            refresh,
            cancel.clone(),
        ));
        if let Some(schedule) = schedule {
            state.tasks.spawn(schedule::run(
                state.janitor.clone(),
                schedule,
                cancel.clone(),
            ));
        }
        if let Some(listener) = metrics_listener {
            let app = Router::new()
                .route("/metrics", get(routes::metrics))
                .fallback(routes::not_found)
                .with_state(state.clone());
            let stop = cancel.clone();
            state.tasks.spawn(async move {
                let served = axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await;
                if let Err(e) = served {
                    tracing::error!(error = %e, "the metrics listener stopped");
                }
            });
        }
        let stopping = async move {
            shutdown.await;
            tracing::info!("shutting down: runs in flight stop after their current batch");
            cancel.cancel();
        };
        let app =
            router(state.clone(), body_limit).into_make_service_with_connect_info::<SocketAddr>();
        match tls {
            None => {
                axum::serve(listener, app)
                    .with_graceful_shutdown(stopping)
                    .await?
            }
            Some(config) => {
                let handle = axum_server::Handle::new();
                let stop = handle.clone();
                tokio::spawn(async move {
                    stopping.await;
                    stop.graceful_shutdown(None);
                });
                axum_server::tls_rustls::from_tcp_rustls(listener.into_std()?, config)?
                    .handle(handle)
                    .serve(app)
                    .await?
            }
        }
        state.tasks.close();
        state.tasks.wait().await;
        Ok(())
    }
}

/// Resolves when the process gets SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

/// `celery-janitor serve`: checks the start-up rules, connects the engine, and serves until
/// SIGINT or SIGTERM. `bind` (`--bind`) overrides `[api] bind`; `actor` (`--actor`) is the
/// engine's default audit actor (each request's `api_request` line names its own caller);
/// `cleanup_every` (`--cleanup-every`) runs `full-cleanup` on that schedule.
pub async fn serve(
    settings: Settings,
    bind: Option<SocketAddr>,
    insecure_no_auth: bool,
    actor: Option<String>,
    cleanup_every: Option<schedule::Schedule>,
) -> Result<(), ServeError> {
    let options = ServeOptions::from_settings(&settings.api, bind, insecure_no_auth);
    let get_env = |k: &str| std::env::var(k).ok();
    let auth = if insecure_no_auth {
        Authenticator::open()
    } else {
        Authenticator::from_settings(&settings.api, &get_env)
            .map_err(|e| StartupError::Auth(e.to_string()))?
    };
    // The rules first: a refused start needs no Redis.
    check_bind(&options, insecure_no_auth || auth.has_credentials())?;
    let janitor = Janitor::connect(settings).await?;
    if let Some(actor) = actor {
        janitor.set_actor(actor);
    }
    let server = Server::bind(janitor, auth, &options)
        .await?
        .with_schedule(cleanup_every);
    let addr = server.local_addr()?;
    let scheme = if server.is_tls() { "https" } else { "http" };
    tracing::info!(%addr, scheme, insecure_no_auth, "serving the API");
    eprintln!("celery-janitor: serving the API on {scheme}://{addr} (Ctrl-C to stop)");
    server.run(stop_on_signal()).await
}

/// Resolves at the first SIGINT or SIGTERM, saying so; a second one quits at once, as in the
/// CLI (a run's lock then expires by itself).
async fn stop_on_signal() {
    shutdown_signal().await;
    eprintln!(
        "celery-janitor: stopping: runs in flight stop after their current batch \
         (interrupt again to quit at once)"
    );
    tokio::spawn(async {
        shutdown_signal().await;
        eprintln!("celery-janitor: quitting now; a run's lock expires by itself within 30 s");
        std::process::exit(130);
    });
}

/// `celery-janitor watch`: runs `full-cleanup` on `schedule` (see [`schedule`]) until SIGINT
/// or SIGTERM, which stops a run in progress after its current batch.
pub async fn watch(
    settings: Settings,
    schedule: schedule::Schedule,
    actor: Option<String>,
) -> Result<(), ServeError> {
    let janitor = Janitor::connect(settings).await?;
    if let Some(actor) = actor {
        janitor.set_actor(actor);
    }
    eprintln!(
        "celery-janitor: watching: full-cleanup every {} s (Ctrl-C to stop)",
        schedule.every_seconds()
    );
    let cancel = Cancel::new();
    let stop = cancel.clone();
    let watching = tokio::spawn(schedule::run(Arc::new(janitor), schedule, cancel));
    tokio::select! {
        _ = stop_on_signal() => stop.cancel(),
        _ = stop.cancelled() => {}
    }
    watching
        .await
        .map_err(|e| ServeError::Io(std::io::Error::other(e.to_string())))?;
    Ok(())
}
