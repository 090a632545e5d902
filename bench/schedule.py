"""Benchmark of one scheduling pass (`hybridctl.core.schedule.plan`) on synthetic, seeded
clusters: 1k nodes x 8 GPUs with 1k / 10k / 100k pending tasks, on an empty, a half-full and a
CPU-bound fleet.

Run: .venv/bin/python bench/schedule.py [--profile] [--repeat N]
Times are medians; the baseline is sorting the same pending list by the same key in the same
process (a floor no pass can beat), so the ratio travels between machines better than seconds.
Busy GPUs are held by running tasks with expected ends (a fifth unknown, a tenth preemptible),
and 70 % of pending tasks have a runtime, so backfill reserves and preempts; `greedy ms` is the
same pass with reservations and preemption off (`backfill_depth=0`, no running tasks), the plain
greedy scheduler this one replaced, and `x greedy` the ratio to it.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridctl.core.fairshare import priority_key
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
from hybridctl.core.schedule import plan

TARGET_S = 0.200  # 10k tasks x 1k nodes, one pass
MODELS = [  # (weight, GPU models of an 8-GPU node)
    (50, ["NVIDIA A100-SXM4-80GB"] * 8),
    (25, ["NVIDIA H100 80GB HBM3"] * 8),
    (20, ["NVIDIA L40S"] * 8),
    (5, ["NVIDIA GeForce RTX 3090"] * 4 + ["NVIDIA RTX A6000"] * 4),
]
TYPES = ["A100", "H100", "L40S", "A6000"]


def build_nodes(rng: random.Random, n: int, busy: float) -> tuple[NodeView, ...]:
    """n nodes, 10% cloud, 1% draining, a few unhealthy GPUs; `busy` of the GPUs already taken
    (with a matching share of CPUs and memory)."""
    weights = [w for w, _ in MODELS]
    nodes = []
    for i in range(n):
        models = rng.choices([m for _, m in MODELS], weights)[0]
        cpus = rng.choice([64.0, 96.0, 128.0])
        mem = rng.choice([512, 1024]) * 1024
        slots = []
        used = 0
        for gi, model in enumerate(models):
            taken = rng.random() < busy
            used += taken
            slots.append(GpuSlot(gi, model, free=not taken, healthy=rng.random() > 0.002))
        share = used / len(models)
        nodes.append(
            NodeView(
                name=f"gpu{i:04d}",
                gpus=tuple(slots),
                cpus_total=cpus,
                cpus_free=cpus * (1 - share),
                memory_total_mb=mem,
                memory_free_mb=int(mem * (1 - share)),
                state=NodeState.DRAINING if rng.random() < 0.01 else NodeState.UP,
                site="cloud" if i % 10 == 9 else "onprem",
            )
        )
    return tuple(nodes)


NOW = 1.7e9 + 10**6


def build_running(rng: random.Random, nodes: Sequence[NodeView]) -> tuple[RunningTask, ...]:
    """The busy GPUs of each node as running tasks of 1-4 GPUs, ending within a day (a fifth
    with no known end); a tenth preemptible at priority -5."""
    out = []
    job = 10**6
    for n in nodes:
        busy = [s.index for s in n.gpus if not s.free]
        per = (n.cpus_total - n.cpus_free) / max(1, len(busy))
        mem = (n.memory_total_mb - n.memory_free_mb) // max(1, len(busy))
        while busy:
            k = min(len(busy), rng.choice([1, 2, 4]))
            gpus, busy = tuple(busy[:k]), busy[k:]
            job += 1
            low = rng.random() < 0.1
            ends = None if rng.random() < 0.2 else NOW + rng.uniform(60, 24 * 3600)
            out.append(RunningTask(job, 0, f"user{job % 50:02d}", -5 if low else 0, n.name, gpus,
                                   per * k, mem * k, NOW - rng.uniform(60, 3600 * 12), ends, low))
    return tuple(out)


def build_pending(rng: random.Random, n: int, cpus_per_gpu: Sequence[int]) -> list[PendingTask]:
    """Mostly 1-GPU tasks, some 2/4/8; a fifth typed; 2% two-node gangs; arrays, dependencies."""
    tasks: list[PendingTask] = []
    job = 1000
    while len(tasks) < n:
        job += 1
        gpus = rng.choices([1, 2, 4, 8], [70, 12, 10, 8])[0]
        res = Resources(
            gpus=gpus,
            gpu_type=rng.choice(TYPES) if rng.random() < 0.2 else None,
            cpus=float(gpus * rng.choice(cpus_per_gpu)),
            memory_mb=gpus * rng.choice([0, 32, 64]) * 1024,
        )
        user = f"user{rng.randrange(50):02d}"
        common: dict[str, Any] = dict(
            job_id=job,
            user=user,
            group=f"group{int(user[4:]) % 10}",
            priority=rng.choices([0, 10, -5], [85, 10, 5])[0],
            submitted_at=1.7e9 + job,
            resources=res,
            placement=rng.choices(["any", "onprem", "cloud"], [90, 5, 5])[0],
            deps_unmet=(job - 1,) if rng.random() < 0.02 else (),
            runtime_s=rng.uniform(60, 12 * 3600) if rng.random() < 0.7 else None,
        )
        if rng.random() < 0.02 and gpus == 8:
            tasks.append(PendingTask(task=0, num_nodes=2, **common))
        elif rng.random() < 0.005:
            throttle = rng.choice([None, 20, 50])
            for t in range(1, rng.randrange(10, 100) + 1):
                tasks.append(PendingTask(task=t, array_throttle=throttle, **common))
        else:
            tasks.append(PendingTask(task=0, **common))
    return tasks[:n]


def median_time(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


SCENARIOS = [  # (name, share of GPUs already busy, CPUs per GPU the tasks ask for)
    ("empty", 0.0, (4, 8)),
    ("half-full", 0.5, (4, 8)),
    ("cpu-bound", 0.0, (6, 12, 20)),  # CPUs run out before GPUs: the slower search path
    ("full", 0.9, (4, 8)),  # most tasks blocked: reservations and preemptions on every pass
]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per figure (median)")
    parser.add_argument("--profile", action="store_true", help="cProfile each 10k x 1k pass")
    args = parser.parse_args()

    # Five reservations (the default is one): the dearest setting the docs suggest.
    policy = Policy(user_gpu_quota={"*": 256}, group_gpu_quota={"*": 1024}, backfill_depth=5)
    usage = {f"user{u:02d}": float(u * 3) for u in range(50)}
    print(f"python {sys.version.split()[0]}; one plan() pass over 1000 nodes x 8 GPUs, median")
    greedy_policy = Policy(
        user_gpu_quota=policy.user_gpu_quota, group_gpu_quota=policy.group_gpu_quota,
        backfill_depth=0,
    )  # fmt: skip
    print(
        f"{'scenario':>10} {'tasks':>7} {'plan ms':>9} {'sort ms':>9} {'ratio':>6}"
        f" {'greedy ms':>9} {'x greedy':>8} {'placed':>7} {'resv':>5} {'preempt':>7}"
    )
    at_10k: list[tuple[str, float]] = []
    for name, busy, cpus_per_gpu in SCENARIOS:
        nodes = build_nodes(random.Random(7), 1000, busy)
        greedy_view = ClusterView(nodes=nodes, usage_by_user=usage, now=NOW)
        view = ClusterView(
            nodes=nodes, usage_by_user=usage, running=build_running(random.Random(3), nodes), now=NOW
        )
        for n in (1_000, 10_000, 100_000):
            pending = build_pending(random.Random(11), n, cpus_per_gpu)
            repeat = args.repeat if n <= 10_000 else max(1, args.repeat // 2)
            t_plan = median_time(partial(plan, view, pending, policy), repeat)
            t_greedy = median_time(partial(plan, greedy_view, pending, greedy_policy), repeat)
            t_sort = median_time(partial(sorted, pending, key=partial(_key, usage)), repeat)
            decision = plan(view, pending, policy)
            placed = len({(p.job_id, p.task) for p in decision.placements})
            resv = sum(1 for w in decision.waiting if w.reason.startswith("reserved"))
            print(
                f"{name:>10} {n:>7} {t_plan * 1e3:>9.1f} {t_sort * 1e3:>9.1f}"
                f" {t_plan / t_sort:>6.1f} {t_greedy * 1e3:>9.1f} {t_plan / t_greedy:>8.2f}"
                f" {placed:>7} {resv:>5} {len(decision.preempt):>7}"
            )
            if n == 10_000:
                at_10k.append((name, t_plan))
                if args.profile:
                    prof = cProfile.Profile()
                    prof.runcall(plan, view, pending, policy)
                    pstats.Stats(prof).sort_stats("tottime").print_stats(12)
    met = all(t <= TARGET_S for _, t in at_10k)
    figures = "; ".join(f"{name} {t * 1e3:.1f} ms" for name, t in at_10k)
    print(f"target 10k x 1k <= {TARGET_S * 1e3:.0f} ms: {'MET' if met else 'MISSED'} ({figures})")


def _key(usage: dict[str, float], task: PendingTask) -> tuple[int, float, float, int, int]:
    return priority_key(task, usage)


if __name__ == "__main__":
    main()
