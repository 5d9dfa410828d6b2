"""Byte-exact snapshots of a whole Redis database, and comparisons between them.

A snapshot holds every key with its type and its full value read with type-specific commands
(GET, LRANGE, HGETALL, SMEMBERS, ZRANGE WITHSCORES), all as raw bytes. The remaining TTL is kept
but only compared as "expires or not" (it drifts while a test runs). DUMP is not used for the
comparison because its encoding (listpack vs. quicklist, hash field order) can change without the
logical value changing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

JANITOR_PREFIX = b"celery-janitor:"


@dataclass(frozen=True)
class KeyState:
    type: str
    value: Any  # bytes | list[bytes] | dict[bytes, bytes] | frozenset[bytes] | dict[bytes, float]
    pttl: int  # -1: no expiry

    @property
    def expires(self) -> bool:
        return self.pttl >= 0


@dataclass
class Snapshot:
    keys: dict[bytes, KeyState] = field(default_factory=dict)

    def without_prefix(self, prefix: bytes = JANITOR_PREFIX) -> Snapshot:
        return Snapshot({k: v for k, v in self.keys.items() if not k.startswith(prefix)})

    def copy(self) -> Snapshot:
        return Snapshot(dict(self.keys))

    def __contains__(self, key: bytes) -> bool:
        return key in self.keys

    def __getitem__(self, key: bytes) -> KeyState:
        return self.keys[key]

    # -- edits used to compute an expected snapshot ------------------------------------------

    def remove_list_element(self, key: bytes, element: bytes) -> None:
        """Remove one occurrence of `element` (exact bytes) from list `key`."""
        state = self.keys[key]
        items = list(state.value)
        items.remove(element)
        self._replace(key, state, items)

    def remove_hash_field(self, key: bytes, hfield: bytes) -> None:
        state = self.keys[key]
        value = dict(state.value)
        del value[hfield]
        self._replace(key, state, value)

    def remove_zset_member(self, key: bytes, member: bytes) -> None:
        state = self.keys[key]
        value = dict(state.value)
        del value[member]
        self._replace(key, state, value)

    def remove_key(self, key: bytes) -> None:
        del self.keys[key]

    def _replace(self, key: bytes, state: KeyState, value: Any) -> None:
        if len(value) == 0:  # Redis deletes empty collections
            del self.keys[key]
        else:
            self.keys[key] = KeyState(state.type, value, state.pttl)


def zscores(client: redis.Redis, key: bytes) -> dict[bytes, float]:
    """Every member of a sorted set with its score."""
    pairs = cast(list[tuple[bytes, float]], client.zrange(key, 0, -1, withscores=True))
    return {member: float(score) for member, score in pairs}


def take(client: redis.Redis, *, scan_count: int = 1000) -> Snapshot:
    """Read every key of the client's database."""
    keys: list[bytes] = list(client.scan_iter(count=scan_count))
    snap = Snapshot()
    for key in keys:
        pipe = client.pipeline(transaction=True)
        pipe.type(key)
        pipe.pttl(key)
        ktype_raw, pttl = pipe.execute()
        ktype = ktype_raw.decode() if isinstance(ktype_raw, bytes) else str(ktype_raw)
        value: Any
        if ktype == "none":
            continue  # expired or deleted between SCAN and TYPE
        if ktype == "string":
            value = client.get(key)
        elif ktype == "list":
            value = list(client.lrange(key, 0, -1))
        elif ktype == "hash":
            value = dict(client.hgetall(key))
        elif ktype == "set":
            value = frozenset(client.smembers(key))
        elif ktype == "zset":
            value = zscores(client, key)
        else:
            value = client.dump(key)
        snap.keys[key] = KeyState(ktype, value, int(pttl))
    return snap


def _short(value: Any, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def differences(
    expected: Snapshot,
    actual: Snapshot,
    *,
    list_order_free_keys: Iterable[bytes] = (),
    compare_expiry: bool = True,
) -> list[str]:
    """Human-readable differences; empty when `actual` matches `expected`.

    For keys in `list_order_free_keys`, a list only has to hold the same elements (as a
    multiset); otherwise list order matters. TTLs are compared as "expires or not".
    """
    order_free = set(list_order_free_keys)
    out: list[str] = []
    for key in sorted(set(expected.keys) | set(actual.keys)):
        exp = expected.keys.get(key)
        act = actual.keys.get(key)
        if exp is None:
            assert act is not None
            out.append(f"unexpected key {key!r} ({act.type}): {_short(act.value)}")
            continue
        if act is None:
            out.append(f"missing key {key!r} ({exp.type}): {_short(exp.value)}")
            continue
        if exp.type != act.type:
            out.append(f"key {key!r}: type {exp.type} became {act.type}")
            continue
        if compare_expiry and exp.expires != act.expires:
            out.append(f"key {key!r}: pttl {exp.pttl} became {act.pttl}")
        if exp.type == "list" and key in order_free:
            if Counter(exp.value) != Counter(act.value):
                out.append(_list_diff(key, exp.value, act.value))
        elif exp.value != act.value:
            if exp.type == "list":
                out.append(_list_diff(key, exp.value, act.value))
            elif exp.type in ("hash", "zset"):
                out.append(_mapping_diff(key, exp.value, act.value))
            else:
                out.append(f"key {key!r}: {_short(exp.value)} became {_short(act.value)}")
    return out


def _list_diff(key: bytes, exp: list[bytes], act: list[bytes]) -> str:
    missing = Counter(exp) - Counter(act)
    extra = Counter(act) - Counter(exp)
    parts = [f"list {key!r}: {len(exp)} elements expected, {len(act)} found"]
    for element in missing.elements():
        parts.append(f"  missing {_short(element)}")
    for element in extra.elements():
        parts.append(f"  extra   {_short(element)}")
    if not missing and not extra:
        parts.append("  same elements, different order")
    return "\n".join(parts)


def _mapping_diff(key: bytes, exp: dict[bytes, Any], act: dict[bytes, Any]) -> str:
    parts = [f"key {key!r}:"]
    for name in sorted(set(exp) | set(act)):
        if name not in act:
            parts.append(f"  missing field {name!r}")
        elif name not in exp:
            parts.append(f"  extra field {name!r} = {_short(act[name])}")
        elif exp[name] != act[name]:
            parts.append(f"  field {name!r}: {_short(exp[name])} became {_short(act[name])}")
    return "\n".join(parts)


def survivors_keep_order(
    before: list[bytes], after: list[bytes], restored: Iterable[bytes]
) -> bool:
    """True when the elements that were never removed keep their relative order in `after`."""
    moved = Counter(restored)

    def strip(items: list[bytes]) -> list[bytes]:
        budget = Counter(moved)
        kept = []
        for item in items:
            if budget[item] > 0:
                budget[item] -= 1
            else:
                kept.append(item)
        return kept

    return strip(before) == strip(after)
