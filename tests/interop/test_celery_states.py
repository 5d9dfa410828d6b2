"""The states the janitor is tested against really are what Celery 5.7 writes.

These tests check the test harness itself (no janitor): the mixed deployment has entries in every
location, a worker killed with -9 leaves its countdown tasks in `unacked`, priorities land in
their sub-lists, result_extended on/off changes the result keys, pickle messages carry readable
headers, and the snapshot helper sees every byte.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import pytest

from support import celery_state, snapshot
from support.celery_state import SEP, OwnerRule, priority_key
from support.scenarios import build_mixed
from support.waiting import wait_until
from support.world import ScannerWorld

pytestmark = pytest.mark.worker


def test_mixed_deployment_has_entries_in_every_location(world: ScannerWorld) -> None:
    m = build_mixed(world)
    snap = world.snapshot()

    # Queue lists, including priority sub-lists of the default and the custom queue.
    for key in (
        b"celery",
        b"celery" + SEP + b"3",
        b"celery" + SEP + b"6",
        b"celery" + SEP + b"9",
        b"scans",
        b"scans" + SEP + b"9",
    ):
        assert key in snap and snap[key].type == "list", key
    # The worker killed with -9 left its five countdown messages in unacked + unacked_index.
    assert snap[b"unacked"].type == "hash"
    assert len(snap[b"unacked"].value) == 5
    assert set(snap[b"unacked_index"].value) == set(snap[b"unacked"].value)
    for raw in snap[b"unacked"].value.values():
        message, exchange, routing_key = json.loads(raw)
        assert message["headers"]["eta"] is not None
        assert (exchange, routing_key) in {("", "celery"), ("", "scans")}
    # kombu's bookkeeping is there and must be left alone by any cleaner.
    assert b"_kombu.binding.celery" in snap
    assert b"_kombu.binding.scans" in snap

    found = celery_state.entries(snap)
    by_location = Counter(e.location for e in found)
    assert by_location == {"queue": 12, "unacked": 5, "result": 6}

    verdicts = celery_state.verdicts(found, OwnerRule(), world.existing_ids())
    orphans = Counter((e.location, v.owner_id) for e, v in verdicts if v.state == "orphaned")
    r = m.rows
    assert orphans == Counter(
        {
            ("result", str(r[1])): 1,
            ("result", str(r[2])): 1,
            ("unacked", str(r[5])): 1,
            ("unacked", str(r[7])): 1,
            ("queue", str(r[9])): 2,
            ("queue", str(r[11])): 1,
            ("queue", str(r[12])): 1,
            ("queue", str(r[15])): 1,
        }
    )
    states = Counter(v.state for _e, v in verdicts)
    assert states == {"orphaned": 9, "live": 8, "unowned": 6}


def test_priorities_land_in_their_sub_lists(world: ScannerWorld) -> None:
    rows = world.add_rows(6)
    placements = {rows[0]: 0, rows[1]: 2, rows[2]: 3, rows[3]: 5, rows[4]: 7, rows[5]: 9}
    ids = {row: world.scan(row, priority=p, queue="scans") for row, p in placements.items()}
    snap = world.snapshot()
    for row, priority in placements.items():
        key = priority_key("scans", priority)
        ids_in_key = [e.task_id for e in celery_state.entries(snap) if e.key == key]
        assert ids[row] in ids_in_key, (row, priority, key)
    assert priority_key("scans", 7) == b"scans\x06\x166"


def test_worker_killed_with_sigkill_leaves_countdown_tasks_in_unacked(world: ScannerWorld) -> None:
    rows = world.add_rows(3)
    ids = {world.scan(row, countdown=600) for row in rows}
    assert world.queued_count() == 3

    worker = world.park_in_unacked(3)

    assert not worker.running
    assert world.queued_count() == 0
    r = world.redis
    held = r.hgetall(b"unacked")
    assert {json.loads(v)[0]["headers"]["id"] for v in held.values()} == ids
    assert set(r.zrange(b"unacked_index", 0, -1)) == set(held)
    # Scores are the worker's receive time (float unix seconds).
    for score in snapshot.zscores(r, b"unacked_index").values():
        assert abs(score - time.time()) < 120
    # Nothing ran.
    assert all(world.result_meta(t) is None for t in ids)


@pytest.mark.parametrize("extended", [True, False], ids=["extended", "plain"])
def test_result_extended_controls_whether_results_name_their_task(
    make_world: Callable[..., ScannerWorld], extended: bool
) -> None:
    world = make_world(result_extended=extended)
    row = world.add_rows(1)[0]
    scan_id = world.scan(row)
    email_id = world.email()
    world.run_until_done("results", [scan_id, email_id])

    scan_meta = world.result_meta(scan_id)
    email_meta = world.result_meta(email_id)
    assert scan_meta is not None and email_meta is not None
    assert scan_meta["status"] == "SUCCESS"
    if extended:
        assert scan_meta["name"] == "scanner.scan_domain_task"
        assert scan_meta["args"][0] == row
        assert email_meta["name"] == "scanner.send_email"
    else:
        assert "name" not in scan_meta and "args" not in scan_meta
        assert "name" not in email_meta
    assert world.redis.pttl(b"celery-task-meta-" + scan_id.encode()) > 0


def test_pickle_messages_carry_id_and_name_in_json_headers(world: ScannerWorld) -> None:
    row = world.add_rows(1)[0]
    task_id = world.scan(row, serializer="pickle", task_id=str(row))
    raw = world.redis.lindex(b"celery", 0)
    assert raw is not None
    envelope = json.loads(raw)
    assert envelope["content-type"] == "application/x-python-serialize"
    assert envelope["headers"]["id"] == task_id == str(row)
    assert envelope["headers"]["task"] == "scanner.scan_domain_task"
    entry = celery_state.entries(world.snapshot())[0]
    assert not entry.body_is_safe
    # With id_from="task_id" the owner is known from headers; with arg:0 it is not.
    assert celery_state.classify(entry, OwnerRule(id_from="task_id"), set()).state == "orphaned"
    assert celery_state.classify(entry, OwnerRule(id_from="arg:0"), set()).state == "undecidable"


def test_row_in_an_open_transaction_is_invisible_but_its_task_is_already_queued(
    world: ScannerWorld,
) -> None:
    with world.database.connect(autocommit=False) as writer:
        row_id = world.add_row_uncommitted(writer)
        task_id = world.scan(row_id)
        assert world.entries()[0].task_id == task_id
        writer.commit()
    assert str(row_id) in world.existing_ids()


def test_snapshot_sees_every_byte_and_ignores_ttl_drift(world: ScannerWorld) -> None:
    r = world.redis
    r.rpush(b"celery", b"a", b"b\x00c")
    r.hset(b"unacked", mapping={b"t1": b"v1"})
    r.zadd(b"unacked_index", {b"t1": 1.5})
    r.sadd(b"_kombu.binding.celery", b"celery\x06\x16\x06\x16celery")
    r.set(b"celery-task-meta-x", b"{}", ex=100)
    before = snapshot.take(r)
    time.sleep(0.05)
    assert snapshot.differences(before, snapshot.take(r)) == []

    r.lset(b"celery", 1, b"b\x00d")  # type: ignore[arg-type]  # redis-py's hint is str
    r.zadd(b"unacked_index", {b"t1": 1.25})
    r.persist(b"celery-task-meta-x")
    r.set(b"celery-janitor:lock", b"x")
    after = snapshot.take(r)
    diffs = snapshot.differences(before, after)
    assert len(diffs) == 4, diffs
    assert snapshot.differences(before, after.without_prefix()) != []
    assert len(snapshot.differences(before, after.without_prefix())) == 3

    # Order-free comparison, for lists whose entries were put back somewhere else.
    r.delete(b"celery")
    r.rpush(b"celery", b"b\x00c", b"a")
    reordered = snapshot.take(r)

    def about_the_list(diffs: list[str]) -> list[str]:
        return [d for d in diffs if d.startswith("list b'celery'")]

    strict = about_the_list(snapshot.differences(before, reordered))
    assert strict == [
        "list b'celery': 2 elements expected, 2 found\n  same elements, different order"
    ]
    relaxed = snapshot.differences(before, reordered, list_order_free_keys=[b"celery"])
    assert about_the_list(relaxed) == []
    assert snapshot.survivors_keep_order([b"a", b"x", b"b"], [b"x", b"a", b"b"], [b"x"])
    assert not snapshot.survivors_keep_order([b"a", b"x", b"b"], [b"b", b"a", b"x"], [b"x"])


def test_started_metas_the_tests_write_match_what_a_real_worker_writes(
    world: ScannerWorld,
) -> None:
    """full-cleanup tests write STARTED/RETRY metas with Celery's own backend call; a solo
    worker with task_track_started, killed with -9 in the middle of a task, writes the same
    shape (and leaves the task in `unacked`)."""
    busy, other = world.add_rows(2)
    real_id = world.scan(busy, config={"sleep": 30})
    w = world.worker("started", track_started=True)

    def started() -> bool:
        meta = world.result_meta(real_id)
        return meta is not None and meta["status"] == "STARTED"

    wait_until(started, timeout=30, what="a STARTED result", describe=w.log)
    w.kill()
    world.store_result("started-copy", "STARTED", other, result={"pid": 1, "hostname": "h"})

    real = world.result_meta(real_id)
    copy = world.result_meta("started-copy")
    assert real is not None and copy is not None
    assert list(copy) == list(real)  # same fields, same order
    assert copy["date_done"] is None and real["date_done"] is None
    assert copy["name"] == real["name"] == "scanner.scan_domain_task"
    assert copy["args"][0] == other
    assert world.unacked_count() == 1  # the killed worker's running task
