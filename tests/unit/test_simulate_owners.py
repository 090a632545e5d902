"""Owner budgets in the simulator (`cloud.burst.user_budget_usd`, `group_budget_usd`): a replay
books each owner's share of the cloud nodes they held, as the controller does, and applies the
same rule, so an admin sees what a budget would have held back before setting it. Groups come
from the trace (the CSV's `group` column, sacct's Account or Group)."""

from __future__ import annotations

import io
from dataclasses import replace

from hybridctl.cloud import catalog
from hybridctl.core import burst
from hybridctl.simulate import report, trace
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


def replay(jobs: list[TraceJob], **budgets: dict[str, float]):  # type: ignore[no-untyped-def]
    market = Market(catalog.load(), None, MarketModel(reclaim_per_h=0.0, drift=0.0), 3, max(j.submit for j in jobs))
    return run(jobs, FLEET, Strategy("hybridctl", limits=replace(LIMITS, **budgets)), market)


def test_a_users_budget_holds_their_cloud_spend_and_leaves_others_theirs() -> None:
    free = replay([HOG, *BIG, SMALL], user_budget_usd={"*": 1e9})  # no one reaches it: it books, changes nothing
    assert free.owner_spend["user big"] > 0 and free.owner_spend["user small"] > 0
    cap = free.owner_spend["user big"] / 3
    held = replay([HOG, *BIG, SMALL], user_budget_usd={"big": cap, "*": 1e9})
    assert 0 < held.owner_spend["user big"] <= cap
    assert held.owner_spend["user small"] > 0  # small's job still bursts
    assert held.unfinished == 0  # big's other jobs ran on-prem once the hog ended
    assert max(held.classes["1 GPU"]) > max(free.classes["1 GPU"])
    (line,) = report.owner_lines([held], replace(LIMITS, user_budget_usd={"big": cap, "*": 1e9}))
    assert line == (f"hybridctl: owner budgets: user big spent the most of theirs,"
                    f" ${held.owner_spend['user big']:,.0f} of ${cap:,.0f} in one month; none of 2 passed theirs")


def test_a_groups_budget_holds_the_groups_spend_from_the_trace_and_leaves_other_groups_theirs() -> None:
    # Two users in group vision, one in nlp; the hog is in the default group and never bursts.
    jobs = [HOG, *(replace(j, user=f"v{j.id % 2}", group="vision") for j in BIG),
            *(replace(SMALL, id=30 + i, submit=1200.0 + 60 * i, group="nlp") for i in range(3))]
    free = replay(jobs, group_budget_usd={"*": 1e9})
    assert free.owner_spend["group vision"] > 0 and free.owner_spend["group nlp"] > 0
    assert "group lab" not in free.owner_spend
    cap = free.owner_spend["group vision"] / 3
    held = replay(jobs, group_budget_usd={"vision": cap, "*": 1e9})
    assert 0 < held.owner_spend["group vision"] <= cap
    # nlp's jobs still burst (the nodes they share with vision's jobs change, so their share does a little)
    assert held.owner_spend["group nlp"] >= 0.9 * free.owner_spend["group nlp"]
    assert held.unfinished == 0


def test_the_csv_group_column_is_free_text_and_empty_is_the_default() -> None:
    jobs, _ = trace.read_csv(io.StringIO("submit,user,Group,gpus,duration\n0,ann, vision ,1,60\n1,bob,,1,60\n"))
    assert [(j.user, j.group) for j in jobs] == [("ann", "vision"), ("bob", trace.GROUP)]
    jobs, _ = trace.read_csv(io.StringIO("submit,user,gpus,duration\n0,ann,1,60\n"))
    assert jobs[0].group == "lab"


SACCT = ("JobID|User|Group|Account|Submit|Elapsed|AllocTRES\n"
         "101|ann|staff|vision|2026-11-02T09:00:00|01:00:00|cpu=8,gres/gpu=1\n"
         "101.batch|ann|staff||2026-11-02T09:00:00|01:00:00|cpu=8\n"
         "102|bob|staff||2026-11-02T09:01:00|01:00:00|cpu=8,gres/gpu=1\n")


def test_sacct_charges_the_account_else_the_unix_group_else_the_default() -> None:
    jobs, _ = trace.read_sacct(io.StringIO(SACCT))
    assert [(j.user, j.group) for j in jobs] == [("ann", "vision"), ("bob", trace.GROUP)]
    no_account = SACCT.replace("|Account", "").replace("|vision", "").replace("staff||", "staff|")
    jobs, _ = trace.read_sacct(io.StringIO(no_account.replace("|Group|", "|GROUP|")))
    assert [j.group for j in jobs] == ["staff", "staff"]
    jobs, _ = trace.read_sacct(io.StringIO(no_account.replace("|Group", "|gid")))
    assert [j.group for j in jobs] == ["lab", "lab"]
