//! `celery_janitor._native.Guard`: the worker guard's native side, one per worker process.
//!
//! Settings are resolved when the guard is built (the config file, the environment and the
//! Celery app's own settings, which must agree), so a bad config stops a worker at start-up.
//! Everything else is lazy and per process: the first call of a process builds a current-thread
//! tokio runtime and a [`Janitor`] whose owner database connects on first use
//! ([`Janitor::connect_lazy_db`]); a call in a forked child finds the parent's pid, leaks the
//! inherited state untouched (its sockets belong to the parent) and builds its own. Calls release
//! the GIL and are serialized per process (the threads pool).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use celery_janitor::Failure;
use janitor_config::{AppDefaults, Flags, Settings};
use janitor_engine::{
    EngineError, GuardError, GuardEvent, GuardEventKind, GuardVerdict, Janitor, RevokeOptions,
    RunCtx,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use serde_json::{json, Value};

use crate::to_py_err;

/// The native state of one process.
struct Native {
    pid: u32,
    runtime: tokio::runtime::Runtime,
    janitor: Option<Janitor>,
}

/// The worker guard (see the module docs and docs/guard.md).
#[pyclass(module = "celery_janitor._native", frozen)]
pub(crate) struct Guard {
    settings: Settings,
    timeout: Duration,
    native: Mutex<Option<Native>>,
}

fn failure(kind: &'static str, code: i32, message: String) -> Failure {
    Failure {
        code,
        message,
        hint: None,
        kind,
    }
}

/// An engine error as the package's `JanitorError`.
fn engine_failure(e: &EngineError) -> Failure {
    if e.is_redis_connection() {
        failure("redis_unreachable", 3, e.to_string())
    } else if e.is_database_connection() {
        failure("database_unreachable", 4, e.to_string())
    } else {
        failure("failed", 1, e.to_string())
    }
}

/// `app_defaults` as given from Python: a dict of optional values.
fn app_defaults(dict: &Bound<'_, PyDict>) -> PyResult<AppDefaults> {
    fn get<'py, T: FromPyObjectOwned<'py>>(
        dict: &Bound<'py, PyDict>,
        key: &str,
    ) -> PyResult<Option<T>> {
        match dict.get_item(key)? {
            Some(v) if !v.is_none() => Ok(Some(v.extract::<T>().map_err(Into::into)?)),
            _ => Ok(None),
        }
    }
    Ok(AppDefaults {
        broker_url: get(dict, "broker_url")?,
        result_backend: get(dict, "result_backend")?,
        broker_keyprefix: get(dict, "broker_keyprefix")?,
        backend_keyprefix: get(dict, "backend_keyprefix")?,
        priority_steps: get(dict, "priority_steps")?,
        sep: get(dict, "sep")?,
    })
}

/// Settings for a Celery app, as the CLI resolves them (flag `--config` = `config_path`).
pub(crate) fn resolve_settings(
    config_path: Option<PathBuf>,
    app: Option<&AppDefaults>,
) -> Result<Settings, Failure> {
    let flags = Flags {
        config: config_path,
        ..Default::default()
    };
    let get_env = |k: &str| std::env::var(k).ok();
    let discovery = janitor_config::Discovery::standard(&get_env);
    janitor_config::resolve_for_app(&flags, &get_env, &discovery, app)
        .map_err(|e| failure("config", 2, e.to_string()))
}

pub(crate) fn app_defaults_arg(arg: Option<&Bound<'_, PyDict>>) -> PyResult<Option<AppDefaults>> {
    arg.map(app_defaults).transpose()
}

fn json_to_py<'py>(py: Python<'py>, value: &Value) -> PyResult<Bound<'py, PyAny>> {
    py.import("json")?
        .call_method1("loads", (value.to_string(),))
}

impl Guard {
    /// Runs `work` with this process's janitor, the GIL released; `Err` when the janitor can't
    /// be built (Redis unreachable).
    fn with_janitor<T: Send>(
        &self,
        py: Python<'_>,
        work: impl FnOnce(&Janitor, &tokio::runtime::Runtime) -> T + Send,
    ) -> Result<T, Failure> {
        py.detach(|| {
            let mut native = self.native.lock().unwrap_or_else(|e| e.into_inner());
            let pid = std::process::id();
            if native.as_ref().is_some_and(|n| n.pid != pid) {
                // Forked: the parent's runtime and connections are not ours to close.
                std::mem::forget(native.take());
            }
            if native.is_none() {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| failure("failed", 1, format!("cannot start a runtime: {e}")))?;
                *native = Some(Native {
                    pid,
                    runtime,
                    janitor: None,
                });
            }
            let n = native.as_mut().expect("set above");
            if n.janitor.is_none() {
                let janitor = n
                    .runtime
                    .block_on(Janitor::connect_lazy_db(
                        self.settings.clone(),
                        self.timeout,
                    ))
                    .map_err(|e| engine_failure(&e))?;
                n.janitor = Some(janitor);
            }
            Ok(work(n.janitor.as_ref().expect("set above"), &n.runtime))
        })
    }

    /// Drops this process's janitor after a Redis connection error, so the next call connects
    /// again: a multiplexed connection that Redis closed (an idle `timeout`, a restart, a
    /// failover) never comes back, and a worker lives for days.
    fn forget_janitor(&self) {
        let mut native = self.native.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = native.as_mut() {
            if n.pid == std::process::id() {
                // Dropped inside its runtime: the pools may hand their connections back to it.
                let _entered = n.runtime.enter();
                n.janitor = None;
            }
        }
    }

    /// `with_janitor` for a call returning an engine result: a Redis connection error drops
    /// the janitor (see `forget_janitor`); every error becomes a `Failure`.
    fn call<T: Send>(
        &self,
        py: Python<'_>,
        work: impl FnOnce(&Janitor, &tokio::runtime::Runtime) -> Result<T, EngineError> + Send,
    ) -> Result<T, Failure> {
        let answer = self.with_janitor(py, work);
        if let Ok(Err(e)) = &answer {
            if e.is_redis_connection() {
                self.forget_janitor();
            }
        }
        answer.and_then(|r| r.map_err(|e| engine_failure(&e)))
    }
}

#[pymethods]
impl Guard {
    /// Resolves the settings now: `config_path` (else `CELERY_JANITOR_CONFIG`, …) and the
    /// app's `app_defaults` (a dict: broker_url, result_backend, broker_keyprefix,
    /// backend_keyprefix, priority_steps, sep). Raises `JanitorError` (kind `config`).
    #[new]
    #[pyo3(signature = (config_path=None, app_defaults=None, timeout_seconds=5.0))]
    fn new(
        config_path: Option<PathBuf>,
        app_defaults: Option<Bound<'_, PyDict>>,
        timeout_seconds: f64,
        py: Python<'_>,
    ) -> PyResult<Self> {
        let app = app_defaults_arg(app_defaults.as_ref())?;
        let settings = resolve_settings(config_path, app.as_ref()).map_err(|f| to_py_err(py, f))?;
        if !(timeout_seconds.is_finite() && timeout_seconds > 0.0) {
            return Err(to_py_err(
                py,
                failure("usage", 2, "timeout_seconds must be above 0".into()),
            ));
        }
        Ok(Guard {
            settings,
            timeout: Duration::from_secs_f64(timeout_seconds),
            native: Mutex::new(None),
        })
    }

    /// Whether exactly one `[[owners]]` rule owns tasks of this name (they are guarded).
    fn owns(&self, task_name: &str) -> bool {
        matches!(
            self.settings.owners.match_task(task_name),
            janitor_config::OwnerMatch::One(_)
        )
    }

    /// `[cleanup] grace_seconds`.
    #[getter]
    fn grace_seconds(&self) -> f64 {
        self.settings.grace_seconds
    }

    /// `[guard] on_error`: "retry" or "run".
    #[getter]
    fn on_error(&self) -> &'static str {
        self.settings.guard_on_error.as_str()
    }

    /// `[cleanup] cleanup_on_startup`.
    #[getter]
    fn cleanup_on_startup(&self) -> bool {
        self.settings.cleanup_on_startup
    }

    /// Whether a task may run: `{"verdict": "run" | "missing" | "revoked" | "error",
    /// "guarded": bool, "owner_table", "owner_id", "by" (revoked: "task" | "owner"),
    /// "error" and "error_source" ("redis" | "database")}`. Never raises for Redis or the
    /// database: the caller applies `on_error` to an "error" verdict.
    fn check<'py>(
        &self,
        py: Python<'py>,
        task_id: &str,
        task_name: &str,
        args_json: &str,
        kwargs_json: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let target = janitor_engine::guard_target(
            &self.settings.owners,
            task_id,
            task_name,
            args_json,
            kwargs_json,
        );
        let mut out = json!({
            "guarded": target.is_some(),
            "owner_table": target.as_ref().map(|t| t.table.clone()),
            "owner_id": target.as_ref().map(|t| t.owner_id.clone()),
        });
        let answer = self.with_janitor(py, |j, rt| {
            rt.block_on(j.guard_check(task_id, target.as_ref()))
        });
        if let Ok(Err(GuardError::Redis(e))) = &answer {
            if e.is_redis_connection() {
                self.forget_janitor();
            }
        }
        let (verdict, extra) = match answer {
            Ok(Ok(GuardVerdict::Run)) => ("run", json!({})),
            Ok(Ok(GuardVerdict::Missing)) => ("missing", json!({})),
            Ok(Ok(GuardVerdict::Revoked { by })) => ("revoked", json!({ "by": by })),
            Ok(Err(GuardError::Redis(e))) => (
                "error",
                json!({"error": e.to_string(), "error_source": "redis"}),
            ),
            Ok(Err(GuardError::Database(e))) => (
                "error",
                json!({"error": e.to_string(), "error_source": "database"}),
            ),
            Err(f) => (
                "error",
                json!({"error": f.message, "error_source": "redis"}),
            ),
        };
        let map = out.as_object_mut().expect("an object");
        map.insert("verdict".into(), verdict.into());
        if let Value::Object(extra) = extra {
            map.extend(extra);
        }
        json_to_py(py, &out)
    }

    /// Records what the worker did (`kind`: skipped, revoked, requeued, error, ran_unchecked):
    /// counted per node, kept in the stream of last events, and for skipped/revoked the task's
    /// unfinished result archived and removed. Returns `{"result", "archive_id", "event_id"}`.
    #[pyo3(signature = (kind, task_id, task_name, owner_table=None, owner_id=None, reason="", node=""))]
    #[allow(clippy::too_many_arguments)]
    fn record<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        task_id: &str,
        task_name: &str,
        owner_table: Option<String>,
        owner_id: Option<String>,
        reason: &str,
        node: &str,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind: GuardEventKind = serde_json::from_value(Value::String(kind.to_owned()))
            .map_err(|_| {
                to_py_err(
                    py,
                    failure(
                        "usage",
                        2,
                        format!(
                            "kind {kind:?}: expected skipped, revoked, requeued, error or ran_unchecked"
                        ),
                    ),
                )
            })?;
        let event = GuardEvent {
            kind,
            task_id: task_id.to_owned(),
            task_name: task_name.to_owned(),
            owner_table,
            owner_id,
            reason: reason.to_owned(),
            node: node.to_owned(),
        };
        let done = self
            .call(py, |j, rt| rt.block_on(j.guard_record(&event)))
            .map_err(|f| to_py_err(py, f))?;
        json_to_py(py, &serde_json::to_value(done).expect("serializable"))
    }

    /// The guard's counters (`totals`, per node in `nodes`) and its last events (`recent`).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let stats = self
            .call(py, |j, rt| rt.block_on(j.guard_stats()))
            .map_err(|f| to_py_err(py, f))?;
        json_to_py(py, &serde_json::to_value(stats).expect("serializable"))
    }

    /// The broker's clock (Redis `TIME`), seconds since the epoch.
    fn broker_time(&self, py: Python<'_>) -> PyResult<f64> {
        self.call(py, |j, rt| rt.block_on(j.broker_time()))
            .map_err(|f| to_py_err(py, f))
    }

    /// Durable revoke (`celery-janitor revoke --json`'s report): `task_ids`, `owners` as
    /// (table, id) pairs; `undo` lifts them.
    #[pyo3(signature = (task_ids, owners, undo=false, actor=None))]
    fn revoke<'py>(
        &self,
        py: Python<'py>,
        task_ids: Vec<String>,
        owners: Vec<(String, String)>,
        undo: bool,
        actor: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let options = RevokeOptions {
            task_ids,
            owners,
            undo,
            actor,
            take_over_lock: false,
        };
        let report = self
            .call(py, |j, rt| {
                rt.block_on(j.revoke(&options, &RunCtx::quiet()))
            })
            .map_err(|f| to_py_err(py, f))?;
        json_to_py(py, &serde_json::to_value(report).expect("serializable"))
    }
}
