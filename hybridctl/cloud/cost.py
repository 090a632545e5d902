"""What a cloud node's time cost, split among the jobs that held it. Pure: the autoscaler records
the result in SQLite, the benchmark sums it."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

from hybridctl.core.allowance import share


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
    its share of the node (`allowance.share`: GPUs, or CPUs for a rank without GPUs); what no job
    held is idle time. The charges add up to the node's cost over the interval: where the shares
    held add up to more (CPU-only ranks beside ranks that took every GPU), all are scaled down."""
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
        part = max(share(node_gpus, node_cpus, h.gpus, h.cpus), 0.0)
        hours = (b - a) / 3600.0
        out.append(Charge(h.job_id, h.task, h.user, price_hourly * hours * part, hours * part, h.group))
        used_share_h += hours * part
    if used_share_h > total_h:
        return _scaled(out, total_h / used_share_h)
    idle_h = total_h - used_share_h
    if idle_h > 1e-12:
        out.append(Charge(0, 0, "", price_hourly * idle_h, idle_h))
    return out


def _scaled(charges: list[Charge], by: float) -> list[Charge]:
    return [replace(c, usd=c.usd * by, hours=c.hours * by) for c in charges]


def hourly_by_job(price_hourly: float, node_gpus: int, node_cpus: float,
                  held: Sequence[Held]) -> list[Charge]:
    """$/h each allocation held now costs (`usd` is $/h, `hours` unused)."""
    out = []
    for h in held:
        if h.end is None:
            out.append(Charge(h.job_id, h.task, h.user, price_hourly * max(share(node_gpus, node_cpus, h.gpus, h.cpus), 0.0),
                              0.0, h.group))
    whole = sum(c.usd for c in out)
    return _scaled(out, price_hourly / whole) if whole > price_hourly else out
