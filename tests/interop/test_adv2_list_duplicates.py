"""Adversarial (round 4): byte-identical orphans in one list (`remove_list_entries.lua`).

The script gives each target a phase-1 search first (from its expected spot towards the tail),
for every target of the call, and only then phase 2 for the targets phase 1 missed (from each
one's head index when read). With two identical orphans and one message pushed back at the
consume end (kombu's restore of `unacked`; `celery-janitor restore`), the tail-most target's
phase 1 starts one element too far and misses its copy; the next target's phase 1 (which starts
where pops would have put it) then finds and claims that same copy; phase 2 of the first target
walks only up to where its phase 1 started, finds its copy claimed, and reports the target
gone. One orphan stays queued while the call says a worker took it (the engine counts it as
`changed` and broadcasts a revoke for it). Also on 130c8ce (the single-sweep phase 2).

Byte-identical messages are what the script's `claimed` table exists for ("two byte-identical
targets must match two messages").

Running phase 2 right after each target's phase-1 miss fixed the smallest case and the sparse
fuzz; the dense fuzz still leaves copies (marked xfail, strict: see the reason there).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from typing import cast

import pytest

from support import envelopes
from support.world import ScannerWorld
from test_lua_scripts import ARCHIVE, LOCK, TOKEN, call, engine_list_args, script

LIST = b"celery"


def _messages(world: ScannerWorld, n: int) -> list[bytes]:
    """`n` distinct real Celery messages of one length (replicas of a published one)."""
    (row,) = world.add_rows(1)
    world.scan(row)
    (template,) = cast("list[bytes]", world.redis.lrange(LIST, 0, -1))
    world.redis.delete(LIST)
    envelopes.check_round_trip([template])
    out = [envelopes.replicate_message(template, row_id=100_000 + i).raw for i in range(n)]
    assert len({len(m) for m in out}) == 1
    return out


def _fresh_state(r: object) -> None:
    rc = cast("object", r)
    rc.delete(LIST, ARCHIVE)  # type: ignore[attr-defined]
    rc.set(LOCK, TOKEN)  # type: ignore[attr-defined]
    rc.xadd(ARCHIVE, {b"kind": b"seed"})  # type: ignore[attr-defined]


def test_two_identical_orphans_after_one_rpush_are_both_removed(world: ScannerWorld) -> None:
    r = world.redis
    m = _messages(world, 12)
    orphan, live = m[0], m[1:]
    _fresh_state(r)
    # head -> tail: L=10, the copies at head indices 2 and 8.
    r.rpush(LIST, *live[:2], orphan, *live[2:7], orphan, live[7])
    listed = cast("list[bytes]", r.lrange(LIST, 0, -1))
    length = len(listed)
    at = [i for i, e in enumerate(listed) if e == orphan]
    assert at == [2, 8]
    r.rpush(LIST, live[10])  # kombu puts an unacked message back at the consume end
    # Tail first, as the engine sends them.
    chunk = [((i, length, orphan), 0) for i in sorted(at, reverse=True)]
    args = engine_list_args(1, 20_000, chunk, 0)
    reply = call(r, script("remove_list_entries.lua"), [LIST, ARCHIVE, LOCK], args)
    assert isinstance(reply, list)
    left = cast("list[bytes]", r.lrange(LIST, 0, -1))
    assert left.count(orphan) == 0, (
        "an orphan copy is still queued; the script answered "
        f"{['removed' if isinstance(x, list) else x for x in reply[0::2]]!r} "
        "(None: gone, i.e. 'a worker took it')"
    )
    assert left == [*live[:7], live[7], live[10]]


DENSE_DUPLICATES = pytest.mark.xfail(
    strict=True,
    reason="known limitation: with dense byte-identical orphans under RPUSH between calls, a "
    "phase-2 walk can claim a copy nearer the head than its own target's, and a copy is left "
    "queued (reported taken, and revoked: no live task is touched). Real Celery messages are "
    "never byte-identical (unique ids and delivery tags).",
)


@pytest.mark.parametrize(
    "dense",
    [False, pytest.param(True, marks=DENSE_DUPLICATES)],
    ids=["sparse", "dense"],
)
def test_duplicated_orphans_over_many_calls_under_push_and_pop(
    world: ScannerWorld, dense: bool
) -> None:
    """`test_lua_scripts.py::test_removal_over_many_small_calls_under_push_and_pop_leaves_no_orphan`
    with a third of the orphans queued two or three times (byte-identical), sparse (5 %) and
    dense (90 %) orphans, 40 seeds each. Every copy read by the scan is a target, so every copy
    must end removed or popped by a consumer: none may stay queued."""
    r = world.redis
    text = script("remove_list_entries.lua")
    pool = _messages(world, 1500)
    failures = []
    for seed in range(40):
        rng = random.Random(seed)
        _fresh_state(r)
        spare = deque(pool[400:])
        elements: list[bytes] = []
        orphans: set[bytes] = set()
        for m in pool[:250]:
            if rng.random() < (0.9 if dense else 0.05):
                orphans.add(m)
                elements += [m] * (1 + (rng.random() < 0.35) * rng.randrange(1, 3))
            else:
                elements.append(m)
        rng.shuffle(elements)
        r.lpush(LIST, *elements)
        listed = cast("list[bytes]", r.lrange(LIST, 0, -1))
        entries = [(i, len(listed), e) for i, e in enumerate(listed) if e in orphans]
        entries.sort(key=lambda e: -e[0])
        pending = deque((e, 0) for e in entries)
        popped: Counter[bytes] = Counter()
        removed: Counter[bytes] = Counter()
        removed_count = calls = 0
        while pending:
            calls += 1
            assert calls < 20_000, f"seed {seed}: no progress"
            for _ in range(rng.randrange(4)):
                action = rng.random()
                if action < 0.35 and spare:
                    r.lpush(LIST, spare.popleft())
                elif action < 0.6:
                    gone = r.rpop(LIST)
                    if isinstance(gone, bytes):
                        popped[gone] += 1
                elif spare:
                    r.rpush(LIST, spare.popleft())
            chunk = [pending.popleft() for _ in range(min(10, len(pending)))]
            args = engine_list_args(calls, rng.choice([5, 30, 120]), chunk, removed_count)
            before = Counter(cast("list[bytes]", r.lrange(LIST, 0, -1)))
            reply = call(r, text, [LIST, ARCHIVE, LOCK], args)
            assert isinstance(reply, list) and len(reply) == 2 * len(chunk), reply
            after = Counter(cast("list[bytes]", r.lrange(LIST, 0, -1)))
            assert not (after - before), seed
            assert set(before - after) <= orphans, (seed, "a live message was removed")
            assert not [e for e in after if e.startswith(b"celery-janitor:tombstone:")], seed
            resume = []
            for (entry, _), status, p in zip(chunk, reply[0::2], reply[1::2], strict=True):
                if status == b"resume":
                    resume.append((entry, int(p)))
                elif status:
                    removed_count += 1
                    removed[entry[2]] += 1
            for item in reversed(resume):
                pending.appendleft(item)
        final = Counter(cast("list[bytes]", r.lrange(LIST, 0, -1)))
        left = sum(c for e, c in final.items() if e in orphans)
        if left:
            failures.append((seed, left, calls))
        stream = cast("list[tuple[bytes, dict[bytes, bytes]]]", r.xrange(ARCHIVE))
        assert Counter(f[b"value"] for _, f in stream if b"value" in f) == removed, seed
    assert not failures, f"(seed, orphan copies left queued, calls): {failures}"
