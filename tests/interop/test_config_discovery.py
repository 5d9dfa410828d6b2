"""Finding the config file without being told: `init`, then `status` in the same directory.

A new user runs `celery-janitor init`, edits the file, and runs `celery-janitor status`. Without
`--config` or `CELERY_JANITOR_CONFIG` the tool reads `./celery-janitor.toml`, else
`$XDG_CONFIG_HOME/celery-janitor/config.toml`, and the human `status` report says which file it
used. Relative paths in a file resolve next to it, wherever the tool runs.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support.janitor import janitor_binary
from support.world import ScannerWorld

pytestmark = pytest.mark.janitor


def run(cwd: Path, *args: str, xdg: Path) -> subprocess.CompletedProcess[str]:
    drop = {"REDIS_URL", "DATABASE_URL", "CELERY_JANITOR_CONFIG"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(NO_COLOR="1", XDG_CONFIG_HOME=str(xdg))
    return subprocess.run(
        [str(janitor_binary()), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def point_at_the_test_servers(path: Path, world: ScannerWorld) -> None:
    """The starter file names 127.0.0.1:6379 and an `app` database: the test's own servers
    replace them (the machine's Redis is never used)."""
    text = path.read_text()
    text = text.replace('url = "redis://127.0.0.1:6379/0"', f'url = "{world.redis_server.url}"')
    text = text.replace(
        'url = "postgresql://app@127.0.0.1:5432/app"', f"url = {json.dumps(world.database.url)}"
    )
    text = text.replace('"app.tasks.scan_domain_task"', '"scanner.scan_domain_task"')
    path.write_text(text)


def test_status_right_after_init_finds_the_file_and_says_so(
    world: ScannerWorld, tmp_path: Path
) -> None:
    workdir = tmp_path / "new-user"
    workdir.mkdir()
    xdg = tmp_path / "xdg"
    init = run(workdir, "init", xdg=xdg)
    assert init.returncode == 0, init.stderr
    assert "celery-janitor status" in init.stdout
    assert "CELERY_JANITOR_CONFIG" not in init.stdout
    point_at_the_test_servers(workdir / "celery-janitor.toml", world)

    status = run(workdir, "status", "--grace", "0", xdg=xdg)

    assert status.returncode == 0, status.stderr
    found = workdir / "celery-janitor.toml"
    assert f"Config file: {found} (found in the working directory)" in status.stdout
    data = json.loads(run(workdir, "status", "--json", "--grace", "0", xdg=xdg).stdout)
    assert "config" not in json.dumps(data).lower(), "the config path stays out of --json"


def test_the_user_config_dir_is_the_fallback_and_paths_resolve_next_to_the_file(
    world: ScannerWorld, tmp_path: Path
) -> None:
    xdg = tmp_path / "xdg"
    config_dir = xdg / "celery-janitor"
    config_dir.mkdir(parents=True)
    config = config_dir / "config.toml"
    init = run(tmp_path, "init", str(config), xdg=xdg)
    assert init.returncode == 0, init.stderr
    point_at_the_test_servers(config, world)
    config.write_text(
        config.read_text().replace(
            'audit_log = "logs/audit.jsonl"', 'audit_log = "audit-here.jsonl"'
        )
    )
    (row,) = world.add_rows(1)
    world.scan(row)
    world.delete_rows([row])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    status = run(elsewhere, "status", "--grace", "0", xdg=xdg)
    assert status.returncode == 0, status.stderr
    assert f"Config file: {config} (found in the user config directory)" in status.stdout

    cleanup = run(elsewhere, "cleanup-orphaned", "--grace", "0", "--json", xdg=xdg)
    assert cleanup.returncode == 0, cleanup.stderr
    assert json.loads(cleanup.stdout)["removed"]["queue"] == 1
    assert (config_dir / "audit-here.jsonl").read_text().strip()
    assert not (elsewhere / "audit-here.jsonl").exists()
