"""A MONITOR recorder: every command a test's redis-server executes, in order, from a thread.

The concurrency tests use it to account for a cleanup exactly. The janitor's JSON says how many
orphans it found and how many were `changed`; the MONITOR stream says which ones: every
`remove_list_entries.lua` call (its target messages are in ARGV) and, inside each call, the
commands the script ran (an `XADD` of the archive per message removed, the `LSET`/`LREM` of the
tombstone). Redis feeds a script's commands right after the EVALSHA that ran them, and no other
client's command can come in between, so a call's effects are read off the lines that follow it.

Only the test's own throw-away redis-server is ever monitored.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

LINE = re.compile(rb"^\+(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$", re.S)
ARG = re.compile(rb'"((?:[^"\\]+|\\.)*)"', re.S)
ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)", re.S)
SIMPLE_ESCAPES = {
    b"n": b"\n",
    b"r": b"\r",
    b"t": b"\t",
    b"a": b"\a",
    b"b": b"\b",
    b"\\": b"\\",
    b'"': b'"',
}


def _unescape(match: re.Match[bytes]) -> bytes:
    token = match.group(1)
    if token[:1] == b"x" and len(token) == 3:
        return bytes([int(token[1:], 16)])
    return SIMPLE_ESCAPES.get(token, token)


def unrepr(text: bytes) -> bytes:
    """Undo Redis's `sdscatrepr` quoting of one argument."""
    return ESCAPE.sub(_unescape, text)


@dataclass
class Command:
    """One MONITOR line: who ran it (`lua` for a script's own commands) and its exact args."""

    time: float
    client: str
    args: list[bytes]

    @property
    def name(self) -> str:
        return self.args[0].decode().lower() if self.args else ""

    @property
    def from_script(self) -> bool:
        return self.client == "lua"


def parse_line(line: bytes) -> Command | None:
    m = LINE.match(line)
    if m is None:
        return None
    args = [unrepr(a) for a in ARG.findall(m.group(4))]
    return Command(float(m.group(1)), m.group(3).decode(), args)


@dataclass
class ScriptCall:
    """An EVAL/EVALSHA a client sent, and the commands the script ran (empty: it never ran,
    e.g. NOSCRIPT)."""

    call: Command
    inner: list[Command] = field(default_factory=list)

    @property
    def keys(self) -> list[bytes]:
        n = int(self.call.args[2])
        return self.call.args[3 : 3 + n]

    @property
    def argv(self) -> list[bytes]:
        n = int(self.call.args[2])
        return self.call.args[3 + n :]


def script_calls(commands: list[Command], client: str | None = None) -> list[ScriptCall]:
    """Every EVAL/EVALSHA (of `client`, if given) with the script commands that followed it."""
    calls: list[ScriptCall] = []
    current: ScriptCall | None = None
    for c in commands:
        if c.from_script:
            if current is not None:
                current.inner.append(c)
            continue
        current = None
        if c.name in ("eval", "evalsha") and (client is None or c.client == client):
            current = ScriptCall(c)
            calls.append(current)
    return calls


class RedisMonitor:
    """Runs MONITOR on a connection of its own and keeps every line until `stop()`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._lines: list[bytes] = []
        self._lock = threading.Lock()
        self._watchers: list[tuple[Callable[[Command], bool], threading.Event]] = []
        self._stopping = False
        self.error: BaseException | None = None

    def start(self) -> RedisMonitor:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.sendall(b"*1\r\n$7\r\nMONITOR\r\n")
        buf = b""
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise RuntimeError("redis closed the MONITOR connection")
            buf += chunk
        first, rest = buf.split(b"\r\n", 1)
        if first != b"+OK":
            raise RuntimeError(f"MONITOR refused: {first!r}")
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(
            target=self._read, args=(rest,), daemon=True, name="redis-monitor"
        )
        self._thread.start()
        return self

    def when(self, predicate: Callable[[Command], bool]) -> threading.Event:
        """An event set as soon as a command matching `predicate` is seen (from now on)."""
        event = threading.Event()
        with self._lock:
            self._watchers.append((predicate, event))
        return event

    def _read(self, pending: bytes) -> None:
        assert self._sock is not None
        try:
            while True:
                *complete, pending = pending.split(b"\r\n")
                if complete:
                    with self._lock:
                        self._lines.extend(complete)
                        watchers = [w for w in self._watchers if not w[1].is_set()]
                    for line in complete:
                        if not watchers:
                            break
                        cmd = parse_line(line)
                        if cmd is None:
                            continue
                        for predicate, event in watchers:
                            if not event.is_set() and predicate(cmd):
                                event.set()
                if self._stopping:
                    return
                try:
                    chunk = self._sock.recv(1 << 20)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                pending += chunk
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def recent(self, n: int = 30) -> list[Command]:
        """The last `n` commands seen so far (for a failing test's message)."""
        with self._lock:
            lines = list(self._lines[-n:])
        return [c for c in (parse_line(line) for line in lines) if c is not None]

    def mark(self, text: str) -> None:
        """Leave a marker in the stream (an ECHO from another connection)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            payload = text.encode()
            s.sendall(b"*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n" % (len(payload), payload))
            s.recv(65536)

    def stop(self) -> list[Command]:
        """Stop recording (after a marker, so every earlier command has arrived) and return
        every command seen, parsed."""
        marker = "celery-janitor-test:monitor-end"
        seen = self.when(lambda c: c.name == "echo" and c.args[1:] == [marker.encode()])
        self.mark(marker)
        seen.wait(timeout=30)
        self._stopping = True
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._sock is not None:
            self._sock.close()
        if self.error is not None:
            raise self.error
        with self._lock:
            lines = list(self._lines)
        return [c for c in (parse_line(line) for line in lines) if c is not None]
