"""Apps that enqueue before their transaction commits.

The task of a row inserted but not yet committed is already in Redis while no other session can
see the row. An orphan is only confirmed when its row is still missing after `grace_seconds`, so
such a task survives if the row commits during the grace window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from support.janitor import Janitor, JanitorRun
from support.world import ScannerWorld

pytestmark = pytest.mark.janitor

GRACE = 4
COMMIT_AFTER = 1.0


def _run_while_a_row_commits_late(
    world: ScannerWorld, janitor: Janitor, *args: str
) -> tuple[str, str, JanitorRun]:
    """A live row, a deleted row (a real orphan) and a row inserted in an open transaction,
    each with its task queued. Start the janitor, commit the open transaction `COMMIT_AFTER`
    seconds later (inside the grace window), and return (late task id, orphan task id, run)."""
    live, gone = world.add_rows(2)
    world.scan(live)
    gone_id = world.scan(gone)
    world.delete_rows([gone])
    with world.database.connect(autocommit=False) as writer:
        late_id = world.scan(world.add_row_uncommitted(writer))
        proc = janitor.start(*args)
        time.sleep(COMMIT_AFTER)
        writer.commit()
    return late_id, gone_id, janitor.finish(proc)


def test_cleanup_keeps_the_task_of_a_row_that_commits_during_the_grace_period(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    janitor = make_janitor(world)
    late_id, gone_id, result = _run_while_a_row_commits_late(
        world, janitor, "cleanup-orphaned", "--grace", str(GRACE), "--json"
    )

    report = result.expect_json()
    remaining = {e.task_id for e in world.entries()}
    assert late_id in remaining, "the uncommitted row's task was removed"
    assert gone_id not in remaining, "the real orphan was not removed"
    assert report["removed"] == {"queue": 1, "unacked": 0, "result": 0}
    assert report["skipped"]["revived"] == 1


@pytest.mark.parametrize("grace_from", ["config", "flag"])
def test_tasks_orphaned_does_not_list_the_task_of_a_row_that_commits_during_the_grace_period(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], grace_from: str
) -> None:
    janitor = make_janitor(world)
    args = ["tasks", "--orphaned", "--json"]
    if grace_from == "config":
        janitor.config["cleanup"]["grace_seconds"] = GRACE
        janitor.write_config()
    else:
        args += ["--grace", str(GRACE)]
    late_id, gone_id, result = _run_while_a_row_commits_late(world, janitor, *args)

    rows = result.expect_json()
    assert [r["task_id"] for r in rows] == [gone_id]
    assert late_id in {e.task_id for e in world.entries()}


def test_status_does_not_count_the_task_of_a_row_that_commits_during_the_grace_period(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    janitor = make_janitor(world)
    _late, _gone, result = _run_while_a_row_commits_late(
        world, janitor, "status", "--json", "--grace", str(GRACE)
    )

    status = result.expect_json()
    assert status["tasks"]["orphaned"] == 1
    assert status["tasks"]["live"] == 2
