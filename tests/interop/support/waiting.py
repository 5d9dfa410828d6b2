"""Waiting for conditions, always with a deadline."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """A condition did not become true in time."""


def wait_until(
    condition: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll `condition` until it returns a truthy value, and return that value.

    Raises `WaitTimeout` (an AssertionError, so pytest shows it as a failure) after `timeout`
    seconds; `describe` adds the current state to the message.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe else ""
            raise WaitTimeout(f"timed out after {timeout:.1f}s waiting for {what}{extra}")
        time.sleep(interval)
