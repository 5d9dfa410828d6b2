"""Reliability: `kill -9` of the janitor at random points of a large removal (issue 5, "A
reliability suite that stays").

21,000 queued scans over three lists (`celery`, its priority-6 sub-list, `scans`) and 1,200
results, copies of real Celery bytes (see `support.faults.build_large_state`), 30 % of their
rows deleted. `cleanup-orphaned --grace 0` is started and SIGKILLed again and again, at points
a seeded RNG picks: once during the scan (after its m-th LRANGE page), then after the k-th
entry its removal scripts archived, as seen in MONITOR. After every kill:

- no tombstone anywhere in Redis;
- every live message is still there exactly once and in its order, every live result with its
  value and TTL;
- every orphan is either still there (once) or removed, and every removed one is in the
  archive stream `celery-janitor:archive`, exactly once.

The lock a killed run leaves makes the next run exit 5 (checked once); the next run takes it
over with `--take-over-lock` (issue 5 item 9; binaries without the flag: the test deletes it).
Then a last run finishes the job (after which the archive files `archive/<run>.jsonl` hold
every archived entry: the next run completes the file of a killed run, issue 5 item 7),
`restore --all` puts back exactly the removed entries (multiset equality with the original
orphans), and a second `restore --all` restores nothing.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from random import Random

import pytest

from support.faults import (
    LOCK_KEY,
    ArchiveWatch,
    Figures,
    LockRecovery,
    QuietMonitor,
    archive_file_records,
    archived_entries,
    build_large_state,
    janitor_with_grace,
    wait_for,
)
from support.janitor import Janitor
from support.world import ScannerWorld

pytestmark = [pytest.mark.janitor]

SEED = 20_261_205
MESSAGES = 21_000
RESULTS = 1_200
KILLS = 7  # the first one during the scan, the others during the removal


def test_kill_9_at_random_points_of_a_large_removal(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = Random(SEED)
    figures = Figures("kill -9 during a large removal", tmp_path)
    state = build_large_state(world, rng, messages=MESSAGES, results=RESULTS)
    janitor = janitor_with_grace(world, make_janitor, grace=0)
    recovery = LockRecovery(janitor)
    client = world.redis
    progress = state.check(client, after="setup")
    assert progress.removed == 0
    figures["messages"] = state.message_count
    figures["results"] = len(state.results)
    figures["orphans"] = state.orphan_count
    figures["seed"] = SEED
    checked = progress.checked
    points: list[str] = []
    file_shortfalls: list[int] = []
    finished_early = 0
    extra: list[str] = []
    busy_checked = False

    # Kill points as positions in the whole removal (the k-th entry archived over all runs):
    # spread over the messages, and one among the results (removed after the lists).
    message_orphans = sum(state.orphan_messages.values())
    targets = sorted(rng.sample(range(1, message_orphans), KILLS - 2))
    targets.append(rng.randint(message_orphans + 1, state.orphan_count - 50))
    for n in range(KILLS):
        monitor = QuietMonitor(world.redis_server.port).start()
        watch = ArchiveWatch(monitor)
        if n == 0:
            k = rng.randint(1, 14)  # of at least 14 pages (7,000 messages per list)
            point = watch.after_reads(k)
            label = f"scan page {k}"
        else:
            k = max(1, targets[n - 1] - progress.removed)
            point = watch.after(k)
            label = f"entry {progress.removed + k} of {state.orphan_count} archived"
        run_started = time.monotonic()
        proc = janitor.start("cleanup-orphaned", "--json", "--grace", "0", *extra)
        try:
            hit = wait_for(point, proc, timeout=90)
            if hit:
                os.kill(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
            monitor.close()
        if not hit:
            # The run ended before the point was reached: fine, but no fault was injected.
            finished_early += 1
            assert proc.returncode == 0, (
                f"the janitor failed without a fault ({label}): {out[-2000:]!r} {err[-2000:]!r}"
            )
        else:
            assert proc.returncode == -signal.SIGKILL
        before = progress
        progress = state.check(client, after=f"kill {n + 1} at {label}")
        checked += progress.checked
        assert progress.removed >= before.removed
        if n == 0 and hit:
            assert progress.removed == before.removed, "the scan removed something"
        in_files = {r["archive_id"] for r in archive_file_records(janitor)}
        file_shortfalls.append(len({a.id for a in archived_entries(client)} - in_files))
        points.append(
            f"{label}: {'killed' if hit else 'finished first'}, archived in that run "
            f"{progress.removed - before.removed} (watch saw {watch.archived} XADD in "
            f"{watch.removal_calls} calls) in {time.monotonic() - run_started:.1f} s"
        )
        if not busy_checked and client.exists(LOCK_KEY):
            # The dead run's lock stops the next run (exit 5, nothing changed) ...
            busy = janitor.run("cleanup-orphaned", "--json", "--grace", "0")
            assert busy.returncode == 5, busy.describe()
            assert state.check(client, after="a run refused by the lock") == progress
            busy_checked = True
        # ... until it is taken over (or deleted, by binaries without --take-over-lock).
        extra = recovery.after_fault(client)

    assert finished_early <= 1, "the kill points were missed: no fault was injected"
    figures["setup_and_kills_seconds"] = round(time.monotonic() - started, 1)
    # A last run finishes the job.
    report = janitor.run("cleanup-orphaned", "--json", "--grace", "0", *extra).expect_json()
    assert report["removed"]["queue"] == progress.remaining_messages, report
    assert report["removed"]["result"] == progress.remaining_results, report
    assert report["skipped"] == {"changed": 0, "revived": 0, "busy": 0}, report
    done = state.check(client, after="the finishing run")
    checked += done.checked
    assert done.remaining == 0
    assert done.removed == state.orphan_count
    stream_ids = {a.id for a in archived_entries(client)}
    assert len(stream_ids) == state.orphan_count
    # The archive files hold every removed entry once the next run has completed the files of
    # the runs that were killed (issue 5 item 7).
    file_ids = {r["archive_id"] for r in archive_file_records(janitor)}
    file_shortfall_after = len(stream_ids - file_ids)
    assert file_ids == stream_ids, f"{file_shortfall_after} archived entries missing from files"

    figures["finishing_run_seconds"] = round(time.monotonic() - started, 1)
    # Restore puts back exactly what was removed, once.
    restored = janitor.run("restore", "--all", "--json", timeout=180).expect_json()
    assert restored["restored"] == {
        "queue": sum(state.orphan_messages.values()),
        "unacked": 0,
        "result": len(state.orphan_results),
    }, restored
    assert restored["skipped"] == 0, restored
    state.check_restored(client)
    checked += state.message_count + len(state.results)
    again = janitor.run("restore", "--all", "--json").expect_json()
    assert sum(again["restored"].values()) == 0, again
    state.check_restored(client)

    figures["runs"] = KILLS + 1
    figures["restore_runs"] = 2
    figures["faults_injected"] = KILLS - finished_early
    figures["kill_points"] = points
    figures["locks_left_by_a_killed_run"] = recovery.locks_left
    figures["lock_recovery"] = recovery.how
    figures["entries_checked"] = checked
    figures["entries_removed_and_restored"] = state.orphan_count
    figures["entries_lost"] = 0
    figures["archive_file_shortfall_after_each_kill"] = file_shortfalls
    figures["archive_file_shortfall_after_finishing_run"] = file_shortfall_after
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures.write()
