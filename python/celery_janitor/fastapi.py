"""The design note's four endpoints as a FastAPI router, to mount inside an existing app:
``app.include_router(celery_janitor.fastapi.router(...))``. The host app's own auth guards them
(``read_dependencies`` for the two GETs, ``write_dependencies`` for the two POSTs) and ``actor``
names its user in the audit log. Needs the ``fastapi`` extra: ``pip install ".[fastapi]"``.

| method | path | does |
|---|---|---|
| GET | ``{prefix}/status`` | :func:`celery_janitor.status` |
| GET | ``{prefix}/celery-tasks`` | :func:`celery_janitor.list_tasks` |
| POST | ``{prefix}/cleanup/orphaned-tasks`` | :func:`celery_janitor.cleanup_orphaned` |
| POST | ``{prefix}/cleanup/full`` | :func:`celery_janitor.full_cleanup` |

Each call blocks (scan, database, grace wait), so it runs in Starlette's threadpool, never on the
event loop. A failure answers ``{"error": {"code": kind, "message": ..., "hint": ...}}`` with the
status of :data:`STATUS_OF_KIND`. See docs/fastapi.md.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at run time,
# and `X | None` can't be evaluated on Python 3.9.
import os
from collections.abc import Sequence
from typing import Any, Callable, Optional, Union

from fastapi import APIRouter, Depends, Query
from fastapi.params import Depends as DependsParam
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from celery_janitor import _api
from celery_janitor._native import JanitorError

__all__ = ["MAX_LIMIT", "STATUS_OF_KIND", "CleanupBody", "FullCleanupBody", "router"]

#: The HTTP status of each ``JanitorError.kind``.
STATUS_OF_KIND = {
    "usage": 400,
    "config": 400,
    "bad_cursor": 400,
    "busy": 409,
    "redis_unreachable": 503,
    "database_unreachable": 503,
    "interrupted": 503,
    "failed": 500,
}

#: The largest ``limit`` of ``GET celery-tasks``.
MAX_LIMIT = 10_000
DEFAULT_LIMIT = 100


class CleanupBody(BaseModel):
    """``POST cleanup/orphaned-tasks``."""

    dry_run: bool = False
    grace_seconds: Optional[float] = None


class FullCleanupBody(CleanupBody):
    """``POST cleanup/full``."""

    max_age_hours: Optional[float] = None


def error_response(err: JanitorError) -> JSONResponse:
    """A failure as the endpoints answer it."""
    body = {"error": {"code": err.kind, "message": err.message, "hint": err.hint}}
    return JSONResponse(body, status_code=STATUS_OF_KIND.get(err.kind, 500))


def _usage(message: str) -> JSONResponse:
    return error_response(JanitorError(message, 2, None, "usage"))


def _depends(dependencies: Sequence[Any]) -> list[Any]:
    """``Depends(x)`` for each callable; ``Depends(...)`` objects as they are."""
    return [d if isinstance(d, DependsParam) else Depends(d) for d in dependencies]


def _no_actor() -> None:
    return None


async def _call(function: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return await run_in_threadpool(function, **kwargs)
    except JanitorError as err:
        return error_response(err)


def router(
    *,
    read_dependencies: Sequence[Any] = (),
    write_dependencies: Sequence[Any] = (),
    actor: Optional[Callable[..., Any]] = None,
    prefix: str = "/api/v1/cache",
    config_path: Union[str, "os.PathLike[str]", None] = None,
    tags: Optional[list[str]] = None,
) -> APIRouter:
    """The four endpoints under ``prefix``.

    ``read_dependencies`` guard the GETs and ``write_dependencies`` the POSTs (FastAPI
    dependencies: callables or ``Depends(...)``; they raise to refuse, as the host app's auth
    does). ``actor`` is a dependency returning the user's name (or None for the OS user): it is
    recorded as the ``actor`` of the audit events of a cleanup. ``config_path`` names the
    celery-janitor config file (default: as the CLI finds it).
    """
    api = APIRouter(prefix=prefix, tags=list(tags or ["celery-janitor"]))
    reads, writes = _depends(read_dependencies), _depends(write_dependencies)
    who = Depends(actor or _no_actor)

    @api.get("/status", dependencies=reads)
    async def status(
        grace_seconds: Optional[float] = Query(None),  # noqa: B008 - FastAPI's idiom
        name: Optional[str] = who,
    ) -> Any:
        return await _call(
            _api.status, grace_seconds=grace_seconds, config_path=config_path, actor=name
        )

    @api.get("/celery-tasks", dependencies=reads)
    async def celery_tasks(  # noqa: PLR0917 - one parameter per query field
        orphaned: bool = False,
        state: Optional[list[str]] = Query(None),  # noqa: B008
        location: Optional[list[str]] = Query(None),  # noqa: B008
        queue: Optional[str] = None,
        limit: int = DEFAULT_LIMIT,
        cursor: Optional[str] = None,
        grace_seconds: Optional[float] = None,
        name: Optional[str] = who,
    ) -> Any:
        if not 1 <= limit <= MAX_LIMIT:
            return _usage(f"limit must be from 1 to {MAX_LIMIT}, not {limit}")
        return await _call(
            _api.list_tasks,
            orphaned=orphaned,
            states=state,
            locations=location,
            queue=queue,
            limit=limit,
            cursor=cursor,
            grace_seconds=grace_seconds,
            config_path=config_path,
            actor=name,
        )

    @api.post("/cleanup/orphaned-tasks", dependencies=writes)
    async def cleanup_orphaned(
        body: Optional[CleanupBody] = None,
        name: Optional[str] = who,
    ) -> Any:
        body = body or CleanupBody()
        return await _call(
            _api.cleanup_orphaned,
            dry_run=body.dry_run,
            grace_seconds=body.grace_seconds,
            config_path=config_path,
            actor=name,
        )

    @api.post("/cleanup/full", dependencies=writes)
    async def full_cleanup(
        body: Optional[FullCleanupBody] = None,
        name: Optional[str] = who,
    ) -> Any:
        body = body or FullCleanupBody()
        return await _call(
            _api.full_cleanup,
            dry_run=body.dry_run,
            grace_seconds=body.grace_seconds,
            max_age_hours=body.max_age_hours,
            config_path=config_path,
            actor=name,
        )

    return api
