"""celery-janitor from Python: find and safely remove orphaned Celery tasks in Redis.

The functions run the same Rust core as the ``celery-janitor`` command (compiled into the
extension module ``celery_janitor._native``) and return the CLI's ``--json`` shapes as dicts; a
failure raises :class:`JanitorError`. Importing this package connects to nothing and starts no
thread: each call builds what it needs and drops it before returning. See docs/python.md.
"""

from celery_janitor._api import (
    cleanup_orphaned,
    full_cleanup,
    list_tasks,
    orphaned_tasks,
    status,
)
from celery_janitor._native import JanitorError, __version__

__all__ = [
    "JanitorError",
    "__version__",
    "cleanup_orphaned",
    "full_cleanup",
    "list_tasks",
    "orphaned_tasks",
    "status",
]
