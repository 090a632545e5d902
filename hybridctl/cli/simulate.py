"""`hybridctl simulate`: replay a lab's history (or a generated hard week) against a fleet and a
`cloud.burst` config, and print what each strategy would have cost in waits and dollars.
Imports nothing heavy until it runs."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, MutableMapping, Sequence


STRATEGIES = ("all on-demand", "spot only", "on-prem only", "fixed timer (old policy)", "hybridctl")

EPILOG = """\
TRACE is a generic CSV (header: submit,user,gpus,gpu_type,nodes,duration,checkpoint,deadline[,group,time_limit,
priority,spot,preemptible]; submit: seconds from the start or an ISO time; duration and checkpoint in seconds,
checkpoint empty = never; deadline: an ISO time or +SECONDS after submit; group: what group_budget_usd charges,
empty = lab; preemptible: yes/no), Slurm `sacct --parsable2 -o JobID,User,Account,Submit,Elapsed,NNodes,AllocTRES,Timelimit`
output (detected by its '|' header; the group is the Account column, else Group), or `generate` for a seeded hard week
(--seed, --days; --write-trace saves it).

Public GPU-cluster traces (--format): philly (cluster_job_log JSON), pai (Alibaba PAI 2023
openb_pod_list_*.csv or the 2020 pai_task_table), helios (cluster_log.csv). They record no time
limits, checkpoints or fleet GPU models: --limit-factor, --checkpoint and --gpu-map assume them,
--window-days takes the busiest days and --load packs arrivals; the summary prints every assumption.
  hybridctl simulate openb_pod_list_gpuspec33.csv --format pai --window-days 7 --limit-factor 2

Limits: at most 200,000 scheduler passes ((span + 3 days to drain) / --tick), 200,000 jobs, a generated
trace of 10,000 GPU-days, and --max-wall seconds of replay (default 3600); past them, exit 2.

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
                                   " utilisation, dollars, lost GPU-hours, preemptions, recalls and deadline"
                                   " misses per strategy.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("trace", metavar="TRACE", help="CSV or sacct file, a public trace (--format), or 'generate'")
    s.add_argument("--fleet", metavar="FLEET.yaml", help="on-prem nodes (default: 4 x 8 A100, 4 x 8 H100, 4 x 8 L40S)")
    s.add_argument("--config", metavar="CONFIG.yaml", help="hybridctl config whose cloud.burst is simulated"
                                                          " (default: the shipped defaults)")
    s.add_argument("--strategy", action="append", choices=STRATEGIES, help="run only these (repeatable)")
    s.add_argument("--seed", type=int, default=17, help="market (and generated trace) seed (default 17)")
    s.add_argument("--days", type=float, help="length of a generated trace (default 7)")
    s.add_argument("--tick", type=float, default=60.0, help="seconds between scheduler passes (default 60)")
    s.add_argument("--max-wall", type=float, default=3600.0, metavar="SECONDS",
                   help="stop (exit 2) if the replays take longer than this (default 3600)")
    s.add_argument("--write-trace", metavar="CSV", help="also write the replayed jobs as a generic CSV")
    s.add_argument("--json", action="store_true", help="print the results as JSON")
    p = s.add_argument_group("public traces", "what the trace does not record, assumed (printed in the summary)")
    p.add_argument("--format", choices=("auto", "csv", "sacct", *PUBLIC_FORMATS), default="auto",
                   help="TRACE's format (default: sacct if its header has '|', else the generic CSV)")
    p.add_argument("--gpu-map", metavar="T=M,...", help="trace GPU types to fleet models, '*' = the rest, M 'any' ="
                                                       " no constraint, 'keep' = as named (default '*=any')")
    p.add_argument("--limit-factor", metavar="F", help="time limit = F x each job's run, or 'none' (default none)")
    p.add_argument("--checkpoint", metavar="S", help="every job checkpoints every S seconds, or 'never' (default)")
    p.add_argument("--window-days", metavar="D", help="replay only the busiest D days (default: all)")
    p.add_argument("--load", metavar="L", help="arrivals L x as dense: submit times / L (default 1)")
    commands["simulate"] = cmd_simulate


PUBLIC_FORMATS = ("philly", "pai", "helios")


def _error(message: str) -> Exception:
    """A ConfigError (exit 2), imported only when one is raised: this module stays stdlib-only."""
    from hybridctl.config import ConfigError

    return ConfigError(message)


MAX_PASSES = 200_000
"""Scheduler passes one replay may take: (the trace's span + the drain) / --tick."""
DRAIN_S = 3 * 86400.0
"""How long a replay runs on after the last arrival (engine.run's drain_s)."""
MAX_DAYS = 366.0
MAX_JOBS = 200_000
MAX_GPU_DAYS = 10_000
"""Fleet GPUs x --days of a generated trace."""
MAX_NODES = 10_000
MAX_NODE_GPUS = 64
MAX_TRACE_BYTES = 1 << 30


def _number(flag: str, value: float | str, lo: float, hi: float, accepted: str, *, low_open: bool = False) -> float:
    """`value` as a finite number in [lo, hi] (or (lo, hi]), else a ConfigError naming the flag."""
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    ok = math.isfinite(x) and (x > lo if low_open else x >= lo) and x <= hi
    if not ok:
        shown = f"{value:g}" if isinstance(value, float) else value
        raise _error(f"{flag} {shown}: accepted: {accepted}")
    return x


def check_flags(args: argparse.Namespace) -> None:
    """Every numeric flag finite and in range, before anything is read or run."""
    _number("--tick", args.tick, 0.0, 86400.0, "seconds between passes, > 0 and at most 86400", low_open=True)
    if args.days is not None:
        _number("--days", args.days, 0.0, MAX_DAYS, f"days of a generated trace, > 0 and at most {MAX_DAYS:g}",
                low_open=True)
        if args.trace != "generate":
            raise _error(f"--days {args.days:g}: only with TRACE 'generate' (a trace file has its own length;"
                         " --window-days takes part of a public trace)")
    else:
        args.days = 7.0
    _number("--max-wall", args.max_wall, 1.0, 86400.0, "seconds from 1 to 86400")
    if not 0 <= args.seed < 2**63:
        raise _error(f"--seed {args.seed}: accepted: an integer from 0 to 2^63-1")
    public = args.format in PUBLIC_FORMATS
    for flag, val in (("--gpu-map", args.gpu_map), ("--limit-factor", args.limit_factor),
                      ("--checkpoint", args.checkpoint), ("--window-days", args.window_days), ("--load", args.load)):
        if val is not None and not public:
            raise _error(f"{flag} {val}: only with --format {'|'.join(PUBLIC_FORMATS)} (a CSV states it per job)")


def assumptions(args: argparse.Namespace) -> Any:
    from hybridctl.simulate import public

    lf = args.limit_factor
    limit = None if lf is None or lf.strip().lower() == "none" else _number(
        "--limit-factor", lf, 1.0, 100.0, "a factor from 1 to 100 (time limit = factor x the recorded run), or none")
    ck = args.checkpoint
    ckpt = 0.0 if ck is None or ck.strip().lower() == "never" else _number(
        "--checkpoint", ck, 60.0, 30 * 86400.0, "seconds between checkpoints from 60 to 2592000, or never")
    wd = args.window_days
    window = None if wd is None or wd.strip().lower() == "all" else _number(
        "--window-days", wd, 0.0, MAX_DAYS, f"days, > 0 and at most {MAX_DAYS:g}, or all", low_open=True)
    load = 1.0 if args.load is None else _number("--load", args.load, 0.01, 100.0, "a factor from 0.01 to 100")
    gmap = public.parse_gpu_map(args.gpu_map) if args.gpu_map else public.Assumptions().gpu_map
    return public.Assumptions(gmap, limit, ckpt, window, load)


def check_fleet(fleet: Sequence[Any], source: str) -> None:
    total = 0
    for i, g in enumerate(fleet):
        where = f"{source}: nodes[{i}]"
        if not 0 <= g.count <= MAX_NODES:
            raise _error(f"{where}.count: {g.count}; accepted: 0 to {MAX_NODES}")
        if not 0 <= g.gpus <= MAX_NODE_GPUS:
            raise _error(f"{where}.gpus: {g.gpus}; accepted: 0 to {MAX_NODE_GPUS} per node")
        if not (math.isfinite(g.cpus) and 0 < g.cpus <= 100_000):
            raise _error(f"{where}.cpus: {g.cpus}; accepted: a number > 0 and at most 100000")
        if not 0 < g.memory_mb <= 1 << 40:
            raise _error(f"{where}.memory_gb: {g.memory_mb / 1024:g}; accepted: > 0 and at most 1073741824")
        total += g.count
    if total > MAX_NODES:
        raise _error(f"{source}: {total} nodes in all; accepted: at most {MAX_NODES}")


def check_size(jobs: Sequence[Any], tick: float, what: str) -> None:
    """Refuse a replay that would not finish: too many jobs, or too many scheduler passes."""
    if len(jobs) > MAX_JOBS:
        raise _error(f"{what}: {len(jobs):,} jobs; accepted: at most {MAX_JOBS:,} (--window-days takes fewer"
                          " days of a public trace)")
    span = max(j.submit for j in jobs)
    passes = (span + DRAIN_S) / tick
    if passes > MAX_PASSES:
        need = (span + DRAIN_S) / MAX_PASSES
        raise _error(f"--tick {tick:g}: {what} spans {span / 86400:,.1f} days (+{DRAIN_S / 86400:g} to drain):"
                          f" {passes:,.0f} scheduler passes; accepted: at most {MAX_PASSES:,}, so --tick"
                          f" {math.ceil(need):g} or more" + (" or a shorter --days" if what == "generate" else
                                                            " or fewer days (--window-days for a public trace)"))


@contextlib.contextmanager
def wall_limit(seconds: float) -> Iterator[None]:
    """Raise a ConfigError naming --max-wall if the body runs longer than `seconds` (a real-time
    timer; only on the main thread, where Python delivers signals)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expired(signum: int, frame: object) -> None:
        raise _error(f"--max-wall {seconds:g}: the replays ran longer than that; accepted: a trace that replays in"
                     " time (fewer days, --window-days, a larger --tick, fewer --strategy) or a larger --max-wall")

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def small_file(flag: str, name: str) -> None:
    """A config or fleet file must be a regular file of at most 16 MiB (a device would never end)."""
    import os
    import stat

    try:
        st = os.stat(name)
    except OSError:
        return  # the reader says why it cannot read it
    if not stat.S_ISREG(st.st_mode) or st.st_size > 16 << 20:
        raise _error(f"{flag} {name}: not a regular file of at most 16 MiB; accepted: a YAML file")


def read_trace(path: Path) -> str:
    """The text of a regular file of at most MAX_TRACE_BYTES (not a device or a FIFO that never ends)."""
    import os
    import stat

    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise _error(f"{path}: not a regular file; accepted: a trace file")
        if st.st_size > MAX_TRACE_BYTES:
            raise _error(f"{path}: {st.st_size:,} bytes; accepted: at most {MAX_TRACE_BYTES:,} (cut the trace to the"
                         " days to replay)")
        data = f.read(MAX_TRACE_BYTES + 1)
    if len(data) > MAX_TRACE_BYTES:
        raise _error(f"{path}: grew past {MAX_TRACE_BYTES:,} bytes while read; accepted: at most that")
    return data.decode("utf-8")


def write_trace(jobs: Sequence[Any], target: str) -> None:
    """The replayed jobs as CSV: written whole to a temporary file beside `target`, then renamed."""
    import os
    import tempfile

    from hybridctl.simulate import trace

    path = Path(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise _error(f"--write-trace {target}: cannot write there ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            trace.write_csv(jobs, f)
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, path)
    except OSError as exc:
        os.unlink(tmp)
        raise _error(f"--write-trace {target}: cannot write there ({exc.strerror})") from None
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    import os

    m = os.umask(0)
    os.umask(m)
    return m


DEFAULT_FLEET = {"nodes": [
    {"name": "a100-", "count": 4, "gpus": 8, "model": "NVIDIA A100-SXM4-80GB", "cpus": 128, "memory_gb": 1024},
    {"name": "h100-", "count": 4, "gpus": 8, "model": "NVIDIA H100 80GB HBM3", "cpus": 192, "memory_gb": 2048},
    {"name": "l40s-", "count": 4, "gpus": 8, "model": "NVIDIA L40S", "cpus": 128, "memory_gb": 1024},
]}


def cmd_simulate(args: argparse.Namespace) -> int:
    from hybridctl import config
    from hybridctl.cloud import catalog
    from hybridctl.simulate import engine, inputs, report, trace
    from hybridctl.simulate.market import Market, MarketModel

    check_flags(args)
    assume = assumptions(args) if args.format in PUBLIC_FORMATS else None
    for flag, name in (("--config", args.config), ("--fleet", args.fleet)):
        if name:
            small_file(flag, name)
    settings = config.load(Path(args.config) if args.config else None, env={})
    lim = inputs.limits(settings)
    if args.fleet:
        fleet = inputs.load_fleet(Path(args.fleet))
        check_fleet(fleet, args.fleet)
    else:
        fleet = inputs.parse_fleet(DEFAULT_FLEET, "default fleet")
    origin = engine.ORIGIN
    converted = None
    if args.trace == "generate":
        if args.format != "auto":
            raise _error(f"--format {args.format}: 'generate' makes its own trace; give a TRACE file instead")
        gpus = sum(g.count * g.gpus for g in fleet)
        if (gpus or 96) * args.days > MAX_GPU_DAYS:
            # A generated week has ~3.6 jobs per GPU-day: keep it under MAX_JOBS before making it.
            raise _error(f"--days {args.days:g}: a generated trace for {gpus or 96:,} GPUs over {args.days:g} days"
                         f" would hold ~{3.6 * (gpus or 96) * args.days:,.0f} jobs; accepted: GPUs x days at most"
                         f" {MAX_GPU_DAYS:,} (fewer --days or a smaller --fleet)")
        check_size([trace.TraceJob(0, "", args.days * 86400.0, 1, None, 1.0)], args.tick, "generate")
        jobs = trace.hard_week(args.seed, args.days, gpus=gpus or 96, surge_day=min(4.0, args.days - 1))
    else:
        path = Path(args.trace)
        try:
            text = read_trace(path)
        except OSError as exc:
            raise _error(f"{path}: cannot read the trace ({exc.strerror})") from None
        except UnicodeDecodeError:
            raise _error(f"{path}: not UTF-8 text; expected a CSV, sacct --parsable2 output or a public"
                              " trace (--format)") from None
        if assume is not None:
            from hybridctl.simulate import public

            converted = public.convert(args.format, text, str(path), assume)
            jobs = converted.jobs
        else:
            import io

            first = text.split("\n", 1)[0]
            sacct = args.format == "sacct" or (args.format == "auto" and "|" in first)
            reader = trace.read_sacct if sacct else trace.read_csv
            jobs, start = reader(io.StringIO(text), str(path))
            origin = start if start is not None else origin
    if not jobs:
        raise _error(f"{args.trace}: no jobs to replay" + (f" ({converted.describe()})" if converted else ""))
    check_size(jobs, args.tick, args.trace)
    if args.write_trace:
        write_trace(jobs, args.write_trace)
    cat = catalog.load(Path(settings.cloud.catalog) if settings.cloud.catalog else None)
    horizon = max(j.submit for j in jobs)
    market = Market(cat, None, MarketModel(), args.seed, horizon)
    wanted = args.strategy or list(STRATEGIES)
    with wall_limit(args.max_wall):
        results = [engine.run(jobs, fleet, s, market, policy=inputs.policy(settings), tick=args.tick, origin=origin,
                              drain_s=DRAIN_S)
                   for s in report.strategies(lim) if s.name in wanted]
    demand = sum(j.gpu_hours for j in jobs)
    if args.json:
        out: dict[str, Any] = {"jobs": len(jobs), "gpu_hours": round(demand, 1)}
        if converted is not None and assume is not None:
            out["source"] = {"format": converted.fmt, "variant": converted.variant, "rows": converted.rows,
                             "skipped": converted.skipped, "window_s": converted.window,
                             "assumptions": assume.to_dict()}
        out["results"] = [r.to_dict() for r in results]
        print(json.dumps(out, indent=2))
        return 0
    if converted is not None and assume is not None:
        print(f"{args.trace}: {converted.describe()}")
        print("assumed (the trace does not record it):")
        for line in assume.describe():
            print(f"  {line}")
    cap = sum(g.count * g.gpus for g in fleet) * horizon / 3600
    print(f"{len(jobs)} jobs, {demand:,.0f} GPU-hours over {horizon / 86400:.1f} days"
          + (f" ({demand / cap:.0%} of the fleet's {cap:,.0f})" if cap else "") + f"; market seed {args.seed}")
    print()
    print(report.table(results))
    for line in report.money_lines(results):
        print(line)
    for line in report.owner_lines(results, lim):
        print(line)
    print("\nsimulated in " + ", ".join(f"{r.strategy} {r.wall_s:.1f}s" for r in results), file=sys.stderr)
    return 0
