"""Supervision of the controller's long-lived tasks (node sessions, the schedule loop, the fleet
monitor, the autoscaler). A task that raises, or returns although it should run forever, is
logged and restarted with bounded exponential back-off: one failing task never ends the daemon,
and only a stop signal (cancellation) ends a supervised task."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Awaitable, Callable

log = logging.getLogger("hybridctl.supervisor")

FIRST_DELAY = 0.5
MAX_DELAY = 30.0
HEALTHY_AFTER = 60.0
"""A run at least this long before it failed counts as healthy: the next delay starts over."""
_KNOWN_LIMIT = 100


async def supervise(
    name: str,
    run: Callable[[], Awaitable[None]],
    *,
    first: float = FIRST_DELAY,
    cap: float = MAX_DELAY,
    healthy_after: float = HEALTHY_AFTER,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    jitter: Callable[[], float] = random.random,
) -> None:
    """Run `run()` again and again until cancelled. A failure is logged with its traceback the
    first time that error is seen, and in one line after that (a task failing every few seconds
    for hours must not fill the disk); the delay before the restart doubles up to `cap`, with
    ±20 % jitter so that many node sessions failing together do not retry in lock step."""
    delay = first
    known: set[str] = set()
    while True:
        started = clock()
        try:
            await run()
            error: BaseException | None = None
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the point of supervision: log it whole, restart the task
            error = exc
        if clock() - started >= healthy_after:
            delay = first
        wait = delay * (0.8 + 0.4 * jitter())
        if error is None:
            log.error("task %s returned although it should run until stopped; restarting in %.1fs", name, wait)
        else:
            sig = f"{type(error).__name__}: {error}"
            if sig not in known:
                if len(known) < _KNOWN_LIMIT:
                    known.add(sig)
                log.error("task %s failed; restarting in %.1fs", name, wait, exc_info=error)
            else:
                log.error("task %s failed again (%s); restarting in %.1fs", name, sig[:300], wait)
        await sleep(wait)
        delay = min(delay * 2, cap)


def start(name: str, run: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """A supervised task named `name` (see `supervise`)."""
    return asyncio.create_task(supervise(name, run), name=name)
