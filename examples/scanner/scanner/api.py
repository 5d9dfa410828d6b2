"""The scanner's HTTP API: `uvicorn scanner.api:api`.

`POST /scans` creates a scan and queues its task; `DELETE /scans/{id}` deletes a scan (and its
results), whatever Celery still holds for it. The janitor's own endpoints are mounted under
`/api/v1/cache`, behind the app's own admin check, when the `fastapi` extra is installed.
"""

from __future__ import annotations

import hmac
import os
from typing import Any

from fastapi import Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel

from scanner import db
from scanner.tasks import scan_domain_task

api = FastAPI(title="scanner")


class NewScan(BaseModel):
    user_id: int
    target_domain: str


@api.on_event("startup")
def _schema() -> None:
    db.create_schema()


@api.post("/scans", status_code=201)
def create_scan(scan: NewScan) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(
            "INSERT INTO scan_tasks (user_id, target_domain) VALUES (%s, %s) RETURNING id",
            (scan.user_id, scan.target_domain),
        ).fetchone()
    assert row is not None
    scan_id = int(str(row[0]))
    result = scan_domain_task.delay(scan_id, scan.user_id, scan.target_domain, {})
    return {"id": scan_id, "celery_task_id": result.id}


@api.delete("/scans/{scan_id}", status_code=204)
def delete_scan(scan_id: int) -> None:
    with db.connect() as conn:
        deleted = conn.execute("DELETE FROM scan_tasks WHERE id = %s", (scan_id,)).rowcount
    if not deleted:
        raise HTTPException(404, "no such scan")


def require_admin(authorization: str = Header(default="")) -> str:
    """The app's own admin check (here: one token from SCANNER_ADMIN_TOKEN); the janitor's
    endpoints reuse it, and the returned name is the actor in the janitor's audit log."""
    token = os.environ.get("SCANNER_ADMIN_TOKEN", "")
    if not token or not hmac.compare_digest(authorization, f"Bearer {token}"):
        raise HTTPException(401, "admin token required")
    return "scanner-admin"


try:
    from celery_janitor.fastapi import router as janitor_router
except ImportError:  # celery-janitor installed without its fastapi extra
    pass
else:
    api.include_router(
        janitor_router(
            read_dependencies=[Depends(require_admin)],
            write_dependencies=[Depends(require_admin)],
            actor=require_admin,
        )
    )
