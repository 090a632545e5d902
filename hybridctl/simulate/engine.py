"""The replay: a trace of jobs through the controller's own `schedule.plan` (every tick, over the
nodes that are up) and `burst.decide` (the autoscaler's pass), on a simulated clock, against a
`Market` that reclaims, refuses and drifts.

What it does not flatter: a reclaim stops the job at the notice and the node is billed until it is
gone; the job resumes from its last checkpoint (from the beginning if it never checkpoints), all
k nodes of a multi-node job go back to the queue together; the policy sees only what the controller
would (time limits, not true run times; declared checkpoint intervals; spend in the budget period;
back-offs after refusals); waits count every stretch a job spent queued, and a job unfinished
at the end counts with the wait it had so far."""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import dataclass, field, replace
from typing import Iterable, Sequence

from hybridctl.core import burst
from hybridctl.core.allowance import budget_of, plan_within, share
from hybridctl.core.forecast import RUN_LENGTHS_RECENT, length_sample, limit_use
from hybridctl.core.model import (
    ClusterView,
    GpuSlot,
    NodeState,
    NodeView,
    PendingTask,
    Policy,
    Resources,
    RunningTask,
)
from hybridctl.simulate.market import Market
from hybridctl.simulate.trace import SIZE_CLASSES, TraceJob

ORIGIN = 1793577600.0
"""2026-11-02 00:00 UTC, a Monday: where a trace with relative times starts (budget periods are
calendar periods)."""

RETRIES_PER_TICK = 4
"""Autoscaler passes within one tick while launches are refused: the controller's autoscaler
passes again as soon as a launch is refused (`Autoscaler.launch` wakes it), so the refused tasks
ask another pool within seconds, not a tick later. Bounded: each refusal backs its pool off."""


@dataclass(frozen=True)
class NodeGroup:
    """`count` identical on-prem nodes."""

    name: str
    count: int
    gpus: int
    model: str
    cpus: float = 128.0
    memory_mb: int = 1024 * 1024


@dataclass(frozen=True)
class Strategy:
    name: str
    onprem: bool = True
    limits: burst.Limits | None = None
    """None: no cloud."""
    market: str = "both"
    """Which offers the policy sees: 'both', 'spot' or 'on-demand'."""


@dataclass
class _Job:
    tj: TraceJob
    saved: float = 0.0
    pending_since: float = 0.0
    waited: float = 0.0
    start: float | None = None
    nodes: tuple[str, ...] = ()
    run: int = 0
    end: float | None = None
    restarts: int = 0
    cloud: bool = False
    recalled: bool = False
    """Brought back on-prem once: never again (as the controller)."""
    longest: float = 0.0
    """The longest run of its attempts that were stopped (`World.ran`)."""


@dataclass
class _Node:
    name: str
    site: str
    gpus: int
    model: str
    cpus: float
    mem: int
    offer: burst.Offer | None = None
    launched: float = 0.0
    ready: float = 0.0
    reclaim: float | None = None
    notice: float | None = None
    free: set[int] = field(default_factory=set)
    cpus_free: float = 0.0
    mem_free: int = 0
    jobs: dict[int, tuple[tuple[int, ...], float, int]] = field(default_factory=dict)
    idle_since: float | None = None
    draining: bool = False
    """Reclaim notice received: takes no work, gone at `reclaim`."""
    retiring: bool = False
    """Told to take no new work (budget): given back once its jobs end."""
    cost: float = 0.0

    def __post_init__(self) -> None:
        self.free = set(range(self.gpus))
        self.cpus_free = self.cpus
        self.mem_free = self.mem

    def view(self) -> NodeView:
        slots = tuple(GpuSlot(i, self.model, free=i in self.free) for i in range(self.gpus))
        return NodeView(self.name, slots, self.cpus, self.cpus_free, self.mem, self.mem_free, NodeState.UP, self.site,
                        self.offer.market if self.offer is not None else None)


@dataclass
class Result:
    strategy: str
    jobs: int
    waits: list[float]
    classes: dict[str, list[float]]
    onprem_util: float
    dollars: float
    cloud_gpu_h: float
    lost_gpu_h: float
    killed_gpu_h: float
    preemptions: int
    refusals: int
    deadline_jobs: int
    deadline_misses: int
    unfinished: int
    max_period_spend: float
    wall_s: float
    decide_s: float
    on_demand_dollars: float = 0.0
    cloud_busy_gpu_h: float = 0.0
    """GPU-hours of cloud nodes that held a job (the rest of `cloud_gpu_h`: boot and idle)."""
    dollars_by_class: dict[str, float] = field(default_factory=dict)
    """Cloud $ of nodes while they held jobs, by the jobs' size class (spot, on-demand)."""
    lost_by: dict[str, float] = field(default_factory=dict)
    """Lost GPU-hours by size class, and whether the job checkpoints."""
    recalls: int = 0
    """Cloud jobs brought back on-prem (`Limits.recall`)."""
    recall_lost_gpu_h: float = 0.0
    """Work those stops threw away (since the last checkpoint)."""
    preempted: int = 0
    """Running jobs stopped and requeued for a higher-priority job (the scheduler's `preempt`)."""
    preempt_lost_gpu_h: float = 0.0
    """Work those stops threw away (since the last checkpoint); not in `lost_gpu_h` (spot)."""
    owner_spend: dict[str, float] = field(default_factory=dict)
    """Under owner budgets: the most each budgeted owner ('user alice', 'group lab') spent in one
    budget period (their share of the nodes they held, as the controller books it)."""

    def p(self, q: float, waits: Sequence[float] | None = None) -> float:
        return percentile(self.waits if waits is None else waits, q)

    def to_dict(self) -> dict[str, object]:
        return {
            "strategy": self.strategy, "jobs": self.jobs, "p50_wait_s": self.p(0.5), "p95_wait_s": self.p(0.95),
            "p95_wait_by_size_s": {c: self.p(0.95, w) for c, w in self.classes.items() if w},
            "onprem_util": self.onprem_util, "dollars": round(self.dollars, 2), "cloud_gpu_h": round(self.cloud_gpu_h, 1),
            "lost_gpu_h": round(self.lost_gpu_h, 1), "killed_gpu_h": round(self.killed_gpu_h, 1),
            "preemptions": self.preemptions, "refusals": self.refusals, "deadline_jobs": self.deadline_jobs,
            "deadline_misses": self.deadline_misses, "unfinished": self.unfinished,
            "max_period_spend": round(self.max_period_spend, 2), "wall_s": round(self.wall_s, 2),
            "decide_s": round(self.decide_s, 2), "on_demand_dollars": round(self.on_demand_dollars, 2),
            "cloud_busy_gpu_h": round(self.cloud_busy_gpu_h, 1),
            "dollars_by_class": {k: round(v) for k, v in sorted(self.dollars_by_class.items())},
            "lost_gpu_h_by": {k: round(v, 1) for k, v in sorted(self.lost_by.items())},
            "recalls": self.recalls, "recall_lost_gpu_h": round(self.recall_lost_gpu_h, 1),
            "preempted": self.preempted, "preempt_lost_gpu_h": round(self.preempt_lost_gpu_h, 1),
            "owner_spend": {k: round(v, 2) for k, v in sorted(self.owner_spend.items())},
        }


class LimitUse:
    """The share of their time limit that finished runs used (`World.limit_use`), as the
    controller learns it (`forecast.limit_use`): the median over runs that ended by themselves,
    from 20 runs on; before that, 1.0 (the limit)."""

    def __init__(self) -> None:
        self.shares: list[float] = []
        self._value: float | None = 1.0

    def add(self, ran: float, limit: float) -> None:
        if limit > 0:
            self.shares.append(ran / limit)
            self._value = None

    @property
    def value(self) -> float:
        if self._value is None:
            self._value = limit_use(self.shares)
        return self._value


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, `q` a fraction (0.95 = p95; core/efficiency.percentile takes 95);
    0 for no values."""
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def run(trace: Sequence[TraceJob], fleet: Sequence[NodeGroup], strategy: Strategy, market: Market, *,
        policy: Policy | None = None, tick: float = 60.0, origin: float = ORIGIN, drain_s: float = 3 * 86400.0,
        backoff_s: float = 300.0) -> Result:
    """Replay `trace` under `strategy`; see the module docstring."""
    started = time.perf_counter()
    policy = policy or Policy()
    limits = strategy.limits
    jobs = {j.id: _Job(_marked(j, policy)) for j in trace}
    arrivals = sorted(jobs.values(), key=lambda j: (j.tj.submit, j.tj.id))
    nodes: dict[str, _Node] = {}
    if strategy.onprem:
        for g in fleet:
            for i in range(g.count):
                name = f"{g.name}{i:02d}"
                nodes[name] = _Node(name, "onprem", g.gpus, g.model, g.cpus, g.memory_mb)
    onprem_gpus = sum(n.gpus for n in nodes.values())
    horizon = max((j.tj.submit for j in arrivals), default=0.0)
    end_t = horizon + drain_s
    pending: dict[int, _Job] = {}
    ends: list[tuple[float, int, int]] = []
    backoff: dict[str, float] = {}
    gang_backoff: dict[str, tuple[float, int]] = {}
    spend: dict[float, float] = {}
    period = limits.budget_period if limits else "month"
    owners = bool(limits and (limits.user_budget_usd or limits.group_budget_usd))
    owner_spend: dict[tuple[float, str, str], float] = {}  # (period start, 'user'/'group', name) -> $
    gate = None  # the last decision's CloudGate, as the controller's scheduler keeps it
    t = 0.0
    ai = 0
    counter = 0
    dollars = cloud_gpu_s = lost_gpu_s = killed_gpu_s = busy_gpu_s = 0.0
    preemptions = refusals = 0
    od_dollars = cloud_busy_s = recall_lost_s = preempt_lost_s = 0.0
    recalls = preempted = 0
    by_class: dict[str, float] = {}
    lost_by: dict[str, float] = {}
    decide_s = 0.0
    no_spot: frozenset[tuple[int, int]] = frozenset()  # the last decision's, as the controller's scheduler keeps it
    weighed: frozenset[tuple[int, int]] | None = None  # ditto: deadline tasks pending since are kept off spot
    shares = LimitUse()
    lengths: list[float] = []
    sampled, sample = 0, ()
    """Run times of finished attempts without a limit, as the controller's history has them."""

    def release(node: _Node, job_id: int, now: float) -> None:
        g, c, m = node.jobs.pop(job_id)
        node.free.update(g)
        node.cpus_free += c
        node.mem_free += m
        if not node.jobs:
            node.idle_since = now

    def stop(job: _Job, at: float, now: float, killed: bool, recalled: bool = False, preempted: bool = False) -> None:
        """The job loses its nodes at `at`: keep what its checkpoints saved, requeue it. A recall
        or a priority preemption is a recovery (the controller never counts it as a restart)."""
        nonlocal lost_gpu_s, killed_gpu_s, recall_lost_s, preempt_lost_s
        assert job.start is not None
        worked = max(0.0, at - job.start)
        job.longest = max(job.longest, worked)
        c = job.tj.checkpoint
        kept = math.floor(worked / c) * c if c > 0 else -job.saved
        lost = (worked - kept) * job.tj.gpus * job.tj.nodes
        if preempted:
            preempt_lost_s += lost
        elif recalled:
            recall_lost_s += lost
        elif killed:
            killed_gpu_s += lost
        else:
            lost_gpu_s += lost
            why = job.tj.size_class + (" no checkpoints" if c <= 0 else "")
            lost_by[why] = lost_by.get(why, 0.0) + lost / 3600
        job.saved = max(0.0, job.saved + kept)
        for name in job.nodes:
            n = nodes.get(name)
            if n is not None and job.tj.id in n.jobs:
                release(n, job.tj.id, now)
        job.start, job.nodes, job.run = None, (), job.run + 1
        if not (recalled or preempted):
            job.restarts += 1
        job.recalled = job.recalled or recalled
        job.pending_since = now
        pending[job.tj.id] = job

    def gone(n: _Node, now: float) -> None:
        del nodes[n.name]

    while t <= end_t:
        while ai < len(arrivals) and arrivals[ai].tj.submit <= t:
            j = arrivals[ai]
            j.pending_since = j.tj.submit
            pending[j.tj.id] = j
            ai += 1
        while ends and ends[0][0] <= t:
            _, job_id, run_no = heapq.heappop(ends)
            job = jobs[job_id]
            if job.run != run_no or job.start is None:
                continue
            job.end = job.start + job.tj.duration - job.saved
            if job.tj.time_limit:
                shares.add(job.end - job.start, job.tj.time_limit)
            else:
                lengths.append(job.end - job.start)
            for name in job.nodes:
                release(nodes[name], job_id, t)
            job.nodes = ()
        # Cloud nodes: joining, notices, reclaims, billing.
        for n in list(nodes.values()):
            if n.site != "cloud":
                continue
            if n.notice is not None and n.notice <= t and not n.draining:
                n.draining = True
                preemptions += 1
                for job_id in list(n.jobs):
                    stop(jobs[job_id], n.notice, t, killed=False)
            if n.reclaim is not None and n.reclaim <= t:
                gone(n, t)
                continue
            assert n.offer is not None
            price = market.price(n.offer, t)
            cost = price * tick / 3600.0
            n.cost += cost
            dollars += cost
            if not n.offer.spot:
                od_dollars += cost
            key = burst.period_start(origin + t, period)
            if n.jobs:
                cloud_busy_s += (n.gpus - len(n.free)) * tick
                each = cost / len(n.jobs)
                for job_id, (g, cpus, _m) in n.jobs.items():
                    c = jobs[job_id].tj.size_class + (" spot" if n.offer.spot else " on-demand")
                    by_class[c] = by_class.get(c, 0.0) + each
                    if owners:  # each owner pays their share of the node, as cloud/cost.split books it
                        paid = cost * share(n.gpus, n.cpus, len(g), cpus)
                        for owner in (("user", jobs[job_id].tj.user), ("group", jobs[job_id].tj.group)):
                            k = (key, *owner)
                            owner_spend[k] = owner_spend.get(k, 0.0) + paid
            spend[key] = spend.get(key, 0.0) + cost
            cloud_gpu_s += n.gpus * tick
        for n in list(nodes.values()):
            if n.retiring and not n.jobs:
                gone(n, t)
        up = [n for n in nodes.values() if n.ready <= t and not n.draining and not n.retiring]
        # The scheduler's pass.
        if pending and up:
            tasks = [_task(j, origin) for j in pending.values()]
            if no_spot or weighed is not None:
                tasks = [replace(x, no_spot=True) if (x.job_id, x.task) in no_spot
                         or (weighed is not None and jobs[x.job_id].tj.deadline is not None
                             and (x.job_id, x.task) not in weighed) else x for x in tasks]
            d = plan_within(_cluster(up, nodes.values(), jobs, origin, t), tasks, policy, gate)
            for pr in d.preempt:  # REQUEUE: stopped now (the grace is under a tick), its checkpoints kept
                job = jobs[pr.job_id]
                if job.start is not None and pr.job_id not in pending:
                    preempted += 1
                    stop(job, t, t, killed=False, preempted=True)
            gang: dict[int, list] = {}
            for p in d.placements:
                gang.setdefault(p.job_id, []).append(p)
            for job_id, ps in gang.items():
                job = pending.pop(job_id)
                for p in ps:
                    n = nodes[p.node]
                    n.free.difference_update(p.gpus)
                    n.cpus_free -= p.cpus
                    n.mem_free -= p.memory_mb
                    n.jobs[job_id] = (p.gpus, p.cpus, p.memory_mb)
                    n.idle_since = None
                job.waited += t - job.pending_since
                job.start = t
                job.nodes = tuple(p.node for p in ps)
                job.cloud = any(nodes[p.node].site == "cloud" for p in ps)
                heapq.heappush(ends, (t + job.tj.duration - job.saved, job_id, job.run))
        # The autoscaler's pass. A refused launch wakes the controller's autoscaler at once
        # (Autoscaler.launch), so the tasks it was for try another pool within this tick.
        for _round in range(RETRIES_PER_TICK):
            cloud_nodes = [n for n in nodes.values() if n.site == "cloud"]
            if limits is None or not (pending or cloud_nodes):
                break
            if len(lengths) != sampled:
                sampled, sample = len(lengths), length_sample(lengths[-RUN_LENGTHS_RECENT:])
            c0 = time.perf_counter()
            world = _world(pending, nodes, cloud_nodes, market, strategy, t, origin, backoff, gang_backoff,
                           spend.get(burst.period_start(origin + t, period), 0.0), jobs, limits, shares.value,
                           sample, _owner_spent(owner_spend, burst.period_start(origin + t, period)) if owners else {})
            dec = burst.decide(world, limits, policy, origin + t)
            decide_s += time.perf_counter() - c0
            no_spot, weighed, gate = dec.no_spot, dec.weighed, dec.gate
            for rc in dec.recall:  # stopped now (its checkpoint kept), requeued: the next pass places it on-prem
                job = jobs[rc.job_id]
                if job.start is not None and rc.job_id not in pending:
                    recalls += 1
                    stop(job, t, t, killed=False, recalled=True)
            for sd in dec.drain:
                n = nodes.get(sd.node)
                if n is not None:
                    n.retiring = True
            for sd in dec.scale_down:
                n = nodes.get(sd.node)
                if n is None:
                    continue
                for job_id in list(n.jobs):
                    stop(jobs[job_id], t, t, killed=True)
                gone(n, t)
            retry = False
            groups: dict[int, list[burst.LaunchRequest]] = {}
            for req in dec.launches:
                groups.setdefault(req.group, []).append(req)
            for reqs in groups.values():
                o = reqs[0].offer
                held = sum(1 for n in nodes.values() if n.offer is not None and n.offer.pool == o.pool)
                why = market.refuse(o, t, held, len(reqs))
                if why:
                    refusals += 1
                    # As the controller (Autoscaler.backoff): a pool that refused k > 1 nodes is
                    # not asked for k or more for k times as long; one that refused one node, not at all.
                    if len(reqs) > 1:
                        gang_backoff[o.pool] = (t + backoff_s * len(reqs) + origin, len(reqs))
                        backoff.pop(o.pool, None)
                    else:
                        backoff[o.pool] = t + backoff_s + origin
                        gang_backoff.pop(o.pool, None)
                    retry = True
                    continue
                for _ in reqs:
                    counter += 1
                    name = f"c{counter}"
                    n = _Node(name, "cloud", o.gpus, o.gpu_type or "GPU", o.cpus, o.memory_mb, o, t, t + market.model.boot_s)
                    n.idle_since = n.ready
                    at = market.reclaim_at(o, f"{market.seed}/{name}", t)
                    if at is not None:
                        n.reclaim = at
                        n.notice = max(t, at - market.notice(o))
                    nodes[name] = n
            if not retry:
                break
        if t < horizon:
            busy_gpu_s += tick * sum(n.gpus - len(n.free) for n in nodes.values() if n.site == "onprem")
        if ai >= len(arrivals) and not pending and not ends and not any(n.site == "cloud" for n in nodes.values()):
            break
        if not pending and not any(n.site == "cloud" for n in nodes.values()) and ai < len(arrivals):
            nxt = min(ends[0][0] if ends else math.inf, arrivals[ai].tj.submit)
            if nxt > t + tick:
                if t < horizon:
                    busy_gpu_s += (math.floor((min(nxt, horizon) - t) / tick) - 1) * tick * sum(
                        n.gpus - len(n.free) for n in nodes.values() if n.site == "onprem")
                t += math.floor((nxt - t) / tick) * tick
                continue
        t += tick
    waits: list[float] = []
    classes: dict[str, list[float]] = {c: [] for c in SIZE_CLASSES}
    misses = dl = unfinished = 0
    for j in jobs.values():
        w = j.waited + (t - j.pending_since if j.tj.id in pending else 0.0)
        waits.append(w)
        classes[j.tj.size_class].append(w)
        if j.end is None:
            unfinished += 1
        if j.tj.deadline is not None:
            dl += 1
            if j.end is None or j.end > j.tj.deadline:
                misses += 1
    util = busy_gpu_s / (onprem_gpus * horizon) if onprem_gpus and horizon else float("nan")
    return Result(strategy.name, len(jobs), waits, classes, util, dollars, cloud_gpu_s / 3600, lost_gpu_s / 3600,
                  killed_gpu_s / 3600, preemptions, refusals, dl, misses, unfinished, max(spend.values(), default=0.0),
                  time.perf_counter() - started, decide_s, od_dollars, cloud_busy_s / 3600,
                  by_class, lost_by, recalls, recall_lost_s / 3600, preempted, preempt_lost_s / 3600,
                  _most_per_period(owner_spend, limits) if owners and limits else {})


def _owner_spent(spend: dict[tuple[float, str, str], float], period: float) -> dict[tuple[str, str], float]:
    """`World.owner_spent`: what each owner spent in the budget period that starts at `period`."""
    return {(kind, name): usd for (p, kind, name), usd in spend.items() if p == period}


def _most_per_period(spend: dict[tuple[float, str, str], float], limits: burst.Limits) -> dict[str, float]:
    """`Result.owner_spend`: per budgeted owner, the most they spent in one budget period."""
    out: dict[str, float] = {}
    for (_p, kind, name), usd in spend.items():
        budgets = limits.user_budget_usd if kind == "user" else limits.group_budget_usd
        if budget_of(budgets, name) is not None:
            out[f"{kind} {name}"] = max(out.get(f"{kind} {name}", 0.0), usd)
    return out


def _marked(tj: TraceJob, policy: Policy) -> TraceJob:
    """The job under the policy's size and checkpoint rules, as the controller's RuntimeFacts
    applies them: `multi_node_priority` more for a gang, preemptible with `preempt_checkpointing`
    when it checkpoints and has no deadline."""
    boost = policy.multi_node_priority if tj.nodes > 1 else 0
    pre = tj.preemptible or (policy.preempt_checkpointing and tj.checkpoint > 0 and tj.deadline is None)
    return replace(tj, priority=tj.priority + boost, preemptible=pre) if boost or pre != tj.preemptible else tj


def _task(j: _Job, origin: float, left: float | None = None) -> PendingTask:
    """The job as the scheduler sees it; `left`: what is left of its limit (a running job's)."""
    tj = j.tj
    cpus = tj.cpus or max(4.0, 8.0 * tj.gpus)
    if left is None and tj.time_limit:
        left = max(60.0, tj.time_limit - j.saved)
    return PendingTask(tj.id, 0, tj.user, tj.group, tj.priority, origin + tj.submit,
                       Resources(gpus=tj.gpus, gpu_type=tj.gpu_type, cpus=cpus, memory_mb=tj.memory_mb,
                                 use_spot=tj.spot != "no"),
                       num_nodes=tj.nodes, runtime_s=left, preemptible=tj.preemptible)


def _cluster(up: Sequence[_Node], every: Iterable[_Node], jobs: dict[int, _Job], origin: float,
             t: float) -> ClusterView:
    """The nodes that take work as the scheduler sees them, with what runs on every node and when
    it is expected to end (start + time limit: what the controller knows), whether it may be
    preempted, and its last checkpoint (what a preemption would keep)."""
    running = []
    for n in every:
        for job_id, (g, c, m) in n.jobs.items():
            j = jobs[job_id]
            start = origin + (j.start or 0.0)
            ends = start + j.tj.time_limit if j.tj.time_limit else None
            ck = j.tj.checkpoint
            last = start + math.floor((t - (j.start or 0.0)) / ck) * ck if ck > 0 and j.start is not None else None
            running.append(RunningTask(job_id, 0, j.tj.user, j.tj.priority, n.name, g, c, m, start, ends,
                                       j.tj.preemptible, last, group=j.tj.group))
    return ClusterView(tuple(n.view() for n in up), running=tuple(running), now=origin + t)


def _world(pending: dict[int, _Job], nodes: dict[str, _Node], cloud_nodes: list[_Node], market: Market,
           strategy: Strategy, t: float, origin: float, backoff: dict[str, float],
           gang_backoff: dict[str, tuple[float, int]], spent: float,
           jobs: dict[int, _Job], limits: burst.Limits, limit_use: float = 1.0,
           run_lengths: tuple[float, ...] = (), owner_spent: dict[tuple[str, str], float] | None = None) -> burst.World:
    visible = [n for n in nodes.values() if n.ready <= t and not n.draining and not n.retiring]
    held = [burst.CloudNode(n.name, replace(n.offer, price_hourly=market.price(n.offer, t)), origin + n.launched,  # type: ignore[arg-type]
                            up=n.ready <= t, idle_since=(origin + n.idle_since) if n.idle_since is not None and n.ready <= t else None,
                            draining=n.draining or n.retiring) for n in cloud_nodes]
    offers = market.offers(t, spot=strategy.market != "on-demand", on_demand=strategy.market != "spot")
    freeing = []
    for n in nodes.values():
        if n.site != "onprem":
            continue
        for job_id, (g, c, m) in n.jobs.items():
            j = jobs[job_id]
            if j.tj.time_limit and j.start is not None:
                freeing.append(burst.Freeing(n.name, g, c, m, origin + j.start + j.tj.time_limit, origin + j.start))
    runtime = {}
    ckpt = {}
    deadlines = {}
    insist = set()
    cloud_tasks = []
    last_ckpt = {}
    if limits.recall or (limits.commit_expected and limits.pace_budget):
        seen: set[int] = set()
        for n in cloud_nodes:
            for job_id in n.jobs:
                j = jobs[job_id]
                if job_id in seen or j.start is None:
                    continue
                seen.add(job_id)
                ran = t - j.start
                left = max(0.0, j.tj.time_limit - j.saved - ran) if j.tj.time_limit else None
                cloud_tasks.append(_task(j, origin, left))
                if j.tj.deadline is not None:
                    deadlines[(j.tj.id, 0)] = origin + j.tj.deadline
                if j.tj.checkpoint > 0:
                    ckpt[(j.tj.id, 0)] = j.tj.checkpoint
                    last_ckpt[(j.tj.id, 0)] = origin + j.start + math.floor(ran / j.tj.checkpoint) * j.tj.checkpoint
    for j in pending.values():
        key = (j.tj.id, 0)
        if j.tj.time_limit:
            runtime[key] = max(60.0, j.tj.time_limit - j.saved)
        if j.tj.checkpoint > 0:
            ckpt[key] = j.tj.checkpoint
        if j.tj.deadline is not None:
            deadlines[key] = origin + j.tj.deadline
        if j.tj.spot == "always":
            insist.add(key)
    return burst.World(
        [_task(j, origin) for j in pending.values()], _cluster(visible, nodes.values(), jobs, origin, t), held, offers,
        {(j.tj.id, 0): origin + j.pending_since for j in pending.values()},
        {p: until for p, until in backoff.items() if until > origin + t}, spent, freeing,
        runtime, ckpt, deadlines, frozenset(insist), limit_use=limit_use,
        cloud_tasks=cloud_tasks, last_checkpoint=last_ckpt,
        no_recall=frozenset((j.tj.id, 0) for j in jobs.values() if j.recalled and j.start is not None),
        ran={(j.tj.id, 0): j.longest for j in pending.values() if j.longest > 0}, run_lengths=run_lengths,
        owner_spent=owner_spent or {},
        gang_backoff={p: b for p, b in gang_backoff.items() if b[0] > origin + t},
    )
