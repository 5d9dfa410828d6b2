"""The bug celery-janitor fixes, reproduced without it.

Rows of `scan_tasks` own queued `scan_domain_task` messages. When rows are deleted while Celery
still holds their work, a worker that starts runs those orphans, tries to insert `scan_results`
rows and fails on the foreign key.
"""

from __future__ import annotations

import pytest

from support.scenarios import build_mixed
from support.waiting import wait_until
from support.world import ScannerWorld, fk_violations

pytestmark = pytest.mark.worker


def test_worker_running_tasks_of_deleted_rows_hits_foreign_key_violations(
    world: ScannerWorld,
) -> None:
    rows = world.add_rows(4)
    task_ids = {row: world.scan(row) for row in rows}
    deleted = [rows[1], rows[3]]
    kept = [rows[0], rows[2]]
    world.delete_rows(deleted)

    worker = world.run_until_done("bug", task_ids.values())
    log = worker.log()

    # The worker ran the orphans and each one failed on the foreign key, in the log...
    assert sorted(fk_violations(log)) == sorted(task_ids[r] for r in deleted), log
    assert 'violates foreign key constraint "scan_results_scan_task_id_fkey"' in log
    # ...and in the results Celery stored for them.
    for row in deleted:
        meta = world.result_meta(task_ids[row])
        assert meta is not None
        assert meta["status"] == "FAILURE"
        assert meta["result"]["exc_type"] == "ForeignKeyViolation"
        assert meta["name"] == "scanner.scan_domain_task"
        assert meta["args"][0] == row
    # The rows that still exist were scanned normally.
    for row in kept:
        assert world.result_meta(task_ids[row])["status"] == "SUCCESS"  # type: ignore[index]
    assert world.statuses() == {row: "done" for row in kept}


def test_orphans_held_in_unacked_and_in_every_queue_all_reach_a_new_worker(
    world: ScannerWorld,
) -> None:
    """Without a cleaner, a worker started later runs every orphan: queued ones (default and
    custom queue, any priority) and the countdown tasks a killed worker left in `unacked`
    (re-queued by kombu's visibility-timeout restore at start-up)."""
    m = build_mixed(world, countdown=20)
    queued_or_held = {t for row in m.deleted for t in m.scan_ids[row]} - {
        t
        for row in (m.rows[1], m.rows[2])
        for t in m.scan_ids[row]  # those already ran
    }
    assert len(queued_or_held) == 6  # one task id was sent twice

    w = world.drain_worker("drain")
    wait_until(
        lambda: (
            world.queued_count() == 0
            and world.unacked_count() == 0
            and len(fk_violations(w.log())) == 7
        ),
        timeout=90,
        what="every orphan to run and fail",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-4000:],
    )
    w.stop()
    assert sorted(set(fk_violations(w.log()))) == sorted(queued_or_held)
