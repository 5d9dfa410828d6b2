"""An independent model of the task entries Celery left in Redis, and the expected verdicts.

The tests never trust the janitor's own reading: they decode every queue element, every
`unacked` field and every `celery-task-meta-*` key themselves (with Python's json/pickle/msgpack/
yaml, since the tests produced those bytes) and decide, per the contract in docs/cli.md and
issue 2, which entries are live, orphaned, unowned or undecidable.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import pickle
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import yaml

from .snapshot import Snapshot

SEP = b"\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
UNACKED = b"unacked"
UNACKED_INDEX = b"unacked_index"
RESULT_PREFIX = b"celery-task-meta-"
PICKLE = "application/x-python-serialize"


def priority_key(queue: str, priority: int) -> bytes:
    """The list kombu pushes a message of `priority` to (largest step <= priority)."""
    step = max(s for s in PRIORITY_STEPS if s <= max(0, min(9, priority)))
    return queue.encode() if step == 0 else queue.encode() + SEP + str(step).encode()


def escape_key(key: bytes) -> str:
    """The key as docs/cli.md prints it: bytes 0x20-0x7e but the backslash as they are, every
    other byte (the backslash too) as `\\xNN` in lowercase hex. The examples in
    tests/shared/printable-keys.json pin this and the janitor's rule to the same strings."""
    return "".join(chr(b) if 0x20 <= b < 0x7F and b != 0x5C else f"\\x{b:02x}" for b in key)


@dataclass(frozen=True)
class Entry:
    """One task entry: a queue element, an `unacked` field or a result key."""

    location: str  # "queue" | "unacked" | "result"
    key: bytes  # the Redis key holding it
    member: bytes  # list element bytes, unacked delivery tag, or b"" for a result key
    task_id: str
    task_name: str | None
    queue: str | None
    content_type: str | None
    args: tuple[Any, ...] | None = field(compare=False, default=None)
    kwargs: dict[str, Any] | None = field(compare=False, default=None)
    status: str | None = None  # results only

    @property
    def body_is_safe(self) -> bool:
        """Whether a safe decoder may read the body (never unpickle)."""
        return self.content_type != PICKLE

    @property
    def ident(self) -> tuple[str, str]:
        return (self.task_id, self.location)


def _decode_body(envelope: dict[str, Any]) -> tuple[Any, str | None]:
    ctype = envelope.get("content-type")
    raw = base64.b64decode(envelope["body"])
    if ctype == "application/json":
        return json.loads(raw), ctype
    if ctype == PICKLE:
        return pickle.loads(raw), ctype  # the tests made these bytes; the janitor never may
    if ctype == "application/x-msgpack":
        return msgpack.unpackb(raw, raw=False), ctype
    if ctype == "application/x-yaml":
        return yaml.safe_load(raw), ctype
    raise ValueError(f"unknown content type {ctype!r}")


def parse_message(raw: bytes, location: str, key: bytes, member: bytes, queue: str | None) -> Entry:
    envelope = json.loads(raw)
    headers = envelope.get("headers") or {}
    body, ctype = _decode_body(envelope)
    if "task" in headers and "id" in headers:  # protocol 2
        args, kwargs = body[0], body[1]
        task_id, name = headers["id"], headers["task"]
    else:  # protocol 1
        args, kwargs = body.get("args"), body.get("kwargs")
        task_id, name = envelope["properties"]["correlation_id"], body.get("task")
    return Entry(
        location=location,
        key=key,
        member=member,
        task_id=task_id,
        task_name=name,
        queue=queue,
        content_type=ctype,
        args=tuple(args) if args is not None else None,
        kwargs=kwargs,
    )


def entries(snapshot: Snapshot, queues: Iterable[str] = ("celery", "scans")) -> list[Entry]:
    """Every task entry in the snapshot, decoded."""
    queue_keys: dict[bytes, str] = {}
    for q in queues:
        for step in PRIORITY_STEPS:
            queue_keys[priority_key(q, step)] = q
    found: list[Entry] = []
    for key, state in snapshot.keys.items():
        if key in queue_keys and state.type == "list":
            for element in state.value:
                found.append(parse_message(element, "queue", key, element, queue_keys[key]))
        elif key == UNACKED and state.type == "hash":
            for tag, value in state.value.items():
                message, _exchange, routing_key = json.loads(value)
                found.append(
                    parse_message(json.dumps(message).encode(), "unacked", key, tag, routing_key)
                )
        elif key.startswith(RESULT_PREFIX) and state.type == "string":
            meta = json.loads(state.value)
            found.append(
                Entry(
                    location="result",
                    key=key,
                    member=b"",
                    task_id=key[len(RESULT_PREFIX) :].decode(),
                    task_name=meta.get("name"),
                    queue=meta.get("queue"),
                    content_type="application/json",
                    args=tuple(meta["args"]) if meta.get("args") is not None else None,
                    kwargs=meta.get("kwargs"),
                    status=meta.get("status"),
                )
            )
    return found


@dataclass(frozen=True)
class OwnerRule:
    table: str = "scan_tasks"
    id_column: str = "id"
    tasks: tuple[str, ...] = ("scanner.scan_domain_task",)
    id_from: str = "arg:0"
    claim_unnamed_results: bool = False


@dataclass(frozen=True)
class Verdict:
    state: str  # live | orphaned | unowned | undecidable
    owner_id: str | None


def owner_id_of(entry: Entry, rule: OwnerRule) -> str | None:
    """The owning row's id per `id_from`, or None when it cannot be read safely."""
    if rule.id_from == "task_id":
        return entry.task_id
    if not entry.body_is_safe:
        return None
    if rule.id_from.startswith("arg:"):
        n = int(rule.id_from[4:])
        if entry.args is None or len(entry.args) <= n:
            return None
        return str(entry.args[n])
    if rule.id_from.startswith("kwarg:"):
        name = rule.id_from[6:]
        if entry.kwargs is None or name not in entry.kwargs:
            return None
        return str(entry.kwargs[name])
    raise ValueError(rule.id_from)


def classify(entry: Entry, rule: OwnerRule, existing_ids: set[str]) -> Verdict:
    """What the contract says the janitor must call this entry."""
    if entry.task_name is None:
        if entry.location == "result" and not rule.claim_unnamed_results:
            return Verdict("unowned", None)
        if entry.location != "result":
            return Verdict("undecidable", None)
    elif not any(fnmatch.fnmatchcase(entry.task_name, pattern) for pattern in rule.tasks):
        return Verdict("unowned", None)
    owner = owner_id_of(entry, rule)
    if owner is None:
        return Verdict("undecidable", None)
    return Verdict("live" if owner in existing_ids else "orphaned", owner)


def verdicts(
    found: list[Entry], rule: OwnerRule, existing_ids: set[str]
) -> list[tuple[Entry, Verdict]]:
    return [(e, classify(e, rule, existing_ids)) for e in found]


def remove_entries(snapshot: Snapshot, removed: Iterable[Entry]) -> Snapshot:
    """The snapshot as it must look after exactly `removed` were taken out of Redis."""
    out = snapshot.copy()
    for entry in removed:
        if entry.location == "queue":
            out.remove_list_element(entry.key, entry.member)
        elif entry.location == "unacked":
            out.remove_hash_field(UNACKED, entry.member)
            if UNACKED_INDEX in out and entry.member in out[UNACKED_INDEX].value:
                out.remove_zset_member(UNACKED_INDEX, entry.member)
        else:
            out.remove_key(entry.key)
    return out
