"""Adversarial (round 4): the per-target phase 2 of `remove_list_entries.lua` (f7dca7c) walks
each missed target from its own head index when read, so a target costs about as many element
comparisons as messages were LPUSHed at the head since the scan read it (`H`), and a batch of
`n` such targets costs `n * H`, one 20,000-element call after another — where one sweep would
cost `H` plus the batch's span once.

Phase 2 is needed whenever more messages were pushed back at the consume end (kombu's restore
of `unacked` on a worker restart or a visibility sweep) than were popped since the scan: here,
as in `test_adv_phase_two_livelock.py`, 3,000 pushed back during the grace wait with no
consumer, and also a producer burst of 40,000 messages at the head (a nightly fan-out). 20,000
queued scans, 1 % orphans (200). With a steady producer `H` keeps growing while the run goes on,
so the run's time grows faster than linearly with the number of orphans.

Measured on the script alone (tests elsewhere): 200 orphans after 20,000 LPUSHes + 1 RPUSH:
271 calls, 14.7 s of Redis time (22 s with escaped task ids, no locator); with no LPUSH: 2 calls,
0.1 s.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from random import Random
from typing import Any, cast

import pytest

from support import envelopes
from support.faults import DEFAULT_LIST
from support.janitor import Janitor, scan_owner
from support.world import ScannerWorld

pytestmark = [pytest.mark.janitor]

N = 20_000
MOVED = 3_000
BURST = 40_000
DEADLINE = 240  # seconds
BUSY_LIMIT_MS = 5_000  # one sweep per batch would need well under a second of script time


@pytest.mark.parametrize("ids", ["ascii", "escaped"])
def test_phase_two_cost_does_not_multiply_head_pushes_by_orphans(
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
    burst = [
        envelopes.replicate_message(
            template, task_id=f"{prefix}-b{i:07d}-{0:016x}", row_id=rows[0]
        ).raw
        for i in range(BURST)
    ]
    moved = [
        envelopes.replicate_message(
            template, task_id=f"{prefix}-x{i:07d}-{0:016x}", row_id=rows[0]
        ).raw
        for i in range(MOVED)
    ]

    config: dict[str, Any] = {
        "redis": {"url": world.redis_server.url},
        "database": {"url": world.database.url},
        "cleanup": {"grace_seconds": 4, "max_age_hours": 24},
        "logging": {"app_log": "logs/app.log", "audit_log": "logs/audit.jsonl"},
        "archive": {"dir": "archive"},
        "owners": [scan_owner()],
    }
    janitor = make_janitor(world, config=config)
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 1_000_000)
    client.slowlog_reset()
    proc = janitor.start("cleanup-orphaned", "--json")

    def push_back() -> None:
        # After the scan has read the list, during the grace wait: pushed back at the tail.
        while not client.exists(b"celery-janitor:lock"):
            time.sleep(0.05)
        time.sleep(2.5)
        for s in range(0, BURST, 2000):
            client.lpush(DEFAULT_LIST, *burst[s : s + 2000])
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
    removed = N + BURST + MOVED - int(client.llen(DEFAULT_LIST))
    figures = (
        f"removed {removed} of {len(deleted)} in {len(evals)} script calls "
        f"({time.monotonic() - started:.0f} s); slowest {slowest:.1f} ms; "
        f"scripts kept Redis busy {busy:.0f} ms"
    )
    print("\n" + figures)
    assert finished, "the cleanup did not finish: " + figures
    assert removed == len(deleted), figures
    assert slowest < 250, figures
    assert busy < BUSY_LIMIT_MS, figures
