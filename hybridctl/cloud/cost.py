"""What a cloud node's time cost, split among the jobs that held it. Pure: the autoscaler records
the result in SQLite, the benchmark sums it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Held:
    """One allocation on the node."""

    job_id: int
    task: int
    user: str
    gpus: int
    cpus: float
    start: float
    end: float | None
    """None while still held."""
    group: str = ""


@dataclass(frozen=True)
class Charge:
    """Dollars and node-hours of one job (job 0, user '': the node was idle)."""

    job_id: int
    task: int
    user: str
    usd: float
    hours: float
    group: str = ""


def split(price_hourly: float, start: float, end: float, node_gpus: int, node_cpus: float,
          held: Sequence[Held]) -> list[Charge]:
    """Charge [start, end) of a node at `price_hourly` to the allocations that overlap it, each by
    its share of the node (GPUs, or CPUs on a node without GPUs); what no job held is idle time.
    The charges add up to the node's cost over the interval."""
    if end <= start:
        return []
    total_h = (end - start) / 3600.0
    out: list[Charge] = []
    used_share_h = 0.0
    for h in held:
        a = max(start, h.start)
        b = min(end, h.end if h.end is not None else end)
        if b <= a:
            continue
        share = (h.gpus / node_gpus) if node_gpus else (h.cpus / node_cpus if node_cpus else 1.0)
        share = min(max(share, 0.0), 1.0)
        hours = (b - a) / 3600.0
        out.append(Charge(h.job_id, h.task, h.user, price_hourly * hours * share, hours * share, h.group))
        used_share_h += hours * share
    idle_h = max(0.0, total_h - used_share_h)
    if idle_h > 1e-12:
        out.append(Charge(0, 0, "", price_hourly * idle_h, idle_h))
    return out


def hourly_by_job(price_hourly: float, node_gpus: int, node_cpus: float,
                  held: Sequence[Held]) -> list[Charge]:
    """$/h each allocation held now costs (`usd` is $/h, `hours` unused)."""
    out = []
    for h in held:
        if h.end is not None:
            continue
        share = (h.gpus / node_gpus) if node_gpus else (h.cpus / node_cpus if node_cpus else 1.0)
        out.append(Charge(h.job_id, h.task, h.user, price_hourly * min(max(share, 0.0), 1.0), 0.0, h.group))
    return out
