"""The burst policy's limits as the config sets them, and the UTC day cloud spend is booked on:
shared by the autoscaler (which acts on them) and the `cloud status` request (which reports them);
and what the policy learns from history: how much of their time limits runs use (`limit_use`),
how long runs without a limit go (`learnt`)."""

from __future__ import annotations

import time
from typing import Protocol, Sequence

from hybridctl.config import ConfigError, Settings
from hybridctl.core import burst
from hybridctl.core.forecast import RUN_LENGTHS_RECENT, length_sample
from hybridctl.core.forecast import limit_use as median_use

LIMIT_USE_RUNS = 200
"""How many of the latest time-limited runs to succeed `limit_use` reads."""


def limits(settings: Settings) -> burst.Limits:
    """The policy's limits from `cloud.burst` (ConfigError names a bad key)."""
    b = settings.cloud.burst
    if b.budget_period not in burst.PERIODS:
        raise ConfigError(f"cloud.burst.budget_period: {b.budget_period!r}; accepted: {', '.join(burst.PERIODS)}")
    for key in ("after", "idle_timeout", "max_hourly_usd", "budget_usd", "backoff", "wait_value_usd",
                "max_spot_loss", "reclaim_per_h", "pace_ahead", "deadline_reserve"):
        if getattr(b, key) < 0:
            raise ConfigError(f"cloud.burst.{key}: must be >= 0, got {getattr(b, key)}")
    return burst.Limits(
        after=b.after, idle_timeout=b.idle_timeout, allow_on_demand=b.allow_on_demand, max_nodes=b.max_nodes,
        max_hourly_usd=b.max_hourly_usd, budget_usd=b.budget_usd, budget_period=b.budget_period,
        spread_penalty=b.spread_penalty, count_freeing_within=b.count_freeing_within,
        budget_reserve_h=b.budget_reserve_h, stop_margin_s=max(60.0, 3 * settings.cloud.poll_interval),
        wait_value_usd=b.wait_value_usd, count_preemption_loss=b.count_preemption_loss,
        max_spot_loss=b.max_spot_loss, reclaim_per_h=b.reclaim_per_h, pace_budget=b.pace_budget,
        pace_ahead=b.pace_ahead, deadline_reserve=b.deadline_reserve, default_runtime_s=b.unknown_runtime,
        recall=b.recall, recall_min_s=b.recall_min, recall_max_loss=b.recall_max_loss, lindy=b.lindy,
        unknown_risk_s=b.unknown_risk, learn_unknown=b.learn_unknown,
        user_budget_usd=b.user_budget_usd, group_budget_usd=b.group_budget_usd,
    )


def utc_day(t: float) -> str:
    """The UTC date of the wall time `t`, as the spend rows key it ('2026-12-05')."""
    return time.strftime("%Y-%m-%d", time.gmtime(t))


class _History(Protocol):
    def finished_runs(self, since: float, limit: int = ...) -> Sequence[object]: ...
    def time_limits(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], float]: ...


def limit_use(store: _History, now: float, window_s: float = 30 * 86400.0) -> float:
    """`World.limit_use`: the median share of its time limit that each of the latest
    `LIMIT_USE_RUNS` time-limited tasks to succeed (within `window_s`) used; 1.0 before there are
    20 (core/forecast.limit_use)."""
    return learnt(store, now, window_s)[0]


def learnt(store: _History, now: float, window_s: float = 30 * 86400.0) -> tuple[float, tuple[float, ...]]:
    """What the burst policy learns from the latest tasks to succeed (within `window_s`), in one
    read: `World.limit_use` (above) and `World.run_lengths`, the run times of the latest
    `RUN_LENGTHS_RECENT` of them that had no time limit (core/forecast.length_sample; empty
    before there are 20)."""
    runs = store.finished_runs(now - window_s, limit=4 * LIMIT_USE_RUNS)
    keys = [(r.job_id, 0) for r in runs]  # type: ignore[attr-defined]
    caps = store.time_limits(keys)
    shares = [r.runtime_s / caps[k] for r, k in zip(runs, keys) if caps.get(k)]  # type: ignore[attr-defined]
    free = [r.runtime_s for r, k in zip(runs, keys) if not caps.get(k)]  # type: ignore[attr-defined]
    return median_use(shares[:LIMIT_USE_RUNS]), length_sample(free[:RUN_LENGTHS_RECENT])
