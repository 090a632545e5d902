"""How both front ends write values for people: durations, times, GPU requests, job labels.

Neutral ground between `cli/` and `tui/` (neither imports the other); stdlib and `core/` only, so
the CLI's fast path may import it."""

from __future__ import annotations

import math
import time
from typing import Any, Mapping

from hybridctl.core.model import task_label


def duration(seconds: float | None) -> str:
    """Slurm-like: 5s, 12:03, 3:04:05, 2-03:04:05."""
    if seconds is None:
        return ""
    s = int(max(0, seconds))
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}-{h:02d}:{m:02d}:{s:02d}"
    if h:
        return f"{h}:{m:02d}:{s:02d}"
    return f"{m}:{s:02d}"


def reclaim_rate(pool: Mapping[str, Any]) -> str:
    """A spot pool's observed reclaims per node-hour from `cloud status`'s record ('0.150/h'), or
    '' below an hour of node time: one reclaim in 36 s is no rate."""
    if pool["node_hours"] < 1 or pool["per_node_hour"] is None:
        return ""
    return f"{pool['per_node_hour']:.3f}/h"


def reclaims_above_price(pool: Mapping[str, Any], chance: float = 0.05) -> bool:
    """Whether a spot pool reclaimed more than the rate a reclaim there is priced at can explain:
    at that rate over its node-hours, so many reclaims or more would come by chance less than
    `chance` of the time (a Poisson tail). Two reclaims where 1.2 were expected are chance (34 %);
    one within 36 s at 0.06/h is not (0.06 %), though it makes no rate to print (`reclaim_rate`).
    Reclaims that come as one pool event count one by one, so an event of several nodes weighs
    more than it should: the flag says where to look, `cloud status` says what happened."""
    k = int(pool.get("reclaims") or 0)
    expected = float(pool["priced_per_node_hour"]) * float(pool["node_hours"])
    if k <= expected:
        return False
    if expected <= 0:
        return True
    term = below = math.exp(-expected)  # P(N = 0), then P(N < k) term by term
    for i in range(1, k):
        term *= expected / i
        below += term
    return 1.0 - below < chance


def when(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def gpus_text(count: int, gpu_type: str | None, num_nodes: int = 1) -> str:
    base = f"{gpu_type}:{count}" if gpu_type else str(count)
    return f"{num_nodes}x{base}" if num_nodes > 1 else base


def job_label(row: Mapping[str, Any]) -> str:
    """The one rule for a queue row's name, in the CLI and the TUI alike: '42' for a plain job,
    '42_0' … '42_N' for every task of an array, task 0 included (Slurm's form)."""
    return task_label(int(row["job_id"]), int(row.get("task") or 0), array=bool(row.get("array")))
