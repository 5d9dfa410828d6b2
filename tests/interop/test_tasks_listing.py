"""`celery-janitor tasks [--orphaned] --json` against state written by real Celery.

Done when: `tasks --orphaned --json` lists exactly the orphaned entries, every one, in every
location, and nothing live, unowned or uncommitted.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from support import celery_state, expect
from support.celery_state import OwnerRule
from support.janitor import Janitor
from support.scenarios import build_mixed
from support.world import ScannerWorld

pytestmark = [pytest.mark.worker, pytest.mark.janitor]


def test_orphaned_lists_exactly_the_orphans_in_every_location(
    world: ScannerWorld, janitor: Janitor
) -> None:
    build_mixed(world)
    verdicts = celery_state.verdicts(world.entries(), OwnerRule(), world.existing_ids())
    orphans = expect.with_state(verdicts, "orphaned")
    assert expect.by_location(orphans) == {"queue": 5, "unacked": 2, "result": 2}

    rows = janitor.run("tasks", "--orphaned", "--json").expect_json()

    assert isinstance(rows, list)
    listed, wanted = expect.idents(rows), expect.entry_idents(orphans)
    assert listed == wanted, "\n" + expect.explain_mismatch(listed, wanted, verdicts)
    assert expect.row_problems(rows, verdicts, "scan_tasks") == []
    assert {r["state"] for r in rows} == {"orphaned"}


def test_without_orphaned_every_entry_is_listed_with_its_state(
    world: ScannerWorld, janitor: Janitor
) -> None:
    build_mixed(world)
    verdicts = celery_state.verdicts(world.entries(), OwnerRule(), world.existing_ids())

    rows = janitor.run("tasks", "--json").expect_json()

    listed, wanted = expect.idents(rows), expect.entry_idents(e for e, _v in verdicts)
    assert listed == wanted, "\n" + expect.explain_mismatch(listed, wanted, verdicts)
    assert expect.row_problems(rows, verdicts, "scan_tasks") == []
    # send_email entries (queue, unacked and results) are unowned, never orphaned.
    emails = [r for r in rows if r["task_name"] == "scanner.send_email"]
    assert len(emails) == 6
    assert {r["state"] for r in emails} == {"unowned"}


def test_limit_caps_the_number_of_rows(world: ScannerWorld, janitor: Janitor) -> None:
    rows = world.add_rows(5)
    for row in rows:
        world.scan(row)
    world.delete_rows(rows[:4])

    listed = janitor.run("tasks", "--orphaned", "--json", "--limit", "2").expect_json()

    assert len(listed) == 2
    assert {r["state"] for r in listed} == {"orphaned"}


def test_plain_results_without_a_task_name_are_unowned_not_orphaned(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world(result_extended=False)
    build_mixed(world)
    janitor = make_janitor(world)
    verdicts = celery_state.verdicts(world.entries(), OwnerRule(), world.existing_ids())
    orphans = expect.with_state(verdicts, "orphaned")
    assert expect.by_location(orphans) == {"queue": 5, "unacked": 2, "result": 0}

    rows = janitor.run("tasks", "--json").expect_json()

    listed = expect.idents(r for r in rows if r["state"] == "orphaned")
    wanted = expect.entry_idents(orphans)
    assert listed == wanted, "\n" + expect.explain_mismatch(listed, wanted, verdicts)
    results = [r for r in rows if r["location"] == "result"]
    assert len(results) == 6
    assert {r["state"] for r in results} == {"unowned"}
    assert {r["task_name"] for r in results} == {None}


def test_claimed_unnamed_results_of_deleted_rows_are_orphans_by_task_id(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    """Apps that use the row id as the Celery task id can claim plain results."""
    world = make_world(result_extended=False)
    r = world.add_rows(6)
    ran = [world.scan(row, task_id=str(row)) for row in r[:4]]
    world.delete_rows([r[1]])  # fails on the FK when it runs
    world.run_until_done("results", ran)
    world.delete_rows([r[2]])  # deleted after it succeeded
    world.scan(r[4], task_id=str(r[4]))
    world.scan(r[5], task_id=str(r[5]), queue="scans")
    world.delete_rows([r[5]])
    world.email(queue="scans")  # unrelated and queued: never claimed
    rule = OwnerRule(id_from="task_id", claim_unnamed_results=True)
    janitor = make_janitor(world, id_from="task_id", claim_unnamed_results=True)
    verdicts = celery_state.verdicts(world.entries(), rule, world.existing_ids())
    orphans = expect.with_state(verdicts, "orphaned")
    assert sorted(e.task_id for e in orphans) == sorted(str(x) for x in (r[1], r[2], r[5]))

    rows = janitor.run("tasks", "--orphaned", "--json").expect_json()

    listed, wanted = expect.idents(rows), expect.entry_idents(orphans)
    assert listed == wanted, "\n" + expect.explain_mismatch(listed, wanted, verdicts)
    assert expect.row_problems(rows, verdicts, "scan_tasks") == []
