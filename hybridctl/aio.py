"""Small asyncio helpers shared by the controller's loops."""

from __future__ import annotations

import asyncio


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait until `event` is set or `timeout` seconds pass; True if it was set.

    Unlike `asyncio.wait_for(event.wait(), timeout)` on Python < 3.12, this never swallows a
    cancellation that arrives as the event is set (gh-86296): a loop cancelled at that moment
    would otherwise go on running, and whoever awaits its end would wait for ever."""
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _pending = await asyncio.wait({waiter}, timeout=timeout)
    finally:
        waiter.cancel()
    return bool(done)
