"""Reliability: Redis and PostgreSQL connections killed in the middle of a run (issue 5, "A
reliability suite that stays").

Both tests start from a large state of copies of real Celery bytes (see
`support.faults.build_large_state`), 30 % orphans, and inject faults into `cleanup-orphaned`:

- Redis: the janitor's connection is killed (`CLIENT KILL ID`, the id found with `CLIENT LIST`)
  after the k-th entry its removal scripts archived, twice at points a seeded RNG picks, then
  every normal client at once (`CLIENT KILL TYPE normal`).
- PostgreSQL: `pg_terminate_backend` of every session of the test database while the
  janitor's owner lookup is in flight during the scan (the test holds an ACCESS EXCLUSIVE lock
  on `scan_tasks` so that the lookup is waiting when it is terminated), and during the grace
  wait with the database refusing new connections (`ALLOW_CONNECTIONS false`), so the janitor
  cannot simply reconnect.

Each time the janitor must exit with a documented non-zero code, leave no tombstone, lose no
live entry and have archived everything it removed (`LargeState.check`). A later run finishes
the job, and `restore --all` puts back exactly what was removed.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from random import Random

import psycopg
import pytest

from support.faults import (
    LOCK_KEY,
    ArchiveWatch,
    Figures,
    LargeState,
    LockRecovery,
    Progress,
    QuietMonitor,
    allow_connections,
    backends_waiting_on_lock,
    build_large_state,
    janitor_with_grace,
    kill_client,
    terminate_backends,
    wait_for,
)
from support.janitor import Janitor, JanitorRun
from support.waiting import wait_until
from support.world import ScannerWorld

pytestmark = [pytest.mark.janitor]

MESSAGES = 12_000
RESULTS = 1_000


def finish(janitor: Janitor, proc: subprocess.Popen[bytes], what: str, code: int) -> JanitorRun:
    """A lost Redis connection exits 3, a lost database 4 (docs/cli.md, exit codes)."""
    run = janitor.finish(proc, timeout=90)
    assert run.returncode == code, f"{what}\n{run.describe()}"
    return run


def first_line(run: JanitorRun) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    return lines[0][:300] if lines else "(no message)"


def finish_and_restore(
    janitor: Janitor,
    state: LargeState,
    world: ScannerWorld,
    progress: Progress,
    extra: list[str],
) -> int:
    """A last run removes what is left; `restore --all` puts back exactly every orphan.
    Returns the entries checked."""
    report = janitor.run("cleanup-orphaned", "--json", "--grace", "0", *extra).expect_json()
    assert report["removed"]["queue"] == progress.remaining_messages, report
    assert report["removed"]["result"] == progress.remaining_results, report
    done = state.check(world.redis, after="the finishing run")
    assert done.remaining == 0 and done.removed == state.orphan_count
    restored = janitor.run("restore", "--all", "--json", timeout=180).expect_json()
    assert restored["restored"] == {
        "queue": sum(state.orphan_messages.values()),
        "unacked": 0,
        "result": len(state.orphan_results),
    }, restored
    state.check_restored(world.redis)
    return done.checked + state.message_count + len(state.results)


def test_redis_connection_killed_mid_removal(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = Random(3_3)
    figures = Figures("Redis connection killed mid-removal", tmp_path)
    state = build_large_state(world, rng, messages=MESSAGES, results=RESULTS)
    janitor = janitor_with_grace(world, make_janitor, grace=0)
    recovery = LockRecovery(janitor)
    client = world.redis
    progress = state.check(client, after="setup")
    checked = progress.checked
    faults: list[str] = []
    codes: list[int] = []
    extra: list[str] = []
    finished_early = 0

    # Fault points as positions in the whole removal (the k-th entry archived over all runs).
    hows = ("CLIENT KILL ID", "CLIENT KILL ID", "CLIENT KILL TYPE normal")
    targets = sorted(rng.sample(range(1, state.orphan_count - 100), len(hows)))
    for n, how in enumerate(hows):
        monitor = QuietMonitor(world.redis_server.port).start()
        watch = ArchiveWatch(monitor)
        k = max(1, targets[n] - progress.removed)
        point = watch.after(k)
        proc = janitor.start("cleanup-orphaned", "--json", "--grace", "0", *extra)
        try:
            addr = watch.janitor_connected(timeout=30)
            if not wait_for(point, proc, timeout=90):
                # It finished before the fault point: nothing to inject this time.
                assert janitor.finish(proc).returncode == 0
                finished_early += 1
                progress = state.check(client, after=f"a run that ended before fault {n + 1}")
                continue
            if how == "CLIENT KILL ID":
                killed = kill_client(client, addr)
            else:
                # Every normal connection but this one: the janitor's, the MONITOR's, the
                # test's other clients (redis-py reconnects those).
                killed = int(client.execute_command("CLIENT", "KILL", "TYPE", "normal"))
            assert killed >= 1
            run = finish(janitor, proc, f"fault {n + 1}: {how} after {k} archived", 3)
        finally:
            if proc.poll() is None:
                proc.kill()
            try:
                monitor.close()
            except OSError:
                pass  # its connection was one of those killed
        codes.append(run.returncode)
        before = progress
        progress = state.check(client, after=f"{how} after {k} archived")
        checked += progress.checked
        assert progress.removed >= before.removed
        faults.append(
            f"{how} after entry {before.removed + k} of {state.orphan_count} archived: exit "
            f"{run.returncode}, {progress.removed - before.removed} removed in that run; "
            f"{first_line(run)}"
        )
        extra = recovery.after_fault(client)

    assert finished_early <= 1, "the fault points were missed: no fault was injected"
    checked += finish_and_restore(janitor, state, world, progress, extra)
    figures["messages"] = state.message_count
    figures["results"] = len(state.results)
    figures["orphans"] = state.orphan_count
    figures["runs"] = len(faults) + finished_early + 1
    figures["faults_injected"] = len(faults)
    figures["faults"] = faults
    figures["exit_codes"] = codes
    figures["locks_left_by_a_faulted_run"] = recovery.locks_left
    figures["lock_recovery"] = recovery.how
    figures["entries_checked"] = checked
    figures["entries_lost"] = 0
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures.write()


def test_database_connection_killed_mid_run(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = Random(4_4)
    figures = Figures("PostgreSQL connections killed mid-run", tmp_path)
    state = build_large_state(world, rng, messages=MESSAGES, results=RESULTS // 2)
    janitor = janitor_with_grace(world, make_janitor, grace=0)
    client = world.redis
    database = world.database
    progress = state.check(client, after="setup")
    checked = progress.checked
    faults: list[str] = []
    codes: list[int] = []

    # 1. During the scan: the owner lookup after the k-th page waits on the test's table lock
    #    when every session of the database is terminated.
    monitor = QuietMonitor(world.redis_server.port).start()
    watch = ArchiveWatch(monitor)
    k = rng.randint(1, 8)  # of at least 12 pages (4,000 messages per list)
    page = watch.after_reads(k)
    proc = janitor.start("cleanup-orphaned", "--json", "--grace", "0")
    try:
        assert page.wait(timeout=60), f"the janitor never read {k} pages"
        with psycopg.connect(database.url) as locker:
            locker.execute("LOCK TABLE scan_tasks IN ACCESS EXCLUSIVE MODE")
            wait_until(
                lambda: backends_waiting_on_lock(locker, database) > 0,
                timeout=30,
                what="the janitor's owner lookup to wait on the table lock",
            )
            terminated = terminate_backends(locker, database)
            locker.rollback()
        run = finish(janitor, proc, f"pg_terminate_backend during the scan, after page {k}", 4)
    finally:
        if proc.poll() is None:
            proc.kill()
        monitor.close()
    codes.append(run.returncode)
    progress = state.check(client, after="pg_terminate_backend during the scan")
    checked += progress.checked
    assert progress.removed == 0, "a run that lost its database removed something"
    faults.append(
        f"pg_terminate_backend of {terminated} sessions, lookup in flight after scan page {k}: "
        f"exit {run.returncode}; {first_line(run)}"
    )
    # The run was alive to see its error: it released its lock.
    assert not client.exists(LOCK_KEY), "a run that failed on the database kept its lock"

    # 2. During the grace wait, with the database refusing new connections.
    monitor = QuietMonitor(world.redis_server.port).start()
    watch = ArchiveWatch(monitor)
    proc = janitor.start("cleanup-orphaned", "--json", "--grace", "5")
    blocked = False
    try:
        watch.janitor_connected(timeout=30)
        # The scan is over once the janitor, having read the lists, sends nothing but its
        # lock heartbeat.
        wait_until(
            lambda: (watch.reads > 0 and watch.quiet_for() > 0.8) or proc.poll() is not None,
            timeout=30,
            what="the janitor to finish its scan",
        )
        assert proc.poll() is None, "the run ended before its grace wait"
        allow_connections(database, False)
        blocked = True
        with psycopg.connect(database.admin_url, autocommit=True) as admin:
            terminated = terminate_backends(admin, database)
        run = finish(janitor, proc, "pg_terminate_backend during the grace wait", 4)
    finally:
        if blocked:
            allow_connections(database, True)
        if proc.poll() is None:
            proc.kill()
        monitor.close()
    codes.append(run.returncode)
    progress = state.check(client, after="pg_terminate_backend during the grace wait")
    checked += progress.checked
    assert progress.removed == 0, "a run that lost its database removed something"
    faults.append(
        f"ALLOW_CONNECTIONS false + pg_terminate_backend of {terminated} sessions during the "
        f"grace wait: exit {run.returncode}; {first_line(run)}"
    )
    assert not client.exists(LOCK_KEY), "a run that failed on the database kept its lock"

    checked += finish_and_restore(janitor, state, world, progress, [])
    figures["messages"] = state.message_count
    figures["results"] = len(state.results)
    figures["orphans"] = state.orphan_count
    figures["runs"] = len(faults) + 1
    figures["faults_injected"] = len(faults)
    figures["faults"] = faults
    figures["exit_codes"] = codes
    figures["locks_left_by_a_faulted_run"] = 0
    figures["entries_checked"] = checked
    figures["entries_lost"] = 0
    figures["seconds"] = round(time.monotonic() - started, 1)
    figures.write()
