"""The one bounded wait of the test suite (never fixed sleeps).

`wait_for(predicate, timeout, interval, what)` polls until `predicate()` is truthy and returns that
value; after `timeout` seconds it fails naming `what` and the last value seen. The error is both an
AssertionError (a test failure, as pytest shows it) and a TimeoutError (for the few tests that
catch a wait to say more). The TUI's Pilot tests use `tests/tui/helpers.until`, the same rule on
the app's own loop."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

T = TypeVar("T")

TIMEOUT = 60.0
"""Generous bound for anything a loaded 2-core machine should finish in a second or two."""


class WaitTimeout(AssertionError, TimeoutError):
    """A bounded wait ran out."""


def wait_for(predicate: Callable[[], T], timeout: float = TIMEOUT, interval: float = 0.05,
             what: str = "condition") -> T:
    """Poll `predicate` until it returns something truthy and return it; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; last: {value!r}")
        time.sleep(interval)


async def wait_for_async(predicate: Callable[[], T], timeout: float = TIMEOUT, interval: float = 0.01,
                         what: str = "condition") -> T:
    """`wait_for` inside an event loop (in-process tests of asyncio parts): sleeps with
    `asyncio.sleep`, so the loop under test keeps running while it waits."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}; last: {value!r}")
        await asyncio.sleep(interval)
