"""`celery-janitor revoke` and `cleanup-orphaned --startup` against real Celery 5.7 state.

A durable revoke writes `celery-janitor:revoked:<task id>` (or `revoked-owner:<table>:<id>`)
with the `[revoke] ttl_days` expiry, broadcasts Celery's own revoke, and removes the queued and
`unacked` copies (archived, restorable) under the run lock — or leaves that to the worker guard
when another run holds the lock. `cleanup-orphaned --startup` runs once per `startup_min_interval`
and never while another run holds the lock.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

import pytest

from support.janitor import Janitor
from support.waiting import wait_until
from support.world import ScannerWorld

pytestmark = [pytest.mark.janitor]

DISCARDED = re.compile(r"Discarding revoked task: \S+\[([^\]]+)\]")
SEVEN_DAYS = 7 * 86_400


def busy_lock(world: ScannerWorld) -> None:
    """A run lock held by another (live, elsewhere) run."""
    holder = {
        "host": "elsewhere",
        "pid": 1,
        "run_id": "20260101T000000Z-busybusy",
        "since": "2026-01-01T00:00:00+00:00",
        "token": "t",
    }
    world.redis.set("celery-janitor:lock", json.dumps(holder), ex=120)


def get_json(world: ScannerWorld, key: str) -> dict[str, object]:
    raw = world.redis.get(key)
    assert isinstance(raw, bytes), f"{key}: {raw!r}"
    value = json.loads(raw)
    assert isinstance(value, dict)
    return value


def queued_task_ids(world: ScannerWorld) -> set[str]:
    return {e.task_id for e in world.entries() if e.location == "queue" and e.task_id}


def test_revoke_with_no_worker_online_keeps_the_revocation_and_removes_the_queued_copy(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    a, b = world.add_rows(2)
    revoked, kept = world.scan(a), world.scan(b)
    janitor = make_janitor(world)

    report = janitor.run("revoke", revoked, "--json").expect_json()
    assert report["task_ids"] == [revoked] and report["keys"] == 1, report
    assert report["broadcast"] == {"task_ids": 1, "heard_by": 0}, report
    assert report["removal"]["removed"] == {"queue": 1, "unacked": 0, "result": 0}, report
    assert report["removal"]["archived"] == 1, report
    assert report["removal_skipped"] is None
    assert queued_task_ids(world) == {kept}
    key = f"celery-janitor:revoked:{revoked}"
    ttl = int(world.redis.ttl(key))
    assert SEVEN_DAYS - 60 <= ttl <= SEVEN_DAYS, ttl
    value = get_json(world, key)
    assert value["actor"] and value["revoked_at"], value

    # `restore` brings the message back, and says it is revoked.
    run = janitor.run("restore", "--run", report["removal"]["run_id"], "--json")
    assert run.expect_json()["restored"]["queue"] == 1, run.describe()
    assert "revoke --undo" in run.stderr and revoked in run.stderr, run.describe()
    assert queued_task_ids(world) == {revoked, kept}

    undone = janitor.run("revoke", revoked, "--undo", "--json").expect_json()
    assert undone["keys"] == 1 and undone["removal"] is None, undone
    assert not world.redis.exists(key)
    # A revoke is not a cleanup: it does not delay a worker's start-up cleanup.
    assert not world.redis.exists("celery-janitor:last-cleanup")


def test_revoke_by_owner_row_removes_every_task_of_that_row(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    a, b = world.add_rows(2)
    of_a = {world.scan(a), world.scan(a, queue="scans", priority=6)}
    of_b = world.scan(b)
    janitor = make_janitor(world)

    report = janitor.run("revoke", "--owner", f"scan_tasks:{a}", "--json").expect_json()
    assert report["owners"] == [{"table": "scan_tasks", "id": str(a)}], report
    assert report["broadcast"] is None, report
    assert report["removal"]["removed"]["queue"] == 2, report
    assert queued_task_ids(world) == {of_b}, of_a
    ttl = int(world.redis.ttl(f"celery-janitor:revoked-owner:scan_tasks:{a}"))
    assert SEVEN_DAYS - 60 <= ttl <= SEVEN_DAYS, ttl

    bad = janitor.run("revoke", "--owner", "not_an_owner_table:1")
    assert bad.returncode == 2 and "not_an_owner_table" in bad.stderr, bad.describe()
    # An id the integer key can't hold as written would match no task: refused, nothing kept.
    for spelling in (f"0{b}", f" {b}", "forty-two"):
        bad = janitor.run("revoke", "--owner", f"scan_tasks:{spelling}")
        assert bad.returncode == 2 and "would match no task" in bad.stderr, bad.describe()
        assert not world.redis.exists(f"celery-janitor:revoked-owner:scan_tasks:{spelling}")
    assert queued_task_ids(world) == {of_b}


@pytest.mark.worker
def test_a_revoked_task_a_live_worker_holds_is_removed_from_unacked_and_discarded(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    (row,) = world.add_rows(1)
    task_id = world.scan(row, countdown=10)
    w = world.worker("live")
    wait_until(
        lambda: world.queued_count() == 0 and world.unacked_count() == 1,
        timeout=30,
        what="the worker to hold the countdown task",
        describe=world.describe_redis,
    )
    janitor = make_janitor(world)
    report = janitor.run("revoke", task_id, "--json").expect_json()
    assert report["broadcast"]["heard_by"] >= 1, report
    assert report["removal"]["removed"]["unacked"] == 1, report

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not DISCARDED.search(w.log()):
        time.sleep(0.5)
    assert DISCARDED.findall(w.log()) == [task_id], w.log()[-2000:]
    meta = world.result_meta(task_id)
    assert meta is None or meta["status"] not in ("SUCCESS", "FAILURE", "STARTED"), meta


def test_a_cleanup_holding_the_lock_leaves_the_removal_to_the_guard(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    (row,) = world.add_rows(1)
    task_id = world.scan(row)
    busy_lock(world)
    janitor = make_janitor(world)
    report = janitor.run("revoke", task_id, "--json").expect_json()
    assert report["removal"] is None, report
    assert "20260101T000000Z-busybusy" in report["removal_skipped"], report
    assert world.redis.exists(f"celery-janitor:revoked:{task_id}")
    assert queued_task_ids(world) == {task_id}


def test_startup_cleanup_runs_once_per_interval_and_never_beside_another_run(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    a, b = world.add_rows(2)
    world.scan(a)
    orphan = world.scan(b)
    world.delete_rows([b])
    janitor = make_janitor(world)

    first = janitor.run("cleanup-orphaned", "--startup", "--grace", "0", "--json").expect_json()
    assert first["removed"]["queue"] == 1, first
    last = get_json(world, "celery-janitor:last-cleanup")
    assert last["run_id"] == first["run_id"] and last["command"] == "cleanup-orphaned", last
    assert orphan not in queued_task_ids(world)

    again = janitor.run("cleanup-orphaned", "--startup", "--json").expect_json()
    assert "startup_min_interval" in again["startup_skipped"], again

    world.redis.delete("celery-janitor:last-cleanup")
    busy_lock(world)
    locked = janitor.run("cleanup-orphaned", "--startup", "--json").expect_json()
    assert "another cleanup is running" in locked["startup_skipped"], locked
    world.redis.delete("celery-janitor:lock")

    off = janitor.run(
        "cleanup-orphaned",
        "--startup",
        "--json",
        env={"CELERY_JANITOR_CLEANUP_ON_STARTUP": "false"},
    ).expect_json()
    assert off == {"startup_skipped": "cleanup_on_startup is false"}, off
