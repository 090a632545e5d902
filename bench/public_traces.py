"""A public GPU-cluster trace, converted (`hybridctl.simulate.public`) and replayed through
`hybridctl.simulate` (the controller's own `schedule.plan` and `burst.decide` against a market that
reclaims, refuses and drifts), twice: with every job's time limit at `--limit-factor` x its
recorded run (default 2), and with no limits (what the traces record). Ratios are against
"all on-demand" (every job on on-demand nodes as it arrives), run in the same script.

The trace is not part of the project: give its path. E.g. Alibaba PAI 2023
(alibaba/clusterdata cluster-trace-gpu-v2023/csv/openb_pod_list_gpuspec33.csv, no licence, so
never committed), Philly's cluster_job_log, Helios' cluster_log.csv (CC BY 4.0).

Run: .venv/bin/python bench/public_traces.py PATH [--format pai] [--window-days 7] [--load 1]
     [--seeds 17,18,19] [--fleet FLEET.yaml] [--config CONFIG.yaml] [--json]
Same seeds, same numbers. Fleet: 4 x 8 A100, 4 x 8 H100, 4 x 8 L40S (hybridctl simulate's default).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridctl import config  # noqa: E402
from hybridctl.cli.simulate import DEFAULT_FLEET, DRAIN_S  # noqa: E402
from hybridctl.cloud import catalog  # noqa: E402
from hybridctl.simulate import engine, inputs, public, report  # noqa: E402
from hybridctl.simulate.market import Market, MarketModel  # noqa: E402

WANTED = ("all on-demand", "hybridctl")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--format", choices=public.FORMATS, default="pai")
    ap.add_argument("--window-days", type=float, default=7.0)
    ap.add_argument("--load", type=float, default=1.0, help="arrivals this many times as dense (default 1)")
    ap.add_argument("--limit-factor", type=float, default=2.0)
    ap.add_argument("--seeds", default="17", help="market seeds, comma-separated (default 17)")
    ap.add_argument("--fleet", help="FLEET.yaml of on-prem nodes (default: hybridctl simulate's, 96 GPUs)")
    ap.add_argument("--config", help="hybridctl config whose cloud.burst is replayed (default: shipped defaults)")
    ap.add_argument("--tick", type=float, default=60.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    settings = config.load(Path(args.config) if args.config else None, env={})
    fleet = inputs.load_fleet(Path(args.fleet)) if args.fleet else inputs.parse_fleet(DEFAULT_FLEET, "fleet")
    gpus = sum(g.count * g.gpus for g in fleet)
    text = Path(args.path).read_text(encoding="utf-8")
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for factor in (args.limit_factor, None):
        assume = public.Assumptions(limit_factor=factor, window_days=args.window_days, load=args.load)
        conv = public.convert(args.format, text, args.path, assume)
        jobs = conv.jobs
        horizon = max(j.submit for j in jobs)
        demand = sum(j.gpu_hours for j in jobs)
        if not args.json:
            print(f"{args.path}: {conv.describe()}")
            print("  " + "\n  ".join(assume.describe()))
            print(f"{len(jobs)} jobs, {demand:,.0f} GPU-hours submitted over {horizon / 86400:.1f} days"
                  f" ({demand / (gpus * horizon / 3600):.0%} of {gpus} GPUs' hours)\n")
        for seed in seeds:
            market = Market(catalog.load(), None, MarketModel(), seed, horizon)
            results = [engine.run(jobs, fleet, s, market, policy=inputs.policy(settings), tick=args.tick, drain_s=DRAIN_S)
                       for s in report.strategies(inputs.limits(settings), legacy=False) if s.name in WANTED]
            base, hyb = results[0], results[-1]
            row = {"limit_factor": factor, "seed": seed, "jobs": len(jobs), "gpu_hours": round(demand),
                   "p95_wait_s": hyb.p(0.95), "p95_wait_on_demand_s": base.p(0.95),
                   "p95_ratio": hyb.p(0.95) / max(base.p(0.95), 1.0),
                   "dollars": round(hyb.dollars), "dollars_on_demand": round(base.dollars),
                   "dollars_share": hyb.dollars / base.dollars if base.dollars else None,
                   "cloud_gpu_h": round(hyb.cloud_gpu_h, 1), "lost_gpu_h": round(hyb.lost_gpu_h, 1),
                   "lost_share": hyb.lost_gpu_h / hyb.cloud_gpu_h if hyb.cloud_gpu_h else 0.0,
                   "unfinished": hyb.unfinished, "unfinished_on_demand": base.unfinished,
                   "wall_s": round(sum(r.wall_s for r in results), 1)}
            rows.append(row)
            if not args.json:
                print(report.table(results))
                print(f"limits {'%gx the run' % factor if factor else 'none'}, seed {seed}: hybridctl p95 wait"
                      f" {report.fmt_wait(row['p95_wait_s'])} vs {report.fmt_wait(row['p95_wait_on_demand_s'])}"
                      f" all-on-demand ({row['p95_ratio']:.2f}x), ${row['dollars']:,} = "
                      f"{row['dollars_share']:.0%} of its ${row['dollars_on_demand']:,}, cloud GPU-h lost"
                      f" {row['lost_gpu_h']:,} of {row['cloud_gpu_h']:,} ({row['lost_share']:.1%});"
                      f" simulated in {row['wall_s']} s\n")
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
