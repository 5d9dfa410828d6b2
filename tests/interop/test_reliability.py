"""Reliability defects found by trying to break the janitor, each reproduced first (issue 5).

- A live task enqueued while the scan ran, whose row commits within the grace period, must
  survive: the grace counts from when the janitor read *that entry*, not from the scan's start.
  The test makes the timing deterministic: when MONITOR shows the janitor starting its scan, a
  `CLIENT PAUSE` holds it for longer than the grace period, so it reads the task's queue well
  after the scan started; the row commits half a grace period after that read.
- A removal script that fails must write nothing: with the archive stream replaced by a string,
  no tombstone is left in a queue (a real Celery worker would die on it), no result is deleted
  without its archive copy, and the error names the key.
- `status` shows keys of the wrong type where Celery keeps its data.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import cast

import pytest

from support import envelopes, snapshot
from support.janitor import Janitor, JanitorRun
from support.redis_monitor import RedisMonitor
from support.waiting import wait_until
from support.world import ScannerWorld, fk_violations

pytestmark = pytest.mark.janitor

GRACE = 1.0
PAUSE_MS = 1800
TOMBSTONE = b"celery-janitor:tombstone:"
ARCHIVE = b"celery-janitor:archive"
LOCK = b"celery-janitor:lock"


def _run_with_a_late_commit(
    world: ScannerWorld, janitor: Janitor, *args: str
) -> tuple[str, str, JanitorRun]:
    """A real orphan and a task whose row is inserted in an open transaction, both queued on
    `scans`. The janitor is paused for `PAUSE_MS` as its scan starts; the row commits
    `GRACE / 2` after the janitor read the `scans` list. Returns (late id, orphan id, run)."""
    (gone,) = world.add_rows(1)
    gone_id = world.scan(gone, queue="scans")
    world.delete_rows([gone])
    monitor = RedisMonitor(world.redis_server.port).start()
    try:
        with world.database.connect(autocommit=False) as writer:
            late_id = world.scan(world.add_row_uncommitted(writer), queue="scans")
            scan_starts = monitor.when(lambda c: c.name == "type" and c.args[1:2] == [b"unacked"])
            scans_read = monitor.when(lambda c: c.name == "lrange" and c.args[1:2] == [b"scans"])
            proc = janitor.start(*args)
            assert scan_starts.wait(timeout=30), "the janitor never started its scan"
            world.redis.execute_command("CLIENT", "PAUSE", PAUSE_MS, "ALL")
            if not scans_read.wait(timeout=30):
                pytest.fail(_why_the_janitor_stalled(proc, monitor))
            time.sleep(GRACE / 2)
            writer.commit()
        return late_id, gone_id, janitor.finish(proc)
    finally:
        monitor.stop()


def _why_the_janitor_stalled(proc: subprocess.Popen[bytes], monitor: RedisMonitor) -> str:
    """What a stalled test knows: the janitor's exit and output, and Redis's last commands."""
    lines = ["the janitor never read the scans list"]
    if proc.poll() is None:
        lines.append("the janitor is still running")
    else:
        out, err = proc.communicate()
        lines.append(f"the janitor exited with {proc.returncode}")
        lines.append(f"stdout: {out.decode(errors='replace')[-2000:]}")
        lines.append(f"stderr: {err.decode(errors='replace')[-2000:]}")
    lines.append("last commands seen by MONITOR:")
    lines += [f"  [{c.client}] {b' '.join(c.args)[:200]!r}" for c in monitor.recent()]
    return "\n".join(lines)


def test_cleanup_keeps_a_task_read_late_in_the_scan_whose_row_commits_within_the_grace(
    world: ScannerWorld, janitor: Janitor
) -> None:
    late_id, gone_id, run = _run_with_a_late_commit(
        world, janitor, "cleanup-orphaned", "--grace", str(GRACE), "--json"
    )

    report = run.expect_json()
    remaining = {e.task_id for e in world.entries()}
    assert late_id in remaining, "a live task was removed: its row committed within the grace"
    assert gone_id not in remaining
    assert report["removed"] == {"queue": 1, "unacked": 0, "result": 0}
    assert report["skipped"]["revived"] == 1


def test_status_does_not_count_a_task_read_late_whose_row_commits_within_the_grace(
    world: ScannerWorld, janitor: Janitor
) -> None:
    late_id, _gone_id, run = _run_with_a_late_commit(
        world, janitor, "status", "--json", "--grace", str(GRACE)
    )
    data = run.expect_json()
    assert data["tasks"]["orphaned"] == 1
    assert data["tasks"]["live"] == 1
    assert late_id in {e.task_id for e in world.entries()}


def test_tasks_orphaned_does_not_list_a_task_read_late_whose_row_commits_within_the_grace(
    world: ScannerWorld, janitor: Janitor
) -> None:
    late_id, gone_id, run = _run_with_a_late_commit(
        world, janitor, "tasks", "--orphaned", "--json", "--grace", str(GRACE)
    )
    assert [r["task_id"] for r in run.expect_json()] == [gone_id]
    assert late_id in {e.task_id for e in world.entries()}


def wait_for_the_lock(world: ScannerWorld) -> None:
    """Until a janitor run started in the background holds the run lock."""
    wait_until(lambda: world.redis.exists(LOCK) == 1, timeout=30, what="a run to take the lock")


def _no_tombstone_anywhere(world: ScannerWorld) -> None:
    for key in world.redis.scan_iter(count=1000):
        if world.redis.type(key) == b"list":
            assert not [v for v in world.redis.lrange(key, 0, -1) if TOMBSTONE in v], key


@pytest.mark.worker
def test_a_broken_archive_stream_leaves_no_tombstone_and_the_worker_survives(
    world: ScannerWorld, janitor: Janitor
) -> None:
    rows = world.add_rows(4)
    live_ids = [world.scan(r) for r in rows[:2]]
    orphan_ids = [world.scan(r) for r in rows[2:]]
    world.delete_rows(rows[2:])
    world.redis.set(ARCHIVE, b"x")
    before = world.snapshot()

    run = janitor.run("cleanup-orphaned", "--grace", "0", "--json")

    assert run.returncode == 1, run.describe()
    assert "celery-janitor:archive is a Redis string, expected stream" in run.stderr, run.stderr
    assert "stopped before changing anything" in run.stderr, run.stderr
    _no_tombstone_anywhere(world)
    assert snapshot.differences(before.without_prefix(), world.snapshot().without_prefix()) == []
    assert world.redis.get(ARCHIVE) == b"x"
    assert not list((janitor.workdir / "archive").glob("*.jsonl")) or all(
        p.stat().st_size == 0 for p in (janitor.workdir / "archive").glob("*.jsonl")
    )

    # A real Celery 5.7 worker drains the queue: it runs the live tasks and fails the orphans
    # on their foreign key (that is what the janitor would have removed), but it does not die.
    w = world.run_until_done("after", live_ids + orphan_ids)
    assert "Unrecoverable error" not in w.log()
    assert sorted(set(fk_violations(w.log()))) == sorted(orphan_ids)


def test_a_broken_archive_stream_deletes_no_result(world: ScannerWorld, janitor: Janitor) -> None:
    rows = world.add_rows(2)
    ids = [world.scan(r) for r in rows]
    world.run_until_done("results", ids)
    world.delete_rows(rows)
    world.redis.set(ARCHIVE, b"x")
    before = world.snapshot()

    run = janitor.run("cleanup-orphaned", "--grace", "0", "--json")

    assert run.returncode == 1, run.describe()
    assert "celery-janitor:archive" in run.stderr
    assert snapshot.differences(before.without_prefix(), world.snapshot().without_prefix()) == []
    for task_id in ids:
        assert world.result_meta(task_id) is not None


@pytest.mark.worker
@pytest.mark.parametrize(
    "bookkeeping", [b"celery-janitor:lock", b"unacked_index", b"unacked_mutex"]
)
def test_wrong_typed_bookkeeping_keys_lose_nothing(
    world: ScannerWorld, janitor: Janitor, bookkeeping: bytes
) -> None:
    rows = world.add_rows(3)
    for r in rows:
        world.scan(r, countdown=600)
    world.park_in_unacked(3)
    world.delete_rows(rows)
    if bookkeeping == b"celery-janitor:lock":
        # The janitor takes its lock with SET NX: a hash there reads as "held by someone".
        world.redis.hset(bookkeeping, b"x", b"y")
    else:
        world.redis.delete(bookkeeping)
        world.redis.rpush(bookkeeping, b"not-what-kombu-keeps")
    before = world.snapshot()

    run = janitor.run("cleanup-orphaned", "--grace", "0", "--json")

    assert "panicked" not in run.stderr
    if bookkeeping == b"unacked_mutex":
        # kombu's mutex can't be taken: the unacked entries are skipped as busy, not removed.
        assert run.expect_json()["skipped"]["busy"] == 3
    else:
        assert run.returncode == (5 if bookkeeping == b"celery-janitor:lock" else 1), run.describe()
    if bookkeeping == b"unacked_index":
        assert "unacked_index is a Redis list, expected zset" in run.stderr, run.stderr
    assert snapshot.differences(before.without_prefix(), world.snapshot().without_prefix()) == []
    _no_tombstone_anywhere(world)


def test_status_shows_keys_of_the_wrong_type(world: ScannerWorld, janitor: Janitor) -> None:
    (row,) = world.add_rows(1)
    world.scan(row, queue="scans")
    world.redis.set(b"celery", b"not a list")
    world.redis.lpush(b"celery-task-meta-not-a-string", b"x")

    data = janitor.run("status", "--json", "--grace", "0").expect_json()

    wrong = data["wrong_type_keys"]
    assert wrong["count"] == 2
    assert {(e["key"], e["type"], e["expected"]) for e in wrong["examples"]} == {
        ("celery", "string", "list"),
        ("celery-task-meta-not-a-string", "list", "string"),
    }
    text = janitor.run("status", "--grace", "0")
    assert text.returncode == 0, text.describe()
    assert "2 keys where Celery keeps its data hold another type" in text.stdout


def test_a_second_run_names_the_lock_holder(world: ScannerWorld, janitor: Janitor) -> None:
    rows = world.add_rows(1)
    world.scan(rows[0])
    world.delete_rows(rows)
    first = janitor.start("cleanup-orphaned", "--grace", "5", "--json")
    wait_for_the_lock(world)
    ttl = world.redis.pttl(b"celery-janitor:lock")
    assert 0 < ttl <= 30_000

    second = janitor.run("cleanup-orphaned", "--grace", "0")

    assert second.returncode == 5, second.describe()
    assert f"(pid {first.pid} on " in second.stderr, second.stderr
    assert "expires in" in second.stderr
    assert janitor.finish(first).returncode == 0


def test_a_lock_left_by_a_dead_process_can_be_taken_over(
    world: ScannerWorld, janitor: Janitor
) -> None:
    rows = world.add_rows(1)
    world.scan(rows[0])
    world.delete_rows(rows)
    victim = janitor.start("cleanup-orphaned", "--grace", "30")
    wait_for_the_lock(world)
    victim.kill()
    victim.wait()

    refused = janitor.run("cleanup-orphaned", "--grace", "0")
    assert refused.returncode == 5, refused.describe()
    assert "--take-over-lock" in refused.stderr

    taken = janitor.run("cleanup-orphaned", "--grace", "0", "--take-over-lock", "--json")
    assert taken.expect_json()["removed"]["queue"] == 1


def test_the_lock_is_kept_alive_during_a_long_grace_wait(
    world: ScannerWorld, janitor: Janitor
) -> None:
    """The heartbeat refreshes the lock all run long (here: a grace wait longer than its TTL
    would be without refreshes, simulated by shortening the TTL from outside)."""
    rows = world.add_rows(1)
    world.scan(rows[0])
    world.delete_rows(rows)
    proc = janitor.start("cleanup-orphaned", "--grace", "8", "--json")
    wait_for_the_lock(world)
    # Left alone it would now expire in 7 s; the heartbeat (every 5 s) sets it back to 30 s.
    world.redis.pexpire(b"celery-janitor:lock", 7000)
    time.sleep(6)
    assert world.redis.pttl(b"celery-janitor:lock") > 20_000, "the heartbeat did not refresh it"
    assert janitor.finish(proc).expect_json()["removed"]["queue"] == 1


def _interrupt_during(world: ScannerWorld, janitor: Janitor, sig: int) -> JanitorRun:
    rows = world.add_rows(2)
    for r in rows:
        world.scan(r)
    world.delete_rows(rows)
    proc = janitor.start("cleanup-orphaned", "--grace", "30")
    wait_for_the_lock(world)
    time.sleep(0.5)
    proc.send_signal(sig)
    return janitor.finish(proc, timeout=30)


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
def test_an_interrupted_run_releases_the_lock_and_records_itself(
    world: ScannerWorld, janitor: Janitor, signame: str
) -> None:
    run = _interrupt_during(world, janitor, getattr(signal, signame))

    assert run.returncode == 130, run.describe()
    assert "stopped before changing anything" in run.stderr, run.stderr
    assert world.redis.exists(b"celery-janitor:lock") == 0
    assert len(world.entries()) == 2
    audit = (janitor.workdir / "logs" / "audit.jsonl").read_text()
    assert '"outcome":"interrupted"' in audit.replace(" ", "")


def test_losing_redis_mid_run_exits_3_and_says_the_run_was_partial(
    world: ScannerWorld, janitor: Janitor
) -> None:
    rows = world.add_rows(1)
    world.scan(rows[0])
    world.delete_rows(rows)
    proc = janitor.start("cleanup-orphaned", "--grace", "3")
    wait_for_the_lock(world)
    world.redis_server.stop()

    run = janitor.finish(proc, timeout=60)

    assert run.returncode == 3, run.describe()
    assert "stopped before changing anything" in run.stderr or "restore --run" in run.stderr


def test_losing_the_database_mid_run_exits_4_and_changes_nothing(
    world: ScannerWorld, janitor: Janitor
) -> None:
    rows = world.add_rows(1)
    world.scan(rows[0])
    world.delete_rows(rows)
    before = world.snapshot()
    proc = janitor.start("cleanup-orphaned", "--grace", "3")
    wait_for_the_lock(world)
    time.sleep(0.5)  # into the grace wait: the re-check after it needs the database
    world.database.drop()

    run = janitor.finish(proc, timeout=60)

    assert run.returncode == 4, run.describe()
    assert "stopped before changing anything" in run.stderr, run.stderr
    assert snapshot.differences(before.without_prefix(), world.snapshot().without_prefix()) == []
    assert world.redis.exists(b"celery-janitor:lock") == 0


@pytest.mark.worker
def test_an_orphan_a_worker_prefetches_during_the_scan_is_removed_and_revoked(
    world: ScannerWorld, janitor: Janitor
) -> None:
    """The orphan is in the `scans` list when the janitor reads `unacked`, and in `unacked` (a
    live worker prefetched it, waiting for its countdown) when the janitor reads `scans`. The
    janitor is stopped (SIGSTOP) between the two reads while the worker takes it, so the timing
    is exact. It must be found on the second read of `unacked`, removed there, and revoked, so
    the worker discards it instead of running it into a foreign-key violation."""
    (row,) = world.add_rows(1)
    # `celery` is read before `scans` and is long, so the janitor is still reading it when the
    # SIGSTOP lands: 20k byte-for-byte copies of one real message.
    world.email()
    message = world.redis.lindex(b"celery", 0)
    assert isinstance(message, bytes)
    pipe = world.redis.pipeline(transaction=False)
    for _ in range(20):
        pipe.lpush(b"celery", *([message] * 1000))
    pipe.execute()
    orphan_id = world.scan(row, queue="scans", countdown=4)
    world.delete_rows([row])
    worker = world.worker("prefetch", queues=("idle",))
    wait_until(lambda: "ready." in worker.log(), timeout=60, what="the worker to start")
    monitor = RedisMonitor(world.redis_server.port).start()
    try:
        lists_start = monitor.when(
            lambda c: c.name == "scan" and any(b"_kombu.binding" in a for a in c.args)
        )
        proc = janitor.start("cleanup-orphaned", "--grace", "0", "--json")
        assert lists_start.wait(timeout=30), "the janitor never read the lists"
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            world.app.control.add_consumer(
                "scans", exchange="scans", routing_key="scans", destination=[worker.name]
            )
            world.email(queue="idle")  # wakes the worker's pending BRPOP
            wait_until(
                lambda: world.unacked_count() == 1,
                timeout=30,
                what="the worker to prefetch the orphan",
                describe=lambda: world.describe_redis() + worker.log()[-2000:],
            )
        finally:
            os.kill(proc.pid, signal.SIGCONT)
        report = janitor.finish(proc).expect_json()
    finally:
        monitor.stop()

    assert report["removed"]["unacked"] == 1, report
    assert report["revoke"]["task_ids"] == 1 and report["revoke"]["heard_by"] >= 1, report
    wait_until(
        lambda: f"Discarding revoked task: scanner.scan_domain_task[{orphan_id}]" in worker.log(),
        timeout=30,
        what="the worker to discard the revoked orphan",
        describe=lambda: worker.log()[-3000:],
    )
    time.sleep(5)  # past its countdown: it must not run
    assert fk_violations(worker.log()) == []


def test_a_message_put_back_at_the_consume_end_mid_removal_does_not_hide_the_orphans(
    world: ScannerWorld, janitor: Janitor
) -> None:
    """kombu RPUSHes unacked messages back onto the consume end (a worker's warm shutdown, its
    visibility sweep). One such push between two removal batches moves every queued message
    one place away from the tail: the janitor must still find and remove every orphan, and not
    report (and revoke) them as taken by a worker. The janitor is SIGSTOPped after its first
    removal batch, so the push lands exactly between two batches."""
    rows = world.add_rows(601)
    world.scan(rows[0])
    real = world.redis.lindex(b"celery", 0)
    assert isinstance(real, bytes)
    world.redis.delete(b"celery")
    copies = [envelopes.replicate_message(real, row_id=r).raw for r in rows[1:]]
    world.redis.lpush(b"celery", *copies)
    orphans = rows[1::2]
    world.delete_rows(orphans)
    (live_row,) = world.add_rows(1)
    pushed = envelopes.replicate_message(real, row_id=live_row).raw
    monitor = RedisMonitor(world.redis_server.port).start()
    try:
        first_batch = monitor.when(
            lambda c: c.name == "lrem" and any(a.startswith(TOMBSTONE) for a in c.args)
        )
        proc = janitor.start("cleanup-orphaned", "--grace", "0", "--json")
        assert first_batch.wait(timeout=60), "the janitor never removed a batch"
        os.kill(proc.pid, signal.SIGSTOP)
        world.redis.rpush(b"celery", pushed)
        os.kill(proc.pid, signal.SIGCONT)
        report = janitor.finish(proc).expect_json()
    finally:
        monitor.stop()

    assert report["removed"]["queue"] == len(orphans), report
    assert report["skipped"]["changed"] == 0, report
    assert report["revoke"] is None, report
    left = cast("list[bytes]", world.redis.lrange(b"celery", 0, -1))
    assert len(left) == 300 + 1 and pushed in left
    assert not {envelopes.envelope_row(m) for m in left} & set(orphans)


def test_restore_waits_for_a_running_cleanup(world: ScannerWorld, janitor: Janitor) -> None:
    """`restore` takes the run lock: it never undoes a cleanup halfway, nor moves messages
    under its feet."""
    rows = world.add_rows(2)
    for r in rows:
        world.scan(r)
    world.delete_rows(rows[:1])
    assert janitor.run("cleanup-orphaned", "--grace", "0").returncode == 0
    world.delete_rows(rows[1:])
    running = janitor.start("cleanup-orphaned", "--grace", "5")
    wait_for_the_lock(world)
    before = world.snapshot()

    refused = janitor.run("restore")

    assert refused.returncode == 5, refused.describe()
    assert snapshot.differences(before.without_prefix(), world.snapshot().without_prefix()) == []
    assert janitor.finish(running).returncode == 0
    assert janitor.run("restore", "--dry-run").returncode == 0


def test_a_lock_that_never_expires_can_be_taken_over(world: ScannerWorld, janitor: Janitor) -> None:
    rows = world.add_rows(1)
    world.scan(rows[0])
    world.delete_rows(rows)
    world.redis.set(b"celery-janitor:lock", b"garbage")

    refused = janitor.run("cleanup-orphaned", "--grace", "0")
    assert refused.returncode == 5, refused.describe()
    assert "never expires" in refused.stderr and "--take-over-lock" in refused.stderr

    taken = janitor.run("cleanup-orphaned", "--grace", "0", "--take-over-lock", "--json")
    assert taken.expect_json()["removed"]["queue"] == 1


def test_a_run_record_that_cannot_be_written_at_the_end_still_names_the_run(
    world: ScannerWorld, janitor: Janitor
) -> None:
    rows = world.add_rows(2)
    for r in rows:
        world.scan(r)
    world.delete_rows(rows)
    proc = janitor.start("cleanup-orphaned", "--grace", "3")
    wait_until(
        lambda: world.redis.hlen(b"celery-janitor:runs") == 1,
        timeout=30,
        what="the run to record its start",
    )
    world.redis.delete(b"celery-janitor:runs")
    world.redis.set(b"celery-janitor:runs", b"not a hash")

    run = janitor.finish(proc)

    assert run.returncode == 1, run.describe()
    assert "celery-janitor:runs" in run.stderr
    assert "2 changes were made" in run.stderr and "restore --run" in run.stderr, run.stderr


@pytest.mark.worker
def test_restore_warns_that_workers_will_discard_revoked_tasks(
    world: ScannerWorld, janitor: Janitor
) -> None:
    """The cleanup revokes the `unacked` orphans it removes (a live worker may hold them).
    Restoring can't take that back, so `restore` says so."""
    rows = world.add_rows(1)
    world.scan(rows[0], countdown=600)
    world.park_in_unacked(1)
    world.delete_rows(rows)
    report = janitor.run("cleanup-orphaned", "--grace", "0", "--json").expect_json()
    assert report["removed"]["unacked"] == 1 and report["revoke"]["task_ids"] == 1

    restored = janitor.run("restore", "--json")

    data = restored.expect_json()
    assert data["restored"]["unacked"] == 1
    assert any("revoked" in w for w in data["warnings"]), data
    assert "revoked by the cleanup" in restored.stderr, restored.describe()
