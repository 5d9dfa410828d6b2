"""The Python API: one function per CLI command, each building the command line, running it in
the extension module with ``--json`` and returning the parsed JSON (the shapes of docs/cli.md).

Everything goes through :func:`run`, so a new command is one more function here that builds its
argv; failures become :class:`~celery_janitor.JanitorError` in one place, the extension module.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Union

from celery_janitor import _native

#: A filesystem path as the functions take it.
PathArg = Union[str, "os.PathLike[str]"]

#: The program name the command lines start with (clap shows it in usage messages).
PROGRAM = "celery-janitor"


def global_args(*, config_path: PathArg | None = None, actor: str | None = None) -> list[str]:
    """The CLI's global flags for a config file and the actor named in the audit log."""
    args: list[str] = []
    if config_path is not None:
        args += ["--config", os.fspath(config_path)]
    if actor is not None:
        args += ["--actor", actor]
    return args


def run(argv: Sequence[str]) -> Any:
    """Run one CLI command (``argv`` without the program name; ``--json`` is added) and return
    its parsed JSON output. Raises :class:`~celery_janitor.JanitorError` when it fails."""
    return json.loads(_native.run_json([PROGRAM, *argv, "--json"]))


def _number(flag: str, value: float | None) -> list[str]:
    return [] if value is None else [flag, repr(value)]


def status(
    *,
    grace_seconds: float | None = None,
    config_path: PathArg | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """``celery-janitor status --json``: Redis health and task counts by state and location."""
    argv = global_args(config_path=config_path, actor=actor)
    argv += ["status", *_number("--grace", grace_seconds)]
    result: dict[str, Any] = run(argv)
    return result


def orphaned_tasks(
    *,
    limit: int | None = None,
    grace_seconds: float | None = None,
    config_path: PathArg | None = None,
    actor: str | None = None,
) -> list[dict[str, Any]]:
    """``celery-janitor tasks --orphaned --json``: the confirmed orphans, one dict per entry."""
    argv = global_args(config_path=config_path, actor=actor)
    argv += ["tasks", "--orphaned", *_number("--limit", limit)]
    argv += _number("--grace", grace_seconds)
    result: list[dict[str, Any]] = run(argv)
    return result


def list_tasks(
    *,
    orphaned: bool = False,
    states: Sequence[str] | None = None,
    locations: Sequence[str] | None = None,
    queue: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
    grace_seconds: float | None = None,
    config_path: PathArg | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """``celery-janitor tasks --page --json``: one page, ``{"items": [...], "next_cursor": ...}``.

    ``states`` (live, orphaned, unowned, undecidable) and ``locations`` (queue, unacked,
    result) filter the rows; ``queue`` keeps the entries of that queue (queued, or unacked from
    it). Pass the page's ``next_cursor`` as ``cursor``, with the same filters, for the next page.
    """
    argv = global_args(config_path=config_path, actor=actor)
    argv += ["tasks", "--page"]
    if orphaned:
        argv.append("--orphaned")
    for state in states or ():
        argv += ["--state", state]
    for location in locations or ():
        argv += ["--location", location]
    if queue is not None:
        argv += ["--queue", queue]
    if cursor is not None:
        argv += ["--cursor", cursor]
    argv += _number("--limit", limit) + _number("--grace", grace_seconds)
    result: dict[str, Any] = run(argv)
    return result


def cleanup_orphaned(
    *,
    dry_run: bool = False,
    grace_seconds: float | None = None,
    take_over_lock: bool = False,
    config_path: PathArg | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """``celery-janitor cleanup-orphaned --json``: remove confirmed orphans (archived, audited)."""
    argv = global_args(config_path=config_path, actor=actor)
    argv += ["cleanup-orphaned", *_cleanup_flags(dry_run, grace_seconds, take_over_lock)]
    result: dict[str, Any] = run(argv)
    return result


def full_cleanup(
    *,
    dry_run: bool = False,
    grace_seconds: float | None = None,
    max_age_hours: float | None = None,
    take_over_lock: bool = False,
    config_path: PathArg | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """``celery-janitor full-cleanup --json``: orphans, results older than ``max_age_hours``
    and lost database rows."""
    argv = global_args(config_path=config_path, actor=actor)
    argv += ["full-cleanup", *_cleanup_flags(dry_run, grace_seconds, take_over_lock)]
    argv += _number("--max-age-hours", max_age_hours)
    result: dict[str, Any] = run(argv)
    return result


def _cleanup_flags(dry_run: bool, grace_seconds: float | None, take_over_lock: bool) -> list[str]:
    flags = _number("--grace", grace_seconds)
    if dry_run:
        flags.append("--dry-run")
    if take_over_lock:
        flags.append("--take-over-lock")
    return flags


def _guard_in_use(config_path: PathArg | None) -> Any:
    """The guard ``install(app)`` built in this process, when no other config is named."""
    # Without Celery imported, nothing was installed (and Celery is not imported here).
    if config_path is not None or "celery" not in sys.modules:
        return None
    from celery_janitor import _install  # noqa: PLC0415 (needs Celery)

    inst = _install._any_installed()
    return None if inst is None else inst.guard


def revoke(
    task_id: str,
    *,
    undo: bool = False,
    config_path: PathArg | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Revoke a task durably (``celery-janitor revoke TASK_ID --json``): every guarded worker
    skips it, also one started later; live workers get Celery's revoke; its queued and
    ``unacked`` copies are removed (archived) when no cleanup holds the lock. ``undo`` lifts
    it. With ``install(app)`` done in this process, uses that app's settings."""
    guard = _guard_in_use(config_path)
    if guard is not None:
        result: dict[str, Any] = guard.revoke([task_id], [], undo, actor)
        return result
    argv = global_args(config_path=config_path, actor=actor) + ["revoke", task_id]
    result = run(argv + (["--undo"] if undo else []))
    return result


def revoke_owner(
    table: str,
    owner_id: str | int,
    *,
    undo: bool = False,
    config_path: PathArg | None = None,
    actor: str | None = None,
) -> dict[str, Any]:
    """Revoke every task of one owner row (``celery-janitor revoke --owner TABLE:ID``); see
    :func:`revoke`."""
    guard = _guard_in_use(config_path)
    if guard is not None:
        result: dict[str, Any] = guard.revoke([], [(table, str(owner_id))], undo, actor)
        return result
    argv = global_args(config_path=config_path, actor=actor)
    argv += ["revoke", "--owner", f"{table}:{owner_id}"]
    result = run(argv + (["--undo"] if undo else []))
    return result


def stats(*, config_path: PathArg | None = None) -> dict[str, Any]:
    """The worker guard's counters, per node and in total, and its last events:
    ``{"totals": {...}, "nodes": {node: {...}}, "recent": [...]}``."""
    guard = _guard_in_use(config_path)
    if guard is None:
        guard = _native.Guard(None if config_path is None else os.fspath(config_path), None)
    result: dict[str, Any] = guard.stats()
    return result
