"""The worker integration: ``install(app)`` guards every task an ``[[owners]]`` rule owns, runs
the start-up cleanup once per worker node, and offers durable revokes (docs/guard.md).

Which tasks are guarded, whether a task may run, and what is recorded are decided by the Rust
core (``celery_janitor._native.Guard``, the same rules and config as the CLI); this module only
hooks it into Celery: it wraps ``task.run`` so the check runs before the task's body, and turns
the verdict into Celery's own means — ``Ignore`` to drop a task (acknowledged, no result stored),
a re-queue with the same task id for the grace period and for ``on_error = "retry"``.

Nothing native is created at import; a ``Guard`` resolves its settings when ``install`` builds
it (so a bad config, or a config that disagrees with ``app.conf``, fails at start-up) and
connects lazily in each worker process.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from celery import Celery, Task, signals
from celery.app.trace import build_tracer
from celery.exceptions import Ignore

from celery_janitor import _native

logger = logging.getLogger("celery_janitor")

#: The header a re-queued task carries: the broker's time of its first miss (grace period).
FIRST_MISS = "celery_janitor_first_miss"
#: The header a task re-queued under ``on_error = "retry"`` carries: how many times so far.
ERROR_RETRIES = "celery_janitor_error_retries"
#: The ``on_error = "retry"`` backoff: 1 s, doubling, at most 60 s.
BACKOFF_FIRST, BACKOFF_MAX = 1.0, 60.0
#: Marks a wrapped ``run``.
_WRAPPED = "_celery_janitor_guarded"

F = TypeVar("F", bound=Callable[..., Any])


def app_defaults(app: Celery) -> dict[str, Any]:
    """What the app's configuration says about Redis, for the Rust side (``AppDefaults``)."""
    conf = app.conf
    broker_options = conf.broker_transport_options or {}
    backend_options = conf.result_backend_transport_options or {}
    backend = conf.result_backend
    return {
        "broker_url": _text(conf.broker_url),
        "result_backend": _text(backend),
        "broker_keyprefix": broker_options.get("global_keyprefix"),
        "backend_keyprefix": backend_options.get("global_keyprefix"),
        "priority_steps": broker_options.get("priority_steps"),
        "sep": broker_options.get("sep"),
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


class Installed:
    """One app's guard and hooks (``install`` returns it; one per app)."""

    def __init__(self, app: Celery, config_path: str | os.PathLike[str] | None) -> None:
        self.app = app
        self.config_path = None if config_path is None else os.fspath(config_path)
        self.app_defaults = app_defaults(app)
        self.guard = _native.Guard(self.config_path, self.app_defaults)
        self.hostname: str | None = None
        #: ``install`` connected its hooks (the explicit forms alone don't).
        self.hooked = False

    # -- wrapping ----------------------------------------------------------------------------

    def wrap_owned(self, rebuild_tracers: bool = False) -> list[str]:
        """Wrap ``run`` of every task an owner rule owns (once); returns the names wrapped now.
        ``rebuild_tracers``: the tasks' tracers were already built (a prefork child)."""
        wrapped = []
        for name, task in list(self.app.tasks.items()):
            if self.guard.owns(name) and self.wrap(task):
                wrapped.append(name)
                if rebuild_tracers and task.__trace__ is not None:
                    task.__trace__ = build_tracer(
                        name, task, self.app.loader, self.hostname, app=self.app
                    )
        if wrapped:
            logger.debug("celery-janitor guards %s", ", ".join(sorted(wrapped)))
        return wrapped

    def wrap(self, task: Task) -> bool:
        """Wrap ``task.run`` with the guard; False if it already is."""
        run = task.run
        if getattr(run, _WRAPPED, False):
            return False

        @functools.wraps(run)
        def guarded_run(*args: Any, **kwargs: Any) -> Any:
            return self.run_guarded(task, run, args, kwargs)

        setattr(guarded_run, _WRAPPED, True)
        task.run = guarded_run
        return True

    # -- the guard ---------------------------------------------------------------------------

    def run_guarded(
        self, task: Task, run: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        req = task.request
        # Called directly or eagerly (apply, task_always_eager): not a delivered message.
        if req.called_directly or req.is_eager or not req.id:
            return run(*args, **kwargs)
        verdict = self.guard.check(req.id, task.name, _json(list(args)), _json(kwargs))
        kind = verdict["verdict"]
        if kind == "run":
            return run(*args, **kwargs)
        if kind == "revoked":
            self.drop(task, verdict, "revoked", f"revoked by {verdict.get('by')}")
        if kind == "missing":
            return self.on_missing(task, verdict, run, args, kwargs)
        return self.on_error(task, verdict, run, args, kwargs)

    def on_missing(
        self,
        task: Task,
        verdict: dict[str, Any],
        run: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """The owner row is missing: re-queue for the grace period, or skip."""
        req = task.request
        grace = float(self.guard.grace_seconds)
        # A header that is not a time (another producer's header of that name) is no first miss.
        first_miss = _number(_header(req, FIRST_MISS))
        if grace <= 0:
            self.drop(task, verdict, "skipped", "owner row missing (grace_seconds = 0)")
        try:
            now = float(self.guard.broker_time())
        except _native.JanitorError as err:
            # Without the broker's clock the grace can't be measured: decide later.
            return self.retry_later(
                task, run, args, kwargs, why=f"no broker time: {err}", verdict=verdict
            )
        # A first miss in the broker's future (its clock went back, a failover) counts from now:
        # the task waits at most the grace period, never the clocks' difference.
        if first_miss is None or first_miss > now:
            first_miss = now
        waited = now - first_miss
        if waited >= grace:
            self.drop(
                task, verdict, "skipped", f"owner row still missing {waited:.1f} s after first miss"
            )
        countdown = min(max(grace - waited, 0.1), grace)
        if not self.requeue(task, args, kwargs, countdown, {FIRST_MISS: first_miss}):
            return self.run_unchecked(task, verdict, run, args, kwargs, why="owner row missing")
        self.note(task, verdict, "requeued", f"owner row missing; re-checked in {countdown:.1f} s")
        raise Ignore()

    def on_error(
        self,
        task: Task,
        verdict: dict[str, Any],
        run: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """The guard could not decide: ``[guard] on_error``."""
        why = f"guard could not decide ({verdict.get('error_source')}): {verdict.get('error')}"
        if self.guard.on_error == "run":
            return self.run_unchecked(task, verdict, run, args, kwargs, why=why)
        return self.retry_later(task, run, args, kwargs, why=why, verdict=verdict)

    def run_unchecked(
        self,
        task: Task,
        verdict: dict[str, Any],
        run: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        why: str,
    ) -> Any:
        """Run the task's body without a verdict: what the guard can't decide (nor defer) runs."""
        logger.warning(
            "celery-janitor: running task %s[%s] unchecked: %s", task.name, task.request.id, why
        )
        self.note(task, verdict, "ran_unchecked", why, quiet=True)
        return run(*args, **kwargs)

    def retry_later(
        self,
        task: Task,
        run: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        why: str,
        verdict: dict[str, Any],
    ) -> Any:
        """Re-queue outside the task's own retries, 1 s doubling to 60 s, indefinitely; nothing
        is lost (a re-queue the broker refuses runs the task unchecked)."""
        req = task.request
        # A header that is not a count (another producer's header of that name) counts as 0.
        retries = _number(_header(req, ERROR_RETRIES))
        attempt = int(retries) if retries is not None and retries >= 0 else 0
        # 2**attempt as a float overflows from attempt 1024 (a database down for ~17 hours).
        countdown = min(BACKOFF_FIRST * 2 ** min(attempt, 16), BACKOFF_MAX)
        keep = {k: v for k in (FIRST_MISS,) if (v := _header(req, k)) is not None}
        if not self.requeue(task, args, kwargs, countdown, {**keep, ERROR_RETRIES: attempt + 1}):
            return self.run_unchecked(task, verdict, run, args, kwargs, why=why)
        logger.warning(
            "celery-janitor: re-queued task %s[%s] in %g s (attempt %d): %s",
            task.name,
            req.id,
            countdown,
            attempt + 1,
            why,
        )
        self.note(task, verdict, "error", f"{why}; re-queued in {countdown:g} s", quiet=True)
        raise Ignore()

    def requeue(
        self,
        task: Task,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        countdown: float,
        headers: dict[str, Any],
    ) -> bool:
        """The same task (same id, routing, retries count, links) again after ``countdown``;
        False (logged) when the broker refuses it: the caller must not drop the task then."""
        req = task.request
        merged = {**(req.headers or {}), **headers}
        try:
            sig = task.signature_from_request(
                req, list(args), dict(kwargs), countdown=countdown, headers=merged
            )
            sig.apply_async()
        except Exception as err:  # whatever the broker or kombu raised
            logger.error(
                "celery-janitor: could not re-queue task %s[%s]: %s: %s",
                task.name,
                req.id,
                type(err).__name__,
                err,
            )
            return False
        return True

    def drop(self, task: Task, verdict: dict[str, Any], kind: str, reason: str) -> None:
        """Skip the task: log, count, remove its unfinished result, acknowledge (``Ignore``)."""
        logger.warning(
            "celery-janitor: skipped task %s[%s] (owner %s %s): %s",
            task.name,
            task.request.id,
            verdict.get("owner_table"),
            verdict.get("owner_id"),
            reason,
        )
        self.note(task, verdict, kind, reason, quiet=True)
        self.report_chord_part(task, reason)
        raise Ignore()

    def report_chord_part(self, task: Task, reason: str) -> None:
        """A dropped chord member reports its part as revoked, as Celery's own revoke does, so
        the chord fails (``ChordError``) instead of waiting forever; no result is stored for
        the task itself."""
        req = task.request
        if not getattr(req, "chord", None):
            return
        try:
            task.backend.mark_as_revoked(
                req.id, f"celery-janitor: {reason}", request=req, store_result=False
            )
        except Exception as err:  # the worker goes on whatever the backend says
            logger.warning(
                "celery-janitor: could not report skipped task %s[%s] to its chord: %s",
                task.name,
                req.id,
                err,
            )

    def note(
        self, task: Task, verdict: dict[str, Any], kind: str, reason: str, quiet: bool = False
    ) -> None:
        """Record an event in Redis; a failure is logged, never raised."""
        try:
            self.guard.record(
                kind,
                task.request.id,
                task.name,
                verdict.get("owner_table"),
                verdict.get("owner_id"),
                reason,
                task.request.hostname or self.hostname or "",
            )
        except _native.JanitorError as err:
            logger.warning("celery-janitor: could not record the %s event: %s", kind, err)
            return
        if not quiet:
            logger.info(
                "celery-janitor: %s task %s[%s]: %s", kind, task.name, task.request.id, reason
            )

    # -- start-up cleanup --------------------------------------------------------------------

    def start_cleanup(self) -> None:
        """Run ``cleanup-orphaned --startup`` in a child process; log what it says."""
        if not self.guard.cleanup_on_startup:
            logger.info("celery-janitor: start-up cleanup is off (cleanup_on_startup = false)")
            return
        payload = json.dumps({"config_path": self.config_path, "app_defaults": self.app_defaults})
        env = {**os.environ, "CELERY_JANITOR_STARTUP": payload}
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery_janitor._startup"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except OSError as err:
            logger.error("celery-janitor: cannot start the start-up cleanup: %s", err)
            return

        def report() -> None:
            out, err = proc.communicate()
            text = out.decode(errors="replace").strip()
            if proc.returncode == 0:
                logger.info("celery-janitor: start-up cleanup: %s", text)
            else:
                logger.error(
                    "celery-janitor: start-up cleanup failed (exit %s): %s",
                    proc.returncode,
                    err.decode(errors="replace").strip() or text,
                )

        threading.Thread(target=report, name="celery-janitor-startup", daemon=True).start()


def _json(value: Any) -> str:
    """The arguments as JSON for the owner-id rules; arguments that aren't JSON give ``""``,
    so no owner is read and the task is not guarded by its row."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return ""


def _number(value: Any) -> float | None:
    """A header's value as a finite number, else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _header(req: Any, name: str) -> Any:
    headers = getattr(req, "headers", None) or {}
    value = headers.get(name) if isinstance(headers, dict) else None
    return value if value is not None else getattr(req, name, None)


_installed: dict[int, Installed] = {}
_lock = threading.Lock()


def _installation(app: Celery, config_path: str | os.PathLike[str] | None) -> Installed:
    """The app's guard, built once per app (settings resolved then)."""
    with _lock:
        inst = _installed.get(id(app))
        if inst is None:
            inst = Installed(app, config_path)
            _installed[id(app)] = inst
        return inst


def install(app: Celery, config_path: str | os.PathLike[str] | None = None) -> Installed:
    """Guard every task of ``app`` that an ``[[owners]]`` rule owns, run the start-up cleanup
    once per worker node, and make ``revoke`` durable for this app. Reads the same config as the
    CLI (``config_path``, else ``CELERY_JANITOR_CONFIG``, …); the Redis URLs, key prefixes and
    priority steps come from ``app.conf`` unless the config sets them — a mismatch raises
    ``JanitorError`` here. Calling it again for the same app returns the first installation."""
    inst = _installation(app, config_path)
    with _lock:
        if inst.hooked:
            return inst
        inst.hooked = True

    def wrap_after_finalize(sender: Celery, **_: Any) -> None:
        if sender is app:
            inst.wrap_owned()

    def on_worker_init(sender: Any = None, **_: Any) -> None:
        if getattr(sender, "app", app) is not app:
            return
        inst.hostname = getattr(sender, "hostname", None)
        inst.wrap_owned()
        inst.start_cleanup()

    def on_process_init(**_: Any) -> None:
        inst.wrap_owned(rebuild_tracers=True)

    app.on_after_finalize.connect(wrap_after_finalize, weak=False)
    signals.worker_init.connect(on_worker_init, weak=False)
    signals.worker_process_init.connect(on_process_init, weak=False)
    if app.finalized:
        inst.wrap_owned()
    return inst


def installed_for(app: Celery) -> Installed:
    """The app's guard for the explicit forms: the one ``install`` built, else one with the
    default config that guards only the tasks that ask for it (no hooks, no start-up cleanup)."""
    return _installed.get(id(app)) or _installation(app, None)


def _any_installed() -> Installed | None:
    with _lock:
        return next(iter(_installed.values()), None)


class GuardedTask(Task):  # type: ignore[misc]
    """A task base class that guards the task, with or without ``install``
    (``@app.task(base=GuardedTask)``). Its owner row is found by the ``[[owners]]`` rules, as
    for every guarded task; a task no rule owns is only checked for revocations."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        inst = installed_for(self.app)
        if getattr(self.run, _WRAPPED, False):
            return super().__call__(*args, **kwargs)
        return inst.run_guarded(self, super().__call__, args, kwargs)


def guarded(task: F) -> F:
    """Guard one task explicitly, with or without ``install``: ``@guarded`` over
    ``@app.task`` (see :class:`GuardedTask`)."""
    installed_for(task.app).wrap(task)  # type: ignore[attr-defined]
    return task
