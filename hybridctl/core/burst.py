"""The burst policy: when to rent cloud nodes, which offers, and when to give them back.

Pure: (pending tasks, the cluster as the scheduler sees it, the cloud nodes held, offers with
prices and back-offs, spend, limits, now) -> `BurstDecision`. Whether a task fits on-prem, on a
cloud node that is starting, or on a node about to be rented is asked of `schedule.plan` itself,
so this policy and the controller's scheduler never disagree about what fits where.
"""

from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass, field, replace
from typing import Mapping, Sequence

from hybridctl.core.fairshare import priority_key
from hybridctl.core.fit import never_fits, request_phrase
from hybridctl.core.model import (
    ClusterView,
    GpuSlot,
    NodeState,
    NodeView,
    PendingTask,
    Policy,
    Resources,
    task_label,
)
from hybridctl.core.schedule import plan

TaskKey = tuple[int, int]

PERIODS = ("day", "week", "month")


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
        return NodeView(name, gpus, self.cpus, self.cpus, self.memory_mb, self.memory_mb, NodeState.UP, "cloud")

    def to_dict(self) -> dict[str, object]:
        return {
            "provider": self.provider, "instance_type": self.instance_type, "region": self.region,
            "zone": self.zone, "gpu_type": self.gpu_type, "gpus": self.gpus, "cpus": self.cpus,
            "memory_mb": self.memory_mb, "spot": self.spot, "price_hourly": self.price_hourly,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Offer:
        return cls(
            provider=str(d["provider"]), instance_type=str(d["instance_type"]), region=str(d["region"]),
            zone=str(d.get("zone") or d["region"]), gpu_type=(str(d["gpu_type"]) if d.get("gpu_type") else None),
            gpus=int(d.get("gpus") or 0), cpus=float(d.get("cpus") or 1),  # type: ignore[arg-type,call-overload]
            memory_mb=int(d.get("memory_mb") or 0), spot=bool(d.get("spot")),  # type: ignore[call-overload]
            price_hourly=float(d["price_hourly"]),  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class CloudNode:
    """A cloud node the controller holds, from launch until it is terminated."""

    name: str
    offer: Offer
    """What was rented; `price_hourly` is what it costs now."""
    launched_at: float
    up: bool = False
    """Joined the fleet. Until then the node counts as the offer's empty shape."""
    idle_since: float | None = None
    """Since when it holds no allocation; None while busy (or not up yet)."""
    draining: bool = False
    """Being given back (idle, preempted, budget): counts against limits, takes no work."""


@dataclass(frozen=True)
class Freeing:
    """An on-prem allocation and when it is expected to end (start + time limit)."""

    node: str
    gpus: tuple[int, ...]
    cpus: float
    memory_mb: int
    end: float


@dataclass(frozen=True)
class Limits:
    """The burst policy's knobs (config `cloud.burst`)."""

    after: float = 120.0
    """A task that fits nowhere on-prem bursts once it has waited this long (s)."""
    idle_timeout: float = 600.0
    """A cloud node idle this long is drained and terminated (s)."""
    allow_on_demand: bool = False
    """Fall back to on-demand offers when spot is refused (or the job asks for on-demand)."""
    max_nodes: int = 4
    max_hourly_usd: float = 20.0
    budget_usd: float = 200.0
    budget_period: str = "month"
    """'day', 'week' (from Monday) or 'month', in UTC."""
    spread_penalty: float = 0.15
    """Each node already in a pool makes that pool look this much dearer, so several nodes spread
    over pools of similar price instead of piling into one."""
    count_freeing_within: float = 0.0
    """On-prem allocations whose time limit ends within this many seconds count as free when
    deciding saturation (0 = only what is free now)."""
    budget_reserve_h: float = 1.0
    """A launch must leave room in the budget for this many hours of the whole cloud fleet."""
    stop_margin_s: float = 60.0
    """When spend plus this long at the current burn would pass the budget, every cloud node is
    given back."""


@dataclass(frozen=True)
class World:
    """What one burst decision reads."""

    pending: Sequence[PendingTask]
    cluster: ClusterView
    """Every node (on-prem and cloud) as the scheduler sees it, with its quota and usage maps."""
    cloud: Sequence[CloudNode] = ()
    offers: Sequence[Offer] = ()
    pending_since: Mapping[TaskKey, float] = field(default_factory=dict)
    """When each task last became PENDING; missing = its job's submit time."""
    backoff: Mapping[str, float] = field(default_factory=dict)
    """Pool -> time until which it is not asked again (after a capacity error)."""
    spent: float = 0.0
    """US dollars spent on cloud nodes in the current budget period."""
    freeing: Sequence[Freeing] = ()


@dataclass(frozen=True)
class LaunchRequest:
    """Rent one node of `offer` for these tasks (a gang of N nodes is N requests, one `group`)."""

    offer: Offer
    tasks: tuple[TaskKey, ...]
    group: int = 0


@dataclass(frozen=True)
class ScaleDown:
    """Drain and terminate `node`."""

    node: str
    reason: str


@dataclass(frozen=True)
class Blocked:
    """Task (job_id, task) fits nowhere and may burst, but a limit or the market says no."""

    job_id: int
    task: int
    reason: str


@dataclass(frozen=True)
class BurstDecision:
    """The outcome of one burst pass."""

    launches: tuple[LaunchRequest, ...] = ()
    scale_down: tuple[ScaleDown, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    covered: Mapping[TaskKey, str] = field(default_factory=dict)
    """Tasks that will fit on a cloud node already held (up or starting): task -> node."""
    notes: tuple[str, ...] = ()
    """Cluster-level lines for `cloud status` (e.g. how many tasks are still under `after`)."""
    hourly_usd: float = 0.0
    """What the held cloud nodes cost per hour now."""


# ---- helpers -------------------------------------------------------------------------------------


def period_start(now: float, period: str) -> float:
    """Start (UTC, seconds since the epoch) of the budget period that contains `now`."""
    t = dt.datetime.fromtimestamp(now, dt.timezone.utc)
    day = t.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        start = day
    elif period == "week":
        start = day - dt.timedelta(days=day.weekday())
    elif period == "month":
        start = day.replace(day=1)
    else:
        raise ValueError(f"budget period {period!r}: expected one of {', '.join(PERIODS)}")
    return start.timestamp()


def fits(offer: Offer, resources: Resources) -> bool:
    """Can one node of this offer hold one node of a job asking for `resources`?"""
    return never_fits([offer.view("offer")], resources, 1) is None


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


def _virtual(task: PendingTask, tag: str) -> list[NodeView]:
    """Nodes that surely hold `task`: if `plan` still refuses it there, a quota, a throttle or
    a dependency holds it back, and renting would not help."""
    res = task.resources
    model = res.gpu_type or "GPU"
    return [
        NodeView(f"~{tag}{i}", tuple(GpuSlot(g, model) for g in range(res.gpus)), res.cpus, res.cpus,
                 res.memory_mb, res.memory_mb, NodeState.UP, "cloud")
        for i in range(max(task.num_nodes, 1))
    ]


def _with_freeing(nodes: Sequence[NodeView], freeing: Sequence[Freeing], until: float) -> list[NodeView]:
    """On-prem nodes with the allocations that end by `until` counted as free."""
    by_node: dict[str, list[Freeing]] = {}
    for f in freeing:
        if f.end <= until:
            by_node.setdefault(f.node, []).append(f)
    out = []
    for n in nodes:
        fs = by_node.get(n.name)
        if not fs:
            out.append(n)
            continue
        freed = {g for f in fs for g in f.gpus}
        gpus = tuple(replace(s, free=True) if s.index in freed and s.healthy else s for s in n.gpus)
        out.append(replace(
            n, gpus=gpus,
            cpus_free=min(n.cpus_total, n.cpus_free + sum(f.cpus for f in fs)),
            memory_free_mb=min(n.memory_total_mb, n.memory_free_mb + sum(f.memory_mb for f in fs)),
        ))
    return out


def _view(cluster: ClusterView, nodes: Sequence[NodeView]) -> ClusterView:
    return replace(cluster, nodes=tuple(nodes))


# ---- the decision --------------------------------------------------------------------------------


def decide(world: World, limits: Limits, policy: Policy, now: float) -> BurstDecision:
    """Which nodes to rent for the tasks that fit nowhere, which idle nodes to give back, and why
    any burst is held back. Performs no I/O.

    1. Saturation: `plan` over the on-prem nodes alone (plus allocations ending within
       `count_freeing_within`). Placement-'any' tasks it cannot place, and that have waited
       `after`, may burst; placement-'cloud' tasks may at once; placement-'onprem' never.
    2. In priority order, each such task is planned onto the cloud nodes held (up, or starting
       with the offer's empty shape) and the nodes rented so far in this pass; if it fits, it is
       covered. If it would not fit even on a node made for it, a quota or throttle holds it
       and renting would not help.
    3. Otherwise the cheapest fitting offer (spot first, pools spread, back-offs skipped) is
       rented, `num_nodes` nodes in one pool, unless `max_nodes`, `max_hourly_usd` or the budget
       says no: then the task is `Blocked` with the limit in words.
    4. Cloud nodes idle for `idle_timeout` that no pending task is about to use are given back;
       all of them when the budget would otherwise be overrun.
    """
    cluster = world.cluster
    usage = cluster.usage_by_user
    ordered = sorted(world.pending, key=lambda t: priority_key(t, usage))
    held = {c.name: c for c in world.cloud}
    hourly_now = sum(c.offer.price_hourly for c in world.cloud)
    period = limits.budget_period

    # 1. Saturation, as the scheduler itself sees the on-prem fleet.
    onprem = [n for n in cluster.nodes if n.site != "cloud"]
    if limits.count_freeing_within > 0 and world.freeing:
        onprem = _with_freeing(onprem, world.freeing, now + limits.count_freeing_within)
    local_tasks = [replace(t, placement="onprem") for t in ordered if t.placement == "any" and not t.deps_unmet]
    local = plan(_view(cluster, onprem), local_tasks, policy)
    placed_local = {(p.job_id, p.task) for p in local.placements}
    candidates: list[PendingTask] = []
    early = 0
    for t in ordered:
        key = (t.job_id, t.task)
        if t.deps_unmet or t.placement not in ("any", "cloud"):
            continue
        if t.placement == "any":
            if key in placed_local:
                continue
            if now - world.pending_since.get(key, t.submitted_at) < limits.after:
                early += 1
                continue
        candidates.append(replace(t, placement="cloud"))

    # 2-3. Cover with held nodes, else rent.
    cloud_views: list[NodeView] = []
    for n in cluster.nodes:
        if n.site != "cloud":
            continue
        c = held.get(n.name)
        if c is not None and (c.draining or not c.up):
            continue
        cloud_views.append(n)
    for c in world.cloud:
        if not c.up and not c.draining:
            cloud_views.append(c.offer.view(c.name))
    uses: dict[str, int] = {}
    for c in world.cloud:
        uses[c.offer.pool] = uses.get(c.offer.pool, 0) + 1

    accepted: list[PendingTask] = []
    new_views: list[NodeView] = []
    launches: list[LaunchRequest] = []
    blocked: list[Blocked] = []
    notes: list[str] = []
    planned_nodes = 0
    planned_hourly = 0.0
    group = 0
    quota_held = 0
    for t in candidates:
        key = (t.job_id, t.task)
        trial = plan(_view(cluster, cloud_views + new_views), [*accepted, t], policy)
        if any((p.job_id, p.task) == key for p in trial.placements):
            accepted.append(t)
            continue
        made_for = plan(_view(cluster, cloud_views + new_views + _virtual(t, "v")), [*accepted, t], policy)
        if not any((p.job_id, p.task) == key for p in made_for.placements):
            quota_held += 1  # quota, throttle: the scheduler would not start it on any node
            continue
        k = max(t.num_nodes, 1)
        offer, why = cheapest(t.resources, world.offers, world.backoff, now, limits.allow_on_demand,
                              uses, limits.spread_penalty)
        if offer is None:
            blocked.append(Blocked(t.job_id, t.task, f"cloud: {why}"))
            continue
        reason = _limit_reason(offer, k, len(world.cloud) + planned_nodes, hourly_now + planned_hourly,
                               world.spent, limits)
        if reason:
            blocked.append(Blocked(t.job_id, t.task, reason))
            continue
        group += 1
        for i in range(k):
            name = f"+{offer.instance_type}#{len(new_views)}"
            new_views.append(offer.view(name))
            launches.append(LaunchRequest(offer, (key,), group))
        uses[offer.pool] = uses.get(offer.pool, 0) + k
        planned_nodes += k
        planned_hourly += k * offer.price_hourly
        accepted.append(t)

    # Which held nodes will receive work, and which rented ones: one final pass over everything.
    final = plan(_view(cluster, cloud_views + new_views), accepted, policy)
    covered: dict[TaskKey, str] = {}
    wanted_nodes: set[str] = set()
    for p in final.placements:
        wanted_nodes.add(p.node)
        if not p.node.startswith("+"):
            covered[(p.job_id, p.task)] = p.node
    # Drop a rented node nothing landed on (a later task took the room its own task needed).
    kept = [req for req, v in zip(launches, new_views) if v.name in wanted_nodes]

    # 4. Scale-down.
    scale: list[ScaleDown] = []
    if world.cloud and world.spent + hourly_now * limits.stop_margin_s / 3600.0 >= limits.budget_usd:
        why = (f"budget: ${world.spent:.2f} of ${limits.budget_usd:.2f} spent this {period}, and the cloud nodes"
               f" burn ${hourly_now:.2f}/h; giving every cloud node back")
        scale = [ScaleDown(c.name, why) for c in world.cloud if not c.draining]
        kept = []
        covered = {}
    else:
        for c in world.cloud:
            if c.draining or not c.up or c.idle_since is None or c.name in wanted_nodes:
                continue
            idle = now - c.idle_since
            if idle >= limits.idle_timeout:
                why = f"idle for {fmt_duration(idle)} (burst.idle_timeout {fmt_duration(limits.idle_timeout)})"
                scale.append(ScaleDown(c.name, why))
    if early:
        notes.append(f"{early} task{'s' if early != 1 else ''} fit nowhere on-prem but waited less than"
                      f" burst.after ({fmt_duration(limits.after)})")
    if quota_held:
        notes.append(f"{quota_held} task{'s' if quota_held != 1 else ''} held by a quota or array throttle:"
                      " renting would not start them")
    return BurstDecision(tuple(kept), tuple(scale), tuple(blocked), covered, tuple(notes), hourly_now)


def _limit_reason(offer: Offer, k: int, nodes: int, hourly: float, spent: float, limits: Limits) -> str:
    """Why renting `k` nodes of `offer` would cross a limit, or '' if it would not."""
    what = offer.describe() if k == 1 else f"{k} nodes of {offer.describe()}"
    if nodes + k > limits.max_nodes:
        return (f"cloud: max_nodes: {nodes} of {limits.max_nodes} cloud nodes in use"
                + (f", the job needs {k}" if k > 1 else "") + f" (wanted: {what})")
    extra = k * offer.price_hourly
    if hourly + extra > limits.max_hourly_usd + 1e-9:
        return (f"cloud: max_hourly_usd: cloud nodes cost ${hourly:.2f}/h now; {what} would pass the"
                f" ${limits.max_hourly_usd:.2f}/h limit")
    need = (hourly + extra) * limits.budget_reserve_h
    if spent + need > limits.budget_usd + 1e-9:
        return (f"cloud: budget: ${spent:.2f} of ${limits.budget_usd:.2f} spent this {limits.budget_period};"
                f" {what} needs ${need:.2f} of headroom ({limits.budget_reserve_h:g} h of the cloud fleet)")
    return ""


# ---- "wait or pay" -------------------------------------------------------------------------------


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


def label(key: TaskKey) -> str:
    return task_label(*key)
