"""Fills a fresh redis-server and an empty PostgreSQL database with a Celery deployment of a
given size, for bench/run.

Why this exists: the benchmark must measure celery-janitor against bytes real Celery wrote, at
sizes (100k+) that `apply_async` alone would take minutes to produce. So:

1. A few hundred templates are written by the real scanner app (tests/interop/scanner):
   `apply_async` for queue messages (default list, priority-6 sub-list, some unrelated
   `send_email`), countdown tasks taken into `unacked`/`unacked_index` by kombu's own
   `basic_get` (the way a worker holds them), and results stored by Celery's backend
   (`result_extended`, SUCCESS and FAILURE). The template keys are then deleted.
2. The templates are replicated with fresh ids (task id, root id, correlation id, delivery tag)
   and a row id each, re-encoded with kombu's `json.dumps` (see tests/interop/support/envelopes.py;
   a template replicated with its own ids is checked to give back Celery's exact bytes).

Sizes, for N: N queue messages (1 in 20 an unowned `send_email`, a third in the `celery\\x06\\x166`
sub-list), N/10 `unacked` entries, N/5 result keys (TTL 1 day, like Celery's default). Every scan
task names its own row id; rows exist for the ids where `id % 2 == 0` (or per
`--orphan-fraction`), so about half of everything owned is orphaned. Prints a JSON summary.

Only the server named by --port is written to, and only after checking it is empty; port 6379
is refused.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "interop"))

from celery.app.task import Context  # noqa: E402

from scanner.app import EMAIL_TASK, SCAN_TASK, make_app  # noqa: E402
from scanner.schema import create_schema  # noqa: E402
from support import envelopes  # noqa: E402

DEFAULT_LIST = b"celery"
SUB_LIST = b"celery\x06\x166"
PIPELINE = 2000
RESULT_TTL = 86400


def owned(row_id: int, fraction: float) -> bool:
    """Whether the row exists: deterministic, about `1 - fraction` of ids."""
    if fraction == 0.5:
        return row_id % 2 == 0
    return random.Random(row_id).random() >= fraction


def templates(client: redis.Redis, url: str, db_url: str) -> dict[str, list[bytes]]:
    """Bytes written by real Celery/kombu; the keys holding them are deleted afterwards."""
    app = make_app(url, url, db_url)
    scan = app.tasks[SCAN_TASK]
    email = app.tasks[EMAIL_TASK]
    try:
        # unacked: countdown tasks taken by kombu's basic_get without ack (QoS.append writes
        # `unacked` and `unacked_index` exactly as a worker holding them does).
        for i in range(40):
            scan.apply_async(
                (i + 1, 7, f"site{i + 1}.example", {"ports": [80, 443]}),
                countdown=3600,
                **({"priority": 6} if i % 3 == 0 else {}),
            )
        with app.connection_for_write() as conn:
            channel = conn.default_channel
            while channel.basic_get("celery", no_ack=False) is not None:
                pass
            channel.qos.restore_at_shutdown = False
        unacked: list[bytes] = list(client.hvals("unacked"))  # type: ignore[arg-type]
        client.delete("unacked", "unacked_index", DEFAULT_LIST, SUB_LIST)

        # queue: plain apply_async.
        for i in range(300):
            options: dict[str, Any] = {"priority": 6} if i % 3 == 0 else {}
            scan.apply_async((i + 1, 7, f"site{i + 1}.example", {"ports": [80, 443]}), **options)
            if i % 20 == 0:
                email.apply_async(("ops@example.com", f"report {i}"), **options)
        queue: dict[str, list[bytes]] = {
            "default": list(client.lrange(DEFAULT_LIST, 0, -1)),  # type: ignore[arg-type]
            "sub": list(client.lrange(SUB_LIST, 0, -1)),  # type: ignore[arg-type]
        }
        client.delete(DEFAULT_LIST, SUB_LIST)

        # results: stored by Celery's backend, as a worker does.
        for i in range(40):
            task_id = str(uuid.uuid4())
            request = Context(
                id=task_id,
                task=SCAN_TASK,
                args=[i + 1, 7, f"site{i + 1}.example", {}],
                kwargs={},
                hostname="scanner1@localhost",
                retries=0,
                delivery_info={"routing_key": "celery"},
            )
            if i % 4 == 0:
                app.backend.store_result(
                    task_id,
                    RuntimeError("scan failed"),
                    "FAILURE",
                    traceback="Traceback (most recent call last): ...",
                    request=request,
                )
            else:
                app.backend.store_result(
                    task_id, {"scan_task_id": i + 1, "findings": 1}, "SUCCESS", request=request
                )
        result_keys = list(client.scan_iter(match="celery-task-meta-*", count=1000))
        results: list[bytes] = [v for v in client.mget(result_keys) if v]  # type: ignore[misc]
        client.delete(*result_keys)
    finally:
        app.close()
    return {
        "unacked": unacked,
        "default": queue["default"],
        "sub": queue["sub"],
        "results": results,
    }


def split_by_task(messages: list[bytes]) -> tuple[list[bytes], list[bytes]]:
    scans: list[bytes] = []
    emails: list[bytes] = []
    for m in messages:
        (scans if json.loads(m)["headers"]["task"] == SCAN_TASK else emails).append(m)
    return scans, emails


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("-n", type=int, required=True, help="queue messages")
    parser.add_argument("--orphan-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    if args.port == 6379:
        parser.error("refusing to fill the machine's Redis on 6379")
    rng = random.Random(args.seed)
    started = time.monotonic()
    url = f"redis://127.0.0.1:{args.port}/0"
    client = redis.Redis(host="127.0.0.1", port=args.port)
    if client.dbsize():
        parser.error(f"redis on port {args.port} is not empty; bench/run starts a fresh one")
    create_schema(args.database_url)

    t = templates(client, url, args.database_url)
    envelopes.check_round_trip(t["default"] + t["sub"], t["unacked"], t["results"])
    default_scans, default_emails = split_by_task(t["default"])
    sub_scans, sub_emails = split_by_task(t["sub"])

    n = args.n
    n_unacked, n_results = n // 10, n // 5
    expected = {"queue": 0, "unacked": 0, "result": 0}
    owners = 0
    pipe = client.pipeline(transaction=False)

    def flush(force: bool = False) -> None:
        if force or len(pipe) >= PIPELINE:
            pipe.execute()

    # Queue messages: ids 1..n.
    for i in range(1, n + 1):
        sub = i % 3 == 0
        key = SUB_LIST if sub else DEFAULT_LIST
        if i % 20 == 0:
            copy = envelopes.replicate_message(rng.choice(sub_emails if sub else default_emails))
        else:
            copy = envelopes.replicate_message(
                rng.choice(sub_scans if sub else default_scans), row_id=i
            )
            owners += 1
            expected["queue"] += not owned(i, args.orphan_fraction)
        pipe.lpush(key, copy.raw)
        flush()
    # unacked: ids n+1..n+n/10, scored up to 10 minutes ago.
    now = time.time()
    for j in range(1, n_unacked + 1):
        row = n + j
        copy = envelopes.replicate_unacked(rng.choice(t["unacked"]), row_id=row)
        assert copy.delivery_tag is not None
        pipe.hset("unacked", copy.delivery_tag, copy.raw)
        pipe.zadd("unacked_index", {copy.delivery_tag: now - rng.uniform(0, 600)})
        expected["unacked"] += not owned(row, args.orphan_fraction)
        owners += 1
        flush()
    # results: ids after those.
    for k in range(1, n_results + 1):
        row = n + n_unacked + k
        copy = envelopes.replicate_result(rng.choice(t["results"]), row_id=row)
        pipe.set(f"celery-task-meta-{copy.task_id}", copy.raw, ex=RESULT_TTL)
        expected["result"] += not owned(row, args.orphan_fraction)
        owners += 1
        flush()
    flush(force=True)
    filled = time.monotonic()

    # Owner rows for the ids that exist.
    top = n + n_unacked + n_results
    keep = [i for i in range(1, top + 1) if owned(i, args.orphan_fraction)]
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        with conn.cursor().copy(
            "COPY scan_tasks (id, user_id, target_domain, status) FROM STDIN"
        ) as copy_in:
            for i in keep:
                copy_in.write_row((i, 7, f"site{i}.example", "pending"))
        conn.execute("SELECT setval('scan_tasks_id_seq', %s)", (top + 1,))
        conn.execute("ANALYZE scan_tasks")

    info = client.info("memory")
    summary = {
        "n": n,
        "queue_messages": n,
        "unowned_messages": n // 20,
        "unacked": n_unacked,
        "results": n_results,
        "owned_entries": owners,
        "rows": len(keep),
        "expected_orphans": expected,
        "redis_keys": client.dbsize(),
        "redis_used_memory_bytes": info["used_memory"],
        "fill_seconds": round(filled - started, 2),
        "total_seconds": round(time.monotonic() - started, 2),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
