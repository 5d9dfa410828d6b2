"""Unreachable services and bad configuration: named exit codes and a one-line error.

Exit codes (docs/cli.md): 2 usage or configuration error, 3 Redis unreachable, 4 database
unreachable. Never a panic.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import janitor_config
from support import snapshot
from support.janitor import Janitor, JanitorRun
from support.servers import PostgresDatabase, closed_port
from support.world import ScannerWorld

pytestmark = pytest.mark.janitor

COMMANDS = [
    ("status", "--json"),
    ("tasks", "--orphaned", "--json"),
    ("cleanup-orphaned", "--dry-run", "--json"),
]


def _one_line_error(run: JanitorRun, *words: str) -> None:
    """The error itself is one line naming the service; at most a couple of indented hint lines
    may follow. No panic, no backtrace, nothing on stdout."""
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, "expected a one-line error\n" + run.describe()
    assert all(line[:1].isspace() for line in lines[1:]), "one error line only\n" + run.describe()
    assert "panicked" not in run.stderr and "backtrace" not in run.stderr.lower(), run.describe()
    assert any(w in lines[0].lower() for w in words), run.describe()
    assert run.stdout.strip() == "", run.describe()


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_unreachable_redis_exits_3(
    database: PostgresDatabase, tmp_path: Path, command: tuple[str, ...]
) -> None:
    janitor = Janitor(
        tmp_path / "janitor",
        {
            "redis": {"url": f"redis://127.0.0.1:{closed_port()}/0"},
            "database": {"url": database.url},
            "owners": [
                {
                    "table": "scan_tasks",
                    "id_column": "id",
                    "tasks": ["scanner.scan_domain_task"],
                    "id_from": "arg:0",
                }
            ],
        },
    )

    run = janitor.run(*command, timeout=60)

    assert run.returncode == 3, run.describe()
    _one_line_error(run, "redis")


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[0])
def test_unreachable_database_exits_4(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], command: tuple[str, ...]
) -> None:
    rows = world.add_rows(1)
    world.scan(rows[0])  # an entry whose owner must be looked up
    config = janitor_config(world)
    config["database"]["url"] = f"postgresql://root@127.0.0.1:{closed_port()}/nowhere"
    janitor = make_janitor(world, config=config)
    before = world.snapshot()

    run = janitor.run(*command, timeout=60)

    assert run.returncode == 4, run.describe()
    _one_line_error(run, "database", "postgres")
    assert snapshot.differences(before, world.snapshot().without_prefix()) == []


def test_database_password_never_reaches_the_error_message(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    world.scan(world.add_rows(1)[0])
    config = janitor_config(world)
    config["database"]["url"] = f"postgresql://root:s3cr3t-pw@127.0.0.1:{closed_port()}/nowhere"
    janitor = make_janitor(world, config=config)

    run = janitor.run("status", "--json", timeout=60)

    assert run.returncode == 4, run.describe()
    assert "s3cr3t-pw" not in run.stderr + run.stdout, run.describe()
    for log in (janitor.workdir / "logs").glob("*"):
        assert "s3cr3t-pw" not in log.read_text(errors="replace"), log


@pytest.mark.parametrize("case", ["toml-syntax", "bad-id-from", "unknown-scheme", "missing-file"])
def test_bad_configuration_exits_2(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], case: str
) -> None:
    janitor = make_janitor(world)
    if case == "toml-syntax":
        janitor.write_config("[redis\nurl = ")
    elif case == "bad-id-from":
        janitor.config["owners"][0]["id_from"] = "argument-zero"
        janitor.write_config()
    elif case == "unknown-scheme":
        janitor.config["database"]["url"] = "mongodb://127.0.0.1/db"
        janitor.write_config()
    else:
        janitor.config_path.unlink()

    run = janitor.run("status", "--json", timeout=60)

    assert run.returncode == 2, run.describe()
    assert "panicked" not in run.stderr, run.describe()
    assert run.stderr.strip(), run.describe()


def test_unknown_command_is_a_usage_error(world: ScannerWorld, janitor: Janitor) -> None:
    run = janitor.run("make-coffee")
    assert run.returncode == 2, run.describe()
