"""`status [--json]`: connection, memory, and entry counts by state and location."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from support import celery_state, expect
from support.celery_state import OwnerRule
from support.janitor import Janitor
from support.scenarios import build_mixed
from support.world import ScannerWorld

pytestmark = [pytest.mark.worker, pytest.mark.janitor]


@pytest.mark.parametrize("extended", [True, False], ids=["extended", "plain"])
def test_status_json_counts_every_entry_by_state_and_location(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor], extended: bool
) -> None:
    world = make_world(result_extended=extended)
    build_mixed(world)
    janitor = make_janitor(world)
    found = world.entries()
    verdicts = celery_state.verdicts(found, OwnerRule(), world.existing_ids())
    states = Counter(v.state for _e, v in verdicts)
    orphans = expect.with_state(verdicts, "orphaned")

    status = janitor.run("status", "--json").expect_json()

    redis_part = status["redis"]
    assert redis_part["connected"] is True
    assert isinstance(redis_part["used_memory_bytes"], int) and redis_part["used_memory_bytes"] > 0
    assert isinstance(redis_part["connected_clients"], int) and redis_part["connected_clients"] >= 1
    tasks = status["tasks"]
    assert tasks["in_redis"] == len(found) == 23
    assert tasks["orphaned"] == states["orphaned"]
    assert tasks["live"] == states["live"]
    assert tasks["unowned"] == states["unowned"]
    assert tasks["undecidable"] == states["undecidable"] == 0
    assert tasks["in_database"] == len(world.existing_ids()) == 8
    assert tasks["by_location"] == expect.by_location(found)
    assert tasks["orphaned_by_location"] == expect.by_location(orphans)
    unnamed = sum(1 for e in found if e.location == "result" and e.task_name is None)
    assert status["results"]["unnamed"] == unnamed == (0 if extended else 6)


def test_status_report_warns_about_orphans_and_names_the_cleanup_command(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world(result_extended=False)
    rows = world.add_rows(3)
    ids = [world.scan(row) for row in rows]
    world.run_until_done("results", ids)  # plain results: no task name in them
    world.scan(rows[0])
    world.scan(rows[1])
    world.delete_rows([rows[0], rows[1]])
    janitor = make_janitor(world)

    run = janitor.run("status")

    assert run.returncode == 0, run.describe()
    out = run.stdout
    warning = [line for line in out.splitlines() if "cleanup-orphaned" in line]
    assert warning, f"no line names the cleanup command:\n{out}"
    assert any("2" in line for line in warning), out
    assert "result_extended" in out, f"plain results, but no hint to enable result_extended:\n{out}"
