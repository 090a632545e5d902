"""Owner budgets in the simulator (`cloud.burst.user_budget_usd`): a replay books each owner's
share of the cloud nodes they held, as the controller does, and applies the same rule, so an
admin sees what a budget would have held back before setting it."""

from __future__ import annotations

from dataclasses import replace

from hybridctl.cloud import catalog
from hybridctl.core import burst
from hybridctl.simulate import report
from hybridctl.simulate.engine import NodeGroup, Strategy, run
from hybridctl.simulate.market import Market, MarketModel
from hybridctl.simulate.trace import TraceJob

FLEET = [NodeGroup("a", 1, 8, "NVIDIA A100-SXM4-80GB")]
HOUR = 3600.0
HOG = TraceJob(1, "hog", 0.0, 8, None, 30 * HOUR, time_limit=40 * HOUR)  # the fleet is full all day
BIG = [TraceJob(10 + i, "big", 600.0 + 60 * i, 1, None, 4 * HOUR, checkpoint=900.0, time_limit=5 * HOUR)
       for i in range(8)]
SMALL = TraceJob(30, "small", 1200.0, 1, None, 2 * HOUR, checkpoint=900.0, time_limit=3 * HOUR)
LIMITS = burst.Limits(after=0.0, allow_on_demand=True, max_nodes=20, max_hourly_usd=1000, budget_usd=100_000,
                      idle_timeout=300.0)


def replay(budgets: dict[str, float]):  # type: ignore[no-untyped-def]
    jobs = [HOG, *BIG, SMALL]
    market = Market(catalog.load(), None, MarketModel(reclaim_per_h=0.0, drift=0.0), 3, max(j.submit for j in jobs))
    return run(jobs, FLEET, Strategy("hybridctl", limits=replace(LIMITS, user_budget_usd=budgets)), market)


def test_a_users_budget_holds_their_cloud_spend_and_leaves_others_theirs() -> None:
    free = replay({"*": 1e9})  # a budget no one reaches books the spend and changes nothing
    assert free.owner_spend["user big"] > 0 and free.owner_spend["user small"] > 0
    cap = free.owner_spend["user big"] / 3
    held = replay({"big": cap, "*": 1e9})
    assert 0 < held.owner_spend["user big"] <= cap
    assert held.owner_spend["user small"] > 0  # small's job still bursts
    assert held.unfinished == 0  # big's other jobs ran on-prem once the hog ended
    assert max(held.classes["1 GPU"]) > max(free.classes["1 GPU"])
    (line,) = report.owner_lines([held], replace(LIMITS, user_budget_usd={"big": cap, "*": 1e9}))
    assert line == (f"hybridctl: owner budgets: user big spent the most of theirs,"
                    f" ${held.owner_spend['user big']:,.0f} of ${cap:,.0f} in one month; none of 2 passed theirs")
