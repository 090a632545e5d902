"""Do big jobs still starve? A seeded lab (16 nodes x 8 GPUs) fed a stream of mostly 1-GPU jobs
with some 8-GPU and 2-node jobs at ~105 % of capacity, replayed through the real `schedule.plan`
with reservations (backfill_depth 1, the default, and 5) and without (the greedy baseline, depth 0)
in the same run.
Jobs run for their true runtime; the scheduler only knows their time limit (1-2x the runtime, as
users overestimate). Prints p50/p95 waits per job size and the p95 ratio to greedy.

Run: .venv/bin/python bench/backfill.py [--jobs N] [--seed S]
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridctl.core.model import (
    ClusterView,
    GpuSlot,
    NodeView,
    PendingTask,
    Policy,
    Resources,
    RunningTask,
)
from hybridctl.core.schedule import plan

NODES, GPUS, CPUS, MEM = 16, 8, 64.0, 512 * 1024


def workload(rng: random.Random, n: int, load: float) -> list[tuple[float, PendingTask, float]]:
    """(arrival, task, true runtime); the task's runtime_s is its time limit."""
    shapes = [(1, 1, 70), (2, 1, 10), (4, 1, 8), (8, 1, 9), (8, 2, 3)]  # (gpus, nodes, weight)
    mean_run = 2.0 * 3600
    mean_gpus = sum(g * k * w for g, k, w in shapes) / sum(w for *_, w in shapes)
    rate = load * NODES * GPUS / (mean_gpus * mean_run)  # arrivals per second
    out, t = [], 0.0
    for job in range(1, n + 1):
        t += rng.expovariate(rate)
        gpus, nodes, _ = rng.choices(shapes, [w for *_, w in shapes])[0]
        run = min(24 * 3600.0, rng.lognormvariate(math.log(mean_run) - 0.5, 1.0))
        limit = run * rng.uniform(1.0, 2.0)
        task = PendingTask(job, 0, f"u{job % 7}", "lab", 0, t, Resources(gpus=gpus, cpus=float(gpus)),
                           num_nodes=nodes, runtime_s=limit)  # fmt: skip
        out.append((t, task, run))
    return out


def simulate(jobs: list[tuple[float, PendingTask, float]], depth: int) -> tuple[dict[int, float], float]:
    """Waits per job id, and the mean pass time (ms)."""
    policy = Policy(backfill_depth=depth)
    busy: dict[str, dict[int, int]] = {f"n{i:02d}": {} for i in range(NODES)}  # node -> gpu -> job
    running: dict[int, list[RunningTask]] = {}
    ends: list[tuple[float, int]] = []
    truth = {t.job_id: run for _, t, run in jobs}
    pending: dict[int, PendingTask] = {}
    waits: dict[int, float] = {}
    limits: dict[int, float | None] = {}
    arrivals = [(a, t) for a, t, _ in jobs]
    i, now, passes, spent = 0, 0.0, 0, 0.0
    while i < len(arrivals) or ends or pending:
        nxt_arrival = arrivals[i][0] if i < len(arrivals) else math.inf
        nxt_end = ends[0][0] if ends else math.inf
        if nxt_arrival == math.inf and nxt_end == math.inf:
            break  # nothing left can ever start (should not happen)
        now = min(nxt_arrival, nxt_end)
        while i < len(arrivals) and arrivals[i][0] <= now:
            pending[arrivals[i][1].job_id] = arrivals[i][1]
            i += 1
        while ends and ends[0][0] <= now:
            _, job = heapq.heappop(ends)
            for r in running.pop(job):
                for g in r.gpus:
                    del busy[r.node][g]
        nodes = tuple(
            NodeView(name, tuple(GpuSlot(g, "A100", free=g not in held) for g in range(GPUS)),
                     CPUS, CPUS - sum(1 for _ in held), MEM, MEM)
            for name, held in busy.items()
        )  # fmt: skip
        view = ClusterView(nodes, running=tuple(r for rs in running.values() for r in rs), now=now)
        started = time.perf_counter()
        d = plan(view, list(pending.values()), policy)
        spent += time.perf_counter() - started
        passes += 1
        for p in d.placements:
            t = pending.pop(p.job_id, None)
            if t is not None:  # its first rank
                waits[p.job_id] = now - t.submitted_at
                heapq.heappush(ends, (now + truth[p.job_id], p.job_id))
                limits[p.job_id] = t.runtime_s
                running[p.job_id] = []
            for g in p.gpus:
                busy[p.node][g] = p.job_id
            limit = limits[p.job_id]
            running[p.job_id].append(
                RunningTask(p.job_id, 0, "u", 0, p.node, p.gpus, p.cpus, 0, now,
                            None if limit is None else now + limit)
            )  # fmt: skip
    return waits, spent / max(1, passes) * 1e3


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", type=float, default=1.05)
    args = parser.parse_args()
    jobs = workload(random.Random(args.seed), args.jobs, args.load)
    size = {t.job_id: (t.resources.gpus * t.num_nodes) for _, t, _ in jobs}
    classes = [("1 GPU", lambda g: g == 1), ("2-4 GPUs", lambda g: 2 <= g <= 4),
               ("8 GPUs", lambda g: g == 8), ("2 nodes", lambda g: g == 16)]  # fmt: skip
    policies = (("greedy", 0), ("depth 1", 1), ("depth 5", 5))
    results = {name: simulate(jobs, depth) for name, depth in policies}
    print(f"{args.jobs} jobs, {NODES} nodes x {GPUS} GPUs, offered load {args.load:.0%}, seed {args.seed}")
    print("wait p50 / p95 in hours by job size; 'x' = p95 / greedy's p95")
    head = "".join(f" {name:>20}" for name, _ in policies)
    print(f"{'class':>9} {'n':>5}{head}")
    for label, test in classes:
        ids = [j for j, g in size.items() if test(g)]
        cells, base = [], None
        for name, _ in policies:
            w = [results[name][0][j] / 3600 for j in ids if j in results[name][0]]
            p50, p95 = pct(w, 0.5), pct(w, 0.95)
            base = p95 if base is None else base
            ratio = f" x{p95 / base:.2f}" if base and name != "greedy" else ""
            cells.append(f"{p50:.2f} / {p95:.2f}{ratio}")
        print(f"{label:>9} {len(ids):>5}" + "".join(f" {c:>20}" for c in cells))
    for name, _ in policies:
        w = list(results[name][0].values())
        print(f"{name:>8}: all jobs p50 {pct(w, 0.5) / 3600:.2f} h, p95 {pct(w, 0.95) / 3600:.2f} h,"
              f" mean {statistics.fmean(w) / 3600:.2f} h; {results[name][1]:.2f} ms per pass")


if __name__ == "__main__":
    main()
