"""The worker guard, installed with `celery_janitor.install(app)` in real Celery 5.7 workers
(the package as `pip install .` put it in the venv): owned tasks whose row is gone are skipped —
acknowledged, no result, counted — in the prefork, solo and threads pools with `acks_late` on and
off; a task that arrives before its row commits is re-queued and runs once after the commit; a
revoke sent while no worker was online is honoured by a worker started later; `on_error` holds
while the owner database can't be reached; workers starting together run one start-up cleanup.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from scanner.app import EXPLICIT_BASE_TASK, EXPLICIT_DECORATED_TASK, make_app
from scanner.schema import create_schema
from support.janitor import Janitor
from support.servers import PostgresDatabase
from support.waiting import wait_until
from support.worker import INTEROP_DIR, CeleryWorker
from support.world import ScannerWorld, fk_violations

celery_janitor = pytest.importorskip("celery_janitor")

pytestmark = [pytest.mark.worker, pytest.mark.janitor]


def guard_janitor(
    world: ScannerWorld,
    make_janitor: Callable[..., Janitor],
    *,
    grace: float = 0,
    cleanup_on_startup: bool = False,
    on_error: str = "retry",
) -> Janitor:
    """The config file the guarded workers (and the test) read. (A worker's `DATABASE_URL`
    wins over the file's database url, as for the CLI: see `unreachable_database`.)"""
    janitor = make_janitor(world)
    janitor.config["cleanup"].update(grace_seconds=grace, cleanup_on_startup=cleanup_on_startup)
    janitor.config["guard"] = {"on_error": on_error}
    janitor.write_config()
    return janitor


def guarded_worker(
    world: ScannerWorld,
    janitor: Janitor,
    label: str = "guarded",
    *,
    pool: str = "solo",
    acks_late: bool = False,
    install_first: bool = False,
    env: dict[str, str] | None = None,
    **options: Any,
) -> CeleryWorker:
    env = {
        **(env or {}),
        "SCANNER_JANITOR_CONFIG": str(janitor.config_path),
        "SCANNER_ACKS_LATE": "1" if acks_late else "0",
        "SCANNER_JANITOR_FIRST": "1" if install_first else "0",
    }
    return world.worker(
        label,
        pool=pool,
        concurrency=None if pool == "solo" else 2,
        extra_env=env,
        **options,
    )


def unreachable_database(world: ScannerWorld) -> dict[str, str]:
    """Worker environment in which the guard's owner database can't be reached (a database
    that does not exist, in `DATABASE_URL`, which the janitor reads) while the app's own can."""
    return {
        "DATABASE_URL": world.database.url.rsplit("/", 1)[0] + "/cj_no_such_database",
        "SCANNER_DATABASE_URL": world.database.url,
    }


def result_status(world: ScannerWorld, task_id: str) -> str | None:
    meta = world.result_meta(task_id)
    return None if meta is None else str(meta["status"])


def findings(world: ScannerWorld, row: int) -> int:
    (count,) = world.sql("SELECT count(*) FROM scan_results WHERE scan_task_id = %s", (row,))[0]
    return int(count)


def skipped(log: str) -> list[str]:
    return re.findall(r"celery-janitor: skipped task \S+\[([^\]]+)\]", log)


def stats(janitor: Janitor) -> dict[str, Any]:
    result: dict[str, Any] = celery_janitor.stats(config_path=janitor.config_path)
    return result


def celery53_python() -> str:
    """The Celery 5.3 venv's python that scripts/test builds with the same celery-janitor wheel
    (`CJ_CELERY53_PYTHON`): the oldest supported Celery."""
    python = os.environ.get("CJ_CELERY53_PYTHON")
    if not python:
        pytest.skip("CJ_CELERY53_PYTHON names no Celery 5.3 venv (scripts/test sets it)")
    version = subprocess.run(
        [python, "-c", "import celery; print(celery.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert version.startswith("5.3."), version
    return python


@pytest.mark.parametrize(
    ("pool", "acks_late", "install_first", "celery53"),
    [
        ("solo", False, False, False),
        ("solo", True, True, False),
        ("prefork", False, True, False),
        ("prefork", True, False, False),
        ("threads", False, False, False),
        ("threads", True, True, False),
        ("prefork", False, False, True),
        ("solo", True, False, True),
    ],
)
def test_a_task_whose_row_is_gone_is_skipped(
    make_world: Callable[..., ScannerWorld],
    make_janitor: Callable[..., Janitor],
    *,
    pool: str,
    acks_late: bool,
    install_first: bool,
    celery53: bool,
) -> None:
    python = celery53_python() if celery53 else None
    world = make_world()
    live, gone = world.add_rows(2)
    live_id, gone_id = world.scan(live), world.scan(gone)
    email_id = world.email()
    world.delete_rows([gone])
    janitor = guard_janitor(world, make_janitor)
    # STARTED results (task_track_started): the guard removes the skipped task's.
    w = guarded_worker(
        world,
        janitor,
        pool=pool,
        acks_late=acks_late,
        install_first=install_first,
        track_started=True,
        python=python,
    )

    def done() -> bool:
        if not w.running:
            raise AssertionError(w.log())
        return (
            result_status(world, live_id) == "SUCCESS"
            and result_status(world, email_id) == "SUCCESS"
            and bool(skipped(w.log()))
            and world.queued_count() == 0
            and world.unacked_count() == 0
        )

    wait_until(
        done,
        timeout=60,
        what="the live tasks to run and the orphan to be skipped",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    w.stop()
    log = w.log()
    assert not fk_violations(log), log[-3000:]
    assert skipped(log) == [gone_id], log[-3000:]
    assert findings(world, live) == 1
    # Acknowledged, not redelivered; no SUCCESS/FAILURE stored, and its STARTED result removed.
    assert world.result_meta(gone_id) is None
    totals = stats(janitor)["totals"]
    assert totals.get("skipped") == 1, totals
    recent = stats(janitor)["recent"]
    assert recent[0]["task_id"] == gone_id and recent[0]["owner_id"] == str(gone), recent


def test_a_task_that_arrives_before_its_row_commits_runs_once_after_the_commit(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    janitor = guard_janitor(world, make_janitor, grace=5)
    w = guarded_worker(world, janitor)
    w.wait_ready()
    with psycopg.connect(world.database.url) as writer:
        row = world.add_row_uncommitted(writer)
        task_id = world.scan(row)
        # The worker gets it at once and finds no row: re-queued for the grace period.
        wait_until(
            lambda: "re-checked in" in w.log(), timeout=20, what="a re-queue", describe=w.log
        )
        time.sleep(2)
        writer.commit()
    # Never committed: skipped once the grace period has passed.
    with psycopg.connect(world.database.url) as writer:
        never = world.add_row_uncommitted(writer)
        never_id = world.scan(never)
        wait_until(
            lambda: never_id in skipped(w.log()), timeout=30, what="the skip", describe=w.log
        )
        writer.rollback()
    wait_until(
        lambda: result_status(world, task_id) == "SUCCESS",
        timeout=30,
        what="the task to run after the commit",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    w.stop()
    assert findings(world, row) == 1
    assert skipped(w.log()) == [never_id]
    assert not fk_violations(w.log())
    assert stats(janitor)["totals"].get("requeued", 0) >= 2


def busy_lock(world: ScannerWorld) -> None:
    holder = {
        "host": "elsewhere",
        "pid": 1,
        "run_id": "20260101T000000Z-busybusy",
        "since": "2026-01-01T00:00:00+00:00",
        "token": "t",
    }
    world.redis.set("celery-janitor:lock", json.dumps(holder), ex=120)


def test_a_revoke_sent_while_no_worker_was_online_is_honoured_later(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    a, b, c = world.add_rows(3)
    by_id, by_owner, live = world.scan(a), world.scan(b), world.scan(c)
    janitor = guard_janitor(world, make_janitor)
    # A cleanup holds the lock: the queued copies stay, so only the guard can stop them.
    busy_lock(world)
    report = celery_janitor.revoke(by_id, config_path=janitor.config_path)
    assert report["removal"] is None and report["removal_skipped"], report
    assert report["broadcast"]["heard_by"] == 0, report
    report = celery_janitor.revoke_owner("scan_tasks", b, config_path=janitor.config_path)
    assert report["removal_skipped"], report
    world.redis.delete("celery-janitor:lock")
    assert world.queued_count() == 3

    w = guarded_worker(world, janitor)
    wait_until(
        lambda: result_status(world, live) == "SUCCESS" and len(skipped(w.log())) == 2,
        timeout=60,
        what="the live task to run and the revoked ones to be skipped",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    w.stop()
    assert sorted(skipped(w.log())) == sorted([by_id, by_owner])
    assert findings(world, a) == 0 and findings(world, b) == 0 and findings(world, c) == 1
    assert stats(janitor)["totals"].get("revoked") == 2

    # Lifted: a new task of that row runs.
    celery_janitor.revoke_owner("scan_tasks", b, undo=True, config_path=janitor.config_path)
    again = world.scan(b)
    world.run_until_done(
        "after-undo",
        [again],
        extra_env={"SCANNER_JANITOR_CONFIG": str(janitor.config_path)},
    )
    assert findings(world, b) == 1


def test_on_error_retry_requeues_with_backoff_and_loses_nothing(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    (row,) = world.add_rows(1)
    # The guard's owner database is down (it does not exist yet); the task's own is up.
    owners = PostgresDatabase()
    janitor = guard_janitor(world, make_janitor)
    task_id = world.scan(row)
    env = {"DATABASE_URL": owners.url, "SCANNER_DATABASE_URL": world.database.url}
    w = guarded_worker(world, janitor, env=env)
    try:
        wait_until(
            lambda: "(attempt 3)" in w.log(),
            timeout=40,
            what="three re-queues (1 s, 2 s, 4 s)",
            describe=w.log,
        )
        log = w.log()
        assert "in 1 s (attempt 1)" in log and "in 2 s (attempt 2)" in log, log[-3000:]
        # Never run, never dropped: the task is still in Redis, its row untouched.
        assert findings(world, row) == 0 and result_status(world, task_id) is None
        assert world.queued_count() + world.unacked_count() == 1, world.describe_redis()
        assert stats(janitor)["totals"].get("errors", 0) >= 3

        # The database comes back (with the row): the next retry runs the task, once.
        owners.create()
        create_schema(owners.url)
        with psycopg.connect(owners.url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO scan_tasks (id, user_id, target_domain) VALUES (%s, 7, 'x')", (row,)
            )
        wait_until(
            lambda: result_status(world, task_id) == "SUCCESS",
            timeout=60,
            what="the task to run once the database is back",
            describe=w.log,
        )
        w.stop()
        assert findings(world, row) == 1
        assert world.queued_count() + world.unacked_count() == 0
    finally:
        w.stop()
        try:
            owners.drop()
        except psycopg.Error:
            pass


def test_on_error_run_runs_the_task_unchecked(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    (row,) = world.add_rows(1)
    janitor = guard_janitor(world, make_janitor, on_error="run")
    task_id = world.scan(row)
    w = guarded_worker(world, janitor, env=unreachable_database(world))
    wait_until(
        lambda: result_status(world, task_id) == "SUCCESS",
        timeout=40,
        what="the task to run",
        describe=w.log,
    )
    w.stop()
    assert "running task scanner.scan_domain_task" in w.log() and "unchecked" in w.log()
    assert stats(janitor)["totals"].get("ran_unchecked") == 1


def test_workers_starting_together_run_one_startup_cleanup(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    rows = world.add_rows(8)
    ids = {row: world.scan(row, countdown=2) for row in rows}
    gone = rows[:4]
    world.delete_rows(gone)
    janitor = guard_janitor(world, make_janitor, grace=0, cleanup_on_startup=True)
    workers = [
        guarded_worker(world, janitor, f"node{i}", pool="prefork" if i == 0 else "solo")
        for i in range(10)
    ]
    live = [ids[r] for r in rows[4:]]

    def done() -> bool:
        logs = [w.log() for w in workers]
        return (
            all(result_status(world, t) == "SUCCESS" for t in live)
            and sum("start-up cleanup:" in log for log in logs) == len(workers)
            and world.queued_count() == 0
            and world.unacked_count() == 0
        )

    wait_until(
        done,
        timeout=180,
        what="every live task to run and every node's start-up cleanup",
        describe=lambda: world.describe_redis() + "\n" + workers[0].log()[-3000:],
    )
    for w in workers:
        w.stop()
    logs = [w.log() for w in workers]
    ran = [log for log in logs if re.search(r"start-up cleanup: \{\"run_id\"", log)]
    skipped_runs = [log for log in logs if 'start-up cleanup: {"startup_skipped"' in log]
    assert len(ran) == 1 and len(skipped_runs) == len(workers) - 1, "\n".join(
        line for log in logs for line in log.splitlines() if "start-up cleanup" in line
    )
    assert not any(fk_violations(log) for log in logs)
    for row in rows[4:]:
        assert findings(world, row) == 1
    assert world.redis.exists("celery-janitor:last-cleanup")


def test_eager_and_direct_calls_are_not_guarded(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    """In a process of its own (install() changes the app's tasks for the process)."""
    world = make_world()
    (gone,) = world.add_rows(1)
    world.delete_rows([gone])
    janitor = guard_janitor(world, make_janitor)
    script = textwrap.dedent(
        f"""
        import json
        from scanner.app import SCAN_TASK, make_app
        app = make_app({world.redis_server.url!r}, database_url={world.database.url!r},
                       janitor_config={str(janitor.config_path)!r})
        task = app.tasks[SCAN_TASK]
        result = task.apply(args=({gone}, 7, "x.example", {{}}))
        print(json.dumps({{"state": result.state, "error": type(result.result).__name__}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=INTEROP_DIR,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # The body ran (and hit the foreign key): eager calls are not guarded.
    assert out == {"state": "FAILURE", "error": "ForeignKeyViolation"}, out


def test_explicit_forms_guard_their_tasks_without_install(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    """`GuardedTask` and `@guarded` with no `install(app)`: only those tasks are guarded (an
    owned task that asked for nothing runs as before — and fails on the foreign key)."""
    world = make_world()
    live, gone = world.add_rows(2)
    janitor = make_janitor(world, tasks=["scanner.scan_*"])
    janitor.config["cleanup"].update(grace_seconds=0)
    janitor.write_config()

    def send(name: str, row: int) -> str:
        args: tuple[Any, ...] = (row, 7, world.domain(row), {})
        return str(world.app.send_task(name, args=args).id)

    base_gone = send(EXPLICIT_BASE_TASK, gone)
    decorated_gone = send(EXPLICIT_DECORATED_TASK, gone)
    base_live = send(EXPLICIT_BASE_TASK, live)
    decorated_live = send(EXPLICIT_DECORATED_TASK, live)
    unguarded = world.scan(gone)
    world.delete_rows([gone])
    w = world.worker(
        "explicit",
        extra_env={"CELERY_JANITOR_CONFIG": str(janitor.config_path), "SCANNER_EXPLICIT": "1"},
    )
    wait_until(
        lambda: (
            all(
                result_status(world, t) in ("SUCCESS", "FAILURE")
                for t in (base_live, decorated_live, unguarded)
            )
            and len(skipped(w.log())) == 2
        ),
        timeout=60,
        what="every task to be run or skipped",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    w.stop()
    log = w.log()
    assert sorted(skipped(log)) == sorted([base_gone, decorated_gone]), log[-3000:]
    assert fk_violations(log) == [unguarded], log[-3000:]
    assert findings(world, live) == 2


def test_an_eta_task_held_by_a_running_worker_is_skipped_when_its_row_goes(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    held, kept = world.add_rows(2)
    janitor = guard_janitor(world, make_janitor)
    w = guarded_worker(world, janitor, pool="prefork", acks_late=True)
    w.wait_ready()
    held_id = world.scan(held, countdown=4)
    kept_id = world.scan(kept, countdown=4)
    wait_until(
        lambda: world.unacked_count() == 2,
        timeout=20,
        what="the worker to hold both ETA tasks",
        describe=world.describe_redis,
    )
    world.delete_rows([held])
    wait_until(
        lambda: result_status(world, kept_id) == "SUCCESS" and held_id in skipped(w.log()),
        timeout=30,
        what="the ETA tasks to come due",
        describe=lambda: world.describe_redis() + "\n" + w.log()[-3000:],
    )
    wait_until(lambda: world.unacked_count() == 0, timeout=10, what="both acknowledged")
    w.stop()
    assert not fk_violations(w.log())
    assert world.result_meta(held_id) is None


def test_install_opens_no_connection_and_starts_no_thread(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    """`install(app)` resolves the settings and wraps the tasks; it connects to nothing and
    starts no thread (a prefork parent forks later). In a process of its own."""
    world = make_world()
    janitor = guard_janitor(world, make_janitor)
    script = textwrap.dedent(
        f"""
        import json, os, threading
        from scanner.app import SCAN_TASK, make_app

        def sockets():
            out = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    out += os.readlink(f"/proc/self/fd/{{fd}}").startswith("socket:")
                except OSError:
                    pass
            return out

        app = make_app({world.redis_server.url!r}, database_url={world.database.url!r})
        app.finalize()
        before = (threading.active_count(), len(os.listdir("/proc/self/task")), sockets())
        import celery_janitor
        inst = celery_janitor.install(app, config_path={str(janitor.config_path)!r})
        after = (threading.active_count(), len(os.listdir("/proc/self/task")), sockets())
        wrapped = getattr(app.tasks[SCAN_TASK].run, "_celery_janitor_guarded", False)
        print(json.dumps({{"before": before, "after": after, "wrapped": wrapped}}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=INTEROP_DIR,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == out["after"] and out["wrapped"] is True, out


def test_a_config_that_disagrees_with_the_app_fails_install(
    make_world: Callable[..., ScannerWorld], make_janitor: Callable[..., Janitor]
) -> None:
    world = make_world()
    janitor = guard_janitor(world, make_janitor)
    janitor.config["redis"]["url"] = "redis://:s3cret@127.0.0.1:1/5"
    janitor.write_config()
    app = make_app(world.redis_server.url, database_url=world.database.url)
    # (`Installed` rather than `install`: nothing is registered in this test process.)
    from celery_janitor._install import Installed  # noqa: PLC0415

    with pytest.raises(celery_janitor.JanitorError) as err:
        Installed(app, janitor.config_path)
    assert err.value.kind == "config", err.value
    message = str(err.value)
    assert "127.0.0.1:1/5" in message and world.redis_server.url.split("@")[-1] in message
    assert "s3cret" not in message
