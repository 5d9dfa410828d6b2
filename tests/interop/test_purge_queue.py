"""`celery-janitor purge-queue` (and `archive`, `runs`) against real Celery 5.7 state.

A purge removes the messages queued in one queue when it starts — its bare list and every
priority sub-list, whoever owns them — archived like any removal: `restore --run` puts them back
in their queued order and a real worker then runs them. Messages a producer publishes while the
purge runs stay; `unacked` and the other queues are untouched. It asks to type the queue name on
a terminal, and refuses without one unless `--yes`.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from support import celery_state, snapshot
from support.janitor import Janitor
from support.redis_monitor import Command, RedisMonitor
from support.world import ScannerWorld

pytestmark = [pytest.mark.janitor]

CELERY_LISTS = [celery_state.priority_key("celery", p) for p in celery_state.PRIORITY_STEPS]


def queued_ids(world: ScannerWorld, queue: str) -> list[str]:
    """Task ids queued in `queue` (every priority sub-list), in the order workers take them."""
    out: list[str] = []
    for p in celery_state.PRIORITY_STEPS:
        for raw in reversed(world.redis.lrange(celery_state.priority_key(queue, p), 0, -1)):
            out.append(json.loads(raw)["headers"]["id"])
    return out


def test_purge_with_priorities_then_restore_in_order_and_a_worker_runs_them(
    world: ScannerWorld, janitor: Janitor
) -> None:
    rows = world.add_rows(6)
    purged = [
        world.scan(rows[0]),
        world.scan(rows[1], priority=3),
        world.scan(rows[2], priority=7),
        world.scan(rows[3], priority=9),
        world.scan(rows[4]),
        world.email(priority=9),  # unowned: a purge is not about owners
    ]
    other = world.scan(rows[5], queue="scans")
    before = world.snapshot()
    order = queued_ids(world, "celery")
    assert sorted(order) == sorted(purged)
    assert sum(1 for k in CELERY_LISTS if k in before) >= 3, "priority sub-lists in use"

    # No terminal and no --yes: refused at once, one line, nothing changed.
    refused = janitor.run("purge-queue", "celery")
    assert refused.returncode == 2, refused.describe()
    assert refused.stderr.count("\n") == 1 and "--yes" in refused.stderr, refused.describe()
    assert snapshot.differences(before, world.snapshot().without_prefix()) == []

    dry = janitor.run("purge-queue", "celery", "--dry-run", "--json").expect_json()
    assert dry["dry_run"] is True and dry["removed"]["queue"] == len(purged), dry
    assert snapshot.differences(before, world.snapshot().without_prefix()) == []

    report = janitor.run("purge-queue", "celery", "--yes", "--json").expect_json()
    assert report["found"] == {"queue": len(purged), "unacked": 0, "result": 0}, report
    assert report["removed"] == {"queue": len(purged), "unacked": 0, "result": 0}, report
    assert report["archived"] == len(purged) and report["revoke"] is None, report
    run_id = report["run_id"]
    assert queued_ids(world, "celery") == []
    assert queued_ids(world, "scans") == [other]

    listed = janitor.run("archive", "--run", run_id, "--json").expect_json()
    assert sorted(i["task_id"] for i in listed["items"]) == sorted(purged), listed
    assert {i["reason"] for i in listed["items"]} == {"purged"}
    assert listed["next_cursor"] is None
    assert '"body"' not in json.dumps(listed), "the archive listing shows stored bytes"
    runs = janitor.run("runs", "--json").expect_json()
    assert runs[0]["run_id"] == run_id and runs[0]["command"] == "purge-queue", runs
    assert runs[0]["outcome"] == "completed" and runs[0]["removed"]["queue"] == len(purged)
    audit = [
        json.loads(line)
        for line in (janitor.workdir / "logs" / "audit.jsonl").read_text().splitlines()
    ]
    removals = [a for a in audit if a["action"] == "remove" and a["run_id"] == run_id]
    assert len(removals) == len(purged) and {a["reason"] for a in removals} == {"purged"}

    restored = janitor.run("restore", "--run", run_id, "--json").expect_json()
    assert restored["restored"]["queue"] == len(purged), restored
    assert restored["warnings"] == [], restored
    assert snapshot.differences(before, world.snapshot().without_prefix()) == []
    assert queued_ids(world, "celery") == order, "restored in the order workers take them"

    world.run_until_done("after-restore", purged + [other])
    for task_id in purged + [other]:
        meta = world.result_meta(task_id)
        assert meta is not None and meta["status"] == "SUCCESS", (task_id, meta)


def is_removal(c: Command) -> bool:
    """A removal script call on one of `celery`'s lists (the janitor's, not a script's own)."""
    return (
        c.name in ("eval", "evalsha")
        and c.client != "lua"
        and len(c.args) > 3
        and c.args[3] in CELERY_LISTS
    )


def test_a_producer_publishing_during_the_purge_loses_nothing_and_unacked_is_untouched(
    world: ScannerWorld, janitor: Janitor
) -> None:
    held_row, *rows = world.add_rows(3)
    world.scan(held_row, countdown=600)
    world.park_in_unacked(1)
    unacked_before = world.redis.hgetall(celery_state.UNACKED)
    index_before = world.redis.zrange(celery_state.UNACKED_INDEX, 0, -1, withscores=True)
    early = [world.email(priority=(0, 3, 6, 9)[i % 4]) for i in range(1200)]
    early += [world.scan(r) for r in rows]

    monitor = RedisMonitor(world.redis_server.port).start()
    late: list[str] = []
    first_removal = monitor.when(is_removal)
    proc = janitor.start("purge-queue", "celery", "--yes", "--json")
    try:
        assert first_removal.wait(timeout=60), "the purge never started removing"

        def publish() -> None:
            for i in range(60):
                late.append(world.email(priority=(0, 9)[i % 2]))

        producer = threading.Thread(target=publish)
        producer.start()
        producer.join(timeout=60)
        run = janitor.finish(proc)
    finally:
        commands = monitor.stop()
    report = run.expect_json()

    assert report["found"]["queue"] == len(early), report
    assert report["removed"]["queue"] + report["skipped"]["changed"] == len(early), report
    assert report["skipped"]["changed"] == 0, report  # no worker was taking them
    assert sorted(queued_ids(world, "celery")) == sorted(late), "published after the start"
    assert world.redis.hgetall(celery_state.UNACKED) == unacked_before
    assert world.redis.zrange(celery_state.UNACKED_INDEX, 0, -1, withscores=True) == index_before
    # The producer's publishes came in while the purge was removing (so the test tests that).
    removal_times = [c.time for c in commands if is_removal(c)]
    publish_times = [c.time for c in commands if c.name == "lpush" and c.client != "lua"]
    assert removal_times and publish_times
    assert min(publish_times) < max(removal_times), "the producer only published after the purge"


def run_on_terminal(janitor: Janitor, typed: bytes, *args: str) -> tuple[int, str, str]:
    """Runs the janitor with standard input and standard error on a pseudo-terminal, types
    `typed` once it asks, and returns (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            janitor.argv(args),
            cwd=janitor.workdir,
            env=janitor.env(),
            stdin=slave,
            stderr=slave,
            stdout=subprocess.PIPE,
        )
        os.close(slave)
        shown = b""
        deadline = time.monotonic() + 60
        while b"Type the queue name" not in shown:
            assert time.monotonic() < deadline, shown
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                shown += os.read(master, 4096)
        os.write(master, typed)
        stdout, _ = proc.communicate(timeout=60)
        while True:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
        return proc.returncode, stdout.decode(), shown.decode(errors="replace")
    finally:
        os.close(master)


def test_on_a_terminal_it_asks_for_the_queue_name(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    janitor = make_janitor(world)
    rows = world.add_rows(2)
    ids = [world.scan(rows[0]), world.scan(rows[1], priority=9)]
    before = world.snapshot()

    code, _, shown = run_on_terminal(janitor, b"scans\n", "purge-queue", "celery")
    assert code == 1, shown
    assert "2 messages" in shown and "nothing was changed" in shown, shown
    assert snapshot.differences(before, world.snapshot().without_prefix()) == []

    code, stdout, shown = run_on_terminal(janitor, b"celery\n", "purge-queue", "celery")
    assert code == 0, shown + stdout
    assert "removed 2" in stdout, stdout
    assert queued_ids(world, "celery") == []
    assert sorted(ids) == sorted(
        i["task_id"] for i in janitor.run("archive", "--json").expect_json()["items"]
    )
