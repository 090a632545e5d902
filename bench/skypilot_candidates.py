"""What SkyPilot accelerator candidates cost a scheduling pass (`core.schedule.plan`).

The same seeded cluster (1k nodes x 8 GPUs: A100, H100, L40S; half the GPUs busy) and the same
10k pending tasks (1-8 GPUs each), once with one GPU type per task (the baseline, in the same
process) and once with SkyPilot's eight-candidate set from llm/llama-3_1 (`{L4, A10g, A10, A100,
A100-80GB, ...}`: the first three are in no node, so every task looks past them), and once on a
full fleet where no candidate fits (every task waits). Prints median ms and the ratio.

Run: .venv/bin/python bench/skypilot_candidates.py [--repeat N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridctl.core.model import ClusterView, GpuSlot, NodeView, PendingTask, Policy, Resources
from hybridctl.core.schedule import plan

MODELS = ["NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3", "NVIDIA L40S"]
SET = ("L4", "A10g", "A10", "A100", "A100-80GB", "H100")


def nodes(rng: random.Random, n: int, busy: float) -> tuple[NodeView, ...]:
    out = []
    for i in range(n):
        model = rng.choice(MODELS)
        slots = tuple(GpuSlot(g, model, free=rng.random() >= busy) for g in range(8))
        out.append(NodeView(f"n{i:04d}", slots, 96.0, 96.0, 1024 * 1024, 1024 * 1024))
    return tuple(out)


def tasks(rng: random.Random, n: int, candidates: bool) -> list[PendingTask]:
    out = []
    for j in range(n):
        g = rng.choice([1, 1, 2, 4, 8])
        if candidates:
            res = Resources(gpus=g, gpu_type=SET[0], alternatives=tuple((t, g) for t in SET))
        else:
            res = Resources(gpus=g, gpu_type="A100")
        out.append(PendingTask(j + 1, 0, f"u{j % 50}", "lab", 0, float(j), res))
    return out


def median_ms(view: ClusterView, pending: list[PendingTask], repeat: int) -> tuple[float, int]:
    times, placed = [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        d = plan(view, pending, Policy(backfill_depth=0))
        times.append((time.perf_counter() - t0) * 1000)
        placed = len(d.placements)
    return statistics.median(times), placed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for label, busy in (("half-full fleet", 0.5), ("full fleet", 1.0)):
        view = ClusterView(nodes=nodes(random.Random(7), 1000, busy))
        base, placed_base = median_ms(view, tasks(random.Random(11), 10_000, False), args.repeat)
        cand, placed_cand = median_ms(view, tasks(random.Random(11), 10_000, True), args.repeat)
        rows.append((label, base, placed_base, cand, placed_cand))
    print(f"{'fleet (1k nodes, 10k tasks)':28} {'one type ms':>12} {'placed':>7} {'8 candidates ms':>16} {'placed':>7} {'ratio':>6}")
    for label, base, pb, cand, pc in rows:
        print(f"{label:28} {base:12.1f} {pb:7d} {cand:16.1f} {pc:7d} {cand / base:6.2f}")


if __name__ == "__main__":
    main()
