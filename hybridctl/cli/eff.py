"""`hybridctl eff JOB [--json]`: a job's efficiency, like Slurm's `seff` with GPUs: utilisation
mean/p95 per allocated GPU, GPU memory peak vs capacity, SM activity, CPU efficiency, peak RSS and
GPU-hours held vs used. Stdlib only (the `submit` path's rule): the controller computes it."""

from __future__ import annotations

import argparse
from typing import Any, Callable, MutableMapping


def register(sub: Any, commands: MutableMapping[str, Callable[[argparse.Namespace], int]]) -> None:
    """Add `eff` to the main parser's subparsers and its handler to `commands`."""
    e = sub.add_parser("eff", help="a job's efficiency: GPU use per GPU, CPU and memory, GPU-hours held vs used",
                       description="Efficiency of a running or finished job (its latest attempt), from the "
                                   "controller's telemetry history; kept after the job ends.")
    e.add_argument("job", metavar="JOB", help="job id, or ID_TASK for an array task")
    e.add_argument("--json", action="store_true", help="print the record as JSON")
    commands["eff"] = cmd_eff


def _pct(value: Any) -> str:
    return "-" if value is None else f"{value:.0f}%"


def _mib(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value / 1024:.1f}G" if value >= 1024 else f"{value:.0f}M"


def render(eff: dict[str, Any]) -> str:
    """The text form (also used by tests without a controller)."""
    from hybridctl.cli import output as o

    hours = f"{eff['gpu_hours_used']:.2f} of {eff['gpu_hours_held']:.2f} GPU-hours used"
    if eff["gpu_hours_held"]:
        hours += f" ({100 * eff['gpu_hours_used'] / eff['gpu_hours_held']:.0f}%)"
    cpu = "-" if eff["cpu_efficiency"] is None else f"{100 * eff['cpu_efficiency']:.0f}%"
    cpu_line = f"  CPU        {cpu} of {eff['cpus']:g} CPUs"
    if eff["cpu_seconds"] is not None:
        cpu_line += f" ({eff['cpu_seconds'] / 3600:.2f} CPU-hours)"
    mem = f"  memory     peak RSS {_mib(eff['peak_rss_mb'])}"
    if eff.get("memory_mb"):
        mem += f" of {_mib(eff['memory_mb'])} requested"
    lines = [f"Job {eff['job']}  {eff['state']}  wall {eff['wall_s'] / 3600:.2f} h",
             f"  GPUs       mean {_pct(eff['util_mean'])}; {hours}", cpu_line, mem]
    if eff.get("idle_s") is not None:
        lines.append(f"  IDLE       every GPU under the idle threshold for {eff['idle_s'] / 60:.0f} min")
    if eff.get("metrics"):
        lines.append("  logged     " + "  ".join(f"{k}={v:g}" for k, v in sorted(eff["metrics"].items())))
    rows = [[g["node"], g["index"], _pct(g["util_mean"]), _pct(g["util_p95"]), _pct(g["sm_mean"]),
             f"{_mib(g['mem_peak_mb'])} / {_mib(g['mem_total_mb'])}", g["samples"]] for g in eff["gpus"]]
    if rows:
        lines += ["", o.table(["NODE", "GPU", "UTIL MEAN", "UTIL P95", "SM MEAN", "MEM PEAK / TOTAL", "SAMPLES"], rows)]
    return "\n".join(lines)


def cmd_eff(args: argparse.Namespace) -> int:
    from hybridctl.cli.common import client as _client
    from hybridctl.cli.output import emit_json

    with _client() as c:
        eff = c.call("eff", job=args.job)
    if args.json:
        emit_json(eff)
    else:
        print(render(eff))
    return 0
