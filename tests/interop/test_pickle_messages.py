"""Pickle messages are never unpickled.

Their JSON headers still give the task id and name, so an owner rule with `id_from = "task_id"`
decides them; with `id_from = "arg:0"` the owner id is inside the pickle, so they are reported
as undecidable and never removed.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from support import celery_state, expect, snapshot
from support.celery_state import OwnerRule
from support.janitor import Janitor
from support.world import ScannerWorld

pytestmark = [pytest.mark.worker, pytest.mark.janitor]


def _pickle_world(world: ScannerWorld) -> dict[str, list[int]]:
    """json and pickle messages of live and deleted rows, queued and held in unacked. The
    Celery task id is the row id, as many apps do."""
    r = world.add_rows(8)
    for row in r[4:8]:  # countdown tasks a killed worker leaves in unacked
        world.scan(
            row,
            task_id=str(row),
            countdown=600,
            serializer="pickle" if row in (r[6], r[7]) else "json",
        )
    world.park_in_unacked(4, accept_pickle=True)
    world.scan(r[0], task_id=str(r[0]))
    world.scan(r[1], task_id=str(r[1]))
    world.scan(r[2], task_id=str(r[2]), serializer="pickle")
    world.scan(r[3], task_id=str(r[3]), serializer="pickle", queue="scans", priority=9)
    world.email(serializer="pickle")
    deleted = [r[1], r[3], r[5], r[7]]
    world.delete_rows(deleted)
    return {"deleted": deleted, "pickled": [r[2], r[3], r[6], r[7]]}


def test_with_task_id_owners_pickle_orphans_are_decided_from_headers_and_removed(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    rows = _pickle_world(world)
    janitor = make_janitor(world, id_from="task_id")
    before = world.snapshot()
    verdicts = celery_state.verdicts(
        celery_state.entries(before), OwnerRule(id_from="task_id"), world.existing_ids()
    )
    orphans = expect.with_state(verdicts, "orphaned")
    assert sorted(e.task_id for e in orphans) == sorted(str(x) for x in rows["deleted"])

    listed = janitor.run("tasks", "--orphaned", "--json").expect_json()
    assert expect.idents(listed) == expect.entry_idents(orphans), "\n" + expect.explain_mismatch(
        expect.idents(listed), expect.entry_idents(orphans), verdicts
    )

    report = janitor.run("cleanup-orphaned", "--json").expect_json()
    assert report["removed"] == {"queue": 2, "unacked": 2, "result": 0}
    expected = celery_state.remove_entries(before, orphans)
    assert snapshot.differences(expected, world.snapshot().without_prefix()) == []


def test_with_arg_owners_pickle_messages_are_undecidable_and_never_removed(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    rows = _pickle_world(world)
    janitor = make_janitor(world, id_from="arg:0")
    before = world.snapshot()
    verdicts = celery_state.verdicts(
        celery_state.entries(before), OwnerRule(id_from="arg:0"), world.existing_ids()
    )
    undecidable = expect.with_state(verdicts, "undecidable")
    orphans = expect.with_state(verdicts, "orphaned")
    assert sorted(int(e.task_id) for e in undecidable) == sorted(rows["pickled"])
    assert sorted(int(e.task_id) for e in orphans) == sorted(
        set(rows["deleted"]) - set(rows["pickled"])
    )

    listed = janitor.run("tasks", "--json").expect_json()
    states = {(r["task_id"], r["location"]): r["state"] for r in listed}
    for e in undecidable:
        assert states.get(e.ident) == "undecidable", (e.ident, states.get(e.ident))
    for e in orphans:
        assert states.get(e.ident) == "orphaned", (e.ident, states.get(e.ident))
    pickled_email = [r for r in listed if r["task_name"] == "scanner.send_email"]
    assert [r["state"] for r in pickled_email] == ["unowned"]

    report = janitor.run("cleanup-orphaned", "--json").expect_json()
    assert report["removed"] == {"queue": 1, "unacked": 1, "result": 0}
    remaining = {e.ident for e in world.entries()}
    assert {e.ident for e in undecidable} <= remaining

    status = janitor.run("status", "--json").expect_json()
    assert status["tasks"]["undecidable"] == 4
