"""The Celery app and the scan task: `celery -A scanner.tasks worker`.

`scan_domain_task` records a finding in `scan_results`, which references its `scan_tasks` row.
If the row was deleted while the task waited in Redis, that insert is a foreign-key violation.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery

from scanner import db

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("scanner", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_extended=True,
    broker_connection_retry_on_startup=True,
    task_acks_late=os.environ.get("SCANNER_ACKS_LATE") == "1",
)


@app.task(name="scanner.scan_domain_task", bind=True)
def scan_domain_task(
    self: Any, task_id: int, user_id: int, target_domain: str, config: dict[str, Any]
) -> dict[str, Any]:
    with db.connect(autocommit=False) as conn:
        conn.execute("UPDATE scan_tasks SET status = 'running' WHERE id = %s", (task_id,))
        conn.execute(
            "INSERT INTO scan_results (scan_task_id, target_domain, finding) VALUES (%s, %s, %s)",
            (task_id, target_domain, f"{target_domain} scanned for user {user_id}"),
        )
        conn.execute("UPDATE scan_tasks SET status = 'done' WHERE id = %s", (task_id,))
    return {"scan_task_id": task_id, "findings": 1}


# The fix: two lines. (SCANNER_WITHOUT_JANITOR=1 leaves them out, to see the crash first.)
if os.environ.get("SCANNER_WITHOUT_JANITOR") != "1":
    import celery_janitor

    celery_janitor.install(app)
