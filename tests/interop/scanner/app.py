"""The scanner's Celery app and its two tasks.

Settings come from the environment when a worker imports this module
(`python -m celery -A scanner.app worker`):

| variable | meaning | default |
|---|---|---|
| `CELERY_BROKER_URL` | broker (Celery itself also reads this name) | required |
| `CELERY_RESULT_BACKEND` | result backend | the broker URL |
| `DATABASE_URL` | PostgreSQL database with `scan_tasks` / `scan_results` | needed by scans |
| `SCANNER_DATABASE_URL` | the app's database when `DATABASE_URL` is the janitor's | unset |
| `SCANNER_RESULT_EXTENDED` | `1` stores task name/args/kwargs in results | `1` |
| `SCANNER_ACCEPT_PICKLE` | `1` also accepts pickle messages | `0` |
| `SCANNER_TRACK_STARTED` | `1` writes a STARTED result when a task starts | `0` |
| `SCANNER_VISIBILITY_TIMEOUT` | kombu `visibility_timeout` in seconds | kombu's 3600 |
| `SCANNER_ACKS_LATE` | `1` sets `task_acks_late` | `0` |
| `SCANNER_JANITOR_CONFIG` | `celery_janitor.install(app)` with this config file | not installed |
| `SCANNER_JANITOR_FIRST` | `1` installs before the tasks are defined, else after | `0` |
| `SCANNER_EXPLICIT` | `1` adds two tasks guarded explicitly (`scan_explicit_*`) | `0` |

Tests that publish build their own app with `make_app(...)` so that each test talks to its own
Redis; the task names are fixed (`scanner.scan_domain_task`, `scanner.send_email`) so producer and
worker agree whatever module path imported them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import psycopg
from celery import Celery

SCAN_TASK = "scanner.scan_domain_task"
EMAIL_TASK = "scanner.send_email"
EXPLICIT_BASE_TASK = "scanner.scan_explicit_base"
EXPLICIT_DECORATED_TASK = "scanner.scan_explicit_decorated"
QUEUES = ("celery", "scans")


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def make_app(
    broker_url: str,
    backend_url: str | None = None,
    database_url: str | None = None,
    *,
    result_extended: bool = True,
    accept_pickle: bool = False,
    track_started: bool = False,
    visibility_timeout: float | None = None,
    acks_late: bool = False,
    janitor_config: str | None = None,
    janitor_first: bool = False,
    explicit: bool = False,
) -> Celery:
    """Build the scanner app with explicit settings (no environment lookups). With
    `janitor_config`, `celery_janitor.install(app)` guards it — called before the tasks are
    defined (`janitor_first`) or after."""
    app = Celery("scanner")
    transport_options: dict[str, Any] = {}
    if visibility_timeout is not None:
        transport_options["visibility_timeout"] = visibility_timeout
    app.conf.update(
        broker_url=broker_url,
        result_backend=backend_url or broker_url,
        result_extended=result_extended,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json", "pickle"] if accept_pickle else ["json"],
        task_track_started=track_started,
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=True,
        enable_utc=True,
        timezone="UTC",
        task_acks_late=acks_late,
    )
    app.conf["scanner_database_url"] = database_url
    if janitor_config and janitor_first:
        import celery_janitor

        celery_janitor.install(app, config_path=janitor_config)

    @app.task(name=SCAN_TASK, bind=True, shared=False)
    def scan_domain_task(
        self: Any, task_id: int, user_id: int, target_domain: str, config: dict[str, Any]
    ) -> dict[str, Any]:
        """Scan a domain for the `scan_tasks` row `task_id` and record what was found.

        Writes a `scan_results` row referencing the scan, so a deleted scan raises
        `psycopg.errors.ForeignKeyViolation`, exactly as in production.
        """
        url = self.app.conf["scanner_database_url"]
        if not url:
            raise RuntimeError("DATABASE_URL is not set for the scanner worker")
        delay = float((config or {}).get("sleep", 0))
        with psycopg.connect(url) as conn:
            conn.execute("UPDATE scan_tasks SET status = 'running' WHERE id = %s", (task_id,))
            if delay:
                time.sleep(delay)
            conn.execute(
                "INSERT INTO scan_results (scan_task_id, target_domain, finding)"
                " VALUES (%s, %s, %s)",
                (task_id, target_domain, f"scanned for user {user_id}"),
            )
            conn.execute("UPDATE scan_tasks SET status = 'done' WHERE id = %s", (task_id,))
        return {"scan_task_id": task_id, "target_domain": target_domain, "findings": 1}

    if explicit:
        from celery_janitor import GuardedTask, guarded

        def explicit_scan(task_id: int, user_id: int, target_domain: str, config: Any) -> int:
            url = app.conf["scanner_database_url"]
            with psycopg.connect(url) as conn:
                conn.execute(
                    "INSERT INTO scan_results (scan_task_id, target_domain, finding)"
                    " VALUES (%s, %s, %s)",
                    (task_id, target_domain, "explicit"),
                )
            return task_id

        app.task(name=EXPLICIT_BASE_TASK, base=GuardedTask, shared=False)(explicit_scan)
        guarded(app.task(name=EXPLICIT_DECORATED_TASK, shared=False)(explicit_scan))

    @app.task(name=EMAIL_TASK, shared=False)
    def send_email(to: str, subject: str) -> str:
        """An unrelated task: owns no row and touches no database."""
        return f"sent {subject!r} to {to}"

    if janitor_config and not janitor_first:
        import celery_janitor

        celery_janitor.install(app, config_path=janitor_config)
    return app


def app_from_env() -> Celery:
    """Build the app a worker runs, from the variables documented above."""
    broker = os.environ.get("CELERY_BROKER_URL")
    if not broker:
        raise RuntimeError("CELERY_BROKER_URL must name the test's Redis")
    timeout = os.environ.get("SCANNER_VISIBILITY_TIMEOUT")
    return make_app(
        broker,
        os.environ.get("CELERY_RESULT_BACKEND") or broker,
        os.environ.get("SCANNER_DATABASE_URL") or os.environ.get("DATABASE_URL"),
        result_extended=_flag("SCANNER_RESULT_EXTENDED", True),
        accept_pickle=_flag("SCANNER_ACCEPT_PICKLE", False),
        track_started=_flag("SCANNER_TRACK_STARTED", False),
        visibility_timeout=float(timeout) if timeout else None,
        acks_late=_flag("SCANNER_ACKS_LATE", False),
        janitor_config=os.environ.get("SCANNER_JANITOR_CONFIG") or None,
        janitor_first=_flag("SCANNER_JANITOR_FIRST", False),
        explicit=_flag("SCANNER_EXPLICIT", False),
    )


# `celery -A scanner.app` finds this. Importing the module without the environment (as the test
# process does, to reach make_app) must not fail, so the app is only built when asked for.
def __getattr__(name: str) -> Any:
    if name in ("app", "celery"):
        value = app_from_env()
        globals()["app"] = value
        globals()["celery"] = value
        return value
    raise AttributeError(name)
