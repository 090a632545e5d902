"""The wait-or-pay forecast: how long a task would wait on-prem (`Backlog` for the burst
policy's pass, `estimate_wait` replaying the scheduler forward for `show`), and the one line
that puts that wait beside the cloud's price (`wait_or_pay`). Pure: `now` is passed in."""

from __future__ import annotations

import heapq
import math
import statistics
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

from hybridctl.core.fairshare import priority_key
from hybridctl.core.fit import gpu_type_matches, never_fits
from hybridctl.core.model import ClusterView, NodeView, PendingTask, Policy, Resources, RunningTask
from hybridctl.core.offers import Offer, fmt_duration
from hybridctl.core.schedule import plan

TaskKey = tuple[int, int]


@dataclass(frozen=True)
class Freeing:
    """An on-prem allocation and when it is expected to end (start + time limit)."""

    node: str
    gpus: tuple[int, ...]
    cpus: float
    memory_mb: int
    end: float
    start: float | None = None
    """When it started, where known: with `World.limit_use` the run is put at its expected end."""


LIMIT_USE_AFTER = 20
"""Finished time-limited runs needed before `limit_use` trusts their median."""


def limit_use(shares: Sequence[float]) -> float:
    """`World.limit_use` from the shares of their time limit that finished runs used (each clipped
    to 0..1): their median from `LIMIT_USE_AFTER` runs on, else 1.0 (runs end at their limit)."""
    if len(shares) < LIMIT_USE_AFTER:
        return 1.0
    return statistics.median(min(1.0, max(0.0, x)) for x in shares)


RUN_LENGTHS_AFTER = 20
"""Finished runs without a time limit needed before `length_sample` gives anything."""
RUN_LENGTHS_KEEP = 40
RUN_LENGTHS_RECENT = 200
"""The newest this many such runs count (habits change)."""


def length_sample(lengths: Sequence[float], keep: int = RUN_LENGTHS_KEEP) -> tuple[float, ...]:
    """`World.run_lengths` from the run times of recent finished runs without a limit: at most
    `keep` evenly spaced order statistics (the shape of the distribution, its tail included: the
    longest is always kept), or () below `RUN_LENGTHS_AFTER` runs."""
    if len(lengths) < RUN_LENGTHS_AFTER:
        return ()
    s = sorted(max(0.0, float(x)) for x in lengths)
    if len(s) <= keep:
        return tuple(s)
    return tuple(s[round(i * (len(s) - 1) / (keep - 1))] for i in range(keep))


def expected_end(start: float, end: float, use: float, now: float) -> float:
    """When a run started at `start` with its time limit ending at `end` is expected to end, if
    runs like it use the share `use` of their limit (`World.limit_use`). One that has outlived
    that share is put halfway from now to its limit; never before now."""
    if use >= 1.0 or end <= now:
        return max(end, now)
    e = start + max(0.0, use) * (end - start)
    return e if e > now else (now + end) / 2


class Backlog:
    """The expected on-prem wait of a task: until enough GPUs of its models free up on enough
    nodes (running allocations end at their time limit or estimate), plus the GPU-seconds of
    work queued before it on those models over their GPUs."""

    def __init__(self, onprem: Sequence[NodeView], freeing: Sequence[Freeing], now: float,
                 default_runtime: float, running: Sequence[RunningTask] = ()) -> None:
        self.cap: dict[str, int] = {}
        self.work: dict[str, float] = {}
        ends: dict[tuple[str, int], float] = {}
        for r in running:
            # No limit and no estimate: a run that has gone on for t is taken to go on about as
            # long again (run times are heavy-tailed), at least half of `default_runtime`. A fixed
            # guess would call a days-old run "about to end" on every pass, forever.
            left = max(default_runtime / 2, now - r.started_at) if r.ends_at is None else max(0.0, r.ends_at - now)
            for g in r.gpus:
                ends[(r.node, g)] = left
        for f in freeing:
            for g in f.gpus:
                ends[(f.node, g)] = max(0.0, f.end - now)
        self.nodes: list[tuple[str, list[float]]] = []
        """Per node: its GPU model and, per healthy GPU, seconds until it is free (sorted)."""
        for n in onprem:
            left = []
            for slot in n.gpus:
                if not slot.healthy:
                    continue
                self.cap[slot.model] = self.cap.get(slot.model, 0) + 1
                self.work.setdefault(slot.model, 0.0)
                left.append(0.0 if slot.free else ends.get((n.name, slot.index), default_runtime / 2))
            if left:
                self.nodes.append((n.gpus[0].model, sorted(left)))
        self._models: dict[str | None, tuple[str, ...]] = {}
        self._free: dict[tuple[int, str | None, int], float] = {}

    def models(self, gpu_type: str | None) -> tuple[str, ...]:
        ms = self._models.get(gpu_type)
        if ms is None:
            ms = self._models[gpu_type] = tuple(
                m for m in self.cap if gpu_type is None or gpu_type_matches(gpu_type, m))
        return ms

    def _frees(self, res: Resources, k: int) -> float:
        """Seconds until k nodes each have res.gpus GPUs of a usable model free (inf: never)."""
        key = (res.gpus, res.gpu_type, k)
        hit = self._free.get(key)
        if hit is None:
            ms = set(self.models(res.gpu_type))
            per_node = sorted(left[res.gpus - 1] for m, left in self.nodes if m in ms and len(left) >= res.gpus)
            hit = self._free[key] = per_node[k - 1] if len(per_node) >= k else math.inf
        return hit

    def wait(self, res: Resources, k: int) -> float:
        """Seconds until a task of this shape would start on-prem (inf if no node fits it)."""
        if not res.gpus:
            return 0.0
        ms = self.models(res.gpu_type)
        cap = sum(self.cap[m] for m in ms)
        if cap < res.gpus * k:
            return math.inf
        return self._frees(res, k) + sum(self.work[m] for m in ms) / cap

    def add(self, res: Resources, k: int, seconds: float) -> None:
        """A task of this shape waits on-prem for `seconds` of run: later tasks queue behind it."""
        ms = self.models(res.gpu_type) if res.gpus else ()
        cap = sum(self.cap[m] for m in ms)
        if cap:
            for m in ms:
                self.work[m] += res.gpus * k * seconds * self.cap[m] / cap


@dataclass(frozen=True)
class Running:
    """An allocation held now and when it is expected to end."""

    node: str
    gpus: tuple[int, ...]
    cpus: float
    memory_mb: int
    end: float


def estimate_wait(
    task: PendingTask,
    pending: Sequence[PendingTask],
    nodes: Sequence[NodeView],
    running: Sequence[Running],
    policy: Policy,
    now: float,
    runtime: Mapping[TaskKey, float] | None = None,
    default_runtime: float = 3600.0,
    max_events: int = 400,
) -> tuple[float | None, int]:
    """(seconds until `task` would start on these nodes, pending tasks ahead of it).

    Replays the scheduler forward: each running allocation frees its resources at its expected
    end, `plan` runs on what is free, tasks it starts run for `runtime` (their time limit) or
    `default_runtime`. None when it would not start within `max_events` ends (or never fits)."""
    ordered = sorted(pending, key=lambda t: priority_key(t, {}))
    me = (task.job_id, task.task)
    mine = priority_key(task, {})
    ahead = [t for t in ordered if priority_key(t, {}) < mine and not t.deps_unmet and t.placement != "cloud"]
    local_task = replace(task, placement="onprem" if task.placement == "any" else task.placement)
    queue = [replace(t, placement="onprem" if t.placement == "any" else t.placement) for t in ahead]
    views = {n.name: n for n in nodes if n.site != "cloud"}
    if not views or never_fits(list(views.values()), task.resources, task.num_nodes):
        return None, len(ahead)
    events: list[tuple[float, int, Running]] = []
    for i, r in enumerate(running):
        if r.node in views:
            heapq.heappush(events, (max(r.end, now), i, r))
    seq = len(running)
    t_now = now
    runtimes = runtime or {}
    for _ in range(max_events + 1):
        d = plan(ClusterView(tuple(views.values())), [*queue, local_task], policy)
        started: set[TaskKey] = set()
        for p in d.placements:
            key = (p.job_id, p.task)
            if key == me:
                return t_now - now, len(ahead)
            started.add(key)
            views[p.node] = _hold(views[p.node], p.gpus, p.cpus, p.memory_mb, True)
            seq += 1
            end = t_now + runtimes.get(key, default_runtime)
            heapq.heappush(events, (end, seq, Running(p.node, p.gpus, p.cpus, p.memory_mb, end)))
        queue = [t for t in queue if (t.job_id, t.task) not in started]
        if not events:
            return None, len(ahead)
        t_now, _, r = heapq.heappop(events)
        views[r.node] = _hold(views[r.node], r.gpus, r.cpus, r.memory_mb, False)
        while events and events[0][0] <= t_now:
            _, _, r = heapq.heappop(events)
            views[r.node] = _hold(views[r.node], r.gpus, r.cpus, r.memory_mb, False)
    return None, len(ahead)


def _hold(n: NodeView, gpus: Sequence[int], cpus: float, mem: int, take: bool) -> NodeView:
    """`n` with these GPUs, CPUs and memory taken (take) or given back."""
    idx = set(gpus)
    sign = -1 if take else 1
    return replace(
        n,
        gpus=tuple(replace(s, free=not take) if s.index in idx else s for s in n.gpus),
        cpus_free=min(n.cpus_total, n.cpus_free + sign * cpus),
        memory_free_mb=min(n.memory_total_mb, n.memory_free_mb + sign * mem),
    )


def wait_or_pay(
    task: PendingTask, wait: float | None, ahead: int, offer: Offer | None, why_not: str, nodes: int = 1
) -> str:
    """'local: ~40 min behind 3 jobs; cloud: L40S spot in us-east-2 at $0.92/h'."""
    behind = f" behind {ahead} job{'s' if ahead != 1 else ''}" if ahead else ""
    if task.placement == "cloud":
        local = "local: not allowed (placement: cloud)"
    elif wait is None:
        local = f"local: unknown{behind}"
    elif wait < 60:
        local = f"local: could start now{behind}" if not wait else f"local: ~1 min{behind}"
    else:
        local = f"local: ~{fmt_duration(wait)}{behind}"
    if task.placement == "onprem":
        cloud = "cloud: not allowed (placement: onprem)"
    elif offer is None:
        cloud = f"cloud: {why_not}"
    elif nodes > 1:
        cloud = f"cloud: {nodes} nodes of {offer.describe()} (${nodes * offer.price_hourly:.2f}/h)"
    else:
        cloud = f"cloud: {offer.describe()}"
    return f"{local}; {cloud}"
