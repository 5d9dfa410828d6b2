"""celery-janitor from Python: find and safely remove orphaned Celery tasks in Redis.

The functions run the same Rust core as the ``celery-janitor`` command (compiled into the
extension module ``celery_janitor._native``) and return the CLI's ``--json`` shapes as dicts; a
failure raises :class:`JanitorError`. Importing this package connects to nothing and starts no
thread: each call builds what it needs and drops it before returning. See docs/python.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from celery_janitor._api import (
    cleanup_orphaned,
    full_cleanup,
    list_tasks,
    orphaned_tasks,
    revoke,
    revoke_owner,
    stats,
    status,
)
from celery_janitor._native import JanitorError, __version__

if TYPE_CHECKING:
    from celery import Celery

    from celery_janitor._install import GuardedTask, Installed, guarded

__all__ = [
    "GuardedTask",
    "JanitorError",
    "__version__",
    "cleanup_orphaned",
    "full_cleanup",
    "guarded",
    "install",
    "list_tasks",
    "orphaned_tasks",
    "revoke",
    "revoke_owner",
    "stats",
    "status",
]


def install(app: Celery, config_path: Any = None) -> Installed:
    """Guard the Celery ``app``'s owned tasks, clean up on worker start, make revokes durable
    (docs/guard.md). Celery is imported only when this is called."""
    from celery_janitor._install import install as _install  # noqa: PLC0415 (needs Celery)

    return _install(app, config_path)


def __getattr__(name: str) -> Any:
    # The Celery-dependent parts are imported on first use: importing the package needs no
    # Celery.
    if name in ("GuardedTask", "guarded"):
        from celery_janitor import _install  # noqa: PLC0415 (needs Celery)

        return getattr(_install, name)
    raise AttributeError(f"module 'celery_janitor' has no attribute {name!r}")
