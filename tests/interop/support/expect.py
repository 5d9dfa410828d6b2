"""Comparing what the janitor reports with what the tests know is in Redis."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from .celery_state import Entry, Verdict, escape_key

LOCATIONS = ("queue", "unacked", "result")


def idents(rows: Iterable[dict[str, Any]]) -> Counter[tuple[str, str]]:
    """(task_id, location) of each row of `tasks --json`, counted (a task can repeat)."""
    return Counter((str(r["task_id"]), str(r["location"])) for r in rows)


def entry_idents(found: Iterable[Entry]) -> Counter[tuple[str, str]]:
    return Counter(e.ident for e in found)


def by_location(found: Iterable[Entry]) -> dict[str, int]:
    counts = Counter(e.location for e in found)
    return {loc: counts.get(loc, 0) for loc in LOCATIONS}


def with_state(verdicts: Iterable[tuple[Entry, Verdict]], state: str) -> list[Entry]:
    return [e for e, v in verdicts if v.state == state]


def explain_mismatch(
    listed: Counter[tuple[str, str]],
    expected: Counter[tuple[str, str]],
    verdicts: Iterable[tuple[Entry, Verdict]],
) -> str:
    """Which entries are missing or extra, with what the tests know about them."""
    known: dict[tuple[str, str], list[str]] = {}
    for e, v in verdicts:
        known.setdefault(e.ident, []).append(
            f"{v.state} name={e.task_name} owner={v.owner_id} key={escape_key(e.key)}"
            f" content-type={e.content_type}"
        )
    lines = []
    for ident in sorted((expected - listed).elements()):
        lines.append(f"  missing {ident}: {known.get(ident, ['?'])}")
    for ident in sorted((listed - expected).elements()):
        lines.append(f"  extra   {ident}: {known.get(ident, ['not in Redis'])}")
    return "\n".join(lines)


def row_problems(
    rows: list[dict[str, Any]], verdicts: list[tuple[Entry, Verdict]], owner_table: str
) -> list[str]:
    """Field-level checks of `tasks --json` rows against the known entries (by task id and
    location). Returns problems found."""
    problems: list[str] = []
    known: dict[tuple[str, str], list[tuple[Entry, Verdict]]] = {}
    for e, v in verdicts:
        known.setdefault(e.ident, []).append((e, v))
    for row in rows:
        ident = (str(row.get("task_id")), str(row.get("location")))
        matches = known.get(ident)
        if not matches:
            problems.append(f"row for an unknown entry: {row}")
            continue
        states = {v.state for _e, v in matches}
        if row.get("state") not in states:
            problems.append(f"{ident}: state {row.get('state')!r}, expected one of {states}")
        names = {e.task_name for e, _v in matches}
        if row.get("task_name") not in names:
            problems.append(f"{ident}: task_name {row.get('task_name')!r}, expected {names}")
        keys = {escape_key(e.key) for e, _v in matches}
        if row.get("key") not in keys:
            problems.append(f"{ident}: key {row.get('key')!r}, expected one of {keys}")
        if row.get("location") in ("queue", "unacked"):
            queues = {e.queue for e, _v in matches}
            if row.get("queue") not in queues:
                problems.append(f"{ident}: queue {row.get('queue')!r}, expected {queues}")
        if row.get("state") in ("live", "orphaned"):
            owners = {v.owner_id for _e, v in matches}
            if row.get("owner_table") != owner_table or str(row.get("owner_id")) not in owners:
                problems.append(
                    f"{ident}: owner {row.get('owner_table')}/{row.get('owner_id')!r},"
                    f" expected {owner_table}/{owners}"
                )
        for required in (
            "task_id",
            "task_name",
            "location",
            "queue",
            "owner_table",
            "owner_id",
            "state",
        ):
            if required not in row:
                problems.append(f"{ident}: field {required!r} missing")
    return problems
