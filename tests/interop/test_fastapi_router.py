"""`celery_janitor.fastapi.router()` mounted in a FastAPI app of the test's own, called through
FastAPI's TestClient against real Celery state: the host app's dependencies guard reads and
writes, the actor dependency names the user in the audit log, the answers are the CLI's JSON
shapes, and failures answer `{"error": {"code": kind, ...}}` with 400, 409 or 503.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery_janitor.fastapi import router
from fastapi import FastAPI, Header, HTTPException
from fastapi.testclient import TestClient

from support.janitor import Janitor, janitor_config, render_toml
from support.world import ScannerWorld

pytestmark = [pytest.mark.janitor]

READ = {"Authorization": "Bearer reader"}
WRITE = {"Authorization": "Bearer writer", "X-User": "alice@example.com"}


def can_read(authorization: str = Header("")) -> None:
    if authorization not in ("Bearer reader", "Bearer writer"):
        raise HTTPException(status_code=401, detail="who are you?")


def can_write(authorization: str = Header("")) -> None:
    if authorization != "Bearer writer":
        raise HTTPException(status_code=403, detail="read only")


def current_user(x_user: str = Header("")) -> str | None:
    return x_user or None


def client_for(config: Path) -> TestClient:
    app = FastAPI()
    app.include_router(
        router(
            read_dependencies=[can_read],
            write_dependencies=[can_read, can_write],
            actor=current_user,
            config_path=config,
        )
    )
    return TestClient(app)


@pytest.fixture
def client(janitor: Janitor, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    monkeypatch.chdir(janitor.workdir)  # the config's relative log and archive paths
    with client_for(janitor.config_path) as c:
        yield c


def orphans(world: ScannerWorld) -> None:
    """Four queued scans, two of whose rows are deleted."""
    rows = world.add_rows(4)
    for row in rows:
        world.scan(row)
    world.delete_rows(rows[:2])


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert list(body) == ["error"], body
    error: dict[str, Any] = body["error"]
    return error


def test_reads_and_writes_are_guarded_by_the_apps_dependencies(
    world: ScannerWorld, client: TestClient
) -> None:
    orphans(world)
    assert client.get("/api/v1/cache/status").status_code == 401
    assert client.get("/api/v1/cache/celery-tasks").status_code == 401
    for path in ("cleanup/orphaned-tasks", "cleanup/full"):
        assert client.post(f"/api/v1/cache/{path}", json={"dry_run": True}).status_code == 401
        answer = client.post(f"/api/v1/cache/{path}", headers=READ, json={"dry_run": True})
        assert answer.status_code == 403
    assert world.queued_count() == 4, "a refused request changed nothing"


def test_the_endpoints_answer_the_cli_shapes(
    world: ScannerWorld, janitor: Janitor, client: TestClient
) -> None:
    orphans(world)
    status = client.get("/api/v1/cache/status", headers=READ, params={"grace_seconds": 0})
    assert status.status_code == 200, status.text
    cli_status = janitor.run("status", "--json", "--grace", "0").expect_json()
    assert status.json().keys() == cli_status.keys()
    assert status.json()["tasks"] == cli_status["tasks"]

    everything = janitor.run("tasks", "--json", "--grace", "0").expect_json()
    page = client.get("/api/v1/cache/celery-tasks", headers=READ, params={"grace_seconds": 0})
    assert page.status_code == 200, page.text
    assert page.json() == {"items": everything, "next_cursor": None}

    items: list[Any] = []
    params: dict[str, Any] = {"grace_seconds": 0, "limit": 3}
    while True:
        answer = client.get("/api/v1/cache/celery-tasks", headers=READ, params=params)
        assert answer.status_code == 200, answer.text
        items += answer.json()["items"]
        if answer.json()["next_cursor"] is None:
            break
        params["cursor"] = answer.json()["next_cursor"]
    assert items == everything

    filtered = client.get(
        "/api/v1/cache/celery-tasks",
        headers=READ,
        params={"grace_seconds": 0, "state": ["orphaned", "live"], "location": "queue"},
    )
    assert sorted(r["state"] for r in filtered.json()["items"]) == ["live"] * 2 + ["orphaned"] * 2
    only_orphans = client.get(
        "/api/v1/cache/celery-tasks",
        headers=READ,
        params={"grace_seconds": 0, "orphaned": True, "queue": "celery"},
    )
    assert [r["state"] for r in only_orphans.json()["items"]] == ["orphaned"] * 2

    preview = client.post(
        "/api/v1/cache/cleanup/orphaned-tasks",
        headers=WRITE,
        json={"dry_run": True, "grace_seconds": 0},
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["dry_run"] is True and preview.json()["found"]["queue"] == 2
    full = client.post(
        "/api/v1/cache/cleanup/full",
        headers=WRITE,
        json={"dry_run": True, "grace_seconds": 0, "max_age_hours": 1},
    )
    assert full.status_code == 200, full.text
    cli_full = janitor.run("full-cleanup", "--dry-run", "--json", "--grace", "0").expect_json()
    assert full.json().keys() == cli_full.keys()
    assert world.queued_count() == 4, "dry runs changed nothing"

    done = client.post(
        "/api/v1/cache/cleanup/orphaned-tasks", headers=WRITE, json={"grace_seconds": 0}
    )
    assert done.status_code == 200, done.text
    assert done.json()["removed"]["queue"] == 2
    assert world.queued_count() == 2
    audit = (janitor.workdir / "logs/audit.jsonl").read_text().splitlines()
    removals = [json.loads(line) for line in audit if '"remove"' in line]
    assert len(removals) == 2
    assert {r["actor"] for r in removals} == {"alice@example.com"}


def test_failures_answer_an_error_object_with_their_status(
    world: ScannerWorld, janitor: Janitor, client: TestClient, tmp_path: Path
) -> None:
    orphans(world)
    for limit in (0, 10_001):
        answer = client.get("/api/v1/cache/celery-tasks", headers=READ, params={"limit": limit})
        assert answer.status_code == 400, answer.text
        assert error_of(answer)["code"] == "usage"
    answer = client.get("/api/v1/cache/celery-tasks", headers=READ, params={"cursor": "nope"})
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "bad_cursor"
    answer = client.get("/api/v1/cache/celery-tasks", headers=READ, params={"state": "asleep"})
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "usage"

    world.redis.set(b"celery-janitor:lock", b'{"host": "elsewhere", "pid": 1}', ex=3600)
    answer = client.post(
        "/api/v1/cache/cleanup/orphaned-tasks", headers=WRITE, json={"grace_seconds": 0}
    )
    assert answer.status_code == 409, answer.text
    assert error_of(answer)["code"] == "busy" and error_of(answer)["hint"]
    world.redis.delete(b"celery-janitor:lock")
    assert world.queued_count() == 4

    closed = tmp_path / "closed.toml"
    closed.write_text(render_toml(janitor_config(world, redis_url="redis://:s3cret@127.0.0.1:1/0")))
    with client_for(closed) as down:
        answer = down.get("/api/v1/cache/status", headers=READ)
    assert answer.status_code == 503, answer.text
    assert error_of(answer)["code"] == "redis_unreachable"
    assert "s3cret" not in answer.text

    bad = tmp_path / "bad.toml"
    bad.write_text("[redis\n")
    with client_for(bad) as broken:
        answer = broken.get("/api/v1/cache/status", headers=READ)
    assert answer.status_code == 400
    assert error_of(answer)["code"] == "config"
