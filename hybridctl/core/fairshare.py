"""Fair share: GPU-hours decayed by age, and the order in which a scheduling pass considers
pending tasks. Kept apart from placement because the controller also shows usage to users."""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from hybridctl.core.model import PendingTask

#: What `priority_key` returns: compare tuples, smaller runs first.
PriorityKey = tuple[int, float, float, int, int]


def decayed_usage(
    records: Iterable[tuple[str, float, float, float]], now: float, half_life_h: float
) -> dict[str, float]:
    """GPU-hours per user, each moment of use weighted by 2^(-age / half_life).

    `records` are (user, start_time, end_time_or_now, gpus) in seconds since the epoch. A job
    that used 1 GPU for one hour that ended `half_life_h` hours ago counts half as much as the
    same hour ending now. Parts of a record after `now` do not count. Users whose records add
    up to nothing are still listed (with 0.0) so callers can tell "known, idle" from "unknown".
    """
    if not half_life_h > 0:
        raise ValueError(f"fair-share half-life must be more than 0 hours, got {half_life_h!r}")
    tau = half_life_h * 3600.0 / math.log(2.0)  # e-folding time in seconds
    usage: dict[str, float] = {}
    for user, start, end, gpus in records:
        end = min(end, now)
        value = 0.0
        if end > start and gpus > 0:
            # Exact integral of gpus * exp(-(now - t) / tau) over [start, end]; expm1 keeps
            # short records precise where a difference of two exponentials would not.
            value = gpus * tau * math.exp(-(now - end) / tau) * -math.expm1(-(end - start) / tau)
        usage[user] = usage.get(user, 0.0) + value / 3600.0
    return usage


def priority_key(task: PendingTask, usage_by_user: Mapping[str, float]) -> PriorityKey:
    """Sort key of a pending task: priority (higher first), then fair share (lower decayed
    GPU-hours of its user first), then submit time (earlier first), then (job_id, task)."""
    return (
        -task.priority,
        usage_by_user.get(task.user, 0.0),
        task.submitted_at,
        task.job_id,
        task.task,
    )
