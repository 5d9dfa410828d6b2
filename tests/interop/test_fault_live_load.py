"""Reliability: a live producer and a real prefork worker through repeated cleanups (issue 5,
"A reliability suite that stays").

A thread publishes scans with the real `apply_async` the whole time: live ones (the row is
committed first) and orphans (the row is inserted and deleted before the task is sent), on the
default queue, its priority-6 sub-list and `scans`, some with a countdown (so a worker holds
them in `unacked`). A real `--pool=prefork -c 2` worker consumes from the start, and
`cleanup-orphaned` runs twelve times, most with `--grace 0`, some with a small grace. Afterwards,
once the worker has drained everything:

- every live task ran exactly once (one `scan_results` row per live row, one success per task id
  in the worker log), and none failed on the foreign key;
- nothing live was archived: every archived entry (queue, `unacked`, result) is an orphan's;
- every orphan was removed by the janitor, or run by the worker (and failed on the foreign key)
  before a cleanup saw it, or discarded by the worker after the janitor's revoke; one removed
  from a queue list never ran;
- no tombstone anywhere in Redis after any run, and the worker never saw one;
- the archive stream holds exactly what the runs report as archived.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from random import Random
from typing import Any

import psycopg
import pytest

from scanner.app import SCAN_TASK, make_app
from support.celery_state import RESULT_PREFIX
from support.faults import (
    Figures,
    archived_entries,
    find_tombstones,
    janitor_with_grace,
)
from support.janitor import Janitor
from support.waiting import wait_until
from support.world import ScannerWorld, fk_violations

pytestmark = [pytest.mark.worker, pytest.mark.janitor]

SEED = 1_205
GRACES = (0, 0, 0.5, 0, 1, 0, 0, 0.5, 0, 2, 0, 0)  # one cleanup-orphaned run each
COUNTDOWN = 2  # seconds; every 7th task, so the worker holds it in `unacked`
SUCCEEDED = re.compile(r"Task scanner\.scan_domain_task\[(?P<id>[^\]]+)\] succeeded in")
DISCARDED = re.compile(r"Discarding revoked task: \S+\[([0-9a-f-]+)\]")


class MixedProducer(threading.Thread):
    """Publishes scans with `apply_async` until stopped: every 5th an orphan (its row inserted
    and deleted first), the others live (row committed first); every 3rd with priority 6,
    every 11th to `scans`, every 7th with a countdown."""

    def __init__(self, world: ScannerWorld, interval: float) -> None:
        super().__init__(name="mixed-producer", daemon=True)
        self.world = world
        self.interval = interval
        self.stopping = threading.Event()
        self.live: list[tuple[int, str]] = []
        self.orphans: list[tuple[int, str]] = []
        self.error: BaseException | None = None

    @property
    def published(self) -> int:
        return len(self.live) + len(self.orphans)

    def run(self) -> None:
        url, db = self.world.redis_server.url, self.world.database.url
        app = make_app(url, url, db)
        task = app.tasks[SCAN_TASK]
        try:
            with psycopg.connect(db, autocommit=True) as conn:
                n = 0
                while not self.stopping.is_set():
                    row = conn.execute(
                        "INSERT INTO scan_tasks (user_id, target_domain)"
                        " VALUES (7, 'load.example') RETURNING id"
                    ).fetchone()
                    assert row is not None
                    row_id = int(row[0])
                    orphan = n % 5 == 4
                    if orphan:
                        conn.execute("DELETE FROM scan_tasks WHERE id = %s", (row_id,))
                    options: dict[str, Any] = {}
                    if n % 3 == 0:
                        options["priority"] = 6
                    if n % 11 == 0:
                        options["queue"] = "scans"
                    if n % 7 == 0:
                        options["countdown"] = COUNTDOWN
                    result = task.apply_async(
                        (row_id, 7, f"site{row_id}.example", {"ports": [80]}), **options
                    )
                    (self.orphans if orphan else self.live).append((row_id, str(result.id)))
                    n += 1
                    time.sleep(self.interval)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            app.close()

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the producer thread did not stop"
        if self.error is not None:
            raise self.error


def test_live_producer_and_worker_through_repeated_cleanups(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = Random(SEED)
    figures = Figures("live producer and prefork worker, repeated cleanups", tmp_path)
    janitor = janitor_with_grace(world, make_janitor, grace=0)
    client = world.redis

    producer = MixedProducer(world, interval=0.003)
    producer.start()
    # A backlog first, so the first runs find queued orphans while the worker starts up.
    wait_until(
        lambda: producer.published >= 300 or producer.error,
        timeout=60,
        what="a backlog of 300 published tasks",
    )
    worker = world.prefork_worker("load", queues=["celery", "scans"])
    reports: list[dict[str, Any]] = []
    tombstone_checks = 0
    queued_at_start: list[int] = []
    try:
        for grace in GRACES:
            time.sleep(rng.uniform(0.3, 1.0))
            queued_at_start.append(world.queued_count())
            run = janitor.run("cleanup-orphaned", "--json", "--grace", str(grace), timeout=120)
            reports.append(run.expect_json())
            assert worker.running, worker.log()[-3000:]
            found = find_tombstones(client)
            assert not found, "tombstone left after a run:\n" + "\n".join(found[:10])
            tombstone_checks += 1
    finally:
        producer.finish()
    live = dict(producer.live)  # row -> task id
    orphans = dict(producer.orphans)
    orphan_ids = set(orphans.values())
    live_ids = set(live.values())

    # Let the worker run everything that is left; orphans it holds after a revoke are
    # discarded when their turn (or ETA) comes, so wait a countdown more once Redis is empty.
    def drained() -> bool:
        if not worker.running:
            raise AssertionError(f"worker died:\n{worker.log()[-4000:]}")
        if world.queued_count() or world.unacked_count():
            return False
        row = world.sql("SELECT count(*) FROM scan_tasks WHERE status <> 'done'")
        return int(row[0][0]) == 0

    wait_until(
        drained,
        timeout=120,
        interval=0.5,
        what="the worker to run every live task",
        describe=lambda: world.describe_redis()[:1500] + "\n" + worker.log()[-3000:],
    )
    time.sleep(COUNTDOWN + 1)
    worker.stop(timeout=30)
    log = worker.log()

    # Live: each ran exactly once, none failed.
    per_row = dict(
        world.sql("SELECT scan_task_id, count(*) FROM scan_results GROUP BY scan_task_id")
    )
    ran_other_than_once = {r: per_row.get(r, 0) for r in live if per_row.get(r, 0) != 1}
    assert not ran_other_than_once, f"live rows not scanned exactly once: {ran_other_than_once}"
    assert set(per_row) <= set(live), "a scan_results row for an orphan's row"
    succeeded = Counter(SUCCEEDED.findall(log))
    assert {t: succeeded[t] for t in live_ids} == dict.fromkeys(live_ids, 1)
    failed = Counter(fk_violations(log))
    assert not set(failed) & live_ids, "a live task failed on the foreign key"
    assert set(failed) <= orphan_ids
    assert all(n == 1 for n in failed.values()), f"an orphan ran twice: {failed}"
    discarded = set(DISCARDED.findall(log))
    assert discarded <= orphan_ids, "a live task was revoked"

    # What the janitor archived is exactly what the runs report, and only orphans'.
    stream = archived_entries(client)
    total = {loc: sum(r["removed"][loc] for r in reports) for loc in ("queue", "unacked", "result")}
    assert sum(r["archived"] for r in reports) == sum(total.values()) == len(stream)
    assert Counter(a.kind for a in stream) == Counter({k: n for k, n in total.items() if n})
    archived_ids: dict[str, set[str]] = {"queue": set(), "unacked": set(), "result": set()}
    for a in stream:
        if a.kind == "result":
            archived_ids["result"].add(a.key.removeprefix(RESULT_PREFIX).decode())
        else:
            archived_ids[a.kind].add(str(a.meta.get("task_id")))
    for kind, ids in archived_ids.items():
        assert not ids & live_ids, f"a live task's {kind} entry was removed"
        assert ids <= orphan_ids, kind
    # A result is written by running the task (FAILURE) or by discarding it (REVOKED).
    assert archived_ids["result"] <= (
        set(failed) | discarded | archived_ids["queue"] | archived_ids["unacked"]
    )
    # Every orphan is accounted for; one removed from a list never reached the worker.
    assert not archived_ids["queue"] & set(failed), "a message removed from a list also ran"
    unaccounted = orphan_ids - archived_ids["queue"] - archived_ids["unacked"] - set(failed)
    assert unaccounted <= discarded, f"orphans neither removed, run nor discarded: {unaccounted}"
    # Held by the worker when the janitor removed their `unacked` copy, then started before
    # the revoke arrived: harmless (they only fail on the foreign key), but counted.
    started_after_unacked_removal = archived_ids["unacked"] & set(failed)

    found = find_tombstones(client)
    assert not found, "\n".join(found[:10])
    for text in ("celery-janitor:tombstone", "JSONDecodeError", "Unrecoverable error"):
        assert text not in log, f"the worker logged {text!r}"

    figures["runs"] = len(reports)
    figures["graces"] = list(GRACES)
    figures["live_tasks_published"] = len(live)
    figures["live_tasks_ran_exactly_once"] = len(live)
    figures["orphans_published"] = len(orphans)
    figures["orphans_removed"] = total
    # Run (and failed on the foreign key) before a cleanup could remove them.
    figures["orphans_run_by_the_worker"] = len(failed) - len(started_after_unacked_removal)
    figures["orphans_started_after_their_unacked_copy_was_removed"] = len(
        started_after_unacked_removal
    )
    figures["orphans_discarded_after_revoke"] = len(discarded)
    figures["skipped"] = {
        k: sum(r["skipped"][k] for r in reports) for k in ("changed", "revived", "busy")
    }
    figures["revoked_task_ids"] = sum((r.get("revoke") or {}).get("task_ids", 0) for r in reports)
    figures["tombstone_checks"] = tombstone_checks + 1
    figures["entries_checked"] = len(live) + len(orphans)
    figures["entries_lost"] = 0
    figures["queued_when_each_run_started"] = queued_at_start
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures.write()
