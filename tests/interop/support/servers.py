"""Private servers for one test: a throw-away `redis-server` and a fresh PostgreSQL database.

The machine's own Redis (port 6379) is never used, flushed or touched: every test starts its own
`redis-server` on a free port with persistence off and a temporary directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import redis
from psycopg import sql

from .waiting import wait_until

MACHINE_REDIS_PORT = 6379
DEFAULT_PG_ADMIN_URL = "postgresql://root@127.0.0.1:5432/postgres"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != MACHINE_REDIS_PORT:
            return port


def closed_port() -> int:
    """A port on 127.0.0.1 where a connection is refused."""
    return free_port()


class RedisServer:
    """One `redis-server` process owned by a test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / "redis.log"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed; run scripts/setup")
        self.workdir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _attempt in range(5):
            self.port = free_port()
            assert self.port != MACHINE_REDIS_PORT
            self.process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.workdir),
                    "--logfile",
                    str(self.log_path),
                    "--daemonize",
                    "no",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            if self._wait_ready():
                return
            last_error = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
            self.stop()
        raise RuntimeError(f"redis-server did not start:\n{last_error}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                if redis.Redis(port=self.port, socket_timeout=1).ping():
                    return True
            except redis.ConnectionError:
                time.sleep(0.05)
        return False

    def client(self) -> redis.Redis:
        """A bytes-in, bytes-out client (no decoding: keys and values stay exact)."""
        return redis.Redis(host="127.0.0.1", port=self.port, db=0, decode_responses=False)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - the kernel always reaps SIGKILL
            pass
        self.process = None


def pg_admin_url() -> str:
    return os.environ.get("CJ_TEST_PG_ADMIN_URL") or DEFAULT_PG_ADMIN_URL


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, parts.fragment))


class PostgresDatabase:
    """A fresh database created for one test and dropped afterwards."""

    def __init__(self, admin_url: str | None = None) -> None:
        self.admin_url = admin_url or pg_admin_url()
        self.name = os.environ.get("CJ_TEST_DB_PREFIX", "cj_test_") + uuid.uuid4().hex[:12]
        self.url = _with_database(self.admin_url, self.name)

    def create(self) -> None:
        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.name)))
        except psycopg.OperationalError as exc:
            raise RuntimeError(
                f"cannot reach PostgreSQL at {self.admin_url} (set CJ_TEST_PG_ADMIN_URL, or run "
                f"scripts/setup): {exc}"
            ) from exc

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (self.name,),
            )
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(self.name))
            )

    def connect(self, autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=autocommit)


def wait_for_redis_key(client: redis.Redis, key: bytes, timeout: float) -> None:
    wait_until(lambda: client.exists(key), timeout=timeout, what=f"key {key!r}")
