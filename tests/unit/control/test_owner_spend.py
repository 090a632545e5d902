"""Cloud spend booked per user and per group as well as per lab (`cloud_spend_owner`,
`cloud_costs.grp`), which the owner budgets (`cloud.burst.user_budget_usd`, `group_budget_usd`)
read: the autoscaler's accrual on a real store, its world, and `cloud cost --by group`."""

from __future__ import annotations

import dataclasses

import pytest

from hybridctl.control.budget import utc_day
from hybridctl.core.model import NodeState
from tests.unit.control.autoscaler_kit import NODE, Cloud, cloud  # noqa: F401 - the fixture
from tests.unit.control.fakes import OFFER
from tests.unit.control.parts import ALICE
from tests.waiting import wait_for_async

pytestmark = pytest.mark.asyncio


async def test_a_jobs_share_of_its_cloud_node_is_booked_to_its_user_and_group(cloud: Cloud) -> None:
    parts, scaler, _ = cloud
    scaler.start_session(NODE)
    await wait_for_async(lambda: parts.store.node(NODE).link_state is NodeState.UP, what="the cloud node's hello")
    job, node = parts.place(resources={"accelerators": "A100:1", "use_spot": True})  # 1 of the node's 2 GPUs
    assert node == NODE
    start = parts.clock()
    scaler.accrue(start)
    parts.clock.t = start + 2 * 3600.0
    scaler.accrue(parts.clock())
    half = OFFER.price_hourly * 2 * 0.5  # two hours of half the node
    day = utc_day(start)
    spent = parts.store.cloud_owner_spent_since(day)
    assert spent == {("user", ALICE.user): pytest.approx(half), ("group", ALICE.group): pytest.approx(half)}
    assert parts.store.cloud_spent_since(day) == pytest.approx(OFFER.price_hourly * 2)  # the idle half is the lab's
    by_group = {r["group"]: r for r in parts.ctl.op_cloud_cost(ALICE, by="group")}
    assert by_group[ALICE.group]["usd"] == pytest.approx(half, abs=1e-4)
    assert by_group[ALICE.group]["usd_per_hour"] == pytest.approx(OFFER.price_hourly / 2)
    assert by_group["(idle)"]["usd"] == pytest.approx(half, abs=1e-4)

    # The burst policy's world carries it (with owner budgets set), and the running task's group.
    scaler.limits = dataclasses.replace(scaler.limits, group_budget_usd={ALICE.group: 10.0})
    world = scaler.world(parts.clock())
    assert world.owner_spent == spent
    assert [(r.job_id, r.user, r.group) for r in world.cluster.running] == [(job, ALICE.user, ALICE.group)]
