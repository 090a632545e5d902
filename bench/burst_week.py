"""A lab's hard week, replayed through `hybridctl.simulate` (the controller's own `schedule.plan`
and `burst.decide` on a simulated clock, against a market that reclaims, refuses and drifts) under
the baselines and hybridctl's burst policy.

The week (`simulate.trace.hard_week`, fixed seed): demand `--load` x the fleet's GPU-hours, three
GPU models, 1-8-GPU and 2-4-node jobs, a third never checkpointing, a deadline surge on day 5.
Fleet: 4 x 8 A100, 4 x 8 H100, 4 x 8 L40S. Ratios are against "all on-demand" (every job on
on-demand nodes as it arrives), run in the same script.

Run: .venv/bin/python bench/burst_week.py [--seed N] [--days D] [--config CONFIG.yaml] [--json]
Same seed, same numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridctl import config  # noqa: E402
from hybridctl.cli.simulate import DEFAULT_FLEET  # noqa: E402
from hybridctl.cloud import catalog  # noqa: E402
from hybridctl.simulate import engine, inputs, report, trace  # noqa: E402
from hybridctl.simulate.engine import percentile  # noqa: E402
from hybridctl.simulate.market import Market, MarketModel  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=17)
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
    market = Market(catalog.load(), None, MarketModel(), args.seed, horizon)
    results = [engine.run(jobs, fleet, s, market, tick=args.tick) for s in report.strategies(inputs.limits(settings))]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    demand = sum(j.gpu_hours for j in jobs)
    print(f"{len(jobs)} jobs, {demand:,.0f} GPU-hours in {args.days:g} days ({demand / (gpus * horizon / 3600):.0%}"
          f" of {gpus} GPUs); {sum(j.nodes > 1 for j in jobs)} multi-node, {sum(not j.checkpoint for j in jobs)}"
          f" never checkpoint, {sum(j.deadline is not None for j in jobs)} with a deadline; seed {args.seed}")
    print()
    print(report.table(results))
    base = results[0]
    for r in results[1:]:
        if r.dollars:
            small = percentile(r.classes["1 GPU"], 0.95)
            big = max(percentile(r.classes["8 GPUs"], 0.95), percentile(r.classes["multi-node"], 0.95))
            print(f"{r.strategy}: p95 wait {r.p(0.95) / max(base.p(0.95), 1):.2f}x all-on-demand's, {r.dollars / base.dollars:.0%}"
                  f" of its $, lost {r.lost_gpu_h / max(r.cloud_gpu_h, 1e-9):.1%} of cloud GPU-h, big-job p95"
                  f" {big / max(small, 1):.1f}x the 1-GPU p95, deadline misses {r.deadline_misses} vs {base.deadline_misses};"
                  f" simulated in {r.wall_s:.1f} s ({r.decide_s:.1f} s in burst.decide)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
