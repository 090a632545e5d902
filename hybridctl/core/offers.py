"""Cloud offers and their prices: what one node of an instance type costs where, whether it
holds a task, the cheapest fitting offer, and what spot reclaims are expected to cost a task
(`expected_loss_h`). Pure. The burst policy (core/burst.py) chooses among them per task."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence

from hybridctl.core.fit import gpu_type_matches, request_phrase
from hybridctl.core.model import GpuSlot, NodeState, NodeView, Resources


@dataclass(frozen=True)
class Offer:
    """One way to rent a node: an instance type in one zone, spot or on-demand, at a price."""

    provider: str
    """Which provider sells it ('simulated', 'aws', 'command')."""
    instance_type: str
    region: str
    zone: str
    """Availability zone; equal to `region` where a provider has no zones."""
    gpu_type: str | None
    """GPU model, e.g. 'L40S'; None for a CPU-only type."""
    gpus: int
    cpus: float
    memory_mb: int
    spot: bool
    price_hourly: float
    """US dollars per hour, now."""
    reclaim_per_h: float | None = None
    """Expected spot reclaims per node-hour in this pool, where the catalog or provider says
    (None: `Limits.reclaim_per_h` is assumed). Ignored for on-demand."""

    @property
    def pool(self) -> str:
        """Capacity pool: what a capacity error backs off ('aws/us-east-2b/g6e.xlarge/spot')."""
        return f"{self.provider}/{self.zone}/{self.instance_type}/{self.market}"

    @property
    def market(self) -> str:
        return "spot" if self.spot else "on-demand"

    def describe(self) -> str:
        """'L40S spot in us-east-2 at $0.92/h' (the shape's GPU model, or the type for CPU-only)."""
        what = f"{self.gpus}x {self.gpu_type}" if self.gpus > 1 else (self.gpu_type or self.instance_type)
        return f"{what} {self.market} in {self.region} at ${self.price_hourly:.2f}/h"

    def view(self, name: str) -> NodeView:
        """The node this offer would become, as the scheduler sees an empty node."""
        model = self.gpu_type or "GPU"
        gpus = tuple(GpuSlot(i, model) for i in range(self.gpus))
        return NodeView(name, gpus, self.cpus, self.cpus, self.memory_mb, self.memory_mb, NodeState.UP, "cloud",
                        self.market)

    def to_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider, "instance_type": self.instance_type, "region": self.region,
            "zone": self.zone, "gpu_type": self.gpu_type, "gpus": self.gpus, "cpus": self.cpus,
            "memory_mb": self.memory_mb, "spot": self.spot, "price_hourly": self.price_hourly,
            **({"reclaim_per_h": self.reclaim_per_h} if self.reclaim_per_h is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Offer:
        return cls(
            provider=str(d["provider"]), instance_type=str(d["instance_type"]), region=str(d["region"]),
            zone=str(d.get("zone") or d["region"]), gpu_type=(str(d["gpu_type"]) if d.get("gpu_type") else None),
            gpus=int(d.get("gpus") or 0), cpus=float(d.get("cpus") or 1),  # type: ignore[arg-type,call-overload]
            memory_mb=int(d.get("memory_mb") or 0), spot=bool(d.get("spot")),  # type: ignore[call-overload]
            price_hourly=float(d["price_hourly"]),  # type: ignore[arg-type]
            reclaim_per_h=(float(d["reclaim_per_h"]) if d.get("reclaim_per_h") is not None  # type: ignore[arg-type]
                           else None),
        )


def fits(offer: Offer, resources: Resources) -> bool:
    """Can one node of this offer hold one node of a job asking for `resources`?"""
    return _shape_fits(offer.gpu_type, offer.gpus, offer.cpus, offer.memory_mb,
                       resources.gpus, resources.gpu_type, resources.cpus, resources.memory_mb)


@lru_cache(maxsize=65536)
def _shape_fits(o_type: str | None, o_gpus: int, o_cpus: float, o_mem: int,
                gpus: int, gpu_type: str | None, cpus: float, mem: int) -> bool:
    """`never_fits` for one empty node of an offer's shape, without building the node or a message."""
    if gpus:
        if o_gpus < gpus:
            return False
        if gpu_type is not None and not gpu_type_matches(gpu_type, o_type or "GPU"):
            return False
    return o_cpus >= cpus and o_mem >= mem


def cheapest(
    resources: Resources, offers: Sequence[Offer], backoff: Mapping[str, float], now: float,
    allow_on_demand: bool, uses: Mapping[str, int] | None = None, spread_penalty: float = 0.0,
) -> tuple[Offer | None, str]:
    """The cheapest offer that can hold `resources` (per node), or None and the reason in words.

    Spot comes first when the job allows it (`use_spot`); on-demand only with `allow_on_demand`,
    when the job asks for it or every fitting spot pool is backing off. `uses` (pool -> nodes
    there) with `spread_penalty` tilts the choice away from pools already used."""
    fitting = [o for o in offers if fits(o, resources)]
    if not fitting:
        return None, f"no cloud offer has {request_phrase(resources)}"
    spot = [o for o in fitting if o.spot]
    on_demand = [o for o in fitting if not o.spot]
    live_spot = [o for o in spot if backoff.get(o.pool, 0.0) <= now]
    live_od = [o for o in on_demand if backoff.get(o.pool, 0.0) <= now]
    candidates: list[Offer] = []
    if resources.use_spot and live_spot:
        candidates = live_spot
    elif allow_on_demand and live_od:
        candidates = live_od
    if not candidates:
        if not resources.use_spot and not allow_on_demand:
            return None, "the job asks for on-demand nodes (use_spot: false) and burst.allow_on_demand is off"
        if spot and not live_spot:
            until = min(backoff[o.pool] for o in spot)
            why = (f"every fitting spot pool is backing off after capacity errors ({len(spot)} pools,"
                   f" next retry in {fmt_duration(until - now)})")
        elif not spot:
            why = f"no spot offer has {request_phrase(resources)}"
        else:
            why = "spot is not allowed for this job"
        if not allow_on_demand:
            return None, f"{why}; on-demand fallback is off (burst.allow_on_demand)"
        if on_demand and not live_od:
            return None, f"{why}; every fitting on-demand pool is backing off too"
        return None, f"{why}; no on-demand offer fits either"
    counts = uses or {}
    best = min(
        candidates,
        key=lambda o: (o.price_hourly * (1.0 + spread_penalty * counts.get(o.pool, 0)), o.price_hourly, o.pool),
    )
    return best, ""


def fmt_duration(seconds: float) -> str:
    """'45s', '40 min', '2.5 h'."""
    s = max(0, int(round(seconds)))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s / 3600:.1f} h"


def expected_loss_h(work_h: float, rate_per_h: float, checkpoint_h: float, overhead_h: float = 0.0) -> float:
    """Expected hours a task with `work_h` of work left loses to reclaims arriving at `rate_per_h`
    (per task: k nodes reclaim k times as often) when it resumes from its last checkpoint, taken
    every `checkpoint_h` (0 = never: every reclaim restarts it from the beginning).

    Each stretch of s hours between checkpoints takes (e^(λs) - 1)/λ hours in expectation,
    with e^(λs) - 1 reclaims, each also costing `overhead_h` (a new node, the job's setup)."""
    if rate_per_h <= 0 or work_h <= 0:
        return 0.0
    seg = checkpoint_h if 0 < checkpoint_h < work_h else work_h
    x = min(rate_per_h * seg, 30.0)
    reclaims = (work_h / seg) * math.expm1(x)
    return max(0.0, reclaims / rate_per_h - work_h) + reclaims * overhead_h


@dataclass(frozen=True)
class Choice:
    """Where a task would run in the cloud, what it would cost, and why."""

    offer: Offer | None
    resources: Resources
    cost: float = 0.0
    """Expected US dollars for the task's whole run (reclaim losses included)."""
    loss_h: float = 0.0
    """Expected hours lost to reclaims."""
    why: str = ""


class Market:
    """The offers of one pass grouped by shape, so each task shape is matched once per pass."""

    def __init__(self, offers: Sequence[Offer], backoff: Mapping[str, float], now: float,
                 gang_backoff: Mapping[str, tuple[float, int]] | None = None) -> None:
        self.offers = offers
        self.backoff = backoff
        self.gang_backoff = {p: k for p, (until, k) in (gang_backoff or {}).items() if until > now}
        """Pool -> k: not asked for k nodes or more (it refused a gang that large lately)."""
        self.now = now
        shapes: dict[tuple[str | None, int, float, int], list[Offer]] = {}
        for o in offers:
            shapes.setdefault((o.gpu_type, o.gpus, o.cpus, o.memory_mb), []).append(o)
        self.shapes = shapes
        self._best: dict[tuple[int, str | None, float, int, int, int], tuple[Offer | None, Offer | None]] = {}
        self._fit: dict[tuple[int, str | None, float, int, int], tuple[list[Offer], list[Offer], bool]] = {}
        self._safe: dict[tuple[int, str | None, float, int, int], Offer | None] = {}

    def best(self, res: Resources, spot: list[Offer], od: list[Offer], uses: Mapping[str, int],
             penalty: float) -> tuple[Offer | None, Offer | None]:
        """The cheapest (spread-adjusted) of these spot and on-demand offers, cached until a
        launch changes `uses` (`moved`)."""
        key = (res.gpus, res.gpu_type, res.cpus, res.memory_mb, len(spot), len(od))
        hit = self._best.get(key)
        if hit is None:
            hit = self._best[key] = (pick(spot, uses, penalty), pick(od, uses, penalty))
        return hit

    def safest(self, res: Resources, spot: list[Offer]) -> Offer | None:
        """Of these spot offers for `res`, the one whose pool states the lowest reclaim rate (the
        cheapest among equals); None if none states one. For a task that would lose too much at
        the cheapest pool's rate. Cached per shape like `best`."""
        key = (res.gpus, res.gpu_type, res.cpus, res.memory_mb, len(spot))
        if key in self._safe:
            return self._safe[key]
        stated = [o for o in spot if o.reclaim_per_h is not None]
        hit = self._safe[key] = min(stated, key=lambda o: (o.reclaim_per_h, o.price_hourly, o.pool)) if stated else None
        return hit

    def moved(self) -> None:
        self._best.clear()

    def fitting(self, res: Resources, nodes: int = 1) -> tuple[list[Offer], list[Offer], bool]:
        """(live spot offers, live on-demand offers) that hold one node of `res`, for a launch of
        `nodes` nodes, and whether spot for this shape is scarce: at least half of its fitting
        spot pools backing off (for that many nodes)."""
        shape = (res.gpus, res.gpu_type, res.cpus, res.memory_mb)
        gang = self.gang_backoff
        key = (*shape, nodes if gang else 1)
        hit = self._fit.get(key)
        if hit is None:
            spot: list[Offer] = []
            od: list[Offer] = []
            pools = 0
            for (t, g, c, m), group in self.shapes.items():
                if _shape_fits(t, g, c, m, *shape):
                    for o in group:
                        pools += o.spot
                        if self.backoff.get(o.pool, 0.0) <= self.now and nodes < gang.get(o.pool, nodes + 1):
                            (spot if o.spot else od).append(o)
            hit = self._fit[key] = (spot, od, pools > 0 and 2 * len(spot) <= pools)
        return hit


def pick(offers: Sequence[Offer], uses: Mapping[str, int], penalty: float) -> Offer | None:
    if not offers:
        return None
    return min(offers, key=lambda o: (o.price_hourly * (1.0 + penalty * uses.get(o.pool, 0)), o.price_hourly, o.pool))
