"""Adversarial (round 4): the guard that spares an orphan its revoke when live work carries the
same task id (`CleanupPlan::live_task_ids`) counts a task's *own* RETRY or STARTED result as
"live work" whenever that result cannot be tied to an owner row — which is every result under
Celery's default `result_extended = False` (no task name, no arguments: the result is
"unowned").

So an orphan that is retrying (Celery stores a RETRY result for the task id, and the retry
message waits in a worker's prefetch buffer, in `unacked`, for its countdown) has its `unacked`
entry removed but is never revoked: the worker that holds it runs it at its ETA, and it fails
on the foreign key — the very failure celery-janitor exists to prevent. The version before the
guard (f7dca7c^) revoked it and the worker discarded it.

The RETRY result is written by Celery's own backend (`store_result`, as `Task.retry` →
`mark_as_retry` does), with `result_extended` off as in Celery's defaults.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from support.janitor import Janitor
from support.waiting import wait_until
from support.world import ScannerWorld, fk_violations

pytestmark = [pytest.mark.worker, pytest.mark.janitor]

DISCARDED = re.compile(r"Discarding revoked task: \S+\[([^\]]+)\]")


@pytest.mark.parametrize("state", ["RETRY", "STARTED"])
def test_a_retrying_orphan_held_by_a_worker_is_revoked(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor], state: str
) -> None:
    world = make_world(result_extended=False)
    (row,) = world.add_rows(1)
    # The orphan's retry: a message with a countdown, prefetched by a live worker (`unacked`),
    # and the task's RETRY (or, with task_track_started, STARTED) result in the backend.
    task_id = world.scan(row, countdown=12)
    world.store_result(task_id, state, row)
    w = world.worker("live")
    wait_until(
        lambda: world.queued_count() == 0 and world.unacked_count() == 1,
        timeout=30,
        what="the worker to hold the orphan's retry",
        describe=world.describe_redis,
    )
    world.delete_rows([row])

    janitor = make_janitor(world)
    run = janitor.run("cleanup-orphaned", "--json", "--grace", "0")
    report = run.expect_json()
    assert report["removed"]["unacked"] == 1, report
    # What the operator is told (for the failure message): the JSON report has no count of
    # orphans left unrevoked; only a log line says so.
    told = [line for line in run.stderr.splitlines() if "not revoked" in line]

    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        log = w.log()
        if DISCARDED.search(log) or fk_violations(log):
            break
        time.sleep(0.5)
    log = w.log()
    assert not fk_violations(log), (
        f"the orphan {task_id} was removed from `unacked` but not revoked: the worker ran it and "
        f"it failed on the foreign key; revoke report: {report.get('revoke')}; janitor stderr "
        f"lines about it: {told}\n{log[-1500:]}"
    )
    assert DISCARDED.findall(log) == [task_id], log[-1500:]
