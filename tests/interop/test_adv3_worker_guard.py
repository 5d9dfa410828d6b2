"""Adversarial review of the worker integration (docs/reliability.md, round 6): what a hostile
production does to `celery_janitor.install(app)` in real Celery 5.7 workers — a database outage
long enough for the `on_error = "retry"` backoff to overflow, re-queue headers that are not what
the guard wrote, a broker clock that went backwards, a re-queue the broker refuses.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable

import psycopg
import pytest

from support.janitor import Janitor
from support.waiting import wait_until
from support.world import ScannerWorld, fk_violations
from test_worker_guard import (
    findings,
    guard_janitor,
    guarded_worker,
    result_status,
    skipped,
    stats,
    unreachable_database,
)

celery_janitor = pytest.importorskip("celery_janitor")

pytestmark = [pytest.mark.worker, pytest.mark.janitor]

FIRST_MISS = "celery_janitor_first_miss"
ERROR_RETRIES = "celery_janitor_error_retries"


def broker_time(world: ScannerWorld) -> float:
    secs, micros = world.redis.time()
    return float(secs) + float(micros) / 1e6


@pytest.mark.parametrize("attempts", [1024, 5000, "many"])
def test_on_error_retry_goes_on_after_a_thousand_attempts(
    make_world: Callable[..., ScannerWorld],
    make_janitor: Callable[..., Janitor],
    attempts: int | str,
) -> None:
    """A database down for ~17 hours: the 1,025th re-queue computed `1.0 * 2**1024`, which
    overflows a float, so the task failed (its body never ran, nothing re-queued) — the
    backoff promises "indefinitely". A retries header that is not a number (another producer's
    header of that name) did the same."""
    world = make_world()
    (row,) = world.add_rows(1)
    janitor = guard_janitor(world, make_janitor)
    task_id = world.scan(row, headers={ERROR_RETRIES: attempts})
    w = guarded_worker(world, janitor, env=unreachable_database(world))
    wait_until(
        lambda: "celery-janitor: re-queued task" in w.log() or "Traceback" in w.log(),
        timeout=30,
        what="the guard to re-queue the task",
        describe=w.log,
    )
    time.sleep(0.5)
    w.stop()
    log = w.log()
    assert "Traceback" not in log, log[-3000:]
    assert re.search(r"re-queued task \S+ in 60 s \(attempt \d+\)", log) or (
        attempts == "many" and "in 1 s (attempt 1)" in log
    ), log[-3000:]
    # Not run, not dropped: still in Redis, no result.
    assert result_status(world, task_id) is None
    assert world.queued_count() + world.unacked_count() == 1, world.describe_redis()


def test_a_first_miss_header_that_is_not_a_time_does_not_lose_the_task(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    """`float("yesterday")` raised in the worker: the task failed — its body never ran, and its
    row committed a moment later. Such a header now counts as no first miss."""
    world = make_world()
    janitor = guard_janitor(world, make_janitor, grace=4)
    w = guarded_worker(world, janitor)
    w.wait_ready()
    with psycopg.connect(world.database.url) as writer:
        row = world.add_row_uncommitted(writer)
        task_id = world.scan(row, headers={FIRST_MISS: "yesterday"})
        wait_until(
            lambda: "re-checked in" in w.log() or "Traceback" in w.log(),
            timeout=20,
            what="a re-queue",
            describe=w.log,
        )
        writer.commit()
    wait_until(
        lambda: result_status(world, task_id) in ("SUCCESS", "FAILURE"),
        timeout=30,
        what="the task to run after the commit",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    w.stop()
    assert result_status(world, task_id) == "SUCCESS", w.log()[-3000:]
    assert findings(world, row) == 1
    assert not fk_violations(w.log())


def test_a_first_miss_in_the_brokers_future_is_not_waited_for(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    """The broker's clock went back (a failover to a replica whose clock is behind; the first
    miss was stamped by the old primary): the re-queue's countdown was `grace - waited` with
    `waited` negative — a day here, the whole skew in general — so an orphan sat in the
    worker's memory (and `unacked`, redelivered after the visibility timeout) instead of being
    skipped after the grace period. A countdown is now never longer than the grace period, and a
    first miss in the future counts from now."""
    world = make_world()
    (gone,) = world.add_rows(1)
    world.delete_rows([gone])
    janitor = guard_janitor(world, make_janitor, grace=2)
    w = guarded_worker(world, janitor)
    task_id = world.scan(gone, headers={FIRST_MISS: broker_time(world) + 86_400})
    wait_until(
        lambda: task_id in skipped(w.log()),
        timeout=30,
        what="the orphan to be skipped after the grace period",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    w.stop()
    assert re.findall(r"re-checked in ([\d.]+) s", w.log()), w.log()[-3000:]
    for countdown in re.findall(r"re-checked in ([\d.]+) s", w.log()):
        assert float(countdown) <= 2, w.log()[-3000:]
    assert world.queued_count() + world.unacked_count() == 0
    assert stats(janitor)["totals"].get("skipped") == 1


def test_a_requeue_the_broker_refuses_does_not_lose_the_task(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    """Redis at `maxclients`: the worker's own connections go on (it takes the task and
    acknowledges it, `acks_late` off), but the guard can't connect, so under `on_error =
    "retry"` it re-queues the task — on a new connection, which Redis refuses too. The
    exception went up through the task: it failed, its body never ran and no copy was left.
    A task the guard can neither decide nor re-queue now runs (unchecked), as an undecidable
    task does."""
    world = make_world()
    (row,) = world.add_rows(1)
    janitor = guard_janitor(world, make_janitor)
    w = guarded_worker(world, janitor, env=unreachable_database(world))
    w.wait_ready()
    task_id = world.scan(row, countdown=3)
    wait_until(
        lambda: world.unacked_count() == 1,
        timeout=20,
        what="the worker to hold the task until its ETA",
        describe=world.describe_redis,
    )
    connected = int(world.redis.info("clients")["connected_clients"])
    world.redis.config_set("maxclients", connected)
    try:
        wait_until(
            lambda: (
                findings(world, row) == 1 or "Traceback" in w.log() or "re-queued task" in w.log()
            ),
            timeout=40,
            what="the guard to give up on the re-queue",
            describe=w.log,
        )
        time.sleep(1)
    finally:
        world.redis.config_set("maxclients", 10000)
    wait_until(
        lambda: world.queued_count() + world.unacked_count() == 0 or findings(world, row) == 1,
        timeout=20,
        what="the task to run or be re-queued",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    time.sleep(2)
    w.stop()
    log = w.log()
    # Run once (unchecked), or still in Redis: never gone without running.
    ran = findings(world, row)
    left = world.queued_count() + world.unacked_count()
    assert (ran, left) in ((1, 0), (0, 1)), (ran, left, task_id, log[-4000:])
    assert "running task scanner.scan_domain_task" in log and "unchecked" in log, log[-4000:]


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_the_guard_reconnects_after_redis_closed_its_connection(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor], pool: str
) -> None:
    """Redis closes the guard's idle connection (`timeout` in redis.conf, as managed Redis
    services set it; a restart or a failover does the same). Celery's own connections come back;
    the guard kept its dead one for the life of the process, so every later check failed —
    under `on_error = "retry"` every guarded task was re-queued forever and never ran. The guard
    now connects again after a Redis error."""
    world = make_world()
    first, second = world.add_rows(2)
    janitor = guard_janitor(world, make_janitor)
    w = guarded_worker(world, janitor, pool=pool)
    first_id = world.scan(first)
    wait_until(
        lambda: result_status(world, first_id) == "SUCCESS",
        timeout=30,
        what="the first task to run (the guard connected)",
        describe=w.log,
    )
    # Every idle client is closed after a second; the blocked consumer is not.
    world.redis.config_set("timeout", 1)
    time.sleep(4)
    world.redis.config_set("timeout", 0)
    second_id = world.scan(second)
    wait_until(
        lambda: result_status(world, second_id) == "SUCCESS",
        timeout=30,
        what="the second task to run",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    w.stop()
    assert findings(world, second) == 1
    assert "attempt 3" not in w.log(), w.log()[-3000:]


def test_a_chord_whose_header_member_is_skipped_fails_instead_of_hanging(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    """A skipped task raises `Ignore`, which never reports the task's part to its chord: the
    chord's body waited forever (and its counter key stayed). Celery's own revoke reports the
    part as revoked, which fails the chord with a `ChordError`; the guard now does the same for a
    chord member it drops (no result is stored for the skipped task itself)."""
    from celery import chord

    from scanner.app import EMAIL_TASK, SCAN_TASK

    world = make_world()
    live, gone = world.add_rows(2)
    world.delete_rows([gone])
    janitor = guard_janitor(world, make_janitor)
    scan = world.app.tasks[SCAN_TASK]
    header = [scan.s(row, 7, world.domain(row), {}) for row in (live, gone)]
    body = world.app.tasks[EMAIL_TASK].si("ops@example.com", "chord done")
    result = chord(header)(body)
    member_ids = [r.id for r in result.parent.results]
    w = guarded_worker(world, janitor)
    wait_until(
        lambda: len(skipped(w.log())) == 1,
        timeout=30,
        what="the orphan member to be skipped",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    wait_until(
        lambda: result_status(world, result.id) is not None,
        timeout=20,
        what="the chord's body to be decided",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    w.stop()
    assert result_status(world, result.id) == "FAILURE", world.result_meta(result.id)
    assert "ChordError" in str(world.result_meta(result.id)), world.result_meta(result.id)
    assert skipped(w.log()) == [member_ids[1]]
    assert result_status(world, member_ids[0]) == "SUCCESS"
    assert world.result_meta(member_ids[1]) is None


def test_an_owner_key_under_a_case_insensitive_collation_is_found_as_asked(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    """The owner lookup answers with the ids as asked, not the column's spelling: a row stored
    as `Ops@Example.com` is the owner of a task naming `ops@example.com` under a
    case-insensitive collation, so the guard runs the task (it said `missing` before)."""
    world.sql(
        "CREATE COLLATION IF NOT EXISTS cj_ci (provider = icu, locale = 'und-u-ks-level2',"
        " deterministic = false)"
    )
    world.sql("CREATE TABLE mailboxes (address text COLLATE cj_ci PRIMARY KEY)")
    world.sql("INSERT INTO mailboxes VALUES ('Ops@Example.com')")
    janitor = make_janitor(world)
    janitor.config["owners"].append(
        {"table": "mailboxes", "id_column": "address", "tasks": ["mail.sync"], "id_from": "arg:0"}
    )
    janitor.write_config()
    guard = celery_janitor._native.Guard(str(janitor.config_path))
    for address, verdict in (("ops@example.com", "run"), ("Ops@Example.com", "run")):
        seen = guard.check(str(uuid.uuid4()), "mail.sync", json.dumps([address]), "{}")
        assert seen["verdict"] == verdict, (address, seen)
    gone = guard.check(str(uuid.uuid4()), "mail.sync", json.dumps(["nobody@example.com"]), "{}")
    assert gone["verdict"] == "missing", gone
