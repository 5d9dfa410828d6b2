"""Adversarial: two messages with the same task id (Celery's `apply_async(task_id=...)`, used
by apps for de-duplication or idempotency keys), one orphaned, one live.

The janitor tells them apart (by owner row; the scripts by SHA-1: same length, same task id,
bytes that differ only after the locator), so only the orphan's `unacked` entry is removed.
But the run then broadcasts a revoke for the removed task's *id*, and a live worker that holds
the other, live message (prefetched, waiting for its ETA) discards it: a live task is lost.
Reproduces on 86374e0 too (the revoke predates the plan/apply split).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from support.janitor import Janitor
from support.waiting import wait_until
from support.world import ScannerWorld

pytestmark = [pytest.mark.worker, pytest.mark.janitor]

DISCARDED = re.compile(r"Discarding revoked task: \S+\[([^\]]+)\]")


def test_removing_an_orphan_does_not_revoke_a_live_task_with_the_same_id(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    orphan_row, live_row = world.add_rows(2)
    task_id = "dedup-key-7"
    # The orphan: held in `unacked` by a worker that died (its ETA is far away).
    world.scan(orphan_row, task_id=task_id, countdown=600, queue="scans")
    world.park_in_unacked(1, queues=("scans",))
    world.delete_rows([orphan_row])
    # The live one, same task id: held by a live worker, waiting for its ETA (prefetched).
    world.scan(live_row, task_id=task_id, countdown=10)
    w = world.worker("live", queues=("celery",))
    wait_until(
        lambda: world.queued_count() == 0 and world.unacked_count() == 2,
        timeout=30,
        what="the live worker to hold the live task",
        describe=world.describe_redis,
    )

    janitor = make_janitor(world)
    report = janitor.run("cleanup-orphaned", "--json", "--grace", "0").expect_json()
    assert report["removed"] == {"queue": 0, "unacked": 1, "result": 0}, report
    assert world.unacked_count() == 1  # the live one

    # The live task must still run.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if world.statuses().get(live_row) == "done" or DISCARDED.search(w.log()):
            break
        time.sleep(0.5)
    log = w.log()
    assert not DISCARDED.findall(log), (
        f"the live task {task_id} (row {live_row}) was discarded by the worker after the "
        f"janitor revoked its id; revoke report: {report.get('revoke')}\n{log[-2000:]}"
    )
    assert world.statuses().get(live_row) == "done", log[-3000:]
