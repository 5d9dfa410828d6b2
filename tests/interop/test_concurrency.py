"""Cleanup under load: producers and workers keep running while celery-janitor removes orphans,
and nothing live is lost, duplicated or corrupted.

Why this file exists: the janitor's whole design (removal by exact bytes in one atomic Lua pass,
positions corrected for the drift that producers' LPUSHes cause) is only worth something if a
deployment can stay up while it runs. Two tests:

- `test_cleanup_under_real_producer_and_worker`: a few thousand real Celery messages (default
  list and a priority sub-list, live rows and deleted rows), then `cleanup-orphaned --grace 0`
  while a thread keeps publishing new live scans with `apply_async` and a real prefork worker
  consumes. The worker is started beforehand on another queue and told to consume `celery`
  (`add_consumer`) the moment the janitor has finished reading `unacked`, so it really pulls
  messages during the scan and the removal, and every orphan it holds was taken from a queue
  list (none can be in `unacked` when the janitor reads it).
- `test_cleanup_of_20k_list_under_raw_push_and_pop`: the same at the Redis level and bigger:
  20k copies of real envelopes, one thread LPUSHing more, one BRPOPping, and an exact multiset
  (and order) check of what is left.

The janitor's JSON only gives counts, so both tests record the server's MONITOR stream and read
off exactly which messages each `remove_list_entries.lua` call was asked to remove and which it
archived. That turns "`skipped.changed` are the orphans a worker took first" into an equation:
every target not removed is either a second sighting of a message removed elsewhere (the scan
pages a list that producers push onto, so a message can be read twice) or a message a consumer
popped, and each of those shows up in the worker's log as a foreign-key failure (or in the
popper's record).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from scanner.app import SCAN_TASK, make_app
from support import envelopes
from support.celery_state import PRIORITY_STEPS, priority_key
from support.faults import janitor_with_grace
from support.janitor import Janitor, JanitorRun, split_spec, value_key
from support.redis_monitor import Command, RedisMonitor, ScriptCall, script_calls
from support.waiting import wait_until
from support.world import ScannerWorld, fk_violations

pytestmark = [pytest.mark.worker, pytest.mark.janitor]

TOMBSTONE = b"celery-janitor:tombstone:"
LOCK_KEY = b"celery-janitor:lock"
DEFAULT_LIST = priority_key("celery", 0)
SUB_LIST = priority_key("celery", 6)
# kombu's BRPOP order for the `celery` queue: every priority sub-list, highest first.
CELERY_LISTS = [priority_key("celery", p) for p in PRIORITY_STEPS]
SUCCEEDED = re.compile(r"Task scanner\.\w+\[(?P<id>[^\]]+)\] succeeded in")
# A worker that holds a message the janitor revoked discards it instead of running it.
DISCARDED = re.compile(r"Discarding revoked task: \S+\[([0-9a-f-]+)\]")
ZERO_SKIPS_BUT_CHANGED = {"revived": 0, "busy": 0}


# -- helpers ---------------------------------------------------------------------------------


def task_id_of(raw: bytes) -> str:
    return envelopes.envelope_ids(raw)[0]


def all_list_elements(client: redis.Redis) -> dict[bytes, list[bytes]]:
    """Every list in the database (a test's own server), element by element."""
    out: dict[bytes, list[bytes]] = {}
    for key in client.scan_iter(count=1000):
        if client.type(key) == b"list":
            out[key] = [bytes(m) for m in client.lrange(key, 0, -1)]  # type: ignore[arg-type]
    return out


class JanitorWatch:
    """Finds the janitor's connection in the MONITOR stream (the one that takes the lock with
    SET NX) and fires once that connection has moved past reading `unacked`."""

    UNACKED_SCAN = ("set", "type", "hlen", "hscan", "ping")

    def __init__(self) -> None:
        self.client: str | None = None

    def past_unacked(self, c: Command) -> bool:
        if self.client is None:
            if c.name == "set" and c.args[1:2] == [LOCK_KEY]:
                self.client = c.client
            return False
        return c.client == self.client and c.name not in self.UNACKED_SCAN


@dataclass
class Removals:
    """What the janitor's Lua calls were asked to remove, and what they removed, per location.
    Targets of queue elements and `unacked` values are value keys (see `value_key`; the task id
    each spec carried is in `locators`), of results key names; what was removed is the exact
    bytes the scripts archived (key names for results)."""

    targets: dict[str, list[bytes]] = field(default_factory=dict)
    removed: dict[str, list[bytes]] = field(default_factory=dict)
    locators: dict[bytes, str] = field(default_factory=dict)
    list_calls: int = 0

    def add_targets(self, location: str, specs: list[bytes]) -> None:
        for spec in specs:
            key, locator = split_spec(spec)
            self.targets.setdefault(location, []).append(key)
            self.locators[key] = locator

    def count(self, what: str) -> dict[str, int]:
        # A target the per-call budget did not reach is sent again in the next call: count
        # each message once.
        source = self.targets if what == "targets" else self.removed
        return {loc: len(set(source.get(loc, []))) for loc in ("queue", "unacked", "result")}


def _xadd_fields(c: Command) -> dict[bytes, bytes]:
    # XADD key MAXLEN ~ n * field value ...
    star = c.args.index(b"*")
    rest = c.args[star + 1 :]
    return dict(zip(rest[0::2], rest[1::2], strict=True))


def _resent(specs: list[bytes], left: list[bytes]) -> int:
    """How many of a list call's first targets are targets the previous call on that list left
    for later (its work budget ran out first): the engine sends those again first, in order.
    Each message counts as a target once."""
    n = 0
    for key in left:
        if n < len(specs) and split_spec(specs[n])[0] == key:
            n += 1
    return n


def _not_removed(specs: list[bytes], removed: list[bytes]) -> list[bytes]:
    """The value keys of a call's targets it did not remove, in order."""
    removed_keys = Counter(value_key(m) for m in removed)
    left = []
    for spec in specs:
        key = split_spec(spec)[0]
        if removed_keys[key] > 0:
            removed_keys[key] -= 1
        else:
            left.append(key)
    return left


def janitor_removals(commands: list[Command], client: str) -> Removals:
    """Reads every removal script call of the janitor's connection from the MONITOR stream, and
    checks each list call left no tombstone behind (its LSETs are undone by one LREM)."""
    out = Removals()
    calls: list[ScriptCall] = [c for c in script_calls(commands, client) if c.inner]
    # Per list: the targets the last call neither removed nor found gone, in order.
    left_for_later: dict[bytes, list[bytes]] = {}
    for call in calls:
        keys, argv = call.keys, call.argv
        xadds = [_xadd_fields(c) for c in call.inner if c.name == "xadd"]
        if len(keys) == 3 and argv[1:2] and argv[1].startswith(TOMBSTONE):
            out.list_calls += 1
            specs = argv[8::5]
            removed = [f[b"value"] for f in xadds if f[b"kind"] == b"queue"]
            resent = _resent(specs, left_for_later.get(keys[0], []))
            out.add_targets("queue", specs[resent:])
            left_for_later[keys[0]] = _not_removed(specs, removed)
            out.removed.setdefault("queue", []).extend(removed)
            lsets = [c for c in call.inner if c.name == "lset"]
            lrems = [c for c in call.inner if c.name == "lrem"]
            assert all(c.args[3] == argv[1] for c in lsets), "LSET of something but the tombstone"
            assert len(lsets) == len(removed), "a tombstone without an archived message"
            if lsets:
                # One LREM from the tail (negative count) removes exactly this call's tombstones.
                assert [c.args[2:] for c in lrems] == [[str(-len(lsets)).encode(), argv[1]]], (
                    "tombstones not removed by one LREM in the same call"
                )
                assert call.inner[-1].name == "lrem", "the script did something after its LREM"
            else:
                assert not lrems
        elif len(keys) == 5 and keys[0].endswith(b"unacked"):
            out.add_targets("unacked", argv[4::3])
            out.removed.setdefault("unacked", []).extend(
                f[b"value"] for f in xadds if f[b"kind"] == b"unacked"
            )
        elif len(keys) >= 3 and keys[1] == LOCK_KEY:  # remove_results: archive, lock, keys...
            out.targets.setdefault("result", []).extend(keys[2:])
            out.removed.setdefault("result", []).extend(
                f[b"key"] for f in xadds if f[b"kind"] == b"result"
            )
    return out


def during_run(commands: list[Command], client: str, name: str, key: bytes) -> int:
    """How many `name key ...` commands other clients ran while the janitor was connected."""
    own = [c.time for c in commands if c.client == client]
    start, end = min(own), max(own)
    return sum(
        1
        for c in commands
        if start <= c.time <= end
        and c.client not in (client, "lua")
        and c.name == name
        and c.args[1:2] == [key]
    )


def assert_counts_add_up(report: dict[str, Any], removals: Removals) -> None:
    """The janitor's JSON agrees with what its scripts were asked to do and did."""
    assert report["dry_run"] is False
    assert report["skipped"]["revived"] == 0 and report["skipped"]["busy"] == 0, report
    assert report["found"] == removals.count("targets"), report
    assert report["removed"] == removals.count("removed"), report
    found = sum(report["found"].values())
    removed = sum(report["removed"].values())
    assert found == removed + report["skipped"]["changed"], report
    assert report["archived"] == removed, report


def split_not_removed(
    targets: list[bytes], removed: list[bytes]
) -> tuple[list[bytes], list[bytes]]:
    """Targets the scripts did not remove: (second sightings of a message removed elsewhere or
    targeted twice, messages that were gone)."""
    left = Counter(targets) - Counter(removed)
    assert not (Counter(removed) - Counter(targets)), "a script removed something not targeted"
    removed_set = set(removed)
    seen_twice = {m for m, n in Counter(targets).items() if n > 1}
    duplicates: list[bytes] = []
    gone: list[bytes] = []
    for message, n in left.items():
        if message in removed_set or message in seen_twice:
            duplicates.extend([message] * n)
        else:
            gone.extend([message] * n)
    return duplicates, gone


# -- test 1: real Celery producer and worker --------------------------------------------------


class ScanProducer(threading.Thread):
    """Publishes new live scans with the real `apply_async` until stopped: each row is committed
    first, then its task is sent, every third one with priority 6 (the sub-list)."""

    def __init__(self, world: ScannerWorld, interval: float) -> None:
        super().__init__(name="scan-producer", daemon=True)
        self.world = world
        self.interval = interval
        self.stopping = threading.Event()
        self.published: list[tuple[int, str]] = []
        self.error: BaseException | None = None

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
                        " VALUES (7, 'pending.example') RETURNING id"
                    ).fetchone()
                    assert row is not None
                    row_id = int(row[0])
                    options: dict[str, Any] = {"priority": 6} if n % 3 == 0 else {}
                    result = task.apply_async(
                        (row_id, 7, f"site{row_id}.example", {"ports": [80]}), **options
                    )
                    self.published.append((row_id, str(result.id)))
                    n += 1
                    time.sleep(self.interval)
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            app.close()

    def finish(self) -> list[tuple[int, str]]:
        self.stopping.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the producer thread did not stop"
        if self.error is not None:
            raise self.error
        return self.published


def test_cleanup_under_real_producer_and_worker(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    janitor = janitor_with_grace(world, make_janitor, grace=0)
    rng = random.Random(7)

    # The state: 3000 scans (a third in the priority-6 sub-list) and 60 unrelated emails,
    # published with apply_async; then half the rows are deleted.
    rows = world.add_rows(3000)
    scan_ids: dict[int, str] = {}
    email_ids: list[str] = []
    for i, row in enumerate(rows):
        options: dict[str, Any] = {"priority": 6} if i % 3 == 0 else {}
        scan_ids[row] = world.scan(row, config={"ports": [80]}, **options)
        if i % 50 == 0:
            email_ids.append(world.email())
    deleted = sorted(rng.sample(rows, len(rows) // 2))
    world.delete_rows(deleted)
    kept = sorted(set(rows) - set(deleted))
    orphan_ids = {scan_ids[r] for r in deleted}
    before = all_list_elements(world.redis)
    assert {k for k, v in before.items() if v} == {DEFAULT_LIST, SUB_LIST}
    orphan_messages = {m for v in before.values() for m in v if task_id_of(m) in orphan_ids}
    assert len(orphan_messages) == len(orphan_ids)

    # The worker is up before the run but consumes nothing of ours until told to.
    worker = world.prefork_worker("concurrent", queues=["idle"])
    worker.wait_ready(timeout=60)
    producer = ScanProducer(world, interval=0.004)
    producer.start()
    wait_until(
        lambda: len(producer.published) >= 20 or producer.error,
        timeout=30,
        what="the producer to publish",
    )

    monitor = RedisMonitor(world.redis_server.port).start()
    watch = JanitorWatch()
    past_unacked = monitor.when(watch.past_unacked)
    proc = janitor.start("cleanup-orphaned", "--json", "--grace", "0")
    try:
        assert past_unacked.wait(timeout=60), "the janitor never got past reading unacked"
        world.app.control.add_consumer(
            "celery", exchange="celery", routing_key="celery", destination=[worker.name]
        )
        # Wake the worker's pending BRPOP (on `idle`) so its next one includes `celery`.
        email_ids.append(world.email(queue="idle"))
        result: JanitorRun = janitor.finish(proc, timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    right_after = all_list_elements(world.redis)
    time.sleep(0.5)  # the producer keeps going a little after the run
    published = producer.finish()
    commands = monitor.stop()

    report = result.expect_json()
    assert watch.client is not None
    removals = janitor_removals(commands, watch.client)

    # The run really overlapped: the producer published and the worker took messages (kombu's
    # HSET of `unacked`) while the janitor was at work.
    published_during = during_run(commands, watch.client, "lpush", DEFAULT_LIST) + during_run(
        commands, watch.client, "lpush", SUB_LIST
    )
    delivered_during = during_run(commands, watch.client, "hset", b"unacked")
    assert published_during > 0 and delivered_during > 0, (published_during, delivered_during)

    # Counts: the JSON agrees with the scripts. `unacked` was empty when the janitor first read
    # it; what it found there when it read it again after the lists are orphans the worker
    # prefetched meanwhile (removed there and revoked).
    assert_counts_add_up(report, removals)
    unacked_ids = {removals.locators[v] for v in removals.targets.get("unacked", [])}
    assert unacked_ids <= orphan_ids, "a live task was taken out of unacked"
    assert removals.list_calls > 0
    assert set(removals.removed.get("queue", [])) <= orphan_messages
    # Every orphan message still queued when the scan read it is gone once the run ends.
    left_after = {m for v in right_after.values() for m in v}
    assert not left_after & orphan_messages, "an orphan survived the cleanup in a queue list"
    assert not any(m.startswith(TOMBSTONE) for m in left_after), "a tombstone is left in a list"

    # Let the worker run everything that is left, then stop it warmly.
    live_rows = kept + [r for r, _ in published]
    live_ids = [scan_ids[r] for r in kept] + [t for _, t in published]
    removed_ids = {task_id_of(m) for m in removals.removed.get("queue", [])}
    must_fail = orphan_ids - removed_ids

    def drained() -> bool:
        if not worker.running:
            raise AssertionError(f"worker died:\n{worker.log()[-4000:]}")
        if world.queued_count() or world.unacked_count():
            return False
        statuses = world.statuses()
        if any(statuses.get(r) != "done" for r in live_rows):
            return False
        if any((world.result_meta(t) or {}).get("status") != "SUCCESS" for t in email_ids):
            return False
        log = worker.log()
        return must_fail <= set(fk_violations(log)) | set(DISCARDED.findall(log))

    wait_until(
        drained,
        timeout=75,
        interval=0.5,
        what="the worker to run every remaining task",
        describe=lambda: world.describe_redis()[:2000] + "\n" + worker.log()[-3000:],
    )
    worker.stop(timeout=30)
    log = worker.log()

    # Nothing live lost or run twice: one scan_results row per live row, one success per task.
    per_row = dict(
        world.sql("SELECT scan_task_id, count(*) FROM scan_results GROUP BY scan_task_id")
    )
    assert {r: per_row.get(r, 0) for r in live_rows} == {r: 1 for r in live_rows}
    succeeded = Counter(SUCCEEDED.findall(log))
    assert {t: succeeded[t] for t in live_ids} == {t: 1 for t in live_ids}
    assert {t: succeeded[t] for t in email_ids} == {t: 1 for t in email_ids}

    # Orphans: each was removed by the janitor, or run (and failed on the foreign key) by the
    # worker, or — taken by the worker before its removal — revoked by the janitor and
    # discarded by the worker; never two of these, never twice.
    failed = Counter(fk_violations(log))
    discarded = set(DISCARDED.findall(log))
    assert all(n == 1 for n in failed.values()), f"an orphan ran twice: {failed}"
    assert set(failed) <= orphan_ids, "a live task failed on the foreign key"
    assert discarded <= orphan_ids, "a live task was revoked"
    assert not set(failed) & removed_ids, "a message the janitor removed reached the worker"
    assert not discarded & (removed_ids | set(failed))
    assert set(failed) | removed_ids | discarded == orphan_ids
    # `changed`, exactly: second sightings of removed messages + messages the worker took
    # between the scan and their removal (each of which the worker then ran).
    duplicates, gone = split_not_removed(
        removals.targets.get("queue", []),
        [value_key(m) for m in removals.removed.get("queue", [])],
    )
    taken_ids = {removals.locators[k] for k in gone}
    assert taken_ids <= set(failed) | discarded, "an orphan was neither removed nor run"
    assert discarded <= taken_ids, "only orphans the worker took are revoked"
    changed_results = report["found"]["result"] - report["removed"]["result"]
    changed_unacked = report["found"]["unacked"] - report["removed"]["unacked"]
    assert report["skipped"]["changed"] == (
        len(duplicates) + len(gone) + changed_results + changed_unacked
    )
    # A removed result belongs to an orphan the worker ran before the scan got to results.
    result_ids = {
        k.decode().removeprefix("celery-task-meta-") for k in removals.removed.get("result", [])
    }
    assert result_ids <= set(failed)

    # Nobody ever saw a tombstone.
    assert "celery-janitor:tombstone" not in log
    assert "JSONDecodeError" not in log and "unknown message" not in log.lower()
    assert not any(
        m.startswith(TOMBSTONE) for v in all_list_elements(world.redis).values() for m in v
    )
    print(
        f"\nconcurrency: found={report['found']} removed={report['removed']} "
        f"changed={report['skipped']['changed']} (second sightings {len(duplicates)}, "
        f"taken by the worker {len(gone)}, results {changed_results}); "
        f"worker ran {len(failed)} orphans ({len(set(failed) - taken_ids)} before the scan "
        f"read them) and discarded {len(discarded)} revoked; "
        f"producer published {len(published)} during the run; "
        f"{removals.list_calls} list calls; while the janitor ran: {published_during} published,"
        f" {delivered_during} delivered to the worker"
    )


# -- test 2: 20k messages, raw LPUSH + BRPOP ---------------------------------------------------


class Pusher(threading.Thread):
    """LPUSHes prepared messages (real envelopes with fresh ids) one by one, like producers."""

    def __init__(
        self, client: redis.Redis, messages: list[tuple[bytes, bytes]], interval: float
    ) -> None:
        super().__init__(name="pusher", daemon=True)
        self.client = client
        self.messages = messages
        self.interval = interval
        self.stopping = threading.Event()
        self.pushed: list[tuple[bytes, bytes]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            for key, message in self.messages:
                if self.stopping.is_set():
                    return
                self.client.lpush(key, message)
                self.pushed.append((key, message))
                time.sleep(self.interval)
        except BaseException as exc:
            self.error = exc


class Popper(threading.Thread):
    """BRPOPs the queue's lists in kombu's order, like a worker that never stops."""

    def __init__(self, client: redis.Redis, keys: list[bytes], interval: float) -> None:
        super().__init__(name="popper", daemon=True)
        self.client = client
        self.keys = keys
        self.interval = interval
        self.stopping = threading.Event()
        self.popped: list[tuple[bytes, bytes]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                item = self.client.brpop(self.keys, timeout=0.1)
                if item is not None:
                    key, message = item
                    assert isinstance(key, bytes) and isinstance(message, bytes)
                    self.popped.append((key, message))
                time.sleep(self.interval)
        except BaseException as exc:
            self.error = exc


def _stop(thread: Pusher | Popper) -> None:
    thread.stopping.set()
    thread.join(timeout=30)
    assert not thread.is_alive()
    if thread.error is not None:
        raise thread.error


def test_cleanup_of_20k_list_under_raw_push_and_pop(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], tmp_path: Path
) -> None:
    janitor = janitor_with_grace(world, make_janitor, grace=0)
    rng = random.Random(20_000)
    client = world.redis

    # Templates: real messages published through the scanner app, then taken out again.
    template_rows = world.add_rows(40)
    for i, row in enumerate(template_rows):
        world.scan(row, config={"ports": [80, 443]}, **({"priority": 6} if i % 2 else {}))
    templates = {k: v for k, v in all_list_elements(client).items() if v}
    assert set(templates) == {DEFAULT_LIST, SUB_LIST}
    envelopes.check_round_trip([m for v in templates.values() for m in v])
    client.delete(*templates)

    # 20k copies (a third in the sub-list) owned by 20k rows, of which half are deleted.
    rows = world.add_rows(20_000)
    deleted = set(rng.sample(rows, len(rows) // 2))
    initial: dict[bytes, list[bytes]] = {DEFAULT_LIST: [], SUB_LIST: []}
    orphans: set[bytes] = set()
    for i, row in enumerate(rows):
        key = SUB_LIST if i % 3 == 0 else DEFAULT_LIST
        copy = envelopes.replicate_message(rng.choice(templates[key]), row_id=row)
        initial[key].append(copy.raw)
        if row in deleted:
            orphans.add(copy.raw)
    for key, messages in initial.items():
        for start in range(0, len(messages), 1000):
            client.lpush(key, *messages[start : start + 1000])
    world.delete_rows(deleted)
    head_first = {k: list(reversed(v)) for k, v in initial.items()}  # LPUSH order
    assert all_list_elements(client) == head_first

    # What the pusher will send: new live messages for new rows, both lists.
    new_rows = world.add_rows(6000)
    to_push = []
    for i, row in enumerate(new_rows):
        key = SUB_LIST if i % 3 == 0 else DEFAULT_LIST
        to_push.append(
            (key, envelopes.replicate_message(rng.choice(templates[key]), row_id=row).raw)
        )

    pusher = Pusher(world.redis_server.client(), to_push, interval=0.001)
    popper = Popper(world.redis_server.client(), CELERY_LISTS, interval=0.001)
    monitor = RedisMonitor(world.redis_server.port).start()
    watch = JanitorWatch()
    monitor.when(watch.past_unacked)
    pusher.start()
    popper.start()
    try:
        result = janitor.run("cleanup-orphaned", "--json", "--grace", "0", timeout=120)
        time.sleep(0.3)
    finally:
        _stop(pusher)
        _stop(popper)
        commands = monitor.stop()
    report = result.expect_json()
    assert watch.client is not None
    removals = janitor_removals(commands, watch.client)
    assert_counts_add_up(report, removals)
    pushed_during = sum(during_run(commands, watch.client, "lpush", k) for k in CELERY_LISTS)
    popped_during = during_run(commands, watch.client, "brpop", CELERY_LISTS[0])
    assert pushed_during > 0 and popped_during > 0, (pushed_during, popped_during)

    final = all_list_elements(client)
    removed = removals.removed.get("queue", [])
    pushed = [m for _k, m in pusher.pushed]
    popped = [m for _k, m in popper.popped]
    all_initial = [m for v in initial.values() for m in v]
    # Exact multiset accounting: initial + pushed == final + removed + popped.
    assert Counter(all_initial) + Counter(pushed) == (
        Counter(m for v in final.values() for m in v) + Counter(removed) + Counter(popped)
    )
    assert len(set(removed)) == len(removed), "a message was removed twice"
    assert set(removed) <= orphans, "a live message was removed"
    assert not set(removed) & set(popped), "a removed message was also popped"
    assert orphans <= set(removed) | set(popped), "an orphan is still queued"
    assert not any(m.startswith(TOMBSTONE) for m in popped), "a consumer popped a tombstone"
    # Order: each list is what was pushed (newest first) and then the survivors of the initial
    # list, in their original order.
    gone = set(removed) | set(popped)
    for key in (DEFAULT_LIST, SUB_LIST):
        new = [m for k, m in reversed(pusher.pushed) if k == key and m not in gone]
        old = [m for m in head_first[key] if m not in gone]
        assert final.get(key, []) == new + old, f"{key!r} is out of order or corrupted"
    # `changed` exactly: second sightings + messages popped between scan and removal.
    duplicates, vanished = split_not_removed(
        removals.targets.get("queue", []), [value_key(m) for m in removed]
    )
    assert set(vanished) <= {value_key(m) for m in popped}
    assert report["skipped"]["changed"] == len(duplicates) + len(vanished)
    assert report["removed"]["queue"] + len(set(popped) & orphans) == len(orphans)
    print(
        f"\n20k: found={report['found']['queue']} removed={report['removed']['queue']} "
        f"changed={report['skipped']['changed']} (second sightings {len(duplicates)}, popped "
        f"first {len(vanished)}); pushed {len(pushed)}, popped {len(popped)} "
        f"({len(set(popped) & orphans)} orphans); {removals.list_calls} list calls; while the "
        f"janitor ran: {pushed_during} LPUSH, {popped_during} BRPOP"
    )
