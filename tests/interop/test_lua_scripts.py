"""Every removal script against keys of the wrong type, bad arguments and a refused first write.

Redis does not roll a script back, so a script that fails after its first write leaves that
write behind: a tombstone in a queue (a Celery worker dies on it), a result deleted with no archive
copy. The scripts therefore check everything that can fail before they write (see
`crates/janitor-engine/lua/checks.lua`). These tests call them directly, the way the engine does
(`checks.lua` in front), on real Celery bytes in a real redis-server, and check that a failing
call returns an error naming the key's position and changes no byte anywhere — the archive
stream and the janitor's own keys included.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis

from support import envelopes, snapshot
from support.janitor import value_spec
from support.world import ScannerWorld

LUA = Path(__file__).resolve().parents[2] / "crates" / "janitor-engine" / "lua"
CHECKS = (LUA / "checks.lua").read_text()
TOKEN = b'{"token":"t"}'
LOCK = b"celery-janitor:lock"
ARCHIVE = b"celery-janitor:archive"
META = b'{"run_id":"test"}'


def script(name: str) -> str:
    return CHECKS + (LUA / name).read_text()


@pytest.fixture
def state(world: ScannerWorld) -> Iterator[dict[str, bytes]]:
    """Real Celery state: a queued message, an `unacked` entry (a killed worker's) and a result,
    each of a deleted row; the janitor lock held with TOKEN; an archive stream with one entry."""
    rows = world.add_rows(3)
    done = world.scan(rows[1])
    world.run_until_done("results", [done])
    world.scan(rows[0], countdown=600)
    world.park_in_unacked(1)
    world.scan(rows[2])
    world.delete_rows(rows)
    r = world.redis
    (message,) = cast("list[bytes]", r.lrange(b"celery", 0, -1))
    ((tag, entry),) = cast("dict[bytes, bytes]", r.hgetall(b"unacked")).items()
    result_key = b"celery-task-meta-" + done.encode()
    r.set(LOCK, TOKEN)
    r.xadd(ARCHIVE, {b"kind": b"seed"})
    yield {
        "message": message,
        "tag": tag,
        "entry": entry,
        "result_key": result_key,
        "result": cast("bytes | None", r.get(result_key)) or b"",
    }


def list_call(s: dict[str, bytes]) -> tuple[str, list[bytes], list[bytes]]:
    keys = [b"celery", ARCHIVE, LOCK]
    args = [TOKEN, b"celery-janitor:tombstone:x", b"20000", b"33554432", b"100000"]
    args += [b"0", b"0", b"0", value_spec(s["message"]), META]
    return script("remove_list_entries.lua"), keys, args


def unacked_call(s: dict[str, bytes]) -> tuple[str, list[bytes], list[bytes]]:
    keys = [b"unacked", b"unacked_index", b"unacked_mutex", ARCHIVE, LOCK]
    args = [TOKEN, b"mutex-token", b"100000", s["tag"], value_spec(s["entry"]), META]
    return script("remove_unacked_entries.lua"), keys, args


def results_call(s: dict[str, bytes]) -> tuple[str, list[bytes], list[bytes]]:
    keys = [ARCHIVE, LOCK, s["result_key"]]
    args = [TOKEN, b"100000", value_spec(s["result"]), META]
    return script("remove_results.lua"), keys, args


def engine_list_args(
    call_no: int, budget: int, chunk: list[tuple[tuple[int, int, bytes], int]], removed: int
) -> list[bytes]:
    """ARGV of one `remove_list_entries.lua` call as the engine builds it: each target is
    ((index from the head when read, list length then, exact bytes), resume point), tail first;
    `removed` counts this run's removals from the list so far (they shortened each target's
    distance from the tail)."""
    args = [TOKEN, b"celery-janitor:tombstone:" + str(call_no).encode()]
    args += [str(budget).encode(), b"33554432", b"100000"]
    for (index, length, raw), p in chunk:
        args += [str(length - 1 - index - removed).encode(), str(p).encode()]
        args += [str(index).encode(), value_spec(raw), META]
    return args


CALLS = {"list": list_call, "unacked": unacked_call, "results": results_call}


def call(r: redis.Redis, text: str, keys: list[bytes], args: list[bytes]) -> object:
    return r.eval(text, len(keys), *keys, *args)


def wrong_value(r: redis.Redis, key: bytes, current: str) -> None:
    """Replace `key` with a value of another type than `current`."""
    r.delete(key)
    if current == "string":
        r.rpush(key, b"x")
    else:
        r.set(key, b"x")


@pytest.mark.worker
@pytest.mark.parametrize("which", CALLS)
def test_the_scripts_work_on_the_real_state(
    world: ScannerWorld, state: dict[str, bytes], which: str
) -> None:
    r = world.redis
    if which == "unacked":
        r.set(b"unacked_mutex", b"mutex-token")
    reply = call(r, *CALLS[which](state))
    assert isinstance(reply, list) and reply[0], reply  # an archive id: removed
    assert r.xlen(ARCHIVE) == 2


@pytest.mark.worker
@pytest.mark.parametrize("which", CALLS)
def test_a_wrong_typed_key_in_any_position_changes_nothing(
    world: ScannerWorld, state: dict[str, bytes], which: str
) -> None:
    r = world.redis
    if which == "unacked":
        r.set(b"unacked_mutex", b"mutex-token")
    _text, keys, _args = CALLS[which](state)
    checked = 0
    for position, key in enumerate(keys, start=1):
        if which == "results" and position > 2:
            continue  # a result key of another type is simply not removed (tested below)
        saved = r.dump(key)
        ttl = r.pttl(key)
        current = cast("bytes", r.type(key)).decode()
        wrong_value(r, key, current)
        before = world.snapshot()
        with pytest.raises(redis.ResponseError) as err:
            call(r, *CALLS[which](state))
        assert str(err.value).startswith(f"CJWRONGTYPE {position} "), (key, str(err.value))
        assert snapshot.differences(before, world.snapshot()) == [], key
        r.delete(key)
        if saved is not None:
            r.restore(key, max(ttl, 0), saved)
        checked += 1
    assert checked >= 2
    # With every key back in place, the same call removes its target.
    reply = call(r, *CALLS[which](state))
    assert isinstance(reply, list) and reply[0], reply


@pytest.mark.worker
def test_a_result_key_of_another_type_is_left_alone(
    world: ScannerWorld, state: dict[str, bytes]
) -> None:
    r = world.redis
    r.delete(state["result_key"])
    r.rpush(state["result_key"], state["result"])
    before = world.snapshot()
    reply = call(r, *results_call(state))
    assert reply == [None, 0]
    assert snapshot.differences(before, world.snapshot()) == []


@pytest.mark.worker
@pytest.mark.parametrize("which", CALLS)
def test_bad_arguments_or_a_lost_lock_change_nothing(
    world: ScannerWorld, state: dict[str, bytes], which: str
) -> None:
    r = world.redis
    if which == "unacked":
        r.set(b"unacked_mutex", b"mutex-token")
    for spoil in ("not-a-number", "argument-count", "lock-lost"):
        text, keys, args = CALLS[which](state)
        if spoil == "not-a-number":
            args[2 if which != "results" else 1] = b"many"
            expected = "CJBADARG"
        elif spoil == "argument-count":
            args = args[:-1]
            expected = "CJBADARG"
        else:
            r.set(LOCK, b"someone-else")
            expected = "LOCKLOST"
        before = world.snapshot()
        with pytest.raises(redis.ResponseError) as err:
            call(r, text, keys, args)
        assert str(err.value).startswith(expected), (spoil, str(err.value))
        assert snapshot.differences(before, world.snapshot()) == [], spoil


@pytest.mark.worker
@pytest.mark.parametrize("which", CALLS)
def test_a_refused_first_write_changes_nothing(
    world: ScannerWorld, state: dict[str, bytes], which: str
) -> None:
    """Out of memory, Redis refuses a script's first write (and only that one): the archive
    XADD comes first, so the message, entry or result stays where it was."""
    r = world.redis
    if which == "unacked":
        r.set(b"unacked_mutex", b"mutex-token")
    before = world.snapshot()
    r.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.ResponseError) as err:
            call(r, *CALLS[which](state))
    finally:
        r.config_set("maxmemory", 0)
    assert str(err.value).startswith("CJARCHIVE"), str(err.value)
    assert snapshot.differences(before, world.snapshot()) == []


@pytest.mark.worker
def test_two_identical_messages_are_two_removals(
    world: ScannerWorld, state: dict[str, bytes]
) -> None:
    """A message published twice (same bytes) is found once per target, never twice at the
    same position: each archive entry stands for one message really removed."""
    r = world.redis
    r.rpush(b"celery", state["message"])
    text, keys, args = list_call(state)
    args += [b"1", b"0", b"0", value_spec(state["message"]), META]
    reply = call(r, text, keys, args)
    assert isinstance(reply, list)
    assert reply[0] and reply[2], reply
    assert r.llen(b"celery") == 0
    assert r.xlen(ARCHIVE) == 3


def test_lock_refresh_ignores_a_wrong_typed_lock(world: ScannerWorld) -> None:
    r = world.redis
    r.rpush(LOCK, b"x")
    before = world.snapshot()
    text = (LUA / "lock.lua").read_text()
    assert r.eval(text, 1, LOCK, TOKEN, b"30000") == 0
    assert r.eval(text, 1, LOCK, TOKEN, b"release") == 0
    assert snapshot.differences(before, world.snapshot()) == []


def _replicas(world: ScannerWorld, template: bytes, n: int) -> list[bytes]:
    """`n` distinct messages made from a real one (new ids; kombu's own encoder)."""
    envelopes.check_round_trip([template])
    return [envelopes.replicate_message(template, row_id=10_000 + i).raw for i in range(n)]


@pytest.mark.worker
@pytest.mark.parametrize("budget", [20_000, 7], ids=["one-call", "resumed-calls"])
def test_a_message_moved_away_from_the_tail_by_rpush_is_still_found(
    world: ScannerWorld, state: dict[str, bytes], budget: int
) -> None:
    """kombu puts unacked messages back at the consume end (RPUSH) on a worker's warm shutdown
    or visibility sweep; `restore` does too. That moves every queued message away from the
    tail, where the search starts. The message must still be found (from its index from the
    head, which RPUSH does not change), over several calls when the work budget runs out."""
    r = world.redis
    r.delete(b"celery")
    messages = _replicas(world, state["message"], 40)
    r.rpush(b"celery", *messages)
    target_index = 10
    target = messages[target_index]
    dr = len(messages) - 1 - target_index
    r.rpush(b"celery", *_replicas(world, state["message"], 60)[40:])  # 20 RPUSHed at the tail
    text = script("remove_list_entries.lua")
    p = b"0"
    reply: list[object] = []
    for _ in range(50):
        keys = [b"celery", ARCHIVE, LOCK]
        args = [TOKEN, b"celery-janitor:tombstone:x", str(budget).encode(), b"33554432"]
        args += [
            b"100000",
            str(dr).encode(),
            p,
            str(target_index).encode(),
            value_spec(target),
            META,
        ]
        answer = call(r, text, keys, args)
        assert isinstance(answer, list) and len(answer) == 2, answer
        reply = answer
        if reply[0] != b"resume":
            break
        p = str(reply[1]).encode()
    assert reply[0] not in (None, b"resume"), reply
    left = cast("list[bytes]", r.lrange(b"celery", 0, -1))
    assert target not in left and len(left) == 59
    assert not [m for m in left if m.startswith(b"celery-janitor:tombstone:")]


@pytest.mark.worker
def test_removal_over_many_small_calls_under_push_and_pop_leaves_no_orphan(
    world: ScannerWorld, state: dict[str, bytes]
) -> None:
    """The engine's calling convention (targets tail first, `dr` less the removals so far, `lo`
    the index from the head when read, resumes sent back first), with tiny work budgets so that
    most calls stop partway, and LPUSH / RPOP / RPUSH between calls (producers, workers, kombu's
    restore). Every orphan still in the list is removed, nothing else is, everything removed is
    archived once, and no tombstone is left."""
    import random
    from collections import Counter, deque

    r = world.redis
    text = script("remove_list_entries.lua")
    pool = _replicas(world, state["message"], 1000)
    for seed in range(30):
        rng = random.Random(seed)
        r.delete(b"celery", ARCHIVE)
        r.xadd(ARCHIVE, {b"kind": b"seed"})
        messages = pool[:300]
        spare = deque(pool[300:])
        r.lpush(b"celery", *messages)
        orphans = {m for m in messages if rng.random() < 0.3}
        # The scan: head first, in one read (index from the head, list length).
        listed = cast("list[bytes]", r.lrange(b"celery", 0, -1))
        entries = [(i, len(listed), m) for i, m in enumerate(listed) if m in orphans]
        entries.sort(key=lambda e: -e[0])
        pending = deque((e, 0) for e in entries)
        popped: set[bytes] = set()
        removed: list[bytes] = []
        removed_count = 0
        calls = 0
        while pending:
            calls += 1
            assert calls < 5000, f"seed {seed}: no progress"
            for _ in range(rng.randrange(4)):
                action = rng.random()
                if action < 0.3 and spare:
                    r.lpush(b"celery", spare.popleft())
                elif action < 0.5:
                    gone = r.rpop(b"celery")
                    if isinstance(gone, bytes):
                        popped.add(gone)
                elif spare:
                    r.rpush(b"celery", spare.popleft())
            chunk = [pending.popleft() for _ in range(min(10, len(pending)))]
            args = engine_list_args(calls, rng.choice([5, 30, 120]), chunk, removed_count)
            before = Counter(cast("list[bytes]", r.lrange(b"celery", 0, -1)))
            reply = call(r, text, [b"celery", ARCHIVE, LOCK], args)
            assert isinstance(reply, list) and len(reply) == 2 * len(chunk), reply
            after = Counter(cast("list[bytes]", r.lrange(b"celery", 0, -1)))
            resume = []
            for (entry, _), status, p in zip(chunk, reply[0::2], reply[1::2], strict=True):
                if status == b"resume":
                    resume.append((entry, int(p)))
                elif status:
                    removed_count += 1
                    removed.append(entry[2])
                else:
                    assert entry[2] in popped or after[entry[2]] == 0, (seed, "reported gone")
                    assert entry[2] not in after, (seed, "an orphan reported gone is queued")
            assert not (after - before), seed
            assert set(before - after) <= orphans, (seed, "a live message was removed")
            for item in reversed(resume):
                pending.appendleft(item)
        final = cast("list[bytes]", r.lrange(b"celery", 0, -1))
        assert not set(final) & orphans, f"seed {seed}: an orphan is still queued"
        assert not [m for m in final if m.startswith(b"celery-janitor:tombstone:")]
        stream = cast("list[tuple[bytes, dict[bytes, bytes]]]", r.xrange(ARCHIVE))
        archived = Counter(f[b"value"] for _, f in stream if b"value" in f)
        assert archived == Counter(removed), f"seed {seed}: archive != removed"
        assert set(removed) | popped >= orphans, seed
