"""Adversarial: a dry run changes no byte in Redis, the janitor's own keys included, even
with an earlier run's records and archive stream present; and no write command is sent."""

from __future__ import annotations

import pytest

from support import snapshot
from support.janitor import Janitor
from support.redis_monitor import RedisMonitor
from support.scenarios import build_mixed
from support.world import ScannerWorld

pytestmark = [pytest.mark.worker, pytest.mark.janitor]

WRITES = {
    b"SET",
    b"DEL",
    b"UNLINK",
    b"HSET",
    b"HDEL",
    b"LPUSH",
    b"RPUSH",
    b"LREM",
    b"LSET",
    b"XADD",
    b"XDEL",
    b"XTRIM",
    b"ZADD",
    b"ZREM",
    b"EXPIRE",
    b"PEXPIRE",
    b"SADD",
    b"PUBLISH",
    b"EVAL",
    b"EVALSHA",
    b"SETNX",
    b"GETDEL",
    b"HSETNX",
    b"SREM",
    b"RENAME",
}


def test_dry_runs_write_nothing(world: ScannerWorld, janitor: Janitor) -> None:
    m = build_mixed(world)
    janitor.run("cleanup-orphaned", "--json").expect_json()
    janitor.run("restore", "--json").expect_json()
    world.delete_rows(m.kept[:1])
    before = world.snapshot()
    monitor = RedisMonitor(world.redis_server.port).start()
    try:
        for args in (
            ("cleanup-orphaned", "--dry-run", "--json"),
            ("full-cleanup", "--dry-run", "--json"),
            ("restore", "--dry-run", "--json"),
            ("restore", "--all", "--dry-run", "--json"),
        ):
            janitor.run(*args).expect_json()
    finally:
        commands = monitor.stop()
    writes = [c for c in commands if c.name.upper().encode() in WRITES]
    assert snapshot.differences(before, world.snapshot()) == []
    assert not writes, writes[:10]
