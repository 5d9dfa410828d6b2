"""Running the `celery-janitor` binary with a config file written for one test.

The binary is `$CELERY_JANITOR_BIN`, or `<repo>/target/debug/celery-janitor`. It runs in the
test's temporary directory (so `logs/` and `archive/` land there), with `--config` naming the
written TOML, and with `REDIS_URL`, `DATABASE_URL` and `CELERY_JANITOR_CONFIG` removed from its
environment so nothing can point it at the machine's own services.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .world import ScannerWorld

REPO_ROOT = Path(__file__).resolve().parents[3]


def value_key(raw: bytes) -> bytes:
    """How the engine names a value it will remove: the SHA-1 and length of its exact bytes
    (its value spec `sha1:length:locator` without the locator; see `spec.rs`)."""
    return f"{hashlib.sha1(raw).hexdigest()}:{len(raw)}".encode()


def value_spec(raw: bytes, locator: str = "") -> bytes:
    """The value spec a removal script takes instead of the bytes: `sha1:length:locator` (the
    locator is the task id when the bytes hold it as plain text; empty is always valid)."""
    return value_key(raw) + b":" + locator.encode()


def split_spec(spec: bytes) -> tuple[bytes, str]:
    """A value spec as (value key, locator)."""
    digest, length, locator = spec.split(b":", 2)
    return digest + b":" + length, locator.decode()


def janitor_binary() -> Path:
    return Path(os.environ.get("CELERY_JANITOR_BIN") or REPO_ROOT / "target/debug/celery-janitor")


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def render_toml(config: dict[str, Any]) -> str:
    """Tables of scalars/arrays, plus `owners` as an array of tables."""
    lines: list[str] = []
    for section, values in config.items():
        if section == "owners":
            continue
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")
    for owner in config.get("owners", []):
        lines.append("[[owners]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in owner.items())
        lines.append("")
    return "\n".join(lines)


def janitor_config(
    world: ScannerWorld,
    *,
    grace: float = 1,
    redis_url: str | None = None,
    **owner_overrides: Any,
) -> dict[str, Any]:
    """The janitor's config for the world: its Redis (or `redis_url`, e.g. a proxy in front of
    it) and database, `grace_seconds = grace`, the scanner's owner rule."""
    return {
        "redis": {"url": redis_url or world.redis_server.url},
        "database": {"url": world.database.url},
        "cleanup": {"grace_seconds": grace, "max_age_hours": 24},
        "logging": {"app_log": "logs/app.log", "audit_log": "logs/audit.jsonl"},
        "archive": {"dir": "archive"},
        "owners": [scan_owner(**owner_overrides)],
    }


def scan_owner(**overrides: Any) -> dict[str, Any]:
    """The owner rule for the scanner app: scan_tasks owns scan_domain_task by its first arg."""
    owner: dict[str, Any] = {
        "table": "scan_tasks",
        "id_column": "id",
        "tasks": ["scanner.scan_domain_task"],
        "id_from": "arg:0",
        "status_column": "status",
        "active_statuses": ["pending", "running"],
        "lost_status": "lost",
        "created_column": "created_at",
        "lost_after_minutes": 60,
    }
    owner.update(overrides)
    return owner


@dataclass
class JanitorRun:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    data: Any = field(default=None)  # parsed JSON when stdout held JSON

    def describe(self) -> str:
        return (
            f"$ {' '.join(self.argv)}\nexit code: {self.returncode}\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
        )

    def expect_json(self, code: int = 0) -> Any:
        assert self.returncode == code, self.describe()
        assert self.data is not None, "stdout is not JSON\n" + self.describe()
        return self.data


class Janitor:
    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = workdir / "celery-janitor.toml"
        self.write_config()

    def write_config(self, text: str | None = None) -> None:
        self.config_path.write_text(text if text is not None else render_toml(self.config))

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        drop = {"REDIS_URL", "DATABASE_URL", "CELERY_JANITOR_CONFIG"}
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env["NO_COLOR"] = "1"
        env.update(extra or {})
        return env

    def argv(self, args: Sequence[str]) -> list[str]:
        binary = janitor_binary()
        if not binary.exists():
            raise AssertionError(
                f"celery-janitor binary not found at {binary}: run `cargo build` at the repo root"
                " or set CELERY_JANITOR_BIN"
            )
        return [str(binary), "--config", str(self.config_path), *args]

    def run(
        self, *args: str, timeout: float = 120, env: dict[str, str] | None = None
    ) -> JanitorRun:
        """Run to completion; `env` adds variables (e.g. REDIS_URL) for this run only."""
        argv = self.argv(args)
        proc = subprocess.run(
            argv,
            check=False,
            cwd=self.workdir,
            env=self.env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        return self._result(argv, proc.returncode, proc.stdout, proc.stderr)

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        """Start in the background; finish with `finish()`."""
        return subprocess.Popen(
            self.argv(args),
            cwd=self.workdir,
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def finish(self, proc: subprocess.Popen[bytes], timeout: float = 120) -> JanitorRun:
        stdout, stderr = proc.communicate(timeout=timeout)
        return self._result([str(a) for a in proc.args], proc.returncode, stdout, stderr)  # type: ignore[union-attr]

    @staticmethod
    def _result(argv: list[str], code: int, stdout: bytes, stderr: bytes) -> JanitorRun:
        out = stdout.decode(errors="replace")
        data = None
        if out.strip():
            try:
                data = json.loads(out)
            except json.JSONDecodeError:
                data = None
        return JanitorRun(argv, code, out, stderr.decode(errors="replace"), data)
