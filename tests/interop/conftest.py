"""Fixtures: each test gets its own redis-server, its own PostgreSQL database, a scanner
deployment on top of them, and a way to run celery-janitor against them.

Environment:
- `CJ_TEST_PG_ADMIN_URL`: a PostgreSQL URL allowed to CREATE/DROP DATABASE
  (default `postgresql://root@127.0.0.1:5432/postgres`).
- `CELERY_JANITOR_BIN`: the binary under test (default `<repo>/target/debug/celery-janitor`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.janitor import Janitor, janitor_config
from support.servers import PostgresDatabase, RedisServer
from support.world import ScannerWorld

# Celery reads these before its own config; a value inherited from the shell must never send a
# test's producer to some other broker.
for _name in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL", "DATABASE_URL"):
    os.environ.pop(_name, None)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server on a free port, no persistence, killed after the test."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def database() -> Iterator[PostgresDatabase]:
    """A fresh, empty PostgreSQL database, dropped after the test."""
    db = PostgresDatabase()
    db.create()
    try:
        yield db
    finally:
        db.drop()


@pytest.fixture
def make_world(
    redis_server: RedisServer, database: PostgresDatabase, tmp_path: Path
) -> Iterator[Callable[..., ScannerWorld]]:
    """Build the test's scanner deployment, once per test: `make_world(result_extended=False)`."""
    built: list[ScannerWorld] = []

    def factory(**options: Any) -> ScannerWorld:
        assert not built, "one world per test: it owns the test's Redis and database"
        built.append(ScannerWorld(redis_server, database, tmp_path, **options))
        return built[0]

    try:
        yield factory
    finally:
        for w in built:
            w.close()


@pytest.fixture
def world(make_world: Callable[..., ScannerWorld]) -> ScannerWorld:
    """The scanner deployment with extended results (result_extended=True)."""
    return make_world()


@pytest.fixture
def make_janitor(tmp_path: Path) -> Callable[..., Janitor]:
    """`make_janitor(world, id_from="task_id", ...)`: a janitor configured for the world."""

    def factory(
        world: ScannerWorld, *, config: dict[str, Any] | None = None, **owner_overrides: Any
    ) -> Janitor:
        return Janitor(tmp_path / "janitor", config or janitor_config(world, **owner_overrides))

    return factory


@pytest.fixture
def janitor(world: ScannerWorld, make_janitor: Callable[..., Janitor]) -> Janitor:
    return make_janitor(world)
