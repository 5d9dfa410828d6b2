"""The example app (examples/scanner) run as its README runs it: its API on uvicorn, a real
Celery worker, a private Redis and PostgreSQL database.

Without the two lines (`SCANNER_WITHOUT_JANITOR=1`) a scan deleted while its task waits in Redis
crashes the worker's task on a foreign-key violation; with them, none does, and every live scan
is done exactly once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from support.servers import PostgresDatabase, RedisServer, free_port
from support.waiting import wait_until
from support.world import FK_FAILURE

pytestmark = [pytest.mark.janitor, pytest.mark.worker]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "scanner"
SCAN_FAILED = "scanner.scan_domain_task"


class Example:
    """The example deployed in `workdir` (its logs and archive land there, not in the repo)."""

    def __init__(self, redis_server: RedisServer, database: PostgresDatabase, workdir: Path):
        self.workdir = workdir
        self.redis = redis.Redis.from_url(redis_server.url)
        self.database = database
        shutil.copy(EXAMPLE / "celery-janitor.toml", workdir / "celery-janitor.toml")
        self.env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("CELERY_", "SCANNER_")) and k not in ("REDIS_URL", "DATABASE_URL")
        }
        self.env.update(
            REDIS_URL=redis_server.url,
            DATABASE_URL=database.url,
            CELERY_JANITOR_CONFIG=str(workdir / "celery-janitor.toml"),
            CELERY_JANITOR_GRACE_SECONDS="1",
            PYTHONPATH=str(EXAMPLE),
            PYTHONUNBUFFERED="1",
        )
        self.port = free_port()
        self.api = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "scanner.api:api", "--port", str(self.port)],
            cwd=workdir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "api.log").open("wb"),
        )
        wait_until(self._api_up, timeout=30, what="the example's API to answer")

    def _api_up(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/openapi.json", timeout=2):
                return True
        except OSError:
            return False

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            data=data,
            method=method,
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def create_scan(self, domain: str) -> int:
        return int(self._call("POST", "/scans", {"user_id": 1, "target_domain": domain})["id"])

    def delete_scan(self, scan_id: int) -> None:
        self._call("DELETE", f"/scans/{scan_id}")

    def statuses(self) -> dict[int, str]:
        with self.database.connect() as conn:
            rows = conn.execute("SELECT id, status FROM scan_tasks").fetchall()
        return {int(r[0]): str(r[1]) for r in rows}

    def results_per_scan(self) -> dict[int, int]:
        with self.database.connect() as conn:
            rows = conn.execute(
                "SELECT scan_task_id, count(*) FROM scan_results GROUP BY scan_task_id"
            ).fetchall()
        return {int(r[0]): int(r[1]) for r in rows}

    def run_worker_until(self, label: str, done: Any, *, with_janitor: bool) -> str:
        """Start a worker as the README does, wait for `done()`, stop it; return its log."""
        env = dict(self.env)
        if not with_janitor:
            env["SCANNER_WITHOUT_JANITOR"] = "1"
        log = self.workdir / f"worker-{label}.log"
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "scanner.tasks",
                "worker",
                "--pool",
                "solo",
                "--loglevel",
                "info",
                "-n",
                f"{label}@localhost",
            ],  # fmt: skip
            cwd=self.workdir,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(done, timeout=60, what=f"the {label} worker to finish the scans")
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        return log.read_text(errors="replace")

    def held_by_redis(self) -> int:
        """Messages still queued or unacked."""
        return int(self.redis.llen("celery")) + int(self.redis.hlen("unacked"))

    def close(self) -> None:
        self.api.terminate()
        try:
            self.api.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.api.kill()
            self.api.wait()
        self.redis.close()


@pytest.fixture
def example(
    redis_server: RedisServer, database: PostgresDatabase, tmp_path: Path
) -> Iterator[Example]:
    ex = Example(redis_server, database, tmp_path)
    try:
        yield ex
    finally:
        ex.close()


def _scans_with_one_deleted(example: Example) -> tuple[list[int], int]:
    ids = [example.create_scan(d) for d in ("a.example", "b.example", "c.example")]
    example.delete_scan(ids[1])
    return [ids[0], ids[2]], ids[1]


def test_the_readme_crash_then_the_two_line_fix(example: Example) -> None:
    # 1. Without the two lines: the deleted scan's task crashes on the foreign key.
    live, gone = _scans_with_one_deleted(example)

    def crashed() -> bool:
        log = (example.workdir / "worker-without.log").read_text(errors="replace")
        statuses = example.statuses()
        return bool(FK_FAILURE.search(log)) and all(statuses[i] == "done" for i in live)

    log = example.run_worker_until("without", crashed, with_janitor=False)
    assert FK_FAILURE.search(log), log[-3000:]

    # 2. With them: no violation, every live scan done exactly once, nothing left in Redis.
    live, gone = _scans_with_one_deleted(example)

    def finished() -> bool:
        statuses = example.statuses()
        return all(statuses[i] == "done" for i in live) and example.held_by_redis() == 0

    log = example.run_worker_until("with", finished, with_janitor=True)
    assert not FK_FAILURE.search(log), log[-3000:]
    results = example.results_per_scan()
    assert all(results.get(i) == 1 for i in live), results
    assert gone not in results
