"""`full-cleanup`: orphans, old results and lost rows.

A lost row is in `active_statuses` (pending/running), older than `lost_after_minutes`, and has
no queued or unacked message and no STARTED/RETRY result. Done when: `full-cleanup` marks exactly
the lost rows, in one transaction, and leaves every other row alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from support import snapshot
from support.janitor import Janitor
from support.world import ScannerWorld

pytestmark = [pytest.mark.worker, pytest.mark.janitor]

OLD = 120  # minutes; lost_after_minutes is 60


@dataclass
class Rows:
    lost: list[int]
    statuses_before: dict[int, str]
    orphan_task: str


def _lost_rows_world(world: ScannerWorld) -> Rows:
    pending_alone, running_alone, success_only = world.add_rows(3, age_minutes=OLD)
    world.sql("UPDATE scan_tasks SET status = 'running' WHERE id = %s", (running_alone,))

    # Held in unacked by a worker killed with -9 (a countdown task).
    (held,) = world.add_rows(1, age_minutes=OLD)
    world.scan(held, countdown=600)
    world.park_in_unacked(1)

    queued, started, retrying = world.add_rows(3, age_minutes=OLD)
    world.scan(queued, queue="scans", priority=9)
    world.sql("UPDATE scan_tasks SET status = 'running' WHERE id = %s", (started,))
    world.store_result(
        "started-" + str(started),
        "STARTED",
        started,
        result={"pid": 4242, "hostname": "scanner-elsewhere@localhost"},
    )
    world.store_result("retry-" + str(retrying), "RETRY", retrying)
    world.store_result(
        "success-" + str(success_only), "SUCCESS", success_only, result={"findings": 0}
    )

    (done,) = world.add_rows(1, status="done", age_minutes=OLD)
    (already_lost,) = world.add_rows(1, status="lost", age_minutes=OLD)
    (young,) = world.add_rows(1, age_minutes=5)
    (gone,) = world.add_rows(1, age_minutes=OLD)
    orphan_task = world.scan(gone)
    world.delete_rows([gone])
    world.email()
    del done, already_lost, young
    return Rows(
        lost=sorted([pending_alone, running_alone, success_only]),
        statuses_before=world.statuses(),
        orphan_task=orphan_task,
    )


def test_full_cleanup_marks_exactly_the_lost_rows(world: ScannerWorld, janitor: Janitor) -> None:
    rows = _lost_rows_world(world)

    report = janitor.run("full-cleanup", "--grace", "1", "--json").expect_json()

    assert report["dry_run"] is False
    assert report["lost_rows"]["marked"] == 3
    assert report["lost_rows"]["by_table"] == {"scan_tasks": 3}
    expected = dict(rows.statuses_before)
    for row in rows.lost:
        expected[row] = "lost"
    assert world.statuses() == expected
    assert report["orphans"]["removed"] == {"queue": 1, "unacked": 0, "result": 0}
    assert rows.orphan_task not in {e.task_id for e in world.entries()}
    # Every result here is minutes old: none is past max_age_hours (24).
    assert report["expired_results"]["removed"] == 0


def test_full_cleanup_dry_run_marks_nothing_and_changes_no_byte(
    world: ScannerWorld, janitor: Janitor
) -> None:
    rows = _lost_rows_world(world)
    before = world.snapshot()

    report = janitor.run("full-cleanup", "--dry-run", "--grace", "1", "--json").expect_json()

    assert report["dry_run"] is True
    assert world.statuses() == rows.statuses_before
    assert snapshot.differences(before, world.snapshot().without_prefix()) == []
