"""Fault injection for the reliability suite (`tests/interop/test_fault_*.py`).

What is here:

- `LargeState`: a big deployment written with real Celery bytes (templates published with
  `apply_async` and stored by Celery's result backend, then replicated with
  `support.envelopes`, which re-encodes with kombu's own encoder and checks the round trip),
  with a known set of orphans, and `check()`, the invariant that must hold after *any* fault:
  no tombstone anywhere, no live entry missing, duplicated, changed or reordered, every orphan
  either still in place (once) or removed, and every removed one in the archive stream exactly
  once.
- `ArchiveWatch`: recognizes the janitor's connection in a MONITOR stream and fires after the
  k-th entry its removal scripts archived, the point where a test kills something.
- Small Redis and PostgreSQL fault helpers: kill a client connection by id, get past the lock
  a killed run left (`LockRecovery`), refuse connections to a database, terminate its sessions.
- `QuietMonitor`: a MONITOR that keeps no lines, for removals that send megabytes.
- `Figures`: what each test did, printed and written as JSON under the test's tmp dir (and
  appended to `$CJ_FAULT_FIGURES` when set), for docs/reliability.md.

Only the test's own redis-server and database are ever touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import Any, cast

import psycopg
import redis
from psycopg import sql

from . import envelopes
from .celery_state import RESULT_PREFIX, priority_key
from .janitor import Janitor, janitor_config
from .redis_monitor import Command, RedisMonitor
from .servers import PostgresDatabase
from .world import ScannerWorld

TOMBSTONE = b"celery-janitor:tombstone:"
LOCK_KEY = b"celery-janitor:lock"
ARCHIVE_KEY = b"celery-janitor:archive"


# Exit codes a run that lost Redis or the database may end with today.
def janitor_with_grace(
    world: ScannerWorld,
    make_janitor: Callable[..., Janitor],
    grace: float = 0,
    redis_url: str | None = None,
) -> Janitor:
    """A janitor for the world with `grace_seconds = grace` (and `redis_url` instead of the
    world's Redis, e.g. a proxy in front of it)."""
    config = janitor_config(world, grace=grace, redis_url=redis_url)
    return cast(Janitor, make_janitor(world, config=config))


# -- reading Redis ---------------------------------------------------------------------------


def find_tombstones(client: redis.Redis) -> list[str]:
    """Every place in the database where tombstone bytes occur, of any key type."""
    found: list[str] = []
    for key in client.scan_iter(count=1000):
        if TOMBSTONE in key:
            found.append(f"key name {key!r}")
        kind = client.type(key)
        values: Iterable[bytes]
        if kind == b"string":
            values = [cast(bytes, client.get(key) or b"")]
        elif kind == b"list":
            values = cast(list[bytes], client.lrange(key, 0, -1))
        elif kind == b"hash":
            h = cast(dict[bytes, bytes], client.hgetall(key))
            values = [*h.keys(), *h.values()]
        elif kind == b"set":
            values = cast(set[bytes], client.smembers(key))
        elif kind == b"zset":
            values = cast(list[bytes], client.zrange(key, 0, -1))
        elif kind == b"stream":
            values = [
                v
                for _id, fields in cast(list[Any], client.xrange(key))
                for pair in fields.items()
                for v in pair
            ]
        else:
            values = []
        found.extend(f"{kind!r} {key!r}: {v[:120]!r}" for v in values if TOMBSTONE in v)
    return found


@dataclass(frozen=True)
class Archived:
    """One entry of the Redis archive stream."""

    id: str
    kind: str
    key: bytes
    value: bytes
    meta: dict[str, Any]


def archive_stream(client: redis.Redis) -> list[Archived]:
    out: list[Archived] = []
    start = "-"
    while True:
        page = cast(list[Any], client.xrange(ARCHIVE_KEY, start, "+", count=2000))
        for raw_id, fields in page:
            entry_id = raw_id.decode()
            start = "(" + entry_id
            out.append(
                Archived(
                    entry_id,
                    fields.get(b"kind", b"").decode(),
                    fields.get(b"key", b""),
                    fields.get(b"value", b""),
                    json.loads(fields.get(b"meta") or b"{}"),
                )
            )
        if len(page) < 2000:
            return out


def archived_entries(client: redis.Redis) -> list[Archived]:
    """The stream's records of removed entries (any other kind of record is left out)."""
    return [a for a in archive_stream(client) if a.kind in ("queue", "unacked", "result")]


def archive_file_records(janitor: Janitor) -> list[dict[str, Any]]:
    """Every record of the janitor's archive files (`archive/<run id>.jsonl`), read as the
    janitor reads them: a `kill -9` in the middle of a batch's write() can tear a line (the
    next run or `restore` then appends the missing records from the archive stream after it),
    and an unreadable line is skipped."""
    records: list[dict[str, Any]] = []
    for path in sorted((janitor.workdir / "archive").rglob("*.jsonl")):
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # torn by a kill
    return records


def lists(client: redis.Redis, keys: Iterable[bytes]) -> dict[bytes, list[bytes]]:
    return {k: cast(list[bytes], client.lrange(k, 0, -1)) for k in keys}


def result_values(client: redis.Redis, keys: list[bytes]) -> dict[bytes, tuple[bytes, int]]:
    """Value and PTTL of each result key that exists."""
    out: dict[bytes, tuple[bytes, int]] = {}
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        pipe = client.pipeline(transaction=False)
        for k in chunk:
            pipe.get(k)
            pipe.pttl(k)
        replies = pipe.execute()
        for i, k in enumerate(chunk):
            value, pttl = replies[2 * i], replies[2 * i + 1]
            if value is not None:
                out[k] = (value, int(pttl))
    return out


# -- the large state and its invariant -------------------------------------------------------


@dataclass
class LargeState:
    """Queue lists and result keys as written, and which of them are orphans."""

    lists: dict[bytes, list[bytes]]  # key -> elements, head first (LRANGE order)
    orphan_messages: Counter[tuple[bytes, bytes]]  # (list key, element)
    results: dict[bytes, bytes]  # result key -> value
    orphan_results: set[bytes]
    live_rows: list[int] = field(default_factory=list)
    deleted_rows: list[int] = field(default_factory=list)

    @property
    def message_count(self) -> int:
        return sum(len(v) for v in self.lists.values())

    @property
    def orphan_count(self) -> int:
        return sum(self.orphan_messages.values()) + len(self.orphan_results)

    def live_elements(self, key: bytes) -> list[bytes]:
        return [m for m in self.lists[key] if (key, m) not in self.orphan_messages]

    def check(self, client: redis.Redis, *, after: str) -> Progress:
        """The invariant after a fault (see the module doc); returns how far removal got."""
        where = f" (after {after})"
        problems = find_tombstones(client)
        assert not problems, "tombstone left" + where + ":\n" + "\n".join(problems[:20])

        removed_messages: Counter[tuple[bytes, bytes]] = Counter()
        for key, elements in lists(client, self.lists).items():
            live_now = [m for m in elements if (key, m) not in self.orphan_messages]
            expected = self.live_elements(key)
            if live_now != expected:
                missing = Counter(expected) - Counter(live_now)
                extra = Counter(live_now) - Counter(expected)
                raise AssertionError(
                    f"live messages of {key!r} changed{where}: {sum(missing.values())} missing, "
                    f"{sum(extra.values())} unexpected, order kept: {not missing and not extra}"
                )
            orphans_now = Counter((key, m) for m in elements if (key, m) in self.orphan_messages)
            originally = Counter({k: n for k, n in self.orphan_messages.items() if k[0] == key})
            duplicated = orphans_now - originally
            assert not duplicated, f"orphan messages duplicated in {key!r}{where}"
            removed_messages += originally - orphans_now

        now = result_values(client, list(self.results))
        for key, value in self.results.items():
            if key in self.orphan_results:
                assert key not in now or now[key][0] == value, f"result {key!r} changed{where}"
            else:
                assert key in now, f"live result {key!r} is missing{where}"
                assert now[key][0] == value, f"live result {key!r} changed{where}"
                assert now[key][1] > 0, f"live result {key!r} lost its TTL{where}"
        removed_results = {k for k in self.orphan_results if k not in now}

        stream = archived_entries(client)
        archived_messages = Counter((a.key, a.value) for a in stream if a.kind == "queue")
        archived_results = Counter(a.key for a in stream if a.kind == "result")
        assert not [a for a in stream if a.kind == "unacked"], f"unacked archived{where}"
        # Every removed entry is archived, exactly once; nothing else is.
        unarchived = removed_messages - archived_messages
        assert not unarchived, f"{sum(unarchived.values())} removed messages not archived{where}"
        assert archived_messages == removed_messages, f"archived messages still queued{where}"
        for a in stream:
            if a.kind == "result":
                assert a.key in self.results and a.value == self.results[a.key], where
        assert set(archived_results) == removed_results, f"result archive mismatch{where}"
        assert all(n == 1 for n in archived_results.values()), f"a result archived twice{where}"
        return Progress(
            removed_messages=sum(removed_messages.values()),
            removed_results=len(removed_results),
            remaining_messages=sum(self.orphan_messages.values()) - sum(removed_messages.values()),
            remaining_results=len(self.orphan_results) - len(removed_results),
            checked=self.message_count + len(self.results),
        )

    def check_restored(self, client: redis.Redis) -> None:
        """After `restore`: every list holds exactly its original elements (the restored ones
        at the consume end, as kombu restores), the live ones still in their order, and every
        result key is back with its value and a TTL."""
        problems = find_tombstones(client)
        assert not problems, "tombstone after restore:\n" + "\n".join(problems[:20])
        for key, elements in lists(client, self.lists).items():
            assert Counter(elements) == Counter(self.lists[key]), f"{key!r} not restored exactly"
            live_now = [m for m in elements if (key, m) not in self.orphan_messages]
            assert live_now == self.live_elements(key), f"{key!r}: live order changed"
        now = result_values(client, list(self.results))
        assert {k: v for k, (v, _ttl) in now.items()} == self.results, "results not restored"
        assert all(ttl > 0 for _v, ttl in now.values()), "a restored result lost its TTL"


@dataclass(frozen=True)
class Progress:
    removed_messages: int
    removed_results: int
    remaining_messages: int
    remaining_results: int
    checked: int

    @property
    def removed(self) -> int:
        return self.removed_messages + self.removed_results

    @property
    def remaining(self) -> int:
        return self.remaining_messages + self.remaining_results


DEFAULT_LIST = priority_key("celery", 0)
SUB_LIST = priority_key("celery", 6)
SCANS_LIST = priority_key("scans", 0)


def build_large_state(
    world: ScannerWorld,
    rng: Random,
    *,
    messages: int,
    results: int,
    orphan_fraction: float = 0.3,
) -> LargeState:
    """`messages` queued scans over three lists (`celery`, its priority-6 sub-list and `scans`)
    and `results` SUCCESS results, one row each; `orphan_fraction` of the rows deleted. Copies of
    real Celery bytes: 60 messages are published with `apply_async` and 10 results stored by
    Celery's backend, read back, and replicated with new ids and row ids."""
    client = world.redis
    keys = (DEFAULT_LIST, SUB_LIST, SCANS_LIST)
    template_rows = world.add_rows(60)
    per_list: list[dict[str, Any]] = [{}, {"priority": 6}, {"queue": "scans"}]
    for i, row in enumerate(template_rows):
        world.scan(row, config={"ports": [80, 443]}, **per_list[i % 3])
    templates = lists(client, keys)
    assert all(len(v) == 20 for v in templates.values()), {k: len(v) for k, v in templates.items()}
    result_ids = [f"fault-template-{i}" for i in range(10)]
    for task_id, row in zip(result_ids, template_rows, strict=False):
        world.store_result(task_id, "SUCCESS", row, result={"scan_task_id": row, "findings": 1})
    result_templates = [cast(bytes, client.get(RESULT_PREFIX + t.encode())) for t in result_ids]
    envelopes.check_round_trip(
        [m for v in templates.values() for m in v], result_templates=result_templates
    )
    client.delete(*keys, *(RESULT_PREFIX + t.encode() for t in result_ids))
    world.delete_rows(template_rows)

    rows = world.add_rows(messages + results)
    deleted = set(rng.sample(rows, round(len(rows) * orphan_fraction)))
    pushed: dict[bytes, list[bytes]] = {k: [] for k in keys}  # in LPUSH order
    orphan_messages: Counter[tuple[bytes, bytes]] = Counter()
    for i, row in enumerate(rows[:messages]):
        key = keys[i % 3]
        raw = envelopes.replicate_message(rng.choice(templates[key]), row_id=row).raw
        pushed[key].append(raw)
        if row in deleted:
            orphan_messages[(key, raw)] += 1
    result_map: dict[bytes, bytes] = {}
    orphan_results: set[bytes] = set()
    for row in rows[messages:]:
        copy = envelopes.replicate_result(rng.choice(result_templates), row_id=row)
        key = RESULT_PREFIX + copy.task_id.encode()
        result_map[key] = copy.raw
        if row in deleted:
            orphan_results.add(key)
    pipe = client.pipeline(transaction=False)
    for key, elements in pushed.items():
        for start in range(0, len(elements), 1000):
            pipe.lpush(key, *elements[start : start + 1000])
    for key, value in result_map.items():
        pipe.set(key, value, ex=86400)
    pipe.execute()
    world.delete_rows(deleted)
    state = LargeState(
        lists={k: list(reversed(v)) for k, v in pushed.items()},
        orphan_messages=orphan_messages,
        results=result_map,
        orphan_results=orphan_results,
        live_rows=sorted(set(rows) - deleted),
        deleted_rows=sorted(deleted),
    )
    assert lists(client, keys) == state.lists
    return state


# -- watching the janitor --------------------------------------------------------------------


class ArchiveWatch:
    """Follows a MONITOR stream: the janitor's connection is the one that takes the lock (SET
    NX). `after(k)` is an event set once the janitor's removal scripts have archived k entries
    (each archived entry is one `XADD` a script runs, and only the janitor's removal scripts
    write the archive stream): Redis runs a script atomically, so when the event fires that
    call has finished in Redis, and the janitor is somewhere after it (reading the reply,
    writing its files, sending the next call). `after_reads(k)`: the janitor's k-th `LRANGE`
    (a page of the scan)."""

    def __init__(self, monitor: RedisMonitor) -> None:
        self.client: str | None = None
        self.archived = 0
        self.reads = 0
        self.removal_calls = 0
        # When the janitor last sent something other than a lock refresh (its heartbeat).
        self.last_busy = time.monotonic()
        self._lock = threading.Lock()
        self._targets: list[tuple[str, int, threading.Event]] = []
        self._janitor_seen = threading.Event()
        monitor.when(self._see)

    def _see(self, c: Command) -> bool:
        with self._lock:
            if self.client is None and c.name == "set" and c.args[1:2] == [LOCK_KEY]:
                self.client = c.client
                self._janitor_seen.set()
            elif c.from_script and c.name == "xadd" and c.args[1:2] == [ARCHIVE_KEY]:
                self.archived += 1
            if c.client == self.client and not _lock_only(c):
                self.last_busy = time.monotonic()
            if c.client == self.client and c.name == "lrange":
                self.reads += 1
            elif c.client == self.client and c.name in ("evalsha", "eval"):
                n = int(c.args[2]) if len(c.args) > 2 and c.args[2].isdigit() else 0
                if ARCHIVE_KEY in c.args[3 : 3 + n]:
                    self.removal_calls += 1
            self._fire()
        return False  # keep watching every command

    def quiet_for(self) -> float:
        """Seconds since the janitor last did anything but refresh its lock."""
        with self._lock:
            return time.monotonic() - self.last_busy

    def _fire(self) -> None:
        for what, k, event in self._targets:
            if (self.archived if what == "archived" else self.reads) >= k:
                event.set()

    def _target(self, what: str, k: int) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._targets.append((what, k, event))
            self._fire()
        return event

    def after(self, k: int) -> threading.Event:
        return self._target("archived", k)

    def after_reads(self, k: int) -> threading.Event:
        return self._target("reads", k)

    def janitor_connected(self, timeout: float) -> str:
        assert self._janitor_seen.wait(timeout), "the janitor never took its lock"
        assert self.client is not None
        return self.client


def wait_for(event: threading.Event, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """True once `event` is set; False if the process exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if event.wait(0.005):
            return True
        if proc.poll() is not None:
            return event.is_set()
    raise AssertionError(f"neither the fault point nor the janitor's exit came in {timeout} s")


def _lock_only(c: Command) -> bool:
    """A command that only touches the janitor lock (taking, refreshing, releasing it)."""
    if c.args[1:2] == [LOCK_KEY]:
        return True
    if c.name in ("evalsha", "eval") and len(c.args) > 3 and c.args[2] == b"1":
        return c.args[3] == LOCK_KEY
    return False


class _Discard(list[bytes]):
    def extend(self, _items: Iterable[bytes]) -> None:
        pass


class QuietMonitor(RedisMonitor):
    """A MONITOR that keeps no lines (a removal of thousands of messages sends megabytes of
    script arguments): only its `when()` watchers see the commands."""

    def __init__(self, port: int) -> None:
        super().__init__(port)
        self._lines = _Discard()

    def start(self) -> QuietMonitor:
        super().start()
        return self

    def close(self) -> None:
        """Stop without parsing a backlog."""
        self._stopping = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._sock is not None:
            self._sock.close()
        if self.error is not None:
            raise self.error


def client_ids(client: redis.Redis, addr: str) -> list[int]:
    """Ids (CLIENT LIST) of the connections from `addr` (`ip:port`)."""
    return [int(c["id"]) for c in client.client_list() if c.get("addr") == addr]


def kill_client(client: redis.Redis, addr: str) -> int:
    """`CLIENT KILL ID` every connection from `addr`; returns how many were killed."""
    killed = 0
    for client_id in client_ids(client, addr):
        killed += int(cast(int, client.execute_command("CLIENT", "KILL", "ID", client_id)))
    return killed


def clear_stale_lock(client: redis.Redis) -> bool:
    """Deletes the janitor lock a run that was killed left behind, if any.

    A killed run cannot release its lock, and it only expires after its TTL (120 s today; the
    lead is shortening it to about 30 s with a heartbeat, issue 5 item 9) — too long to wait for
    between faults in a test that must run in seconds. Every janitor of this test's Redis has
    exited when this is called, so the lock can only be the dead run's."""
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(LOCK_KEY)
                if pipe.get(LOCK_KEY) is None:
                    return False
                pipe.multi()
                pipe.delete(LOCK_KEY)
                pipe.execute()
                return True
            except redis.WatchError:
                continue


class LockRecovery:
    """Gets the next run past the janitor lock a faulted run left behind, the way the tool
    documents it: with `--take-over-lock` (a lock whose holder ran on this host and is gone)
    when the binary has that flag (issue 5 item 9), else by deleting it (`clear_stale_lock`).
    `after_fault()` returns the extra arguments for the next run."""

    def __init__(self, janitor: Janitor) -> None:
        help_text = janitor.run("cleanup-orphaned", "--help").stdout
        self.take_over = "--take-over-lock" in help_text
        self.locks_left = 0

    def after_fault(self, client: redis.Redis) -> list[str]:
        if not client.exists(LOCK_KEY):
            return []
        self.locks_left += 1
        if self.take_over:
            return ["--take-over-lock"]
        clear_stale_lock(client)
        return []

    @property
    def how(self) -> str:
        return "--take-over-lock" if self.take_over else "DEL by the test"


# -- PostgreSQL faults -----------------------------------------------------------------------


def terminate_backends(conn: psycopg.Connection[Any], database: PostgresDatabase) -> int:
    """`pg_terminate_backend` of every other session of the test's database."""
    rows = conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (database.name,),
    ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def allow_connections(database: PostgresDatabase, allow: bool) -> None:
    """`ALTER DATABASE <test db> ALLOW_CONNECTIONS <allow>`, from the admin database."""
    with psycopg.connect(database.admin_url, autocommit=True, connect_timeout=10) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                sql.Identifier(database.name), sql.SQL("true" if allow else "false")
            )
        )


def backends_waiting_on_lock(conn: psycopg.Connection[Any], database: PostgresDatabase) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
        " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'",
        (database.name,),
    ).fetchone()
    return int(row[0]) if row else 0


# -- figures ---------------------------------------------------------------------------------


class Figures:
    """What a test did, for docs/reliability.md: printed, written to `<tmp>/figures.json`, and
    appended as one JSON line to `$CJ_FAULT_FIGURES` when that is set."""

    def __init__(self, test: str, tmp_path: Path) -> None:
        self.data: dict[str, Any] = {"test": test}
        self.path = tmp_path / "figures.json"

    def __setitem__(self, name: str, value: Any) -> None:
        self.data[name] = value

    def write(self) -> None:
        text = json.dumps(self.data, sort_keys=False)
        print(f"\nfigures: {text}")
        self.path.write_text(text + "\n")
        target = os.environ.get("CJ_FAULT_FIGURES")
        if target:
            with open(target, "a") as f:
                f.write(text + "\n")
