"""A lab's hard week, replayed through `hybridctl.simulate` (the controller's own `schedule.plan`
and `burst.decide` on a simulated clock, against a market that reclaims, refuses and drifts) under
the baselines and hybridctl's burst policy.

The week (`simulate.trace.hard_week`, fixed seed): demand `--load` x the fleet's GPU-hours, three
GPU models, 1-8-GPU and 2-4-node jobs, a third never checkpointing, a deadline surge on day 5.
Fleet: 4 x 8 A100, 4 x 8 H100, 4 x 8 L40S. Ratios are against "all on-demand" (every job on
on-demand nodes as it arrives), run in the same script.

Run: .venv/bin/python bench/burst_week.py [--seed N] [--market-seeds 17,18,19] [--strategies hybridctl]
     [--days D] [--config CONFIG.yaml] [--json]
Same seeds, same numbers. One market draw is noise (unchanged code gave p95 70/120/106 min on market
seeds 17/18/19): compare means over three or more (`--market-seeds`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridctl import config  # noqa: E402
from hybridctl.cli.simulate import DEFAULT_FLEET  # noqa: E402
from hybridctl.cloud import catalog  # noqa: E402
from hybridctl.simulate import engine, inputs, report, trace  # noqa: E402
from hybridctl.simulate.engine import percentile  # noqa: E402
from hybridctl.simulate.market import Market, MarketModel  # noqa: E402


def _summary(base: engine.Result, r: engine.Result) -> dict[str, float]:
    """The issue's five figures for `r` against all-on-demand `base` (same week, same market)."""
    small = percentile(r.classes["1 GPU"], 0.95)
    return {
        "p95_min": r.p(0.95) / 60, "p95_x": r.p(0.95) / max(base.p(0.95), 1.0),
        "dollars_pct": 100 * r.dollars / base.dollars if base.dollars else 0.0,
        # Work thrown away on cloud nodes: reclaims, and recalls (stopped to come back on-prem).
        "lost_pct": 100 * (r.lost_gpu_h + r.recall_lost_gpu_h) / r.cloud_gpu_h if r.cloud_gpu_h else 0.0,
        "multi_p95_h": percentile(r.classes["multi-node"], 0.95) / 3600,
        "one_gpu_p95_min": small / 60, "eight_p95_min": percentile(r.classes["8 GPUs"], 0.95) / 60,
        "big_x": max(percentile(r.classes["8 GPUs"], 0.95), percentile(r.classes["multi-node"], 0.95)) / max(small, 1.0),
        "misses": float(r.deadline_misses), "base_misses": float(base.deadline_misses), "wall_s": r.wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=17, help="the week's seed (default 17)")
    ap.add_argument("--market-seeds", default="",
                    help="comma-separated market seeds: one run per seed and their mean (default: the week's seed)."
                         " One run is noise; compare means over 3 or more")
    ap.add_argument("--strategies", default="",
                    help="comma-separated strategy names to run (default: all; 'all on-demand' always runs)")
    ap.add_argument("--days", type=float, default=7.0)
    ap.add_argument("--load", type=float, default=1.35, help="demand over the fleet's capacity (default 1.35)")
    ap.add_argument("--config", help="hybridctl config whose cloud.burst is replayed (default: shipped defaults)")
    ap.add_argument("--tick", type=float, default=60.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    settings = config.load(Path(args.config) if args.config else None, env={})
    fleet = inputs.parse_fleet(DEFAULT_FLEET, "fleet")
    gpus = sum(g.count * g.gpus for g in fleet)
    jobs = trace.hard_week(args.seed, args.days, gpus=gpus, load=args.load, surge_day=min(4.0, args.days - 1))
    horizon = max(j.submit for j in jobs)
    seeds = [int(s) for s in args.market_seeds.split(",") if s.strip()] or [args.seed]
    wanted = {s.strip() for s in args.strategies.split(",") if s.strip()}
    chosen = [s for s in report.strategies(inputs.limits(settings))
              if not wanted or s.name in wanted or s.name == "all on-demand"]
    runs: list[list[engine.Result]] = []
    for ms in seeds:
        market = Market(catalog.load(), None, MarketModel(), ms, horizon)
        runs.append([engine.run(jobs, fleet, s, market, policy=inputs.policy(settings), tick=args.tick) for s in chosen])
    summaries = {s.name: [_summary(rs[0], rs[i]) for rs in runs] for i, s in enumerate(chosen) if i}
    if args.json:
        print(json.dumps({"week": args.seed, "market_seeds": seeds,
                          "runs": [[r.to_dict() for r in rs] for rs in runs],
                          "summary": summaries}, indent=2))
        return 0
    demand = sum(j.gpu_hours for j in jobs)
    print(f"{len(jobs)} jobs, {demand:,.0f} GPU-hours in {args.days:g} days ({demand / (gpus * horizon / 3600):.0%}"
          f" of {gpus} GPUs); {sum(j.nodes > 1 for j in jobs)} multi-node, {sum(not j.checkpoint for j in jobs)}"
          f" never checkpoint, {sum(j.deadline is not None for j in jobs)} with a deadline; week seed {args.seed}")
    for ms, rs in zip(seeds, runs):
        print(f"\nmarket seed {ms}\n")
        print(report.table(rs))
    print()
    for name, ss in summaries.items():
        if len(ss) > 1:
            for s, ms in zip(ss, seeds):
                print(f"{name} market {ms}: " + _line(s))
        mean = {k: statistics.fmean(s[k] for s in ss) for k in ss[0]}
        print(f"{name} mean of {len(ss)}: " + _line(mean))
    return 0


def _line(s: dict[str, float]) -> str:
    return (f"p95 wait {s['p95_min']:.1f} min ({s['p95_x']:.2f}x all-on-demand's), {s['dollars_pct']:.1f} % of its $,"
            f" lost {s['lost_pct']:.1f} % of cloud GPU-h, multi-node p95 {s['multi_p95_h']:.1f} h,"
            f" 8-GPU p95 {s['eight_p95_min']:.1f} min vs 1-GPU p95"
            f" {s['one_gpu_p95_min']:.1f} min (big-job {s['big_x']:.1f}x), deadline misses {s['misses']:.1f}"
            f" vs {s['base_misses']:.1f}; {s['wall_s']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
