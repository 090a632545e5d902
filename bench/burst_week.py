"""A lab's week, simulated from a seeded trace, under three ways of running it:

- **on-prem only**: the lab's own fleet, jobs queue when it is full;
- **cloud on-demand only**: no fleet; every job rents on-demand nodes as it arrives;
- **hybridctl bursting**: the fleet first, spot nodes for jobs that waited `burst.after`.

The simulation drives the controller's own code: `core.schedule.plan` places jobs on the nodes that
are up, `core.burst.decide` rents and gives back cloud nodes, both called with the simulated clock
(pure functions, `now` passed in). Spot prices drift as the simulated provider's do
(`cloud.simulated.spot_price`) around the shipped catalog (`hybridctl/cloud/offers.yaml`), and spot nodes
are reclaimed at a seeded rate with two minutes' notice, their jobs requeued from scratch.

Run: .venv/bin/python bench/burst_week.py [--seed N] [--days D] [--json]
Prints a Markdown table (mean / p95 queue wait, on-prem GPU utilisation, total $) for
bench/RESULTS.md. Same seed, same numbers.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridctl.cloud import catalog as catalog_mod  # noqa: E402
from hybridctl.cloud.simulated import preempt_after, spot_price  # noqa: E402
from hybridctl.core import burst  # noqa: E402
from hybridctl.core.model import (  # noqa: E402
    ClusterView,
    GpuSlot,
    NodeState,
    NodeView,
    PendingTask,
    Policy,
    Resources,
)
from hybridctl.core.schedule import plan  # noqa: E402

TICK = 60.0
"""Seconds between scheduling / autoscaler passes in the simulation (the controller's tick)."""
ONPREM_NODES = 4
ONPREM_GPUS = 8
ONPREM_MODEL = "NVIDIA A100-SXM4-80GB"
BOOT_S = 180.0
"""Launch to joined: the provider's boot plus the SSH bootstrap."""
PREEMPT_PER_H = 0.05
"""Spot reclaims per node-hour."""
NOTICE_S = 120.0
DRIFT = 0.2
REGIONS = ("us-east-1", "us-east-2")


@dataclass
class Job:
    id: int
    user: str
    submit: float
    gpus: int
    gpu_type: str | None
    cpus: float
    mem_mb: int
    duration: float
    time_limit: float
    waited: float = 0.0
    pending_since: float = 0.0
    start: float | None = None
    end: float | None = None
    restarts: int = 0
    where: str = ""


@dataclass
class SimNode:
    name: str
    site: str
    gpus: int
    model: str
    cpus: float
    mem_mb: int
    offer: burst.Offer | None = None
    launched_at: float = 0.0
    ready_at: float = 0.0
    preempt_at: float | None = None
    free: set[int] = field(default_factory=set)
    cpus_free: float = 0.0
    mem_free: int = 0
    jobs: dict[int, tuple[tuple[int, ...], float, int]] = field(default_factory=dict)
    idle_since: float | None = None

    def __post_init__(self) -> None:
        self.free = set(range(self.gpus))
        self.cpus_free = self.cpus
        self.mem_free = self.mem_mb

    def view(self) -> NodeView:
        slots = tuple(GpuSlot(i, self.model, free=i in self.free) for i in range(self.gpus))
        return NodeView(self.name, slots, self.cpus, self.cpus_free, self.mem_mb, self.mem_free, NodeState.UP, self.site)


def make_trace(seed: int, days: float) -> list[Job]:
    """Arrivals follow working hours (busy weekday afternoons, quiet nights and weekends); sizes
    are mostly 1-2 GPUs with some whole-node jobs; run times are log-normal (median 1 h, capped
    at 24 h); users ask for 1.2-3x the time they need."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    t = 0.0
    horizon = days * 86400
    base = 7.5 / 3600  # jobs per second at the daily mean
    peak = 2.2
    users = [f"u{i}" for i in range(10)]
    while True:
        t += rng.expovariate(base * peak)
        if t >= horizon:
            break
        hour = (t % 86400) / 3600
        weekday = int(t // 86400) % 7 < 5
        shape = 0.25 + 0.75 * math.exp(-((hour - 14.0) / 4.5) ** 2)
        if rng.random() > shape * (1.0 if weekday else 0.45):
            continue  # thinning: a non-homogeneous Poisson process
        gpus = rng.choices([1, 2, 4, 8], [45, 25, 18, 12])[0]
        gpu_type = "A100" if gpus >= 4 or rng.random() < 0.5 else None
        duration = min(24 * 3600.0, max(300.0, rng.lognormvariate(math.log(3600), 1.0)))
        jobs.append(Job(len(jobs) + 1, rng.choice(users), t, gpus, gpu_type, 4.0 * gpus, 16384 * gpus,
                        duration, math.ceil(duration * rng.uniform(1.2, 3.0))))
    return jobs


def cloud_offers(cat: catalog_mod.Catalog, t: float, on_demand_only: bool, seed: int) -> list[burst.Offer]:
    out = []
    for o in cat.offers("sim", REGIONS):
        if o.spot:
            if on_demand_only:
                continue
            o = replace(o, price_hourly=spot_price(o.price_hourly, o.pool, t, DRIFT, seed))
        out.append(o)
    return out


@dataclass
class Result:
    name: str
    waits: list[float]
    onprem_util: float
    dollars: float
    node_hours: float
    preemptions: int
    unfinished: int
    wall_s: float

    def row(self) -> list[str]:
        w = sorted(self.waits)
        p95 = w[min(len(w) - 1, int(math.ceil(0.95 * len(w))) - 1)] if w else 0.0
        util = f"{self.onprem_util * 100:.1f}%" if self.onprem_util == self.onprem_util else "n/a"
        return [self.name, _mins(statistics.fmean(w) if w else 0.0), _mins(p95), util, f"${self.dollars:,.0f}",
                f"{self.node_hours:,.0f}", str(self.preemptions), str(self.unfinished)]


def _mins(s: float) -> str:
    return f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def simulate(name: str, trace: list[Job], *, onprem: int, cloud: str | None, limits: burst.Limits,
             cat: catalog_mod.Catalog, seed: int, days: float) -> Result:
    """`cloud`: None (no bursting), 'spot' or 'on-demand'."""
    started = time.perf_counter()
    jobs = {j.id: replace(j) for j in trace}
    arrivals = sorted(jobs.values(), key=lambda j: j.submit)
    nodes: dict[str, SimNode] = {}
    for i in range(onprem):
        nodes[f"prem{i:02d}"] = SimNode(f"prem{i:02d}", "onprem", ONPREM_GPUS, ONPREM_MODEL, 128, 1024 * 1024)
    booting: dict[str, SimNode] = {}
    pending: dict[int, Job] = {}
    ends: list[tuple[float, int, str]] = []
    policy = Policy()
    horizon = days * 86400
    drain_until = horizon + 7 * 86400  # let the queue empty after the last arrival
    t = 0.0
    ai = 0
    dollars = node_hours = 0.0
    onprem_gpu_s = 0.0
    preemptions = 0
    counter = 0

    def release(node: SimNode, job_id: int) -> None:
        gpus, cpus, mem = node.jobs.pop(job_id)
        node.free.update(gpus)
        node.cpus_free += cpus
        node.mem_free += mem
        if not node.jobs:
            node.idle_since = t

    def requeue(job: Job) -> None:
        job.start = None
        job.restarts += 1
        job.pending_since = t
        pending[job.id] = job

    while t < drain_until:
        # Arrivals and job ends up to now.
        while ai < len(arrivals) and arrivals[ai].submit <= t:
            j = arrivals[ai]
            j.pending_since = j.submit
            pending[j.id] = j
            ai += 1
        while ends and ends[0][0] <= t:
            _, job_id, where = heapq.heappop(ends)
            job = jobs[job_id]
            node = nodes.get(where)
            if node is None or job_id not in node.jobs or job.end is not None or job.where != where:
                continue  # preempted meanwhile: this end is stale
            job.end = job.start + job.duration if job.start is not None else t
            release(node, job_id)
        # Cloud nodes: joining, notices (requeue then reclaim), cost.
        for key, n in list(booting.items()):
            if n.ready_at <= t:
                nodes[key] = booting.pop(key)
                n.idle_since = t
        for key, n in list(nodes.items()):
            if n.site != "cloud":
                continue
            if n.preempt_at is not None and t >= n.preempt_at - NOTICE_S:
                preemptions += 1
                for job_id in list(n.jobs):
                    release(n, job_id)
                    requeue(jobs[job_id])
                del nodes[key]
        for n in [*nodes.values(), *booting.values()]:
            if n.site == "cloud" and n.offer is not None:
                price = n.offer.price_hourly
                if n.offer.spot:
                    price = spot_price(n.offer.price_hourly, n.offer.pool, t, DRIFT, seed)
                dollars += price * TICK / 3600
                node_hours += TICK / 3600
        # The scheduler's pass over the nodes that are up.
        tasks = [_task(j) for j in pending.values()]
        if tasks and nodes:
            d = plan(ClusterView(tuple(n.view() for n in nodes.values())), tasks, policy)
            for p in d.placements:
                job = pending.pop(p.job_id)
                node = nodes[p.node]
                node.free.difference_update(p.gpus)
                node.cpus_free -= p.cpus
                node.mem_free -= p.memory_mb
                node.jobs[job.id] = (p.gpus, p.cpus, p.memory_mb)
                node.idle_since = None
                job.waited += t - job.pending_since
                job.start = t
                job.where = node.name
                heapq.heappush(ends, (t + job.duration, job.id, node.name))
        # The autoscaler's pass.
        if cloud is not None:
            held = [*[n for n in nodes.values() if n.site == "cloud"], *booting.values()]
            world = burst.World(
                [_task(j) for j in pending.values()],
                ClusterView(tuple(n.view() for n in nodes.values())),
                [burst.CloudNode(n.name, n.offer, n.launched_at, up=n.name in nodes,  # type: ignore[arg-type]
                                 idle_since=n.idle_since if n.name in nodes else None) for n in held],
                cloud_offers(cat, t, cloud == "on-demand", seed),
                {(j.id, 0): j.pending_since for j in pending.values()},
                {}, 0.0,
            )
            d2 = burst.decide(world, limits, policy, t)
            for sd in d2.scale_down:
                if nodes.get(sd.node) is not None and not nodes[sd.node].jobs:
                    del nodes[sd.node]
            for req in d2.launches:
                counter += 1
                o = req.offer
                n = SimNode(f"c{counter}", "cloud", o.gpus, f"NVIDIA {o.gpu_type}", o.cpus, o.memory_mb, o, t,
                            t + BOOT_S)
                if o.spot:
                    after = preempt_after(PREEMPT_PER_H, n.name, seed)
                    n.preempt_at = None if after is None else t + after
                booting[n.name] = n
        if t < horizon:
            onprem_gpu_s += TICK * sum(n.gpus - len(n.free) for n in nodes.values() if n.site == "onprem")
        if t >= horizon and not pending and not ends and not booting and not any(
                n.site == "cloud" for n in nodes.values()):
            break
        t += TICK
    waits = [j.waited for j in jobs.values() if j.end is not None]
    util = onprem_gpu_s / (onprem * ONPREM_GPUS * horizon) if onprem else float("nan")
    return Result(name, waits, util, dollars, node_hours, preemptions,
                  sum(1 for j in jobs.values() if j.end is None), time.perf_counter() - started)


def _task(j: Job) -> PendingTask:
    return PendingTask(j.id, 0, j.user, "lab", 0, j.submit,
                       Resources(gpus=j.gpus, gpu_type=j.gpu_type, cpus=j.cpus, memory_mb=j.mem_mb))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--json", action="store_true", help="print the numbers as JSON instead of a table")
    args = ap.parse_args(argv)
    cat = catalog_mod.load()
    trace = make_trace(args.seed, args.days)
    demand = sum(j.gpus * j.duration for j in trace) / 3600
    burst_limits = burst.Limits(after=120, idle_timeout=600, max_nodes=8, max_hourly_usd=250, budget_usd=1e9,
                                stop_margin_s=0)
    od_limits = replace(burst_limits, after=0, allow_on_demand=True, max_nodes=10_000, max_hourly_usd=1e9)
    runs = [
        simulate("on-prem only", trace, onprem=ONPREM_NODES, cloud=None, limits=burst_limits, cat=cat,
                 seed=args.seed, days=args.days),
        simulate("cloud on-demand only", [replace(j) for j in trace], onprem=0, cloud="on-demand",
                 limits=od_limits, cat=cat, seed=args.seed, days=args.days),
        simulate("hybridctl bursting (spot)", trace, onprem=ONPREM_NODES, cloud="spot", limits=burst_limits,
                 cat=cat, seed=args.seed, days=args.days),
        # The same, with a patient threshold: the knob that trades wait for dollars.
        simulate("hybridctl bursting, after 30 min", trace, onprem=ONPREM_NODES, cloud="spot",
                 limits=replace(burst_limits, after=1800), cat=cat, seed=args.seed, days=args.days),
    ]
    if args.json:
        print(json.dumps([{**r.__dict__, "waits": None, "mean_wait_s": statistics.fmean(r.waits)} for r in runs],
                         indent=2))
        return 0
    fleet = ONPREM_NODES * ONPREM_GPUS
    print(f"Trace: {len(trace)} jobs over {args.days:g} days (seed {args.seed}), {demand:,.0f} GPU-hours asked;"
          f" on-prem fleet {ONPREM_NODES}x{ONPREM_GPUS} A100 = {fleet * 24 * args.days:,.0f} GPU-hours.")
    print(f"Bursting: after 120 s (the default) or 30 min, idle 10 min, max 8 nodes, max $250/h; spot drifts ±{DRIFT:.0%}, "
          f"{PREEMPT_PER_H} reclaims per node-hour ({NOTICE_S:.0f} s notice), {BOOT_S:.0f} s to join.")
    print()
    head = ["strategy", "mean wait", "p95 wait", "on-prem GPU util", "total $", "cloud node-h",
            "preemptions", "unfinished"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in runs:
        print("| " + " | ".join(r.row()) + " |")
    print()
    print("simulated in " + ", ".join(f"{r.name}: {r.wall_s:.1f}s" for r in runs), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
