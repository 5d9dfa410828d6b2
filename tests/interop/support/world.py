"""One test's scanner deployment: its Redis, its database, a producer app and its workers.

`ScannerWorld` publishes with the real Celery API (`apply_async`), runs real workers, and reads
back what they left, so every state the janitor is tested against was written by Celery itself.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery.app.task import Context

from scanner.app import EMAIL_TASK, QUEUES, SCAN_TASK, make_app
from scanner.schema import create_schema

from . import celery_state, snapshot
from .servers import PostgresDatabase, RedisServer
from .waiting import wait_until
from .worker import CeleryWorker

FK_FAILURE = re.compile(
    r"Task scanner\.scan_domain_task\[(?P<id>[^\]]+)\] raised unexpected: ForeignKeyViolation"
)


def fk_violations(log: str) -> list[str]:
    """Task ids whose run failed with a foreign-key violation, from a worker log."""
    return FK_FAILURE.findall(log)


class ScannerWorld:
    def __init__(
        self,
        redis_server: RedisServer,
        database: PostgresDatabase,
        workdir: Path,
        *,
        result_extended: bool = True,
    ) -> None:
        self.redis_server = redis_server
        self.database = database
        self.workdir = workdir
        self.result_extended = result_extended
        self.redis: redis.Redis = redis_server.client()
        create_schema(database.url)
        # The producer accepts pickle so tests can publish pickle messages; results stay json.
        self.app = make_app(
            redis_server.url,
            redis_server.url,
            database.url,
            result_extended=result_extended,
            accept_pickle=True,
        )
        self.workers: list[CeleryWorker] = []

    # -- database ---------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database.url, autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def add_rows(
        self, count: int, *, status: str = "pending", age_minutes: float = 0, user_id: int = 7
    ) -> list[int]:
        rows = self.sql(
            "INSERT INTO scan_tasks (user_id, target_domain, status, created_at)"
            " SELECT %s, 'site' || g || '.example', %s, now() - make_interval(mins => %s)"
            " FROM generate_series(1, %s) g RETURNING id",
            (user_id, status, age_minutes, count),
        )
        return sorted(int(r[0]) for r in rows)

    def add_row_uncommitted(self, writer: psycopg.Connection[Any]) -> int:
        """Inserts a scan_tasks row in `writer`'s open transaction: invisible to every other
        session (the janitor's included) until `writer` commits. Returns its id."""
        row = writer.execute(
            "INSERT INTO scan_tasks (user_id, target_domain) VALUES (7, 'late.example')"
            " RETURNING id"
        ).fetchone()
        assert row is not None
        row_id = int(row[0])
        assert str(row_id) not in self.existing_ids()  # other sessions can't see it yet
        return row_id

    def delete_rows(self, ids: Iterable[int]) -> None:
        self.sql("DELETE FROM scan_tasks WHERE id = ANY(%s)", (list(ids),))

    def existing_ids(self) -> set[str]:
        return {str(r[0]) for r in self.sql("SELECT id FROM scan_tasks")}

    def statuses(self) -> dict[int, str]:
        return {int(r[0]): str(r[1]) for r in self.sql("SELECT id, status FROM scan_tasks")}

    def domain(self, row_id: int) -> str:
        return f"site{row_id}.example"

    # -- publishing (real apply_async) -----------------------------------------------------

    def scan(self, row_id: int, **options: Any) -> str:
        """Publish scan_domain_task for a row; returns the Celery task id."""
        task = self.app.tasks[SCAN_TASK]
        config = options.pop("config", {"ports": [80, 443]})
        result = task.apply_async((row_id, 7, self.domain(row_id), config), **options)
        return str(result.id)

    def email(self, **options: Any) -> str:
        task = self.app.tasks[EMAIL_TASK]
        result = task.apply_async(("ops@example.com", f"report {uuid.uuid4().hex[:6]}"), **options)
        return str(result.id)

    def store_result(self, task_id: str, state: str, row_id: int, result: Any = None) -> None:
        """Write a result exactly as a worker's backend does (used for STARTED/RETRY)."""
        request = Context(
            id=task_id,
            task=SCAN_TASK,
            args=[row_id, 7, self.domain(row_id), {}],
            kwargs={},
            hostname="scanner-elsewhere@localhost",
            retries=0,
            delivery_info={"routing_key": "celery"},
        )
        self.app.backend.store_result(task_id, result, state, request=request)

    # -- reading Redis ----------------------------------------------------------------------

    def snapshot(self) -> snapshot.Snapshot:
        return snapshot.take(self.redis)

    def entries(self) -> list[celery_state.Entry]:
        return celery_state.entries(self.snapshot(), QUEUES)

    def queued_count(self) -> int:
        return sum(
            int(self.redis.llen(celery_state.priority_key(q, p)))
            for q in QUEUES
            for p in celery_state.PRIORITY_STEPS
        )

    def unacked_count(self) -> int:
        return int(self.redis.hlen(celery_state.UNACKED))

    def result_meta(self, task_id: str) -> dict[str, Any] | None:
        import json

        raw = self.redis.get(celery_state.RESULT_PREFIX + task_id.encode())
        return json.loads(raw) if raw else None

    def describe_redis(self) -> str:
        return (
            f"queued={self.queued_count()} unacked={self.unacked_count()} "
            f"keys={sorted(self.redis.keys())}"
        )

    # -- workers ----------------------------------------------------------------------------

    def worker(self, label: str, **options: Any) -> CeleryWorker:
        options.setdefault("result_extended", self.result_extended)
        w = CeleryWorker(
            broker_url=self.redis_server.url,
            database_url=self.database.url,
            log_path=self.workdir / f"worker-{label}.log",
            **options,
        )
        self.workers.append(w)
        return w.start()

    def prefork_worker(self, label: str, queues: Iterable[str]) -> CeleryWorker:
        """A real worker, `--pool=prefork -c 2` with the default prefetch, owned by the world."""
        w = CeleryWorker(
            broker_url=self.redis_server.url,
            database_url=self.database.url,
            log_path=self.workdir / f"worker-{label}.log",
            queues=tuple(queues),
        )
        w.argv = [a for a in w.argv if a != "--pool=solo"] + ["--pool=prefork", "--concurrency=2"]
        self.workers.append(w)
        return w.start()

    def run_until_done(
        self, label: str, task_ids: Iterable[str], *, timeout: float = 60, **options: Any
    ) -> CeleryWorker:
        """Start a worker, wait until every queue is empty, nothing is held in `unacked` and each
        of `task_ids` has a ready result, then shut it down warmly."""
        ids = list(task_ids)
        w = self.worker(label, **options)

        def done() -> bool:
            if not w.running:
                raise AssertionError(f"worker died:\n{w.log()}")
            if self.queued_count() or self.unacked_count():
                return False
            metas = [self.result_meta(t) for t in ids]
            return all(m is not None and m["status"] in ("SUCCESS", "FAILURE") for m in metas)

        wait_until(
            done,
            timeout=timeout,
            what="the worker to finish every task",
            describe=lambda: self.describe_redis() + "\n" + w.log()[-3000:],
        )
        w.stop()
        return w

    def park_in_unacked(
        self, expected: int, *, timeout: float = 45, **options: Any
    ) -> CeleryWorker:
        """Start a worker, let it pull every queued (countdown) message into `unacked`, then
        SIGKILL it: the messages stay in `unacked` + `unacked_index` like after a crash."""
        w = self.worker("parked", **options)
        wait_until(
            lambda: self.queued_count() == 0 and self.unacked_count() == expected,
            timeout=timeout,
            what=f"{expected} messages held in unacked",
            describe=lambda: self.describe_redis() + "\n" + w.log()[-3000:],
        )
        w.kill()
        return w

    def wait_until_unacked_older_than(self, seconds: float) -> None:
        """Sleep until every `unacked_index` score is more than `seconds` old, so that a worker
        started with `visibility_timeout=seconds` re-queues them in its start-up sweep (the next
        sweep only comes about 100 s later)."""
        scores = list(snapshot.zscores(self.redis, celery_state.UNACKED_INDEX).values())
        if scores:
            delay = max(scores) + seconds + 0.5 - time.time()
            if delay > 0:
                time.sleep(delay)

    def drain_worker(
        self, label: str, *, visibility_timeout: float = 2, **options: Any
    ) -> CeleryWorker:
        """A worker that first re-queues everything a dead worker left in `unacked`."""
        self.wait_until_unacked_older_than(visibility_timeout)
        return self.worker(label, visibility_timeout=visibility_timeout, **options)

    def close(self) -> None:
        for w in self.workers:
            w.kill()
        self.app.close()
        self.redis.close()
