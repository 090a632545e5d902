"""Per-job efficiency (what `hybridctl eff` prints, like Slurm's `seff`) and the idle-GPU rule.

Pure: the caller reads telemetry points from the history store and allocations from the job
store, and passes `now`; nothing here reads a clock, a file or a database."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, NamedTuple, Sequence


class GpuPoint(NamedTuple):
    """One GPU over one history bucket (a raw sample is a bucket of one). A NamedTuple: a year's
    history builds tens of thousands of them, and a frozen dataclass costs 5x more each."""

    t: float
    n: int
    """Samples the bucket aggregates (its weight in means)."""
    util: float | None
    """Mean GPU utilisation (%)."""
    util_max: float | None = None
    mem_max_mb: float | None = None
    mem_total_mb: float | None = None
    sm: float | None = None
    """Mean SM activity (%), None where NVML gives none."""


@dataclass(frozen=True)
class JobPoint:
    """What the agent measured of one rank's process tree at one moment."""

    t: float
    cpu_seconds: float | None = None
    """Cumulative CPU seconds of the job's processes."""
    rss_mb: float | None = None
    peak_rss_mb: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Allocation:
    """GPUs and CPUs one rank held on one node, from `start` to `end` (None: still held)."""

    node: str
    gpus: tuple[int, ...]
    cpus: float
    start: float
    end: float | None
    rank_key: str = ""
    """The agent's key of the rank (`42.a0.r0`), to find its JobPoints."""


@dataclass(frozen=True)
class GpuEfficiency:
    node: str
    index: int
    util_mean: float | None
    util_p95: float | None
    mem_peak_mb: float | None
    mem_total_mb: float | None
    sm_mean: float | None
    samples: int


@dataclass(frozen=True)
class Efficiency:
    job: str
    state: str
    wall_s: float
    """Seconds the allocations were held (the longest rank)."""
    gpus: tuple[GpuEfficiency, ...]
    gpu_hours_held: float
    gpu_hours_used: float
    """Held GPU-hours weighted by mean utilisation (a GPU at 50 % for 2 h used 1 GPU-hour)."""
    util_mean: float | None
    cpus: float
    cpu_seconds: float | None
    cpu_efficiency: float | None
    """CPU seconds used / (CPUs allocated x wall seconds), 0..1 (can exceed 1 when a job runs
    more threads than it asked for and nothing limits it)."""
    peak_rss_mb: float | None
    memory_mb: int | None
    """Memory requested (MiB), None when the job asked for none."""
    metrics: Mapping[str, float] = field(default_factory=dict)
    """The last values logged with `hybridctl.job.log`."""
    idle_s: float | None = None
    """Seconds the job's GPUs have been idle when it is flagged now, else None."""

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "gpus"}
        out["gpus"] = [dict(g.__dict__) for g in self.gpus]
        out["metrics"] = dict(self.metrics)
        return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile, `q` in 0..100 (simulate/engine.percentile takes a fraction), by linear
    interpolation; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _weighted_mean(pairs: Iterable[tuple[float | None, int]]) -> float | None:
    total = weight = 0.0
    for value, n in pairs:
        if value is not None and n > 0:
            total += value * n
            weight += n
    return total / weight if weight else None


def summarize(job: str, state: str, allocations: Sequence[Allocation],
              gpu_points: Mapping[tuple[str, int], Sequence[GpuPoint]],
              job_points: Mapping[str, Sequence[JobPoint]], now: float,
              memory_mb: int | None = None, idle_s: float | None = None) -> Efficiency:
    """The efficiency of one job (every rank of its current or last attempt). `gpu_points` holds
    each (node, GPU) series already cut to the allocation's time range; `job_points` each rank
    key's points. p95 is taken over bucket means: exact on raw samples, a smoothed figure where
    only coarser history is left."""
    gpus, held_h, used_h, wall = [], 0.0, 0.0, 0.0
    cpus = sum(a.cpus for a in allocations)
    for a in allocations:
        seconds = max(0.0, (a.end if a.end is not None else now) - a.start)
        wall = max(wall, seconds)
        for index in a.gpus:
            pts = [p for p in gpu_points.get((a.node, index), ()) if a.start - 1 <= p.t <= (a.end or now) + 1]
            mean = _weighted_mean((p.util, p.n) for p in pts)
            gpus.append(GpuEfficiency(
                node=a.node, index=index, util_mean=_round(mean),
                util_p95=_round(percentile([p.util for p in pts if p.util is not None], 95)),
                mem_peak_mb=max((p.mem_max_mb for p in pts if p.mem_max_mb is not None), default=None),
                mem_total_mb=max((p.mem_total_mb for p in pts if p.mem_total_mb is not None), default=None),
                sm_mean=_round(_weighted_mean((p.sm, p.n) for p in pts)),
                samples=sum(p.n for p in pts)))
            held_h += seconds / 3600.0
            used_h += seconds / 3600.0 * (mean or 0.0) / 100.0
    known = [(g.util_mean, g.samples) for g in gpus]
    cpu_total: float | None = None
    peak: float | None = None
    metrics: dict[str, float] = {}
    newest: dict[str, float] = {}
    for a in allocations:
        pts = sorted(job_points.get(a.rank_key, ()), key=lambda p: p.t)
        used = [p.cpu_seconds for p in pts if p.cpu_seconds is not None]
        if used:
            cpu_total = (cpu_total or 0.0) + max(used)
        peaks = [p.peak_rss_mb if p.peak_rss_mb is not None else p.rss_mb for p in pts]
        peaks = [p for p in peaks if p is not None]
        if peaks:
            peak = max(peak or 0.0, max(peaks))
        for p in pts:
            for name, value in p.metrics.items():
                if p.t >= newest.get(name, -math.inf):
                    newest[name], metrics[name] = p.t, value
    cpu_eff = None
    if cpu_total is not None and cpus > 0 and wall > 0:
        cpu_eff = round(cpu_total / (cpus * wall), 4)
    return Efficiency(job=job, state=state, wall_s=round(wall, 1), gpus=tuple(gpus),
                      gpu_hours_held=round(held_h, 4), gpu_hours_used=round(used_h, 4),
                      util_mean=_round(_weighted_mean(known)), cpus=cpus, cpu_seconds=cpu_total,
                      cpu_efficiency=cpu_eff, peak_rss_mb=peak, memory_mb=memory_mb,
                      metrics=metrics, idle_s=idle_s)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


# ---- idle detection -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IdlePolicy:
    util_below: float = 5.0
    after: float = 1800.0
    action: str = "none"
    """none, notify, cancel or requeue."""
    grace: float = 600.0


@dataclass(frozen=True)
class IdleDecision:
    job: str
    idle_s: float
    """How long every GPU of the job has been under the threshold."""
    flag: bool
    """True the first time the job crosses `after` (raise the event, run the notify hook)."""
    act: str | None
    """'cancel' or 'requeue' the first time `after + grace` is crossed, else None."""


class IdleTracker:
    """Remembers, per job and node, since when that node's GPUs of the job have all been idle.
    Feed it every sample (`observe`), then ask `decide` once per tick. State only; no clock."""

    def __init__(self, policy: IdlePolicy) -> None:
        self.policy = policy
        self.since: dict[tuple[str, str], float | None] = {}
        self.flagged: set[str] = set()
        self.acted: set[str] = set()

    def observe(self, job: str, node: str, utils: Sequence[float | None], t: float) -> None:
        """`utils`: the job's GPUs on `node` in one sample. An unknown reading (None) is not
        evidence of idleness and keeps the job's current standing."""
        if any(u is None for u in utils) or not utils:
            return
        key = (job, node)
        if all(u < self.policy.util_below for u in utils):  # type: ignore[operator]
            if self.since.get(key) is None:
                self.since[key] = t
        else:
            self.since[key] = None
            self.flagged.discard(job)
            self.acted.discard(job)

    def idle_for(self, job: str, nodes: Iterable[str], now: float) -> float | None:
        """Seconds all the job's GPUs on all `nodes` have been idle; None when any is busy or unseen."""
        sinces = [self.since.get((job, n)) for n in nodes]
        if not sinces or any(s is None for s in sinces):
            return None
        return max(0.0, now - max(s for s in sinces if s is not None))

    def decide(self, holdings: Mapping[str, Iterable[str]], now: float) -> list[IdleDecision]:
        """One decision per job that is idle past `after`; `holdings` maps each job holding GPUs
        to its nodes. Jobs no longer held are forgotten."""
        for key in [k for k in self.since if k[0] not in holdings]:
            del self.since[key]
        self.flagged &= set(holdings)
        self.acted &= set(holdings)
        out = []
        p = self.policy
        for job, nodes in sorted(holdings.items()):
            idle = self.idle_for(job, list(nodes), now)
            if idle is None or idle < p.after:
                continue
            flag = job not in self.flagged
            self.flagged.add(job)
            act = None
            if p.action in ("cancel", "requeue") and idle >= p.after + p.grace and job not in self.acted:
                self.acted.add(job)
                act = p.action
            out.append(IdleDecision(job=job, idle_s=round(idle, 1), flag=flag, act=act))
        return out
