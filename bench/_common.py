"""Helpers shared by the benchmark scripts in this folder (stdlib only).

The scripts run as `.venv/bin/python bench/X.py`, so bench/ is on sys.path and they import this
module as `from _common import ...`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import psutil

T0 = time.perf_counter()
"""When the benchmark started (this module is imported with the script's own imports)."""


def say(msg: str) -> None:
    """A progress line on stderr, stamped with the seconds since T0."""
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


class BenchError(RuntimeError):
    pass


def wait_for(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `pred` every `interval` s until it returns something truthy, and return that; raise
    BenchError after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def cpu_s(p: psutil.Process) -> float:
    """User + system CPU seconds of a psutil.Process."""
    t = p.cpu_times()
    return t.user + t.system


# ---- the results table --------------------------------------------------------------------------


@dataclass
class Row:
    group: str
    metric: str
    hyb: str
    ref: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


@dataclass
class Results:
    rows: list[Row] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *a: Any, **kw: Any) -> None:
        self.rows.append(Row(*a, **kw))

    def write_json(self, path: str, elapsed: float) -> None:
        """The raw figures, the rows, the errors and the wall time, as JSON."""
        self.raw["rows"] = [r.__dict__ for r in self.rows]
        self.raw["errors"] = self.errors
        self.raw["elapsed_s"] = elapsed
        Path(path).write_text(json.dumps(self.raw, indent=1, default=str))


def fmt_x(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}x"


def verdict(value: float, target: float, lower_is_better: bool) -> str:
    ok = value <= target if lower_is_better else value >= target
    return "ok" if ok else "MISS"


def print_table(R: Results, bench: str, quick: bool, slurm: str, lower_is_better: str, elapsed: float) -> None:
    """The rows by group, then the notes, the errors and the wall time. `bench` names the benchmark
    in the title, `slurm` is the Slurm status shown there, and `lower_is_better` lists the kinds of
    figure whose ratio is better low."""
    head = ("grp", "metric", "hybridctl", "reference", "ratio", "target", "")
    ordered = sorted(R.rows, key=lambda r: r.group)  # stable: keeps each group's own order
    rows = [head] + [(r.group, r.metric, r.hyb, r.ref, r.ratio, r.target, r.verdict) for r in ordered]
    w = [max(len(str(row[i])) for row in rows) for i in range(len(head))]
    print()
    print(f"hybridctl {bench} benchmark  ({time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cpus, "
          f"python {sys.version.split()[0]}, {'quick' if quick else 'full'} run, Slurm: {slurm})")
    print(f"ratio = hybridctl / reference, both measured in this run ({lower_is_better}: lower is better;"
          " jobs/s: higher is better)")
    for i, row in enumerate(rows):
        print("  ".join(str(c).ljust(w[j]) for j, c in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * x for x in w))
    for note in R.notes:
        print()
        print(note.rstrip())
    for e in R.errors:
        print(f"ERROR: {e}")
    print(f"\ntotal wall time {elapsed:.0f}s")
