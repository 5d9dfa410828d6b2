"""Copies of real Celery messages and results, with fresh ids, for large states.

Publishing 100k tasks through `apply_async` takes minutes, so large tests and the benchmark
publish a few hundred through the real scanner app, read back the exact bytes Celery/kombu wrote
(queue elements, `unacked` fields, `celery-task-meta-*` values) and replicate them. A copy changes
only what must be unique or names the owner: the task id (`headers.id`, `headers.root_id`,
`properties.correlation_id`), the delivery tag, and for `scanner.scan_domain_task` the row id
(`args[0]`), the domain (`args[2]`) and `headers.argsrepr`. Everything is re-encoded with kombu's
own `json.dumps` (default separators `", "` / `": "`), the encoder kombu uses for envelopes and
Celery uses for JSON bodies and results, so a copy is byte-for-byte what Celery would have written
for that task; `replicate_*` with the template's own ids returns the template unchanged, which
`check_round_trip` asserts before any copy is trusted.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from celery.utils.saferepr import saferepr
from kombu.utils.json import dumps as kombu_dumps

from scanner.app import SCAN_TASK

ARGSREPR_MAXSIZE = 1024  # celery.app.amqp.AMQP.argsrepr_maxsize


@dataclass(frozen=True)
class Copy:
    """One replicated entry: its bytes and the ids it carries."""

    raw: bytes
    task_id: str
    delivery_tag: str | None = None


def _body(envelope: dict[str, Any]) -> list[Any]:
    if envelope.get("content-type") != "application/json":
        raise ValueError("only JSON task messages can be replicated")
    body = json.loads(base64.b64decode(envelope["body"]))
    if not (isinstance(body, list) and len(body) == 3):
        raise ValueError("not a protocol 2 body")
    return body


def _with_owner(args: list[Any], task_name: str, row_id: int | None) -> list[Any]:
    if row_id is None or task_name != SCAN_TASK:
        return args
    new = list(args)
    new[0] = row_id
    new[2] = f"site{row_id}.example"
    return new


def replicate_envelope_dict(
    envelope: dict[str, Any],
    *,
    task_id: str | None = None,
    delivery_tag: str | None = None,
    row_id: int | None = None,
) -> dict[str, Any]:
    """A deep copy of a kombu envelope (dict) with new ids (and row id)."""
    env: dict[str, Any] = json.loads(kombu_dumps(envelope))
    headers = env["headers"]
    props = env["properties"]
    new_id = task_id or str(uuid.uuid4())
    args, kwargs, embed = _body(env)
    new_args = _with_owner(args, headers.get("task", ""), row_id)
    if new_args is not args:
        env["body"] = base64.b64encode(kombu_dumps([new_args, kwargs, embed]).encode()).decode()
        headers["argsrepr"] = saferepr(tuple(new_args), ARGSREPR_MAXSIZE)
    if headers.get("root_id") == headers.get("id"):
        headers["root_id"] = new_id
    headers["id"] = new_id
    props["correlation_id"] = new_id
    props["delivery_tag"] = delivery_tag or str(uuid.uuid4())
    return env


def replicate_message(
    template: bytes,
    *,
    task_id: str | None = None,
    delivery_tag: str | None = None,
    row_id: int | None = None,
) -> Copy:
    """A queue element (kombu envelope bytes) with new ids."""
    env = replicate_envelope_dict(
        json.loads(template), task_id=task_id, delivery_tag=delivery_tag, row_id=row_id
    )
    return Copy(kombu_dumps(env).encode(), env["headers"]["id"], env["properties"]["delivery_tag"])


def replicate_unacked(
    template: bytes,
    *,
    task_id: str | None = None,
    delivery_tag: str | None = None,
    row_id: int | None = None,
) -> Copy:
    """An `unacked` hash value (`[envelope, exchange, routing_key]`) with new ids; the new
    delivery tag is the hash field to store it under."""
    envelope, exchange, routing_key = json.loads(template)
    env = replicate_envelope_dict(
        envelope, task_id=task_id, delivery_tag=delivery_tag, row_id=row_id
    )
    raw = kombu_dumps([env, exchange, routing_key]).encode()
    return Copy(raw, env["headers"]["id"], env["properties"]["delivery_tag"])


def replicate_result(
    template: bytes, *, task_id: str | None = None, row_id: int | None = None
) -> Copy:
    """A `celery-task-meta-<id>` value with a new task id (and row id in `args`)."""
    meta: dict[str, Any] = json.loads(template)
    new_id = task_id or str(uuid.uuid4())
    meta["task_id"] = new_id
    if isinstance(meta.get("args"), list):
        meta["args"] = _with_owner(meta["args"], meta.get("name") or "", row_id)
    return Copy(kombu_dumps(meta).encode(), new_id)


def envelope_ids(raw: bytes) -> tuple[str, str]:
    """(task id, delivery tag) of a queue element."""
    env = json.loads(raw)
    return env["headers"]["id"], env["properties"]["delivery_tag"]


def envelope_row(raw: bytes) -> int | None:
    """The scan row id a queue element names, or None for other tasks."""
    env = json.loads(raw)
    if env["headers"].get("task") != SCAN_TASK:
        return None
    return int(_body(env)[0][0])


def check_round_trip(
    queue_templates: Sequence[bytes],
    unacked_templates: Sequence[bytes] = (),
    result_templates: Sequence[bytes] = (),
) -> None:
    """Replicating a template with its own ids must give back its exact bytes."""
    for raw in queue_templates:
        env = json.loads(raw)
        row = envelope_row(raw)
        copy = replicate_message(
            raw,
            task_id=env["headers"]["id"],
            delivery_tag=env["properties"]["delivery_tag"],
            row_id=row,
        )
        if copy.raw != raw:
            raise AssertionError(
                f"envelope copy differs from Celery's bytes:\n{raw!r}\n{copy.raw!r}"
            )
    for raw in unacked_templates:
        env = json.loads(raw)[0]
        copy = replicate_unacked(
            raw, task_id=env["headers"]["id"], delivery_tag=env["properties"]["delivery_tag"]
        )
        if copy.raw != raw:
            raise AssertionError(f"unacked copy differs from kombu's bytes:\n{raw!r}\n{copy.raw!r}")
    for raw in result_templates:
        meta = json.loads(raw)
        copy = replicate_result(raw, task_id=meta["task_id"])
        if copy.raw != raw:
            raise AssertionError(f"result copy differs from Celery's bytes:\n{raw!r}\n{copy.raw!r}")
