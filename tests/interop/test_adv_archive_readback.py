"""Adversarial: a plan holds only a spec of each entry's bytes, so the archive file is written
from what the removal script answers (the bytes it archived). What if the archive stream's
entries are gone right after the script ran (trimmed, evicted under `maxmemory-policy
allkeys-*`, XDEL'd by an operator), or the janitor dies between the script and its reply?

A tiny TCP proxy sits between the janitor and its Redis. Once the janitor has sent a list
removal script (its arguments hold the tombstone), the proxy runs a hook when Redis's reply to
it comes back, before forwarding it: the script has run, the janitor does not know yet.
Everything else passes through untouched.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import cast

import pytest
import redis

from support.faults import ARCHIVE_KEY, archive_file_records, janitor_with_grace
from support.janitor import Janitor
from support.world import ScannerWorld

pytestmark = [pytest.mark.janitor]


TOMBSTONE = b"celery-janitor:tombstone:"


class ReadbackProxy:
    """Forwards 127.0.0.1:<port> to the test's Redis; calls `hook()` once, before forwarding
    Redis's reply to the first list removal script."""

    def __init__(self, upstream_port: int, hook: Callable[[], None]) -> None:
        self.upstream_port = upstream_port
        self.hook = hook
        self.fired = threading.Event()
        self.armed = threading.Event()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                if from_client and TOMBSTONE in data and ARCHIVE_KEY in data:
                    self.armed.set()
                elif (
                    not from_client
                    and self.armed.is_set()
                    and not self.fired.is_set()
                    # The script's reply is an array; NOSCRIPT, SCRIPT LOAD's digest and the
                    # lock heartbeat's integers come back on the same connection.
                    and data.startswith(b"*")
                ):
                    self.fired.set()
                    self.hook()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()


def _orphan_queue(world: ScannerWorld, n: int) -> tuple[list[int], list[bytes]]:
    rows = world.add_rows(n)
    for row in rows:
        world.scan(row)
    before = cast("list[bytes]", world.redis.lrange(b"celery", 0, -1))
    world.delete_rows(rows)  # every message is an orphan
    return rows, before


def test_archive_entries_gone_before_the_read_back_are_not_lost(
    world: ScannerWorld, make_janitor: Callable[..., Janitor]
) -> None:
    """The stream entries a batch just wrote are trimmed before the janitor has the script's
    reply (as `MAXLEN`, an eviction or an operator's XTRIM would). The removed messages must
    still be recoverable: in the archive file, and put back by `restore`.

    Found by the adversarial review: a version that wrote the archive file from an XRANGE
    read-back of the stream failed here ("entry ... is missing right after it was written") and
    lost the messages; the scripts now answer with the bytes they archived."""
    direct = world.redis_server.client()
    _, before = _orphan_queue(world, 5)
    assert len(before) == 5

    def trim() -> None:
        direct.xtrim(ARCHIVE_KEY, maxlen=0, approximate=False)

    proxy = ReadbackProxy(world.redis_server.port, trim)
    try:
        janitor = janitor_with_grace(world, make_janitor, redis_url=proxy.url)
        run = janitor.run("cleanup-orphaned", "--json", "--grace", "0")
    finally:
        proxy.close()
    assert proxy.fired.is_set()
    assert direct.llen(b"celery") == 0, "the removal itself should have happened"

    archived = sorted(base64.b64decode(r["value_b64"]) for r in archive_file_records(janitor))
    assert archived == sorted(before), (
        f"removed messages missing from the archive file ({len(archived)} of {len(before)})\n"
        + run.describe()
    )
    restored = janitor.run("restore", "--json")
    assert sorted(direct.lrange(b"celery", 0, -1)) == sorted(before), restored.describe()


def test_kill_9_between_the_script_and_the_read_back_then_restore(
    world: ScannerWorld, make_janitor: Callable[..., Janitor], tmp_path: Path
) -> None:
    """SIGKILL the janitor after a removal batch ran but before its reply reached the janitor:
    the next `restore` (completing the archive from the stream) puts back every message,
    byte for byte."""
    direct = world.redis_server.client()
    _, before = _orphan_queue(world, 5)
    pid: list[int] = []

    def kill() -> None:
        os.kill(pid[0], signal.SIGKILL)

    proxy = ReadbackProxy(world.redis_server.port, kill)
    try:
        janitor = janitor_with_grace(world, make_janitor, redis_url=proxy.url)
        proc = janitor.start("cleanup-orphaned", "--json", "--grace", "0")
        pid.append(proc.pid)
        proc.communicate(timeout=60)
    finally:
        proxy.close()
    assert proxy.fired.is_set()
    assert proc.returncode == -signal.SIGKILL
    assert direct.llen(b"celery") == 0
    assert not archive_file_records(janitor), "the reply never arrived, so nothing is in the file"
    # The dead run's lock: take it over as an operator would.
    direct_janitor = janitor_with_grace(world, make_janitor)
    run = direct_janitor.run("restore", "--json", "--take-over-lock")
    assert run.returncode == 0, run.describe()
    assert direct.lrange(b"celery", 0, -1) == before or sorted(
        direct.lrange(b"celery", 0, -1)
    ) == sorted(before), run.describe()
    assert isinstance(direct, redis.Redis)
