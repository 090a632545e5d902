"""`hybridctl simulate`: replay a lab's history (or a generated hard week) against a fleet and a
`cloud.burst` config, and print what each strategy would have cost in waits and dollars.
Imports nothing heavy until it runs."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, MutableMapping


STRATEGIES = ("all on-demand", "spot only", "on-prem only", "fixed timer (old policy)", "hybridctl")

EPILOG = """\
TRACE is a generic CSV (header: submit,user,gpus,gpu_type,nodes,duration,checkpoint,deadline[,time_limit,priority,spot];
submit: seconds from the start or an ISO time; duration and checkpoint in seconds, checkpoint empty = never;
deadline: an ISO time or +SECONDS after submit), Slurm `sacct --parsable2 -o JobID,User,Submit,Elapsed,NNodes,AllocTRES,Timelimit`
output (detected by its '|' header), or `generate` for a seeded hard week (--seed, --days; --write-trace saves it).

FLEET.yaml:
  nodes:
    - {name: a100-, count: 4, gpus: 8, model: NVIDIA A100-SXM4-80GB, cpus: 128, memory_gb: 1024}

Example: hybridctl simulate generate --fleet fleet.yaml --config /etc/hybridctl/config.yaml
"""


def register(sub: Any, commands: MutableMapping[str, Callable[[argparse.Namespace], int]]) -> None:
    """Add `simulate` to the main parser's subparsers and its handler to `commands`."""
    s = sub.add_parser("simulate", help="replay a trace against a fleet and a burst config, per strategy",
                       description="Replay jobs (a lab's history or a generated week) through hybridctl's own"
                                   " scheduler and burst policy against a simulated cloud market; print waits,"
                                   " utilisation, dollars, lost GPU-hours and deadline misses per strategy.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("trace", metavar="TRACE", help="CSV or sacct file, or 'generate'")
    s.add_argument("--fleet", metavar="FLEET.yaml", help="on-prem nodes (default: 4 x 8 A100, 4 x 8 H100, 4 x 8 L40S)")
    s.add_argument("--config", metavar="CONFIG.yaml", help="hybridctl config whose cloud.burst is simulated"
                                                          " (default: the shipped defaults)")
    s.add_argument("--strategy", action="append", choices=STRATEGIES, help="run only these (repeatable)")
    s.add_argument("--seed", type=int, default=17, help="market (and generated trace) seed (default 17)")
    s.add_argument("--days", type=float, default=7.0, help="length of a generated trace (default 7)")
    s.add_argument("--tick", type=float, default=60.0, help="seconds between scheduler passes (default 60)")
    s.add_argument("--write-trace", metavar="CSV", help="also write the (generated) trace as CSV")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    commands["simulate"] = cmd_simulate


DEFAULT_FLEET = {"nodes": [
    {"name": "a100-", "count": 4, "gpus": 8, "model": "NVIDIA A100-SXM4-80GB", "cpus": 128, "memory_gb": 1024},
    {"name": "h100-", "count": 4, "gpus": 8, "model": "NVIDIA H100 80GB HBM3", "cpus": 192, "memory_gb": 2048},
    {"name": "l40s-", "count": 4, "gpus": 8, "model": "NVIDIA L40S", "cpus": 128, "memory_gb": 1024},
]}


def cmd_simulate(args: argparse.Namespace) -> int:
    from hybridctl import config
    from hybridctl.cloud import catalog
    from hybridctl.config import ConfigError
    from hybridctl.simulate import engine, inputs, report, trace
    from hybridctl.simulate.market import Market, MarketModel

    if args.tick <= 0 or args.days <= 0:
        raise ConfigError(f"--tick {args.tick:g} / --days {args.days:g}: must be > 0")
    settings = config.load(Path(args.config) if args.config else None, env={})
    lim = inputs.limits(settings)
    fleet = inputs.load_fleet(Path(args.fleet)) if args.fleet else inputs.parse_fleet(DEFAULT_FLEET, "default fleet")
    origin = engine.ORIGIN
    if args.trace == "generate":
        gpus = sum(g.count * g.gpus for g in fleet)
        jobs = trace.hard_week(args.seed, args.days, gpus=gpus or 96, surge_day=min(4.0, args.days - 1))
    else:
        path = Path(args.trace)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read the trace ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; expected a CSV or sacct --parsable2 output") from None
        import io

        first = text.split("\n", 1)[0]
        reader = trace.read_sacct if "|" in first else trace.read_csv
        jobs, start = reader(io.StringIO(text), str(path))
        origin = start if start is not None else origin
    if not jobs:
        raise ConfigError(f"{args.trace}: no jobs to replay")
    if args.write_trace:
        with open(args.write_trace, "w", encoding="utf-8", newline="") as f:
            trace.write_csv(jobs, f)
    cat = catalog.load(Path(settings.cloud.catalog) if settings.cloud.catalog else None)
    horizon = max(j.submit for j in jobs)
    market = Market(cat, None, MarketModel(), args.seed, horizon)
    wanted = args.strategy or list(STRATEGIES)
    results = [engine.run(jobs, fleet, s, market, tick=args.tick, origin=origin)
               for s in report.strategies(lim) if s.name in wanted]
    demand = sum(j.gpu_hours for j in jobs)
    if args.json:
        print(json.dumps({"jobs": len(jobs), "gpu_hours": round(demand, 1), "results": [r.to_dict() for r in results]},
                         indent=2))
        return 0
    cap = sum(g.count * g.gpus for g in fleet) * horizon / 3600
    print(f"{len(jobs)} jobs, {demand:,.0f} GPU-hours over {horizon / 86400:.1f} days"
          + (f" ({demand / cap:.0%} of the fleet's {cap:,.0f})" if cap else "") + f"; market seed {args.seed}")
    print()
    print(report.table(results))
    print("\nsimulated in " + ", ".join(f"{r.strategy} {r.wall_s:.1f}s" for r in results), file=sys.stderr)
    return 0
