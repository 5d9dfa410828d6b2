"""The worker guard's added latency per task: p50 and p99 of the check a guarded worker makes
before each task body (``Guard.check``: one Redis MGET joined with one owner-row lookup), with
PostgreSQL and Redis on localhost. Not a test; run by hand (see bench/README.md, "Guard").

It starts its own redis-server on a free port (never 6379) and creates its own database
``cj_bench_<random>``; both are removed on exit. Needs the installed package (``pip install .``)
in the venv that runs it.

    .venv/bin/python bench/guard_latency.py [--checks 5000] [--rows 10000]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "interop"))

import celery_janitor  # noqa: E402
from celery_janitor import _native  # noqa: E402

from scanner.app import SCAN_TASK  # noqa: E402
from scanner.schema import create_schema  # noqa: E402
from support.servers import pg_admin_url  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    assert port != 6379
    return port


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=5000)
    parser.add_argument("--rows", type=int, default=10000)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cj-guard-bench-"))
    port = free_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    admin = pg_admin_url()
    dbname = "cj_bench_" + uuid.uuid4().hex[:10]
    db_url = admin.rsplit("/", 1)[0] + "/" + dbname
    try:
        client = redis.Redis(port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        create_schema(db_url)
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO scan_tasks (user_id, target_domain)"
                " SELECT 7, 'site' || g FROM generate_series(1, %s) g",
                (args.rows,),
            )
        config = workdir / "celery-janitor.toml"
        config.write_text(
            f'[redis]\nurl = "redis://127.0.0.1:{port}/0"\n[database]\nurl = "{db_url}"\n'
            '[[owners]]\ntable = "scan_tasks"\nid_column = "id"\n'
            f'tasks = ["{SCAN_TASK}"]\nid_from = "arg:0"\n'
        )
        guard = _native.Guard(str(config))
        rng = random.Random(7)

        def check(row: int) -> float:
            task_id = str(uuid.uuid4())
            payload = json.dumps([row, 7, f"site{row}.example", {"ports": [80, 443]}])
            start = time.perf_counter()
            verdict = guard.check(task_id, SCAN_TASK, payload, "{}")
            elapsed = time.perf_counter() - start
            assert verdict["verdict"] in ("run", "missing"), verdict
            return elapsed * 1000

        for _ in range(200):  # connections, prepared statements, the id column's type
            check(rng.randint(1, args.rows))
        present = [check(rng.randint(1, args.rows)) for _ in range(args.checks)]
        missing = [check(args.rows + rng.randint(1, args.rows)) for _ in range(args.checks)]
        print(
            f"celery-janitor {celery_janitor.__version__}: Guard.check, {args.checks} checks each,"
            f" {args.rows} owner rows, Redis and PostgreSQL on localhost"
        )
        print("| owner row | p50 ms | p99 ms | max ms |")
        print("|---|---|---|---|")
        for name, values in (("present", present), ("missing", missing)):
            print(
                f"| {name} | {statistics.median(values):.3f} | {percentile(values, 99):.3f} |"
                f" {max(values):.3f} |"
            )
    finally:
        server.terminate()
        server.wait(timeout=10)
        try:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (dbname,),
                )
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}"')
        except psycopg.Error as err:
            print(f"could not drop {dbname}: {err}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
