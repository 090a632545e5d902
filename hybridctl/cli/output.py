"""How the CLI prints: aligned tables readable at 80 columns, durations, and `--json`."""

from __future__ import annotations

import json
import sys
from typing import Any, Iterable, Sequence

from hybridctl.fmt import duration, gpus_text, job_label, reclaim_rate, when  # noqa: F401  (re-exported: shared with the TUI)


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, max_last: int = 0) -> str:
    """Left-aligned columns separated by two spaces; the last column may be truncated to `max_last`."""
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    if max_last:
        for r in rows:
            if len(r[-1]) > max_last:
                r[-1] = r[-1][: max_last - 1] + "…"
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    return "\n".join(lines)


def containment_text(containment: str | None) -> str:
    """The CGROUP column of `nodes`: v1, v2 or none (jobs stopped by process group only; a
    setsid child escapes), '-' before the agent said; `nodes --json` has the agent's full text."""
    if not containment:
        return "-"
    if containment.startswith("cgroup-"):
        return containment.split()[0].removeprefix("cgroup-")
    return "none"


def collapse_arrays(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pending tasks of one array that wait for the same reason become one row, '42_[3-1000]'."""
    out: list[dict[str, Any]] = []
    for r in rows:
        prev = out[-1] if out else None
        if (
            prev is not None and r["array"] and r["state"] == "PENDING" and prev["state"] == "PENDING"
            and prev["job_id"] == r["job_id"] and prev["reason"] == r["reason"]
        ):
            prev["_last"] = r["task"]
            prev["_count"] = prev.get("_count", 1) + 1
            continue
        out.append(dict(r))
    return out


def label(r: dict[str, Any]) -> str:
    """`fmt.job_label`, or '42_[3-1000]' for a row that `collapse_arrays` folded."""
    if r["array"] and "_last" in r:
        return f"{r['job_id']}_[{r['task']}-{r['_last']}]"
    return job_label(r)


def recovery_text(task: dict[str, Any], max_restarts: int) -> str:
    """'recovered 2 times (preemption), restarts 0/2': how one task's requeues were charged.
    Recoveries (preemption, lost nodes, recover_on_exit_codes) never use up max_restarts."""
    n = task.get("recoveries") or 0
    causes: dict[str, int] = task.get("recovery_causes") or {}
    if n:
        order = sorted(causes.items(), key=lambda kv: (-kv[1], kv[0]))
        by = ", ".join(k if len(order) == 1 else f"{c} {k}" for k, c in order)
        head = f"recovered {n} time{'' if n == 1 else 's'}" + (f" ({by})" if by else "")
    else:
        head = "not recovered"
    return f"{head}, restarts {task.get('restarts') or 0}/{max_restarts}"
