"""Configuration as docs/cli.md fixes it: flag > environment > file > default, and the file's
`[logging]` / `[archive]` paths are really used."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from conftest import janitor_config
from support.janitor import Janitor
from support.servers import closed_port
from support.world import ScannerWorld

pytestmark = pytest.mark.janitor


def test_file_paths_for_logs_and_archive_are_used(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    rows = world.add_rows(2)
    for row in rows:
        world.scan(row)
    world.delete_rows(rows[:1])
    config = janitor_config(world)
    config["logging"] = {"app_log": "var/janitor-app.log", "audit_log": "var/janitor-audit.jsonl"}
    config["archive"] = {"dir": "kept-archive"}
    janitor = make_janitor(world, config=config)

    report = janitor.run("cleanup-orphaned", "--json").expect_json()

    assert report["removed"]["queue"] == 1
    workdir = janitor.workdir
    assert (workdir / "var/janitor-app.log").is_file()
    assert (workdir / "var/janitor-audit.jsonl").read_text().strip()
    assert [p for p in (workdir / "kept-archive").rglob("*") if p.is_file()]
    assert not (workdir / "logs").exists(), "the default log dir was used despite [logging]"
    assert not (workdir / "archive").exists(), "the default archive dir was used despite [archive]"


def test_environment_overrides_the_file_and_flags_override_the_environment(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    dead = f"redis://127.0.0.1:{closed_port()}/0"
    live = world.redis_server.url
    config = janitor_config(world)
    config["redis"]["url"] = dead
    janitor = make_janitor(world, config=config)

    assert janitor.run("status", "--json").returncode == 3  # the file's URL is dead
    janitor.run("status", "--json", env={"REDIS_URL": live}).expect_json()
    janitor.run("--redis-url", live, "status", "--json", env={"REDIS_URL": dead}).expect_json()
    run = janitor.run("--redis-url", dead, "status", "--json", env={"REDIS_URL": live})
    assert run.returncode == 3, run.describe()


def test_config_file_can_be_named_by_the_environment(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    janitor = make_janitor(world)
    binary = janitor.argv([])[0]
    proc = subprocess.run(
        [binary, "status", "--json"],
        check=False,
        cwd=janitor.workdir,
        env=janitor.env({"CELERY_JANITOR_CONFIG": str(janitor.config_path)}),
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()


def test_init_writes_a_commented_starter_file_that_parses(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    janitor = make_janitor(world)
    target = janitor.workdir / "starter.toml"
    run = janitor.run("init", str(target))
    assert run.returncode == 0, run.describe()
    text = target.read_text()
    for key in (
        "[redis]",
        "[database]",
        "[cleanup]",
        "grace_seconds",
        "[[owners]]",
        "id_from",
        "claim_unnamed_results",
        "lost_after_minutes",
    ):
        assert key in text, key
    assert text.count("#") >= 10, "the starter file should explain its keys in comments"
    again = janitor.run("init", str(target))
    assert again.returncode != 0, "init must not overwrite an existing file without --force"
    assert janitor.run("init", str(target), "--force").returncode == 0
