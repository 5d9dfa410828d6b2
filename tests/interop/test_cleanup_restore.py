"""`cleanup-orphaned` and `restore` against state written by real Celery, checked byte by byte.

Done when: `cleanup-orphaned` removes exactly the orphans, leaving every other byte in Redis as
it was; `restore` can bring them back; a Celery worker started afterwards drains every queue with
zero foreign-key violations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from support import celery_state, expect, snapshot
from support.celery_state import OwnerRule
from support.janitor import Janitor
from support.scenarios import build_mixed
from support.waiting import wait_until
from support.world import ScannerWorld, fk_violations

pytestmark = [pytest.mark.worker, pytest.mark.janitor]

ZERO_SKIPS = {"changed": 0, "revived": 0, "busy": 0}


def _orphans(world: ScannerWorld) -> tuple[list[celery_state.Entry], list]:
    verdicts = celery_state.verdicts(world.entries(), OwnerRule(), world.existing_ids())
    return expect.with_state(verdicts, "orphaned"), verdicts


@pytest.mark.parametrize("extended", [True, False], ids=["extended", "plain"])
def test_cleanup_removes_exactly_the_orphans_and_no_other_byte(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor], extended: bool
) -> None:
    world = make_world(result_extended=extended)
    build_mixed(world)
    janitor = make_janitor(world)
    before = world.snapshot()
    orphans, _ = _orphans(world)
    # Plain results carry no task name: unowned, so they stay.
    results = 2 if extended else 0

    report = janitor.run("cleanup-orphaned", "--json").expect_json()

    assert report["dry_run"] is False
    assert report["removed"] == {"queue": 5, "unacked": 2, "result": results}
    assert report["archived"] == 7 + results
    assert report["skipped"] == ZERO_SKIPS
    assert isinstance(report["run_id"], str) and report["run_id"]
    expected = celery_state.remove_entries(before, orphans)
    after = world.snapshot().without_prefix()
    assert snapshot.differences(expected, after) == []


def test_cleanup_writes_an_archive_an_audit_log_and_an_app_log(
    world: ScannerWorld, janitor: Janitor
) -> None:
    rows = world.add_rows(3)
    for row in rows:
        world.scan(row)
    world.delete_rows(rows[:2])

    report = janitor.run("cleanup-orphaned", "--json").expect_json()

    assert report["removed"]["queue"] == 2
    workdir = janitor.workdir
    archived = [
        line
        for f in sorted((workdir / "archive").rglob("*"))
        if f.is_file()
        for line in f.read_text().splitlines()
        if line.strip()
    ]
    assert len(archived) >= 2, f"archive holds {archived!r}"
    audit = (workdir / "logs" / "audit.jsonl").read_text().splitlines()
    assert audit, "audit log is empty"
    for line in audit:
        json.loads(line)  # every audit line is JSON
    assert (workdir / "logs" / "app.log").stat().st_size > 0


def test_dry_run_reports_the_orphans_and_changes_nothing(
    world: ScannerWorld, janitor: Janitor
) -> None:
    build_mixed(world)
    before = world.snapshot()

    report = janitor.run("cleanup-orphaned", "--dry-run", "--json").expect_json()

    assert report["dry_run"] is True
    assert report["removed"] == {"queue": 5, "unacked": 2, "result": 2}
    assert snapshot.differences(before, world.snapshot().without_prefix()) == []


def test_restore_puts_back_every_removed_entry(world: ScannerWorld, janitor: Janitor) -> None:
    build_mixed(world)
    before = world.snapshot()
    orphans, _ = _orphans(world)
    cleanup = janitor.run("cleanup-orphaned", "--json").expect_json()
    assert cleanup["archived"] == 9

    report = janitor.run("restore", "--json").expect_json()

    assert report["restored"] == {"queue": 5, "unacked": 2, "result": 2}
    assert report["skipped"] == 0
    restored_lists = {e.key for e in orphans if e.location == "queue"}
    after = world.snapshot().without_prefix()
    assert snapshot.differences(before, after, list_order_free_keys=restored_lists) == []
    for key in restored_lists:  # entries that never left keep their order
        moved = [e.member for e in orphans if e.key == key]
        assert snapshot.survivors_keep_order(before[key].value, after[key].value, moved), key


def test_restore_by_task_id_puts_back_only_that_task(world: ScannerWorld, janitor: Janitor) -> None:
    rows = world.add_rows(3)
    ids = [world.scan(row) for row in rows]
    world.delete_rows(rows)
    janitor.run("cleanup-orphaned", "--json").expect_json()
    assert world.queued_count() == 0

    report = janitor.run("restore", "--task-id", ids[1], "--json").expect_json()

    assert report["restored"]["queue"] == 1
    assert [e.task_id for e in world.entries()] == [ids[1]]


def test_worker_started_after_cleanup_drains_every_queue_without_fk_violations(
    world: ScannerWorld, janitor: Janitor, tmp_path: Path
) -> None:
    # Countdown 20 s: long enough for the parked worker to hold the tasks, short enough that
    # the worker started after the cleanup runs them within the test.
    m = build_mixed(world, countdown=20)
    orphan_ids = {t for row in m.deleted for t in m.scan_ids.get(row, [])}
    janitor.run("cleanup-orphaned", "--json").expect_json()
    assert not {e.task_id for e in world.entries()} & orphan_ids

    # visibility_timeout=2 s: the new worker re-queues what the killed one held, at start-up.
    w = world.drain_worker("drain")
    expected_done = {row: "done" for row in m.kept}
    wait_until(
        lambda: (
            world.queued_count() == 0
            and world.unacked_count() == 0
            and world.statuses() == expected_done
        ),
        timeout=90,
        what="the worker to drain every queue and finish every live scan",
        describe=lambda: (
            f"{world.describe_redis()}\nstatuses={world.statuses()}\n" + w.log()[-4000:]
        ),
    )
    w.stop()
    log = w.log()
    assert fk_violations(log) == [], log
    assert "ForeignKeyViolation" not in log
    assert not [t for t in orphan_ids if t in log], "an orphan reached the worker"
