"""How long a task will run, for reservations (core/backfill.py) and the wait-or-pay line: its time
limit when it has one, else a quantile of its user's recent finished runs of similar work.

Similar, most specific first: the other tasks of the same job (an array), runs with the same
name, runs of the same command. Only runs that SUCCEEDED teach anything (a crash after a minute
says nothing about a full run); the caller passes those. A task with neither a limit nor any
history is *unbounded*: reservations treat it as never ending, so it never holds up a reservation
it would overrun, and running it never lets a reservation be placed behind it.

A running task that outlives its estimate is no longer predictable: `expected_end` gives None for
it (not "now"), so reservations do not keep promising GPUs it still holds. A time limit is a hard
end (the controller stops the task there), so it stays the expected end even when overdue.

Pure: hashing and arithmetic only.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

QUANTILE = 0.8
"""Estimates take this quantile of recent runtimes: most runs end before it."""
MAX_RUNS = 20
"""At most this many recent runs of one kind count (habits change)."""


@dataclass(frozen=True)
class Run:
    """One finished (SUCCEEDED) task of the past."""

    user: str
    job_id: int
    name: str
    command: str
    """`command_key` of its run script."""
    runtime_s: float
    ended_at: float


@dataclass(frozen=True)
class Estimate:
    """A task's expected run time and where it came from (shown by `show`)."""

    seconds: float | None
    """None = unbounded (no limit, no history)."""
    source: str


def command_key(run: str) -> str:
    """A short hash of a run script with its whitespace runs collapsed."""
    text = " ".join(run.split())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def quantile(values: Sequence[float], q: float = QUANTILE) -> float:
    """The nearest-rank q-quantile: the smallest value with at least q of them at or below it."""
    if not values:
        raise ValueError("quantile of no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def duration(seconds: float) -> str:
    """'45s', '12m', '2h 30m', '3d 4h'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        h, m = divmod(s // 60, 60)
        return f"{h}h {m}m" if m else f"{h}h"
    d, h = divmod(s // 3600, 24)
    return f"{d}d {h}h" if h else f"{d}d"


class Estimator:
    """Finished runs indexed once per pass; `estimate` then costs a few dict lookups (cached per
    (user, job, name, command))."""

    def __init__(
        self, runs: Iterable[Run] = (), q: float = QUANTILE, max_runs: int = MAX_RUNS
    ) -> None:
        self.q = q
        self.max_runs = max_runs
        self.groups: dict[tuple[str, str, object], list[Run]] = {}
        """(user, kind, what) -> its most recent runs, newest first, at most max_runs."""
        self._cache: dict[tuple[str, int, str, str], Estimate] = {}
        self.add(runs)

    def add(self, runs: Iterable[Run]) -> None:
        """Learn from more finished runs (e.g. those since the last refresh)."""
        touched: set[tuple[str, str, object]] = set()
        for r in runs:
            keys: list[tuple[str, str, object]] = [(r.user, "job", r.job_id)]
            if r.name:
                keys.append((r.user, "name", r.name))
            if r.command:
                keys.append((r.user, "cmd", r.command))
            for k in keys:
                self.groups.setdefault(k, []).append(r)
                touched.add(k)
        for k in touched:
            self.groups[k] = sorted(self.groups[k], key=lambda r: -r.ended_at)[: self.max_runs]
        if touched:
            self._cache.clear()

    def estimate(
        self,
        *,
        user: str,
        job_id: int,
        name: str = "",
        command: str = "",
        time_limit: float | None = None,
    ) -> Estimate:
        """The time limit if any, else p80 of the most specific history that exists."""
        if time_limit is not None:
            return Estimate(float(time_limit), f"time limit {duration(time_limit)}")
        key = (user, job_id, name, command)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = self._from_history(user, job_id, name, command)
        return found

    def _from_history(self, user: str, job_id: int, name: str, command: str) -> Estimate:
        pct = f"p{round(self.q * 100)}"
        tried: list[tuple[tuple[str, str, object], str]] = [
            ((user, "job", job_id), f"finished tasks of job {job_id}"),
        ]
        if name:
            tried.append(((user, "name", name), f"runs of '{name}' by {user}"))
        if command:
            tried.append(((user, "cmd", command), f"runs of the same command by {user}"))
        for k, what in tried:
            runs = self.groups.get(k)
            if runs:
                value = quantile([r.runtime_s for r in runs], self.q)
                n = len(runs)
                what = what.replace("runs", "run", 1) if n == 1 else what
                what = what.replace("tasks", "task", 1) if n == 1 else what
                return Estimate(value, f"estimate: {pct} of {n} {what} ({duration(value)})")
        return Estimate(None, "no time limit and no finished runs like it: unbounded")


def expected_end(
    started_at: float, time_limit: float | None, estimate_s: float | None, now: float
) -> float | None:
    """When a running task is expected to end: start + its time limit (a hard end, even when
    overdue), else start + its estimate while that is still ahead; None = unknown."""
    if time_limit is not None:
        return started_at + time_limit
    if estimate_s is not None and started_at + estimate_s > now:
        return started_at + estimate_s
    return None
