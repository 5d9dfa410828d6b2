"""The worker guard's latency benchmark (`bench/run guard`, see bench/README.md, "Guard
latency").

Why this exists: `celery_janitor.install(app)` puts a check (one Redis MGET concurrent with one
owner-row SELECT) in front of every owned task, and the check must stay cheap next to the task
(target: under 1 ms at p99 on localhost). This measures it in real Celery workers:

- a private redis-server (free port, never 6379) and a fresh PostgreSQL database with the scanner
  schema and N `scan_tasks` rows, removed on exit whatever happens;
- for each configuration — pool (prefork with concurrency 1, solo) x `acks_late` (off, on) x
  guard (not installed, installed) — N owned tasks (`bench.noop(row_id)`, trivial body, every
  row present so every verdict is `run`) are queued first, then a worker started on them
  (`bench/guard_app.py`) runs them; each configuration `--repeats` times, interleaved, medians
  reported;
- per task: the guard's time (from entering the guard's wrapper of `run` to calling the real
  `run`; the native `Guard.check` part of it separately) and the time from Celery's
  `task_prerun` signal to the body (which holds the guard when installed); per run: the
  throughput between the first and the last body, and Redis commands per task
  (`INFO commandstats`);
- loaded (unless `--no-loaded`): the same again while `redis-benchmark` (GET/SET, 4 clients)
  hammers the private Redis and `pgbench -S` (2 clients) the bench database.

Writes raw data to `--out` and the markdown report to stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

import psycopg
import redis

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(REPO / "tests" / "interop"))

from scanner.schema import create_schema  # noqa: E402

TASK = "bench.noop"
POOLS = ("prefork", "solo")


class Stop(Exception):
    """SIGTERM: unwind so that everything started is stopped."""


def free_port() -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 6379:
            return port


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def db_url(admin_url: str, name: str) -> str:
    p = urllib.parse.urlsplit(admin_url)
    return urllib.parse.urlunsplit((p.scheme, p.netloc, "/" + name, p.query, p.fragment))


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[rank]


def summary(ns: list[int]) -> dict[str, float]:
    us = [v / 1000 for v in ns]
    return {
        "p50": percentile(us, 50),
        "p95": percentile(us, 95),
        "p99": percentile(us, 99),
        "max": max(us),
    }


class World:
    """One private redis-server and one bench database (and, loaded, the hammering clients)."""

    def __init__(self, out: Path, admin_url: str, n: int) -> None:
        self.out = out
        self.admin_url = admin_url
        self.n = n
        self.procs: list[subprocess.Popen[bytes]] = []
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.db_name: str | None = None
        self.port = 0

    def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        assert self.port != 6379
        self.redis_proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.out),
                "--logfile",
                str(self.out / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.redis = redis.Redis(
            port=self.port, client_name="cj-bench", socket_connect_timeout=1, retry=None
        )
        for _ in range(100):
            if self.redis_proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: see {self.out / 'redis.log'}")
            with contextlib.suppress(redis.ConnectionError):
                if self.redis.ping():
                    break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"redis-server did not start on {self.port}")
        self.db_name = "cj_bench_" + secrets.token_hex(6)
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.db_name}"')
        self.url = db_url(self.admin_url, self.db_name)
        create_schema(self.url)
        with psycopg.connect(self.url) as conn, conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO scan_tasks (user_id, target_domain) VALUES (%s, %s)",
                [(1, f"d{i}.example") for i in range(self.n)],
            )
            conn.execute("ANALYZE scan_tasks")
        self.broker = f"redis://127.0.0.1:{self.port}/0"
        self.config = self.out / "celery-janitor.toml"
        self.config.write_text(
            f"""[redis]
url = "{self.broker}"

[database]
url = "{self.url}"

[cleanup]
grace_seconds = 0
cleanup_on_startup = false

[logging]
app_log = "{self.out}/logs/app.log"
audit_log = "{self.out}/logs/audit.jsonl"

[archive]
dir = "{self.out}/archive"

[[owners]]
table = "scan_tasks"
id_column = "id"
tasks = ["{TASK}"]
id_from = "arg:0"
"""
        )

    def load(self) -> None:
        """Hammer Redis and PostgreSQL until stopped."""
        log = open(self.out / "load.log", "ab")  # noqa: SIM115 (closed with the processes)
        subprocess.run(
            ["pgbench", "-i", "-q", "-s", "1", self.url], check=True, stdout=log, stderr=log
        )
        self.procs.append(
            subprocess.Popen(
                [
                    "redis-benchmark",
                    "-p",
                    str(self.port),
                    "-c",
                    "4",
                    "-n",
                    "1000000000",
                    "-t",
                    "get,set",
                    "-r",
                    "100000",
                    "-q",
                    "-l",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        )
        self.procs.append(
            subprocess.Popen(
                ["pgbench", "-n", "-S", "-c", "2", "-j", "1", "-T", "36000", self.url],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        )
        log.close()
        time.sleep(1)
        for p in self.procs:
            if p.poll() is not None:
                raise RuntimeError(f"load generator exited: {p.args}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(10)
                if p.poll() is None:
                    p.kill()
                    p.wait()
        self.procs = []
        if self.redis_proc is not None:
            self.redis_proc.terminate()
            self.redis_proc.wait()
            self.redis_proc = None
        if self.db_name is not None:
            try:
                with psycopg.connect(self.admin_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            except psycopg.Error as err:
                print(f"bench: could not drop database {self.db_name}: {err}", file=sys.stderr)
            self.db_name = None

    def floor(self, n: int = 2000) -> dict[str, dict[str, float]]:
        """What one round trip costs right now, from Python, outside any worker: a redis-py
        `MGET` of two absent keys and a psycopg `SELECT` of one row by primary key (prepared).
        The guard can't beat the slower of the two."""
        redis_ns, pg_ns = [], []
        for i in range(n):
            start = time.perf_counter_ns()
            self.redis.mget(f"absent:{i}", "absent")
            redis_ns.append(time.perf_counter_ns() - start)
        with psycopg.connect(self.url, prepare_threshold=0) as conn:
            for i in range(n):
                start = time.perf_counter_ns()
                conn.execute(
                    "SELECT id::text FROM scan_tasks WHERE id = ANY(%s)", ([i % self.n + 1],)
                ).fetchall()
                pg_ns.append(time.perf_counter_ns() - start)
        return {"redis": summary(redis_ns), "pg": summary(pg_ns)}

    def publish(self) -> None:
        """N owned tasks, one per row, straight into the default queue."""
        from celery import Celery

        app = Celery("bench-producer", broker=self.broker)
        app.conf.update(task_serializer="json", broker_connection_retry_on_startup=True)
        with app.producer_or_acquire() as producer:
            for row in range(1, self.n + 1):
                app.send_task(TASK, args=[row], producer=producer)
        app.close()
        queued = int(self.redis.llen("celery"))
        if queued != self.n:
            raise RuntimeError(f"published {self.n}, queued {queued}")


def run_once(
    world: World, run_dir: Path, pool: str, acks_late: bool, guarded: bool
) -> dict[str, Any]:
    """Queue N tasks, run a worker on them, collect its timings."""
    timings = run_dir / "timings"
    timings.mkdir(parents=True)
    world.publish()
    world.redis.config_resetstat()
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("REDIS_URL", "DATABASE_URL", "CELERY_JANITOR_CONFIG")
    }
    env.update(
        BENCH_BROKER=world.broker,
        BENCH_ACKS_LATE="1" if acks_late else "0",
        BENCH_TIMINGS_DIR=str(timings),
        PYTHONPATH=str(BENCH),
    )
    if guarded:
        env["BENCH_CONFIG"] = str(world.config)
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "guard_app:app",
        "worker",
        f"--pool={pool}",
        "--loglevel=WARNING",
        "-n",
        f"bench-{run_dir.name}@localhost",
        "--without-mingle",
        "--without-gossip",
        "--without-heartbeat",
    ]
    if pool == "prefork":
        argv.append("--concurrency=1")
    load_before = loadavg()
    with open(run_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=run_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def read() -> list[str]:
        return [line for f in timings.glob("*.txt") for line in f.read_text().splitlines()]

    try:
        deadline = time.monotonic() + 300
        while True:
            if len(read()) >= world.n:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited: see {run_dir / 'worker.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{len(read())} of {world.n} tasks ran in 300 s")
            time.sleep(0.2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    lines = read()
    if len(lines) != world.n:
        raise RuntimeError(f"{len(lines)} timings for {world.n} tasks")
    stats = world.redis.info("commandstats")
    calls = {
        k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items() if isinstance(v, dict)
    }
    rows = [line.split() for line in lines]
    prerun = [int(r[0]) for r in rows]
    guard = [int(r[1]) for r in rows if int(r[1]) >= 0]
    native = [int(r[2]) for r in rows if int(r[2]) >= 0]
    walls = sorted(float(r[3]) for r in rows)
    if guarded and len(guard) != len(rows):
        raise RuntimeError(f"{len(rows) - len(guard)} tasks ran without the guard's timing")
    result = {
        "pool": pool,
        "acks_late": acks_late,
        "guarded": guarded,
        "n": len(rows),
        "load_before": load_before,
        "load_after": loadavg(),
        "prerun_to_body": summary(prerun),
        "guard": summary(guard) if guard else None,
        "native": summary(native) if native else None,
        "throughput": (len(walls) - 1) / (walls[-1] - walls[0]),
        "mget_per_task": calls.get("mget", 0) / len(rows),
        "redis_calls_per_task": sum(calls.values()) / len(rows),
        "redis_calls": calls,
    }
    (run_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


def label(pool: str, acks_late: bool) -> str:
    worker = "prefork -c1" if pool == "prefork" else "solo"
    return f"{worker}, acks_late {'on' if acks_late else 'off'}"


def report(
    results: list[dict[str, Any]], meta: dict[str, Any], floors: list[dict[str, Any]]
) -> str:
    def med(rs: list[dict[str, Any]], *path: str) -> float:
        vals = []
        for r in rs:
            v: Any = r
            for p in path:
                v = v[p]
            vals.append(v)
        return float(statistics.median(vals))

    out = [
        f"# Guard latency, {meta['date']}",
        "",
        f"N = {meta['n']} owned tasks per run (trivial body, every owner row present), "
        f"{meta['repeats']} runs per configuration, medians over the runs. "
        f"celery-janitor {meta['version']} (release build), Celery {meta['celery']}, "
        f"Redis {meta['redis']}, PostgreSQL {meta['postgres']}, {meta['cpus']} CPUs. "
        f"Load average (1, 5, 15 min) at start: {meta['load_start']}; at end: "
        f"{meta['load_end']}. Raw data: `{meta['raw']}`.",
        "",
    ]
    for loaded in (False, True):
        rs_all = [r for r in results if r["loaded"] == loaded]
        if not rs_all:
            continue
        out += [
            "## "
            + (
                "Loaded (redis-benchmark -c 4 GET/SET + pgbench -S -c 2 running)"
                if loaded
                else "Idle servers"
            ),
            "",
            "Guard time per task (µs): from entering the guard's wrapper of `run` to calling the "
            "task's `run`; native = `Guard.check` alone.",
            "",
            "| worker | guard p50 | p95 | p99 | max | native p50 | native p99 | runs' p99 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for pool in POOLS:
            for acks in (False, True):
                rs = [
                    r
                    for r in rs_all
                    if r["pool"] == pool and r["acks_late"] == acks and r["guarded"]
                ]
                if not rs:
                    continue
                p99s = ", ".join(f"{r['guard']['p99']:.0f}" for r in rs)
                out.append(
                    f"| {label(pool, acks)} | {med(rs, 'guard', 'p50'):.0f} | "
                    f"{med(rs, 'guard', 'p95'):.0f} | **{med(rs, 'guard', 'p99'):.0f}** | "
                    f"{med(rs, 'guard', 'max'):.0f} | {med(rs, 'native', 'p50'):.0f} | "
                    f"{med(rs, 'native', 'p99'):.0f} | {p99s} |"
                )
        fl = [f for f in floors if f["loaded"] == loaded]
        if fl:
            out += [
                "",
                "Floor, at the same time (µs, medians over the runs): one round trip from Python "
                "outside the worker, redis-py `MGET` and psycopg prepared `SELECT` by key.",
                "",
                "| round trip | p50 | p95 | p99 | max |",
                "|---|---|---|---|---|",
            ]
            for key, name in (("redis", "Redis MGET"), ("pg", "PostgreSQL SELECT")):
                out.append(
                    f"| {name} | "
                    + " | ".join(f"{med(fl, key, q):.0f}" for q in ("p50", "p95", "p99", "max"))
                    + " |"
                )
        out += [
            "",
            "End to end, without and with `install(app)`: `task_prerun` → body (µs; holds the "
            "guard when installed), throughput between the first and last body (tasks/s), "
            "Redis commands per task (idle only: loaded, redis-benchmark's commands count too).",
            "",
            "| worker | guard | prerun→body p50 | p99 | tasks/s | Redis cmds/task | MGET/task |",
            "|---|---|---|---|---|---|---|",
        ]
        for pool in POOLS:
            for acks in (False, True):
                for guarded in (False, True):
                    rs = [
                        r
                        for r in rs_all
                        if r["pool"] == pool and r["acks_late"] == acks and r["guarded"] == guarded
                    ]
                    if not rs:
                        continue
                    out.append(
                        f"| {label(pool, acks)} | {'installed' if guarded else 'none'} | "
                        f"{med(rs, 'prerun_to_body', 'p50'):.0f} | "
                        f"{med(rs, 'prerun_to_body', 'p99'):.0f} | "
                        f"{med(rs, 'throughput'):.0f} | "
                        + (f"{med(rs, 'redis_calls_per_task'):.2f}" if not loaded else "—")
                        + " | "
                        f"{med(rs, 'mget_per_task'):.2f} |"
                    )
        out.append("")
    return "\n".join(out)


def report_only(out: Path) -> int:
    done = out / "results.json"
    if done.exists():
        data = json.loads(done.read_text())
        print(report(data["runs"], data["meta"], data.get("floors", [])))
        return 0
    runs = []
    for path in sorted(out.glob("*/*/result.json")):
        r = json.loads(path.read_text())
        r["loaded"] = path.parent.parent.name == "loaded"
        runs.append(r)
    if not runs:
        print(f"bench: no runs in {out}", file=sys.stderr)
        return 1
    meta = json.loads((out / "meta.json").read_text())
    meta["load_end"] = runs[-1]["load_after"] + " (interrupted: last finished run)"
    counts = sorted(
        {
            sum(
                1
                for x in runs
                if x["loaded"] == r["loaded"]
                and x["pool"] == r["pool"]
                and x["acks_late"] == r["acks_late"]
                and x["guarded"] == r["guarded"]
            )
            for r in runs
        }
    )
    meta["repeats"] = "/".join(map(str, counts))
    floors = json.loads((out / "floors.json").read_text()) if (out / "floors.json").exists() else []
    print(report(runs, meta, floors))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=2000, help="tasks per run (default 2000)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--pools", default="prefork,solo")
    parser.add_argument("--no-loaded", action="store_true", help="skip the loaded variant")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--admin-url",
        default=os.environ.get("CJ_TEST_PG_ADMIN_URL", "postgresql://root@127.0.0.1:5432/postgres"),
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing: rebuild the report from the runs already in --out "
        "(an interrupted bench keeps every finished run's result.json)",
    )
    args = parser.parse_args()
    args.out = args.out.resolve()
    if args.report_only:
        return report_only(args.out)

    def on_term(*_: Any) -> None:
        raise Stop()

    signal.signal(signal.SIGTERM, on_term)
    import celery
    import celery_janitor

    pools = [p for p in args.pools.split(",") if p]
    meta = {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "n": args.n,
        "repeats": args.repeats,
        "version": getattr(celery_janitor, "__version__", "?"),
        "celery": celery.__version__,
        "redis": subprocess.run(
            ["redis-server", "--version"], check=True, capture_output=True, text=True
        )
        .stdout.split("v=")[1]
        .split()[0],
        "cpus": os.cpu_count(),
        "load_start": loadavg(),
        "raw": str(args.out.relative_to(REPO)) if args.out.is_relative_to(REPO) else str(args.out),
    }
    with psycopg.connect(args.admin_url) as conn:
        meta["postgres"] = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "meta.json").write_text(json.dumps(meta, indent=1))
    results: list[dict[str, Any]] = []
    floors: list[dict[str, Any]] = []
    for loaded in [False] if args.no_loaded else [False, True]:
        world = World(args.out / ("loaded" if loaded else "idle"), args.admin_url, args.n)
        try:
            world.start()
            if loaded:
                world.load()
            for rep in range(args.repeats):
                floors.append({"loaded": loaded, **world.floor()})
                (args.out / "floors.json").write_text(json.dumps(floors, indent=1))
                for pool in pools:
                    for acks in (False, True):
                        for guarded in (False, True):
                            name = f"{pool}-acks{int(acks)}-{'guard' if guarded else 'none'}-{rep}"
                            r = run_once(world, world.out / name, pool, acks, guarded)
                            r["loaded"] = loaded
                            g = r["guard"]
                            print(
                                f"bench: {'loaded ' if loaded else ''}{name}: "
                                f"{r['throughput']:.0f} tasks/s"
                                + (
                                    f", guard p50 {g['p50']:.0f} µs p99 {g['p99']:.0f} µs"
                                    if g
                                    else ""
                                )
                                + f", load {r['load_after']}",
                                file=sys.stderr,
                            )
                            results.append(r)
        finally:
            world.stop()
    meta["load_end"] = loadavg()
    (args.out / "results.json").write_text(
        json.dumps({"meta": meta, "runs": results, "floors": floors}, indent=1)
    )
    print(report(results, meta, floors))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Stop):
        sys.exit(130)
