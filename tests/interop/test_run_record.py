"""The run record, `restore` by run, crash recovery of archive files, and private files.

Done when: every non-dry run that changed something has a record in `celery-janitor:runs`;
`restore` restores the newest recorded run and names it, and run again restores nothing and
exits 0; entries the Redis archive lost are restored from this host's archive file, or named
with the command that restores them (exit 1); an archive file left short by a crash is
completed from the stream by the next run or `restore`, with nothing duplicated; archives, logs
and `init`'s config are 0600 in 0700 directories; and `restore_entry.lua` writes nothing when a
key has the wrong type or an argument is malformed.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from support import snapshot
from support.janitor import REPO_ROOT, Janitor
from support.servers import RedisServer
from support.world import ScannerWorld

pytestmark = [pytest.mark.janitor]

RUNS = b"celery-janitor:runs"
ARCHIVE = b"celery-janitor:archive"
GLOBAL_RESTORED = b"celery-janitor:restored"
QUEUE = b"celery"
RESTORE_LUA = REPO_ROOT / "crates/janitor-engine/lua/restore_entry.lua"


# -- helpers --------------------------------------------------------------------------------


def orphan_run(world: ScannerWorld, janitor: Janitor, count: int) -> tuple[str, list[str]]:
    """Queue `count` scans, delete their rows, run a cleanup: returns its run id and task ids."""
    rows = world.add_rows(count)
    task_ids = [world.scan(row) for row in rows]
    world.delete_rows(rows)
    report = janitor.run("cleanup-orphaned", "--grace", "0", "--json").expect_json()
    assert report["removed"]["queue"] == count, report
    return str(report["run_id"]), task_ids


def records(world: ScannerWorld) -> dict[str, dict[str, Any]]:
    raw: dict[bytes, bytes] = world.redis.hgetall(RUNS)  # type: ignore[assignment]
    return {k.decode(): json.loads(v) for k, v in raw.items()}


def record(world: ScannerWorld, run_id: str) -> dict[str, Any]:
    return records(world)[run_id]


def put_record(world: ScannerWorld, rec: dict[str, Any]) -> None:
    world.redis.hset(RUNS, rec["run_id"], json.dumps(rec))


def stream_ids(world: ScannerWorld, run_id: str) -> list[bytes]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = world.redis.xrange(ARCHIVE)  # type: ignore[assignment]
    return [i for i, fields in entries if json.loads(fields[b"meta"])["run_id"] == run_id]


def file_ids(path: Path) -> list[str]:
    """Archive ids of the readable lines of an archive file, in file order."""
    ids = []
    for line in path.read_bytes().splitlines():
        try:
            ids.append(json.loads(line)["archive_id"])
        except ValueError:
            continue
    return ids


def queued_task_ids(world: ScannerWorld) -> list[str]:
    return sorted(e.task_id for e in world.entries() if e.location == "queue" and e.task_id)


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def simulate_crash(world: ScannerWorld, run_id: str) -> tuple[Path, list[str]]:
    """Leave the run as a `kill -9` after its first batch would: its archive file holds one
    entry and half of the next line, and its record still says "running" (its process gone).
    Returns the file and the archive ids it held before."""
    rec = record(world, run_id)
    path = Path(rec["archive_file"])
    lines = path.read_bytes().splitlines(keepends=True)
    before = file_ids(path)
    assert len(lines) >= 3
    path.write_bytes(lines[0] + lines[1][: len(lines[1]) // 2])
    rec.update(outcome="running", file_synced=False, ended_at=None, pid=dead_pid())
    rec.update(removed={"queue": 0, "unacked": 0, "result": 0}, archived=0)
    put_record(world, rec)
    return path, before


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """`umask(0o077)`: the umask of the janitor processes this test starts."""
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(value: int) -> None:
        os.umask(value)

    try:
        yield set_umask
    finally:
        os.umask(old)


# -- the run record (item 3) -----------------------------------------------------------------


def test_each_run_that_changed_something_has_a_record(
    world: ScannerWorld, janitor: Janitor
) -> None:
    run_id, _ = orphan_run(world, janitor, 2)
    janitor.run("cleanup-orphaned", "--grace", "0", "--json").expect_json()  # removes nothing
    rows = world.add_rows(1)
    world.scan(rows[0])
    world.delete_rows(rows)
    janitor.run("cleanup-orphaned", "--dry-run", "--grace", "0", "--json").expect_json()

    recs = records(world)

    assert list(recs) == [run_id], "no record for a run that changed nothing, nor a dry run"
    rec = recs[run_id]
    assert rec["run_id"] == run_id
    assert rec["command"] == "cleanup-orphaned"
    assert rec["outcome"] == "completed"
    assert rec["host"] == socket.gethostname()
    assert isinstance(rec["pid"], int) and rec["pid"] > 0
    assert rec["started_at"] <= rec["ended_at"]
    assert rec["removed"] == {"queue": 2, "unacked": 0, "result": 0}
    assert rec["archived"] == 2
    assert rec["lost_rows_marked"] == 0
    assert rec["error"] is None
    assert rec["file_synced"] is True
    archive_file = Path(rec["archive_file"])
    assert archive_file.is_absolute()
    assert archive_file.resolve() == (janitor.workdir / "archive" / f"{run_id}.jsonl").resolve()
    assert len(file_ids(archive_file)) == 2


def test_restore_twice_restores_the_newest_run_then_nothing(
    world: ScannerWorld, janitor: Janitor
) -> None:
    older, older_tasks = orphan_run(world, janitor, 2)
    newer, newer_tasks = orphan_run(world, janitor, 3)  # often within the same second

    first = janitor.run("restore")
    second = janitor.run("restore")

    assert first.returncode == 0, first.describe()
    assert f"Restored 3 entries (queue 3, unacked 0, result 0) of run {newer}" in first.stdout
    assert second.returncode == 0, second.describe()
    assert f"Run {newer}: nothing left to restore (3 entries already restored)" in second.stdout
    assert queued_task_ids(world) == sorted(newer_tasks), "the older run stays removed"

    again = janitor.run("restore", "--json").expect_json()
    assert again["run_id"] == newer
    assert again["restored"] == {"queue": 0, "unacked": 0, "result": 0}
    assert again["already_restored"] == 3
    assert again["expected"] == 3
    assert again["missing"] == 0

    older_report = janitor.run("restore", "--run", older, "--json").expect_json()
    assert older_report["restored"]["queue"] == 2
    assert queued_task_ids(world) == sorted(older_tasks + newer_tasks)


def test_runs_archived_by_an_earlier_version_restore_once_too(
    world: ScannerWorld, janitor: Janitor
) -> None:
    _, older_tasks = orphan_run(world, janitor, 2)
    newer, newer_tasks = orphan_run(world, janitor, 3)
    # An earlier version kept no run record.
    world.redis.delete(RUNS)

    first = janitor.run("restore", "--json").expect_json()
    second = janitor.run("restore", "--json").expect_json()

    assert first["run_id"] == newer and first["restored"]["queue"] == 3
    assert second["run_id"] == newer and second["restored"]["queue"] == 0
    assert second["already_restored"] == 3
    assert queued_task_ids(world) == sorted(newer_tasks)
    assert not set(older_tasks) & set(queued_task_ids(world))


def test_restore_reports_what_it_read_and_checked(world: ScannerWorld, janitor: Janitor) -> None:
    run_id, _ = orphan_run(world, janitor, 2)

    report = janitor.run("restore", "--dry-run", "--json").expect_json()

    assert report == {
        "run_id": run_id,
        "dry_run": True,
        "restored": {"queue": 2, "unacked": 0, "result": 0},
        "skipped": 0,
        "source": "file",
        "archive_file": record(world, run_id)["archive_file"],
        "expected": 2,
        "already_restored": 0,
        "missing": 0,
        "hint": None,
        "warnings": [],
    }
    assert world.queued_count() == 0


def test_entries_restored_by_an_earlier_version_are_not_restored_again(
    world: ScannerWorld, janitor: Janitor
) -> None:
    run_id, _ = orphan_run(world, janitor, 3)
    # An earlier version kept restored ids in one global set and deleted them from the stream.
    first_id = stream_ids(world, run_id)[0]
    world.redis.sadd(GLOBAL_RESTORED, first_id)
    world.redis.xdel(ARCHIVE, first_id)

    report = janitor.run("restore", "--json").expect_json()

    assert report["restored"]["queue"] == 2
    assert report["already_restored"] == 1
    assert report["missing"] == 0
    assert world.queued_count() == 2


# -- entries the stream lost (item 5) --------------------------------------------------------


def test_restore_reads_this_hosts_archive_file_when_the_stream_lost_entries(
    world: ScannerWorld, janitor: Janitor
) -> None:
    run_id, task_ids = orphan_run(world, janitor, 3)
    world.redis.xtrim(ARCHIVE, maxlen=0, approximate=False)

    report = janitor.run("restore", "--json").expect_json()

    assert report["run_id"] == run_id
    assert report["source"] == "file"
    assert report["archive_file"] == record(world, run_id)["archive_file"]
    assert report["restored"]["queue"] == 3
    assert (report["expected"], report["missing"]) == (3, 0)
    assert queued_task_ids(world) == sorted(task_ids)


def test_an_archive_id_repeated_in_the_file_is_restored_once(
    world: ScannerWorld, janitor: Janitor
) -> None:
    run_id, task_ids = orphan_run(world, janitor, 3)
    path = Path(record(world, run_id)["archive_file"])
    path.write_bytes(path.read_bytes() * 2)

    report = janitor.run("restore", "--json").expect_json()

    assert report["restored"]["queue"] == 3
    assert report["warnings"] == []
    assert queued_task_ids(world) == sorted(task_ids)


def test_restore_exits_1_naming_the_file_that_holds_the_missing_entries(
    world: ScannerWorld, janitor: Janitor
) -> None:
    run_id, task_ids = orphan_run(world, janitor, 3)
    path = Path(record(world, run_id)["archive_file"])
    kept = path.read_bytes()
    path.unlink()
    world.redis.xdel(ARCHIVE, *stream_ids(world, run_id)[:2])

    partial = janitor.run("restore", "--json")

    data = partial.expect_json(code=1)
    assert data["source"] == "stream"
    assert data["restored"]["queue"] == 1, "what the stream holds is restored"
    assert (data["expected"], data["already_restored"], data["missing"]) == (3, 0, 2)
    command = f"celery-janitor restore --run {run_id} --from-file {path}"
    assert command in data["hint"]
    assert command in partial.stderr, partial.describe()
    assert world.queued_count() == 1

    path.write_bytes(kept)
    rest = janitor.run("restore", "--run", run_id, "--from-file", str(path), "--json")

    data = rest.expect_json()
    assert data["source"] == "file"
    assert data["restored"]["queue"] == 2
    assert (data["already_restored"], data["missing"]) == (1, 0)
    assert queued_task_ids(world) == sorted(task_ids)


def test_restore_names_the_host_that_has_the_archive_file(
    world: ScannerWorld, janitor: Janitor
) -> None:
    run_id, _ = orphan_run(world, janitor, 2)
    rec = record(world, run_id)
    rec["host"] = "worker-7.elsewhere.example"
    put_record(world, rec)
    world.redis.xdel(ARCHIVE, stream_ids(world, run_id)[0])

    result = janitor.run("restore")

    assert result.returncode == 1, result.describe()
    assert f"Restored 1 entry (queue 1, unacked 0, result 0) of run {run_id}" in result.stdout
    assert "on host worker-7.elsewhere.example" in result.stderr
    command = f"celery-janitor restore --run {run_id} --from-file {rec['archive_file']}"
    assert command in result.stderr, result.describe()


# -- an archive file left short by a crash (item 7) ------------------------------------------


def test_restore_first_completes_the_archive_file_of_a_crashed_run(
    world: ScannerWorld, janitor: Janitor
) -> None:
    run_id, task_ids = orphan_run(world, janitor, 4)
    path, before = simulate_crash(world, run_id)
    short = path.read_bytes()

    dry = janitor.run("restore", "--dry-run", "--json").expect_json()
    assert dry["restored"]["queue"] == 4, "file and stream together hold every entry"
    assert path.read_bytes() == short, "a dry run writes nothing"

    result = janitor.run("restore", "--json")

    report = result.expect_json()
    assert report["restored"]["queue"] == 4
    assert report["source"] == "file"
    ids = file_ids(path)
    assert sorted(ids) == sorted(before) and len(set(ids)) == len(ids) == 4
    assert "unreadable line" in result.stderr, "the torn line is skipped with a warning"
    assert queued_task_ids(world) == sorted(task_ids)
    rec = record(world, run_id)
    assert rec["file_synced"] is True
    assert rec["outcome"] == "failed"
    assert rec["removed"] == {"queue": 4, "unacked": 0, "result": 0}


def test_the_next_run_completes_the_archive_file_of_a_crashed_run(
    world: ScannerWorld, janitor: Janitor
) -> None:
    run_id, _ = orphan_run(world, janitor, 4)
    path, before = simulate_crash(world, run_id)

    janitor.run("cleanup-orphaned", "--grace", "0", "--json").expect_json()
    janitor.run("cleanup-orphaned", "--grace", "0", "--json").expect_json()

    ids = file_ids(path)
    assert sorted(ids) == sorted(before) and len(ids) == 4, "appended once, nothing duplicated"
    rec = record(world, run_id)
    assert rec["file_synced"] is True
    assert rec["outcome"] == "failed"
    assert rec["archived"] == 4
    # The stream is gone: the completed file alone restores every entry.
    world.redis.delete(ARCHIVE)
    report = janitor.run("restore", "--run", run_id, "--json").expect_json()
    assert report["restored"]["queue"] == 4
    assert (report["expected"], report["missing"]) == (4, 0)


# -- private files (item 6) ------------------------------------------------------------------


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077], ids=["022", "027", "077"])
def test_archives_logs_and_config_are_private(
    world: ScannerWorld, janitor: Janitor, umask: Callable[[int], None], mask: int
) -> None:
    workdir_mode = mode(janitor.workdir)
    umask(mask)

    run_id, _ = orphan_run(world, janitor, 1)
    init = janitor.run("init", "conf/new.toml")

    assert init.returncode == 0, init.describe()
    for directory in ("archive", "logs", "conf"):
        assert mode(janitor.workdir / directory) == 0o700, directory
    for name in (f"archive/{run_id}.jsonl", "logs/audit.jsonl", "logs/app.log", "conf/new.toml"):
        assert mode(janitor.workdir / name) == 0o600, name
    assert mode(janitor.workdir) == workdir_mode, "a directory the tool did not create is kept"


def test_existing_directories_keep_their_mode_and_init_force_makes_the_config_private(
    world: ScannerWorld, janitor: Janitor
) -> None:
    archive_dir = janitor.workdir / "archive"
    archive_dir.mkdir(mode=0o755)
    archive_dir.chmod(0o755)
    config = janitor.workdir / "old.toml"
    config.write_text("# old\n")
    config.chmod(0o644)

    run_id, _ = orphan_run(world, janitor, 1)
    refused = janitor.run("init", str(config))
    assert refused.returncode == 2 and config.read_text() == "# old\n"
    forced = janitor.run("init", str(config), "--force")

    assert mode(archive_dir) == 0o755, "never chmod a directory the user made"
    assert mode(archive_dir / f"{run_id}.jsonl") == 0o600
    assert forced.returncode == 0, forced.describe()
    assert mode(config) == 0o600 and "[[owners]]" in config.read_text()


# -- restore_entry.lua checks before it writes (item 2) --------------------------------------


def restore_script() -> str:
    """The script as the engine sends it: the shared checks (`checks.lua`) in front."""
    return (RESTORE_LUA.parent / "checks.lua").read_text() + RESTORE_LUA.read_text()


def eval_restore(client: redis.Redis, keys: list[bytes], argv: list[Any]) -> Any:
    return client.eval(restore_script(), len(keys), *keys, *argv)


def seed(client: redis.Redis) -> bytes:
    """An archive stream with one entry, the ids it restores with; returns the entry's id."""
    entry_id: bytes = client.xadd(ARCHIVE, {b"kind": b"queue", b"value": b"v"})  # type: ignore[assignment]
    client.sadd(GLOBAL_RESTORED, b"0-1")
    return entry_id


KEYS = [ARCHIVE, GLOBAL_RESTORED, b"target", b"target_index", b"celery-janitor:restored:run"]
DAY = 86400


def args(entry_id: bytes, kind: str, /, **over: Any) -> list[Any]:
    argv: list[Any] = [entry_id, kind, b"exact bytes", b"tag-1", b"", -1, DAY]
    names = ["id", "kind", "value", "field", "score", "pttl", "keep"]
    for name, value in over.items():
        argv[names.index(name)] = value
    return argv


WRONG_TYPES = [
    # (kind, key index, setup, error)
    ("queue", 3, lambda c: c.set(b"target", b"x"), "CJWRONGTYPE 3 string list"),
    ("queue", 3, lambda c: c.hset(b"target", b"f", b"v"), "CJWRONGTYPE 3 hash list"),
    ("unacked", 3, lambda c: c.rpush(b"target", b"x"), "CJWRONGTYPE 3 list hash"),
    ("unacked", 4, lambda c: c.set(b"target_index", b"x"), "CJWRONGTYPE 4 string zset"),
    ("result", 3, lambda c: c.sadd(b"target", b"x"), "CJWRONGTYPE 3 set string"),
    ("queue", 1, lambda c: c.set(ARCHIVE, b"x"), "CJWRONGTYPE 1 string stream"),
    ("queue", 2, lambda c: (c.delete(GLOBAL_RESTORED), c.rpush(GLOBAL_RESTORED, b"x")),
     "CJWRONGTYPE 2 list set"),
    ("result", 5, lambda c: c.zadd(KEYS[4], {b"x": 1}), "CJWRONGTYPE 5 zset set"),
]  # fmt: skip


@pytest.mark.parametrize(
    "kind,setup,error",
    [(k, s, e) for k, _, s, e in WRONG_TYPES],
    ids=[f"{k}-key{i}" for k, i, _, _ in WRONG_TYPES],
)
def test_restore_script_writes_nothing_when_a_key_has_the_wrong_type(
    redis_server: RedisServer, kind: str, setup: Callable[[redis.Redis], Any], error: str
) -> None:
    client = redis_server.client()
    entry_id = seed(client)
    setup(client)
    score = b"1700000000.5" if kind == "unacked" else b""
    before = snapshot.take(client)

    with pytest.raises(redis.ResponseError, match=error):
        eval_restore(client, KEYS, args(entry_id, kind, score=score))

    assert snapshot.differences(before, snapshot.take(client)) == []


BAD_ARGS: list[tuple[str, dict[str, Any], str]] = [
    ("queue", {"kind": b"list"}, "CJBADARG 2"),
    ("queue", {"keep": b"a month"}, "CJBADARG 7"),
    ("queue", {"keep": 0}, "CJBADARG 7"),
    ("queue", {"id": b""}, "CJBADARG 1"),
    ("unacked", {"field": b""}, "CJBADARG 4"),
    ("unacked", {"score": b"high"}, "CJBADARG 5"),
    ("result", {"pttl": b"soon"}, "CJBADARG 6"),
]


@pytest.mark.parametrize(
    "kind,over,error", BAD_ARGS, ids=[f"{k}-{'-'.join(o)}" for k, o, _ in BAD_ARGS]
)
def test_restore_script_writes_nothing_when_an_argument_is_malformed(
    redis_server: RedisServer, kind: str, over: dict[str, Any], error: str
) -> None:
    client = redis_server.client()
    entry_id = seed(client)
    before = snapshot.take(client)

    with pytest.raises(redis.ResponseError, match=error):
        eval_restore(client, KEYS, args(entry_id, kind, **over))
    with pytest.raises(redis.ResponseError, match="CJBADARG 0"):
        eval_restore(client, KEYS, args(entry_id, kind)[:-1])
    with pytest.raises(redis.ResponseError, match="CJBADARG 0"):
        eval_restore(client, KEYS[:4], args(entry_id, kind))

    assert snapshot.differences(before, snapshot.take(client)) == []


def test_restore_script_restores_once_into_the_runs_set(redis_server: RedisServer) -> None:
    client = redis_server.client()
    entry_id = seed(client)

    assert eval_restore(client, KEYS, args(entry_id, "queue")) == 1
    assert eval_restore(client, KEYS, args(entry_id, "queue")) == 0

    assert client.lrange(b"target", 0, -1) == [b"exact bytes"]
    assert client.smembers(KEYS[4]) == {entry_id}
    assert 0 < int(client.ttl(KEYS[4])) <= DAY
    assert client.smembers(GLOBAL_RESTORED) == {b"0-1"}, "the global set is only read"
    assert client.xlen(ARCHIVE) == 0
    assert eval_restore(client, KEYS, args(b"0-1", "queue")) == 0, "restored by an old version"


def test_restore_names_a_wrong_typed_target_and_changes_nothing(
    world: ScannerWorld, janitor: Janitor
) -> None:
    orphan_run(world, janitor, 2)
    world.redis.set(QUEUE, b"not a list")
    before = world.snapshot()

    result = janitor.run("restore")

    assert result.returncode == 1, result.describe()
    assert "key celery is a string, expected a list" in result.stderr, result.describe()
    assert snapshot.differences(before, world.snapshot()) == []
