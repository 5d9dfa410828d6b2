"""The one escaping rule for Redis keys shown as text, on the Python side.

`tasks --json` prints keys with non-printable bytes as `\\xNN` (docs/cli.md), and the tests
compare those strings with keys they read themselves (`celery_state.escape_key`). Both sides
check the same table of examples, tests/shared/printable-keys.json (the Rust side in the engine's
unit tests), so the two rules can't drift apart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from support.celery_state import escape_key

TABLE = Path(__file__).resolve().parents[1] / "shared" / "printable-keys.json"


def examples() -> list[dict[str, Any]]:
    loaded: dict[str, Any] = json.loads(TABLE.read_text())
    return list(loaded["examples"])


@pytest.mark.parametrize("example", examples(), ids=lambda e: str(e["why"]))
def test_escape_key_matches_the_shared_table(example: dict[str, Any]) -> None:
    assert escape_key(bytes.fromhex(example["hex"])) == example["printable"]


def test_the_table_covers_every_kind_of_byte() -> None:
    keys = b"".join(bytes.fromhex(e["hex"]) for e in examples())
    assert b"\\" in keys, "the backslash"
    assert any(b < 0x20 for b in keys) and 0x7F in keys, "controls on both sides of the range"
    assert any(b >= 0x80 for b in keys), "non-ASCII bytes"
    assert 0x20 in keys and 0x7E in keys, "the bounds of the printable range"
