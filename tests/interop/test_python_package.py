"""The Python package `celery_janitor` as `pip install .` put it in the test venv (never the
source tree): the console script and `python -m celery_janitor` are the CLI, the API returns the
CLI's JSON shapes, failures raise `JanitorError` with the kind of their error, and importing the
package connects to nothing and starts no thread.

Run by scripts/test from target/test-venv, where the package is installed.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from support.janitor import REPO_ROOT, Janitor
from support.world import ScannerWorld

try:
    import celery_janitor
except ImportError as err:  # pragma: no cover - a setup problem, reported as a failure
    raise ImportError(
        "celery_janitor is not installed in this venv: run scripts/test (it installs the "
        "package into target/test-venv), or `pip install .` at the repository root"
    ) from err

pytestmark = [pytest.mark.janitor]

BIN_DIR = Path(sys.executable).parent


def orphans_in_redis(world: ScannerWorld) -> tuple[list[int], list[str]]:
    """Five queued scans, three of whose rows are deleted (queued orphans), and a SUCCESS
    result of a deleted row: real Celery messages and result keys."""
    rows = world.add_rows(6)
    task_ids = [world.scan(row) for row in rows[:5]]
    world.store_result(task_ids[0] + "-done", "SUCCESS", rows[5])
    world.delete_rows([rows[0], rows[1], rows[2], rows[5]])
    return rows, task_ids


def test_the_package_is_the_installed_one() -> None:
    installed = Path(celery_janitor.__file__).resolve()
    assert REPO_ROOT / "python" not in installed.parents, installed
    assert "site-packages" in installed.parts, installed
    assert (installed.parent / "py.typed").exists()
    assert (installed.parent / "_native.pyi").exists()
    assert isinstance(celery_janitor.__version__, str) and celery_janitor.__version__


def test_importing_opens_no_socket_and_starts_no_thread() -> None:
    """In a fresh interpreter: no new thread (Python's or native: /proc/self/task), no new file
    descriptor, no socket."""
    script = textwrap.dedent(
        """
        import json, os, threading

        def fds():
            out = {}
            for fd in os.listdir("/proc/self/fd"):
                try:
                    out[fd] = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    pass
            return out

        before = (threading.active_count(), len(os.listdir("/proc/self/task")), fds())
        import celery_janitor
        import celery_janitor.__main__
        after = (threading.active_count(), len(os.listdir("/proc/self/task")), fds())
        print(json.dumps({"before": before, "after": after}))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    seen = json.loads(proc.stdout)
    (threads_0, tasks_0, fds_0), (threads_1, tasks_1, fds_1) = seen["before"], seen["after"]
    assert threads_1 == threads_0, "importing started a Python thread"
    assert tasks_1 == tasks_0, "importing started a native thread"
    new = {fd: target for fd, target in fds_1.items() if fds_0.get(fd) != target}
    assert new == {}, f"importing opened file descriptors: {new}"
    assert not any("socket" in t for t in fds_1.values())


def test_a_call_leaves_no_thread_behind(tmp_path: Path) -> None:
    """Each call builds its runtime and drops it before returning: afterwards the process has
    the native threads it had before (a prefork parent that forks later inherits none)."""
    script = textwrap.dedent(
        """
        import os
        import celery_janitor

        os.environ["REDIS_URL"] = "redis://127.0.0.1:1/0"
        os.environ["DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
        before = len(os.listdir("/proc/self/task"))
        for _ in range(3):
            try:
                celery_janitor.status()
            except celery_janitor.JanitorError as err:
                assert err.kind == "redis_unreachable", err
        print(before, len(os.listdir("/proc/self/task")))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        cwd=tmp_path,  # the app log it writes
    )
    before, after = proc.stdout.split()
    assert after == before, proc.stdout


def cli_outputs(janitor: Janitor, *args: str) -> dict[str, subprocess.CompletedProcess[str]]:
    """The same command line run by the Rust binary, the console script and `python -m`."""
    argv = ["--config", str(janitor.config_path), *args]
    commands = {
        "binary": [str(janitor.argv([])[0]), *argv],
        "console script": [str(BIN_DIR / "celery-janitor"), *argv],
        "python -m": [sys.executable, "-m", "celery_janitor", *argv],
    }
    return {
        name: subprocess.run(
            command,
            cwd=janitor.workdir,
            env=janitor.env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        for name, command in commands.items()
    }


def without_live_numbers(status: dict[str, Any]) -> dict[str, Any]:
    """`status --json` without what changes between two runs (memory, client connections)."""
    redis = {k: v for k, v in status["redis"].items() if k == "connected"}
    return {**status, "redis": redis}


def test_console_script_and_module_print_what_the_binary_prints(
    world: ScannerWorld, janitor: Janitor
) -> None:
    orphans_in_redis(world)
    runs = cli_outputs(janitor, "status", "--json", "--grace", "0")
    for name, run in runs.items():
        assert run.returncode == 0, f"{name}: {run.stderr}"
    statuses = {name: without_live_numbers(json.loads(r.stdout)) for name, r in runs.items()}
    assert statuses["console script"] == statuses["binary"]
    assert statuses["python -m"] == statuses["binary"]
    assert statuses["binary"]["tasks"]["orphaned"] == 4

    # A listing changes nothing between runs: the same bytes.
    runs = cli_outputs(janitor, "tasks", "--json", "--grace", "0")
    assert {r.stdout for r in runs.values()} == {runs["binary"].stdout}
    # Failures: the same exit code and message.
    runs = cli_outputs(janitor, "status", "--no-such-flag")
    assert {(r.returncode, r.stderr) for r in runs.values()} == {(2, runs["binary"].stderr)}
    runs = cli_outputs(janitor, "--redis-url", "redis://:pw@127.0.0.1:1/0", "status")
    assert {(r.returncode, r.stderr) for r in runs.values()} == {(3, runs["binary"].stderr)}


def test_the_api_returns_the_cli_shapes(
    world: ScannerWorld, janitor: Janitor, monkeypatch: pytest.MonkeyPatch
) -> None:
    orphans_in_redis(world)
    monkeypatch.chdir(janitor.workdir)  # the config's relative log and archive paths
    config = janitor.config_path

    status = celery_janitor.status(config_path=config, grace_seconds=0)
    cli_status = janitor.run("status", "--json", "--grace", "0").expect_json()
    assert without_live_numbers(status) == without_live_numbers(cli_status)

    orphans = celery_janitor.orphaned_tasks(config_path=config, grace_seconds=0)
    assert orphans == janitor.run("tasks", "--orphaned", "--json", "--grace", "0").expect_json()
    assert len(orphans) == 4

    everything = janitor.run("tasks", "--json", "--grace", "0").expect_json()
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = celery_janitor.list_tasks(
            config_path=config, grace_seconds=0, limit=2, cursor=cursor
        )
        assert list(page) == ["items", "next_cursor"]
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert items == everything

    queued = celery_janitor.list_tasks(
        config_path=config, grace_seconds=0, states=["orphaned"], locations=["queue"]
    )
    assert len(queued["items"]) == 3 and queued["next_cursor"] is None
    in_celery = celery_janitor.list_tasks(config_path=config, grace_seconds=0, queue="celery")
    assert [r["location"] for r in in_celery["items"]] == ["queue"] * 5

    preview = celery_janitor.cleanup_orphaned(config_path=config, grace_seconds=0, dry_run=True)
    cli_preview = janitor.run("cleanup-orphaned", "--dry-run", "--json", "--grace", "0")
    assert preview.keys() == cli_preview.expect_json().keys()
    assert preview["dry_run"] is True and preview["found"]["queue"] == 3

    full_preview = celery_janitor.full_cleanup(
        config_path=config, grace_seconds=0, max_age_hours=1, dry_run=True
    )
    cli_full = janitor.run("full-cleanup", "--dry-run", "--json", "--grace", "0").expect_json()
    assert full_preview.keys() == cli_full.keys()

    done = celery_janitor.cleanup_orphaned(config_path=config, grace_seconds=0, actor="api-test")
    assert done["dry_run"] is False
    assert done["removed"]["queue"] == 3 and done["removed"]["result"] == 1
    assert celery_janitor.orphaned_tasks(config_path=config, grace_seconds=0) == []
    audit = (janitor.workdir / "logs/audit.jsonl").read_text().splitlines()
    removals = [json.loads(line) for line in audit if '"remove"' in line]
    assert len(removals) == 4
    assert {r["actor"] for r in removals} == {"api-test"}


def test_errors_have_the_kind_of_their_cause(
    world: ScannerWorld, janitor: Janitor, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(janitor.workdir)
    config = janitor.config_path

    monkeypatch.setenv("REDIS_URL", "redis://:s3cret@127.0.0.1:1/0")  # env beats the file
    with pytest.raises(celery_janitor.JanitorError) as caught:
        celery_janitor.status(config_path=config)
    err = caught.value
    assert (err.kind, err.code) == ("redis_unreachable", 3)
    assert "s3cret" not in str(err) and "s3cret" not in repr(err.args)
    assert err.hint and "Redis" in err.hint
    assert str(err) == err.message
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.message, copy.code, copy.hint, copy.kind) == err.args
    monkeypatch.delenv("REDIS_URL")

    bad = tmp_path / "bad.toml"
    bad.write_text("[redis\nurl = 1\n")
    with pytest.raises(celery_janitor.JanitorError) as caught:
        celery_janitor.status(config_path=bad)
    assert (caught.value.kind, caught.value.code) == ("config", 2)

    with pytest.raises(celery_janitor.JanitorError) as caught:
        celery_janitor.list_tasks(config_path=config, cursor="nope")
    assert (caught.value.kind, caught.value.code) == ("bad_cursor", 2)

    world.add_rows(3)
    for row in world.add_rows(3):
        world.scan(row)
    page = celery_janitor.list_tasks(config_path=config, grace_seconds=0, limit=1)
    assert page["next_cursor"] is not None
    with pytest.raises(celery_janitor.JanitorError) as caught:
        celery_janitor.list_tasks(
            config_path=config, grace_seconds=0, orphaned=True, cursor=page["next_cursor"]
        )
    assert caught.value.kind == "bad_cursor"

    with pytest.raises(celery_janitor.JanitorError) as caught:
        celery_janitor.list_tasks(config_path=config, states=["sleeping"])
    assert (caught.value.kind, caught.value.code) == ("usage", 2)
    assert issubclass(celery_janitor.JanitorError, Exception)
