"""Helpers for TUI tests: bounded waiting (never fixed sleeps) and the screen as plain text."""

from __future__ import annotations

import io
import time
from typing import Any, Callable

from rich.console import Console
from textual.app import App
from textual.pilot import Pilot


async def until(pilot: Pilot[Any], predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Let the app run until `predicate()` is truthy; fail after `timeout` seconds (a loaded CI
    machine gets the whole budget, a fast one returns at once)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = screen_text(pilot.app)
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; screen was:\n{text}")
        await pilot.pause(0.05)


async def polled(pilot: Pilot[Any], n: int = 1, timeout: float = 20.0) -> None:
    """Wait until `n` more refreshes have been handled."""
    app: Any = pilot.app
    target = app.polls + n
    await until(pilot, lambda: app.polls >= target, timeout, f"{n} refresh(es)")


async def shows(pilot: Pilot[Any], text: str, timeout: float = 20.0) -> str:
    """Wait until `text` is on the screen; return the screen."""
    def check() -> str:
        s = screen_text(pilot.app)
        return s if text in s else ""

    return str(await until(pilot, check, timeout, f"{text!r} on screen"))


def screen_text(app: App[Any]) -> str:
    """What the terminal shows now, as plain text (the screenshot without colours)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=False, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def same_keys(what: str, real: Any, fake: Any, optional: frozenset[str] = frozenset()) -> None:
    """`tui/fake.py`'s reply (or its first row) has the real controller's keys, but for `optional`
    ones the controller sends only when it knows them."""
    def keys(reply: Any) -> set[str]:
        row = reply[0] if isinstance(reply, list) and reply else reply
        assert isinstance(row, dict), f"{what}: {reply!r}"
        return set(row) - optional

    r, f = keys(real), keys(fake)
    assert r == f, f"{what}: only the controller sends {sorted(r - f)}; only the fake sends {sorted(f - r)}"
