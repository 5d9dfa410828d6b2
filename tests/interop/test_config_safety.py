"""Configuration that must fail safely (issue 5, items 4 and 8), through the real binary.

- A password is never printed: not in an error, not in `logs/app.log`. A URL whose user name or
  password holds an unencoded `/`, `?` or `#` is a configuration error (exit 2) that says to
  percent-encode it; encoded, the same password works, and connection errors (exit 3 and 4)
  still never show it.
- `grace_seconds` (0-86400) and `max_age_hours` (0-87600), from a flag, the environment or the
  file, are checked before anything connects or locks: out of range, NaN or infinite is exit 2,
  never a panic (exit 101), and no janitor lock is left in Redis.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conftest import janitor_config
from support import snapshot
from support.janitor import Janitor, JanitorRun
from support.servers import PostgresDatabase, RedisServer, closed_port
from support.world import ScannerWorld

pytestmark = pytest.mark.janitor

# Two halves of every password: neither may appear anywhere the janitor writes.
HALVES = ("Zk9secret", "Wq7secret")

LOCK_KEY = b"celery-janitor:lock"


def _everything_written(janitor: Janitor, run: JanitorRun) -> str:
    logs = [p.read_text(errors="replace") for p in janitor.workdir.rglob("*.log") if p.is_file()]
    return "\n".join([run.stdout, run.stderr, *logs])


def _assert_no_secret(janitor: Janitor, run: JanitorRun) -> None:
    written = _everything_written(janitor, run)
    for half in HALVES:
        assert half not in written, f"{half!r} was printed\n" + run.describe()


def _assert_clean_config_error(run: JanitorRun, *words: str) -> None:
    assert run.returncode == 2, run.describe()
    assert "panicked" not in run.stderr, run.describe()
    first = run.stderr.strip().splitlines()[0]
    for word in words:
        assert word in first, f"{word!r} not in the error\n" + run.describe()


def _run_with_url(janitor: Janitor, source: str, key: str, url: str, *args: str) -> JanitorRun:
    """Run with `url` as the Redis or database URL, given by the file, the environment or a flag."""
    if source == "file":
        janitor.config[key]["url"] = url
        janitor.write_config()
        return janitor.run(*args, timeout=60)
    if source == "env":
        return janitor.run(*args, timeout=60, env={f"{key.upper()}_URL": url})
    return janitor.run(f"--{key}-url", url, *args, timeout=60)


@pytest.mark.parametrize("char", ["/", "#", "?"], ids=["slash", "hash", "question"])
@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_unencoded_delimiter_in_the_redis_password_is_a_config_error(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], char: str, source: str
) -> None:
    world.scan(world.add_rows(1)[0])
    before = world.snapshot()
    janitor = make_janitor(world)
    password = char.join(HALVES)
    url = f"redis://:{password}@127.0.0.1:{world.redis_server.port}/0"

    run = _run_with_url(janitor, source, "redis", url, "cleanup-orphaned", "--json")

    _assert_clean_config_error(run, "percent-encode", "%2F", "redis://****@")
    _assert_no_secret(janitor, run)
    assert run.stdout.strip() == "", run.describe()
    assert snapshot.differences(before, world.snapshot()) == []


@pytest.mark.parametrize("char", ["/", "#", "?"], ids=["slash", "hash", "question"])
def test_unencoded_delimiter_in_the_database_password_is_a_config_error(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], char: str
) -> None:
    janitor = make_janitor(world)
    password = char.join(HALVES)
    url = f"postgresql://root:{password}@127.0.0.1:{closed_port()}/nowhere"

    run = _run_with_url(janitor, "env", "database", url, "status", "--json")

    _assert_clean_config_error(run, "percent-encode", "postgresql://****@")
    _assert_no_secret(janitor, run)


@pytest.mark.parametrize("source", ["file", "env", "flag"])
def test_encoded_password_to_an_unreachable_redis_exits_3_without_the_password(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], source: str
) -> None:
    janitor = make_janitor(world)
    url = f"redis://admin:{'%2F'.join(HALVES)}@127.0.0.1:{closed_port()}/0"

    run = _run_with_url(janitor, source, "redis", url, "status", "--json")

    assert run.returncode == 3, run.describe()
    assert "redis://****@127.0.0.1:" in run.stderr, run.describe()
    _assert_no_secret(janitor, run)
    assert "admin" not in _everything_written(janitor, run), run.describe()


def test_encoded_password_to_an_unreachable_database_exits_4_without_the_password(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    world.scan(world.add_rows(1)[0])  # an owner to look up
    janitor = make_janitor(world)
    url = f"postgresql://root:{'%23'.join(HALVES)}@127.0.0.1:{closed_port()}/nowhere"

    run = _run_with_url(janitor, "file", "database", url, "status", "--json")

    assert run.returncode == 4, run.describe()
    assert "postgresql://****@127.0.0.1:" in run.stderr, run.describe()
    _assert_no_secret(janitor, run)


def test_percent_encoded_password_with_delimiters_authenticates(
    redis_server: RedisServer, database: PostgresDatabase, tmp_path: Path
) -> None:
    """The advice in the error works: `/`, `#`, `?` and `@` percent-encoded reach Redis intact."""
    password = "Zk9secret/#?@Wq7secret"
    redis_server.client().config_set("requirepass", password)
    encoded = "Zk9secret%2F%23%3F%40Wq7secret"
    config: dict[str, Any] = {
        "redis": {"url": f"redis://:{encoded}@127.0.0.1:{redis_server.port}/0"},
        "database": {"url": database.url},
    }
    janitor = Janitor(tmp_path / "janitor", config)

    janitor.run("status", "--json").expect_json()

    config["redis"]["url"] = f"redis://:{encoded}x@127.0.0.1:{redis_server.port}/0"
    janitor.write_config()
    run = janitor.run("status", "--json")
    assert run.returncode == 3, run.describe()
    _assert_no_secret(janitor, run)
    written = _everything_written(janitor, run)
    assert "%2F" not in written and encoded not in written, run.describe()


# (where, what, command, the key the error must name)
OUT_OF_RANGE: list[tuple[str, dict[str, Any], tuple[str, ...], str]] = [
    ("flag", {"--grace": "1e20"}, ("cleanup-orphaned",), "grace_seconds"),
    ("flag", {"--grace": "nan"}, ("cleanup-orphaned",), "grace_seconds"),
    ("flag", {"--grace": "-1"}, ("cleanup-orphaned",), "grace_seconds"),
    ("flag", {"--grace": "inf"}, ("status",), "grace_seconds"),
    ("flag", {"--grace": "86401"}, ("tasks",), "grace_seconds"),
    ("flag", {"--max-age-hours": "1e15"}, ("full-cleanup",), "max_age_hours"),
    ("flag", {"--max-age-hours": "-0.5"}, ("full-cleanup",), "max_age_hours"),
    ("env", {"CELERY_JANITOR_GRACE_SECONDS": "1e20"}, ("cleanup-orphaned",), "grace_seconds"),
    ("env", {"CELERY_JANITOR_GRACE_SECONDS": "NaN"}, ("cleanup-orphaned",), "grace_seconds"),
    ("env", {"CELERY_JANITOR_MAX_AGE_HOURS": "1e15"}, ("full-cleanup",), "max_age_hours"),
    ("env", {"CELERY_JANITOR_MAX_AGE_HOURS": "inf"}, ("full-cleanup",), "max_age_hours"),
    ("file", {"grace_seconds": 1e20}, ("cleanup-orphaned",), "grace_seconds"),
    ("file", {"grace_seconds": float("nan")}, ("cleanup-orphaned",), "grace_seconds"),
    ("file", {"grace_seconds": -3}, ("status",), "grace_seconds"),
    ("file", {"max_age_hours": 1e15}, ("full-cleanup",), "max_age_hours"),
    ("file", {"max_age_hours": float("inf")}, ("full-cleanup",), "max_age_hours"),
    ("owner", {"lost_after_minutes": 1e15}, ("full-cleanup",), "lost_after_minutes"),
]


@pytest.mark.parametrize(
    "case",
    OUT_OF_RANGE,
    ids=[f"{w}-{next(iter(v))}={next(iter(v.values()))}-{c[0]}" for w, v, c, _ in OUT_OF_RANGE],
)
def test_out_of_range_numbers_are_config_errors_before_the_lock(
    world: ScannerWorld,
    make_janitor: Callable[..., Janitor],
    case: tuple[str, dict[str, Any], tuple[str, ...], str],
) -> None:
    where, what, command, key = case
    rows = world.add_rows(2)
    for row in rows:
        world.scan(row)
    world.delete_rows(rows[:1])  # an orphan a cleanup would remove
    config = janitor_config(world)
    args: list[str] = [*command, "--json"]
    env: dict[str, str] = {}
    if where == "flag":
        for flag, value in what.items():
            args += [flag, value]
    elif where == "env":
        env.update(what)
    elif where == "file":
        config["cleanup"].update(what)
    else:
        config["owners"][0].update(what)
    janitor = make_janitor(world, config=config)
    before = world.snapshot()

    run = janitor.run(*args, env=env, timeout=60)

    _assert_clean_config_error(run, key)
    assert "from 0 to" in run.stderr, run.describe()
    assert run.stdout.strip() == "", run.describe()
    assert not world.redis.exists(LOCK_KEY), "the janitor lock was left in Redis"
    assert snapshot.differences(before, world.snapshot()) == []


def test_the_range_limits_themselves_are_accepted(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    janitor = make_janitor(world)

    for args in (
        ("full-cleanup", "--dry-run", "--json", "--grace", "0", "--max-age-hours", "87600"),
        ("status", "--json", "--grace", "0"),
    ):
        janitor.run(*args).expect_json()
    # Nothing to confirm, so the day-long grace period is never waited for.
    janitor.run("status", "--json", env={"CELERY_JANITOR_GRACE_SECONDS": "86400"}).expect_json()
