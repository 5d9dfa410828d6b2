"""Adversarial: a removal batch whose targets must all be found by phase 2 of
`remove_list_entries.lua` (messages pushed back at the consume end between the plan and the
apply, as kombu's restore of `unacked` does on a worker restart or a visibility sweep) never
finishes once the batch spans more list elements than one call's budget lets phase 2 walk.

100k queued scans of one length (real Celery bytes, replicated), 1 % of their rows deleted
(orphans spread through the list: a batch of 100 spans ~10k elements), and 3,000 messages
RPUSHed at the consume end during the grace wait.

Why: phase 2 walks one range, from the lowest head index of the missed targets upwards, and
targets found after one that must resume are not removed but resumed from where they were
found. The target nearest the tail (first in the batch) has the highest index, so it is reached
last; when the budget runs out before it, every call starts again from the lowest target and
nothing is removed: a livelock that keeps Redis ~90 % busy with 35 ms script calls. Phase 2
hashes every element of a target's length (it does not use the locator) at 9x its size against
the 32 MB byte budget, so a call walks ~2,900 messages of 1.3 KB instead of the 20,000 element
budget 86374e0 walked: what 86374e0 does in 30 calls (~24 s with the setup) never ends.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from random import Random
from typing import Any, cast

import pytest

from support import envelopes
from support.faults import DEFAULT_LIST, janitor_with_grace
from support.janitor import Janitor
from support.world import ScannerWorld

pytestmark = [pytest.mark.janitor]

N = 100_000
MOVED = 3_000
DEADLINE = 150  # seconds; 86374e0 finishes the cleanup in well under 30


@pytest.mark.parametrize("ids", ["ascii", "escaped"])
def test_phase_two_batches_finish(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], ids: str
) -> None:
    rng = Random(7)
    client = world.redis
    (template_row,) = world.add_rows(1)
    world.scan(template_row)
    (template,) = cast("list[bytes]", client.lrange(DEFAULT_LIST, 0, -1))
    client.delete(DEFAULT_LIST)
    # Row ids of one width, so every message has one length (as most of a real queue does).
    rows = [r for r in world.add_rows(N + 100_000) if len(str(r)) == 6][:N]
    assert len(rows) == N
    deleted = set(rng.sample(rows, N // 100))
    # "escaped": non-ASCII task ids, which kombu's JSON escapes: the plan's locator is empty.
    prefix = "t\u00e2che" if ids == "escaped" else "task"
    elements = [
        envelopes.replicate_message(
            template, task_id=f"{prefix}-{i:08d}-{rng.getrandbits(64):016x}", row_id=row
        ).raw
        for i, row in enumerate(rows)
    ]
    assert len({len(e) for e in elements}) == 1
    pipe = client.pipeline(transaction=False)
    for s in range(0, N, 2000):
        pipe.lpush(DEFAULT_LIST, *elements[s : s + 2000])
    pipe.execute()
    world.delete_rows(deleted)
    moved = [
        envelopes.replicate_message(
            template, task_id=f"{prefix}-x{i:07d}-{0:016x}", row_id=rows[0]
        ).raw
        for i in range(MOVED)
    ]

    janitor = janitor_with_grace(world, make_janitor, grace=4)
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 1_000_000)
    client.slowlog_reset()
    proc = janitor.start("cleanup-orphaned", "--json")

    def push_back() -> None:
        # After the scan has read the list, during the grace wait: pushed back at the tail.
        while not client.exists(b"celery-janitor:lock"):
            time.sleep(0.05)
        time.sleep(2.5)
        client.rpush(DEFAULT_LIST, *moved)

    t = threading.Thread(target=push_back)
    t.start()
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < DEADLINE:
        time.sleep(1)
    t.join()
    finished = proc.poll() is not None
    if not finished:
        proc.kill()
    proc.communicate()
    log = cast("list[dict[str, Any]]", client.slowlog_get(1_000_000))
    evals = [e for e in log if e["command"].upper().startswith(b"EVALSHA")]
    slowest = max(e["duration"] for e in evals) / 1000
    busy = sum(e["duration"] for e in evals) / 1000
    removed = N + MOVED - int(client.llen(DEFAULT_LIST))
    figures = (
        f"removed {removed} of {len(deleted)} in {len(evals)} script calls "
        f"({time.monotonic() - started:.0f} s); slowest {slowest:.1f} ms; "
        f"scripts kept Redis busy {busy:.0f} ms"
    )
    print("\n" + figures)
    assert finished, "the cleanup did not finish: " + figures
    assert removed == len(deleted), figures
    assert slowest < 250, figures
