"""The Celery app `bench/guard.py` runs in a real worker: one owned task with a trivial body,
guarded by `celery_janitor.install(app)` when `BENCH_CONFIG` names a janitor config.

It records, per task, in `BENCH_TIMINGS_DIR/<pid>.txt` (one line each, written after the
measured parts): the time from Celery's `task_prerun` signal to the body's first line, the time
the guard took (entry of the guard's wrapper of `run` to the call of the real `run`) and the part
of it spent in the native check (`Guard.check`), all in nanoseconds, and the body's wall clock.
The guard is timed from outside, by wrapping the `Installed` object `install` returns (its
`run_guarded` and its `guard.check`), so the package carries no timing code.

Environment: `BENCH_BROKER` (redis URL, required), `BENCH_CONFIG` (janitor config; unset = not
installed), `BENCH_ACKS_LATE` (`1` = `task_acks_late`), `BENCH_TIMINGS_DIR` (required).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, signals

TASK = "bench.noop"

_now = time.perf_counter_ns
_state: dict[str, int] = {"prerun": 0, "guard": -1, "native": -1}
_files: dict[int, Any] = {}


def _timings_file() -> Any:
    pid = os.getpid()
    f = _files.get(pid)
    if f is None:
        path = os.path.join(os.environ["BENCH_TIMINGS_DIR"], f"{pid}.txt")
        f = _files[pid] = open(path, "a", buffering=1)  # noqa: SIM115 (kept per process)
    return f


app = Celery("bench")
app.conf.update(
    broker_url=os.environ["BENCH_BROKER"],
    result_backend=os.environ["BENCH_BROKER"],
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=os.environ.get("BENCH_ACKS_LATE") == "1",
    broker_connection_retry_on_startup=True,
    enable_utc=True,
)


@app.task(name=TASK, ignore_result=True, shared=False)
def noop(row_id: int) -> None:
    """The owned task: row `row_id` of `scan_tasks`. Its body only records the timings."""
    body = _now()
    wall = time.time()
    prerun, guard, native = _state["prerun"], _state["guard"], _state["native"]
    _state["guard"] = _state["native"] = -1
    _timings_file().write(f"{body - prerun} {guard} {native} {wall:.6f}\n")


@signals.task_prerun.connect
def _prerun(**_: Any) -> None:
    _state["prerun"] = _now()


class _TimedGuard:
    """The native guard with `check` timed; everything else passed through."""

    def __init__(self, guard: Any) -> None:
        self._guard = guard

    def check(self, *args: Any) -> Any:
        start = _now()
        verdict = self._guard.check(*args)
        _state["native"] = _now() - start
        if verdict["verdict"] != "run":
            raise RuntimeError(f"bench: the guard did not let a live task run: {verdict}")
        return verdict

    def __getattr__(self, name: str) -> Any:
        return getattr(self._guard, name)


if os.environ.get("BENCH_CONFIG"):
    import celery_janitor

    inst = celery_janitor.install(app, config_path=os.environ["BENCH_CONFIG"])
    inst.guard = _TimedGuard(inst.guard)
    run_guarded = inst.run_guarded

    def _timed_run_guarded(
        task: Any, run: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        start = _now()

        def timed_run(*a: Any, **k: Any) -> Any:
            _state["guard"] = _now() - start
            return run(*a, **k)

        return run_guarded(task, timed_run, args, kwargs)

    inst.run_guarded = _timed_run_guarded
