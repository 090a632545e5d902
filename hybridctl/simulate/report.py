"""Strategies to compare and the tables a replay prints."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Sequence

from hybridctl.core import burst
from hybridctl.core.allowance import budget_of
from hybridctl.simulate.engine import Result, Strategy, percentile
from hybridctl.simulate.trace import SIZE_CLASSES

UNLIMITED = dict(max_nodes=100_000, max_hourly_usd=1e12, budget_usd=1e12, stop_margin_s=0.0)


def strategies(limits: burst.Limits, legacy: bool = True) -> list[Strategy]:
    """The baselines and the policy under test: every job on on-demand nodes as it arrives (no
    fleet), every job on spot (no fleet), the fleet alone, the fleet with the old fixed-timer
    policy (`legacy`), and the fleet with hybridctl's policy under `limits`."""
    rent = burst.Limits(after=0.0, allow_on_demand=True, idle_timeout=120.0, **UNLIMITED)  # type: ignore[arg-type]
    out = [
        Strategy("all on-demand", onprem=False, limits=rent, market="on-demand"),
        Strategy("spot only", onprem=False, limits=rent, market="spot"),
        Strategy("on-prem only"),
    ]
    if legacy:
        out.append(Strategy("fixed timer (old policy)", limits=replace(
            limits, wait_value_usd=0.0, count_preemption_loss=False, pace_budget=False, allow_on_demand=False,
            after=120.0, recall=False)))
    out.append(Strategy("hybridctl", limits=limits))
    return out


def fmt_wait(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def stops(count: int, lost_gpu_h: float) -> str:
    """Jobs stopped for a reason and the work they threw away: '12 (340)', '1 (0.4)', or '0'."""
    if not count:
        return "0"
    return f"{count:,} ({lost_gpu_h:,.0f})" if lost_gpu_h >= 10 else f"{count:,} ({lost_gpu_h:.1f})"


def table(results: Sequence[Result]) -> str:
    """A Markdown table: one row per strategy. Lost GPU-hours are spot reclaims' (share of cloud
    GPU-hours); priority preemptions and recalls are counted apart, each with the work it lost."""
    base = next((r for r in results if r.strategy == "all on-demand"), None)
    head = ["strategy", "p50 wait", "p95 wait", *(f"p95 {c}" for c in SIZE_CLASSES), "on-prem util", "$",
            "$ vs on-demand", "cloud GPU-h", "lost GPU-h", "killed GPU-h", "preempted (GPU-h lost)",
            "recalled (GPU-h lost)", "deadline misses", "unfinished"]
    rows = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in results:
        util = f"{r.onprem_util:.0%}" if r.onprem_util == r.onprem_util else "n/a"
        rel = f"{r.dollars / base.dollars:.0%}" if base and base.dollars else "n/a"
        lost = f"{r.lost_gpu_h:,.0f} ({r.lost_gpu_h / r.cloud_gpu_h:.1%})" if r.cloud_gpu_h else "0"
        cells = [r.strategy, fmt_wait(r.p(0.5)), fmt_wait(r.p(0.95)),
                 *(fmt_wait(percentile(r.classes[c], 0.95)) if r.classes[c] else "-" for c in SIZE_CLASSES),
                 util, f"${r.dollars:,.0f}", rel, f"{r.cloud_gpu_h:,.0f}", lost, f"{r.killed_gpu_h:,.0f}",
                 stops(r.preempted, r.preempt_lost_gpu_h), stops(r.recalls, r.recall_lost_gpu_h),
                 f"{r.deadline_misses}/{r.deadline_jobs}", str(r.unfinished)]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def money_lines(results: Sequence[Result], top: int = 4) -> list[str]:
    """Per strategy that paid for cloud nodes: where the money went, the dearest first: nodes
    while they held jobs, by the jobs' size class and market (a node's hour split evenly among its
    jobs), then what nodes cost while booting or idle. It shows where a `burst:` setting would
    move money: gangs on on-demand, say, or nodes kept idle too long."""
    out = []
    for r in results:
        if r.dollars <= 0:
            continue
        parts = sorted(((c, usd) for c, usd in r.dollars_by_class.items() if usd > 0), key=lambda p: (-p[1], p[0]))
        shown = [f"{c} ${usd:,.0f} ({usd / r.dollars:.0%})" for c, usd in parts[:top]]
        rest = sum(usd for _c, usd in parts[top:])
        if rest > 0:
            shown.append(f"other jobs ${rest:,.0f} ({rest / r.dollars:.0%})")
        idle = r.dollars - sum(usd for _c, usd in parts)
        if idle >= 0.5:
            shown.append(f"booting or idle ${idle:,.0f} ({idle / r.dollars:.0%})")
        out.append(f"{r.strategy}: cloud $ by job size and market: " + ", ".join(shown))
    return out


def owner_lines(results: Sequence[Result], limits: burst.Limits) -> list[str]:
    """Under owner budgets (`user_budget_usd`, `group_budget_usd`), per strategy: the owner that
    came nearest their budget in one period, and how many passed theirs."""
    out = []
    for r in results:
        used = []
        for owner, usd in r.owner_spend.items():
            kind, name = owner.split(" ", 1)
            cap = budget_of(limits.user_budget_usd if kind == "user" else limits.group_budget_usd, name)
            if cap is not None:
                used.append((usd / cap if cap else math.inf, owner, usd, cap))
        if not used:
            continue
        share, owner, usd, cap = max(used)
        over = sum(1 for u in used if u[0] > 1.0 + 1e-9)
        out.append(f"{r.strategy}: owner budgets: {owner} spent the most of theirs, ${usd:,.0f} of ${cap:,.0f}"
                   f" in one {limits.budget_period}; {over or 'none'} of {len(used)} passed theirs")
    return out
