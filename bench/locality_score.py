"""Cache-aware placement at scale, through the real scheduling pass (`core.schedule.plan`): the
half-full fleet of bench/schedule.py (1,000 nodes x 8 GPUs, running tasks with expected ends,
10,000 pending tasks, backfill and preemption on), every pending task needing one of 8
environments and one of 40 data sets, and each on-prem node's cache holding a random 5 % of them.
The same pass with locality off (ClusterView.locality None, today's behaviour) and on (weight 1)
in the same run: ms per pass (median), the ratio, and the bytes the placements would move.
A second figure, `scorer only`, is the pure `choose` loop H7 measured (kept for comparison).
No I/O: the pure core only; bench/locality.py is the end-to-end bench.

    .venv/bin/python bench/locality_score.py [--jobs 10000] [--nodes 1000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from schedule import NOW, build_nodes, build_pending, build_running  # noqa: E402  (bench/schedule.py)

from hybridctl.core.locality import (  # noqa: E402
    CacheIndex,
    LocalityPolicy,
    LocalityView,
    Need,
    choose,
    free_in_of,
)
from hybridctl.core.model import ClusterView, Policy  # noqa: E402
from hybridctl.core.schedule import plan  # noqa: E402

GB = 10**9
TARGET_S = 0.200


def world(jobs: int, nodes: int, seed: int = 1) -> tuple[list[Need], list[str], dict[str, str], CacheIndex]:
    rnd = random.Random(seed)
    envs = {f"env:e{i}": rnd.randint(1, 5) * GB for i in range(8)}
    data = {f"obj:d{i}": rnd.randint(1, 200) * GB for i in range(40)}
    kinds = [Need({e: envs[e], d: data[d]}) for e in envs for d in data]  # shared objects, as repeated jobs have
    needs = [rnd.choice(kinds) for _ in range(jobs)]
    names = [f"gpu{i:04d}" for i in range(nodes)]
    sites = {n: "cloud" if i % 10 == 9 else "onprem" for i, n in enumerate(names)}
    held = {n: [a for a in (*envs, *data) if rnd.random() < 0.05] for n in names if sites[n] == "onprem"}
    return needs, names, sites, CacheIndex(held)


def moved(decision: object, needs: dict[tuple[int, int], Need], index: CacheIndex) -> int:
    out = 0
    for p in decision.placements:  # type: ignore[attr-defined]
        need = needs[(p.job_id, p.task)]
        out += need.total - index.warm_bytes(need).get(p.node, 0)
    return out


def median_ms(fn: object, repeat: int) -> float:
    """CPU time (process_time): on a shared 2-core box wall time swings 2x with others' load."""
    times = []
    for _ in range(repeat):
        t = time.process_time()
        fn()  # type: ignore[operator]
        times.append(time.process_time() - t)
    return statistics.median(times) * 1000


def one_pass(needs: list[Need], names: list[str], sites: dict[str, str], index: CacheIndex,
             policy: LocalityPolicy, slots: int = 10) -> tuple[float, int]:
    """The pure scorer alone over a list of free nodes (H7's first measurement)."""
    left = dict.fromkeys(names, slots)
    free = list(names)
    rank = {n: i for i, n in enumerate(free)}
    total = 0
    t = time.perf_counter()
    for need in needs:
        d = choose(need, free, {}, sites, index, policy, 0.0, rank=rank)
        if d.node is None:
            break
        total += need.total - index.warm_bytes(need).get(d.node, 0)
        left[d.node] -= 1
        if left[d.node] == 0:
            del rank[d.node]
            free.remove(d.node)
    return (time.perf_counter() - t) * 1000, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--nodes", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    needs, names, sites, index = world(args.jobs, args.nodes)
    nodes = build_nodes(random.Random(7), args.nodes, 0.5)
    running = build_running(random.Random(3), nodes)
    pending = [dataclasses.replace(t, need=needs[i]) for i, t in enumerate(build_pending(random.Random(11), args.jobs,
                                                                                            (4, 8)))]
    by_task = {(t.job_id, t.task): t.need for t in pending}
    policy = Policy(user_gpu_quota={"*": 256}, group_gpu_quota={"*": 1024}, backfill_depth=5)
    off = ClusterView(nodes=nodes, running=running, now=NOW)
    on_policy = LocalityPolicy(weight=1.0)

    def on_view() -> ClusterView:  # built per pass, as the controller does (the index memoises per pass)
        fresh = CacheIndex({})
        fresh.by_artifact = index.by_artifact
        return dataclasses.replace(off, locality=LocalityView(fresh, on_policy, {n.name: n.site for n in nodes},
                                                              free_in_of(running, NOW)))

    off_ms = median_ms(lambda: plan(off, pending, policy), args.repeat)
    on_ms = median_ms(lambda: plan(on_view(), pending, policy), args.repeat)
    d_off, d_on = plan(off, pending, policy), plan(on_view(), pending, policy)
    b_off, b_on = moved(d_off, by_task, index), moved(d_on, by_task, index)
    waits = sum(1 for w in d_on.waiting if w.reason.startswith("locality:"))
    print(f"{args.jobs} pending x {args.nodes} nodes (half full), one plan() pass, CPU ms, median of {args.repeat}")
    print(f"locality off: {off_ms:8.1f} ms, {len(d_off.placements):5d} placed, moves {b_off / GB:9.0f} GB")
    print(f"locality on:  {on_ms:8.1f} ms, {len(d_on.placements):5d} placed, moves {b_on / GB:9.0f} GB"
          f" ({waits} wait for a warm node)")
    print(f"ratio on/off: {on_ms / off_ms:.2f}x time, {b_on / max(1, b_off):.2f}x bytes "
          f"({100 * (1 - b_on / max(1, b_off)):.0f}% fewer bytes)")
    print(f"target: locality on <= {TARGET_S * 1e3:.0f} ms per pass: {'MET' if on_ms <= TARGET_S * 1e3 else 'MISSED'}")
    s_off = min(one_pass(needs, names, sites, index, LocalityPolicy(weight=0.0)) for _ in range(3))
    s_on = min(one_pass(needs, names, sites, index, LocalityPolicy(weight=1.0)) for _ in range(3))
    print(f"scorer only (choose over a free list, 10 slots/node): off {s_off[0]:.1f} ms, on {s_on[0]:.1f} ms "
          f"({s_on[0] / s_off[0]:.1f}x), {100 * (1 - s_on[1] / s_off[1]):.0f}% fewer bytes")


if __name__ == "__main__":
    main()
