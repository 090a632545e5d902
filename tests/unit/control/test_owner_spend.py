"""Cloud spend booked per user and per group as well as per lab (`cloud_spend_owner`,
`cloud_costs.grp`), which the owner budgets (`cloud.burst.user_budget_usd`, `group_budget_usd`)
read: the autoscaler's accrual on a real store, its world, and `cloud cost --by group`."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
from pathlib import Path

import pytest

from hybridctl.control.budget import utc_day
from hybridctl.core.model import NodeState
from hybridctl.store.sqlite import Store
from tests.unit.control.autoscaler_kit import IID, NODE, Cloud, cloud  # noqa: F401 - the fixture
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


async def test_the_upgrade_books_earlier_charges_to_their_jobs_group(cloud: Cloud, tmp_path: Path) -> None:
    parts, scaler, _ = cloud
    scaler.start_session(NODE)
    await wait_for_async(lambda: parts.store.node(NODE).link_state is NodeState.UP, what="the cloud node's hello")
    parts.place(resources={"accelerators": "A100:1", "use_spot": True})
    start = parts.clock()
    parts.clock.t = start + 3600.0
    scaler.accrue(parts.clock())
    # The database as a controller before m008 left it: no group on the charges, no owner table.
    db = sqlite3.connect(parts.store.path)
    db.executescript("ALTER TABLE cloud_costs DROP COLUMN grp; DROP TABLE cloud_spend_owner;"
                     " DELETE FROM _migrations WHERE name='m008_owner_spend';")
    db.close()
    upgraded = Store(parts.store.path)
    try:
        rows = upgraded.conn.execute("SELECT user, grp FROM cloud_costs ORDER BY job_id").fetchall()
        assert rows == [("", ""), (ALICE.user, ALICE.group)]  # idle time stays no one's
        assert upgraded.cloud_owner_spent_since(utc_day(start)) == {}  # counted from the upgrade on
    finally:
        upgraded.close()


async def test_a_tick_that_bills_the_node_while_it_is_terminated_is_not_billed_twice(cloud: Cloud) -> None:
    parts, scaler, provider = cloud
    entered, release = threading.Event(), threading.Event()
    real = provider.terminate

    def slow(iid: str) -> None:  # the provider takes its time; the controller's loop goes on
        entered.set()
        release.wait(10)
        real(iid)

    provider.terminate = slow  # type: ignore[method-assign]
    start = parts.clock()
    scaler.accrue(start)
    going = asyncio.create_task(scaler.give_back(IID, NODE, "test"))
    await wait_for_async(entered.is_set, what="the terminate call")
    parts.clock.t = start + 3600.0
    scaler.accrue(parts.clock())  # a tick bills the hour
    release.set()
    await asyncio.wait_for(going, 10)
    assert parts.store.cloud_spent_since(utc_day(start)) == pytest.approx(OFFER.price_hourly)


async def test_cloud_status_shows_a_user_their_own_budgets_and_an_admin_every_one(cloud: Cloud) -> None:
    parts, scaler, _ = cloud
    burst_cfg = dataclasses.replace(parts.settings.cloud.burst, user_budget_usd={"*": 50.0, "bob": 80.0},
                                    group_budget_usd={ALICE.group: 500.0, "other": 10.0})
    parts.ctl.settings = dataclasses.replace(parts.settings, cloud=dataclasses.replace(parts.settings.cloud,
                                                                                      burst=burst_cfg))
    day = utc_day(parts.clock())
    parts.store.cloud_accrue(IID, NODE, [(1, 0, ALICE.user, ALICE.group, 5.0, 1.0), (2, 0, "carol", "other", 9.0, 1.0)],
                             parts.clock(), day, parts.clock())
    mine = parts.ctl.op_cloud_status(ALICE)["owners"]
    assert [(o["kind"], o["name"], o["spent_usd"]) for o in mine] == [("user", ALICE.user, 5.0), ("group", ALICE.group, 5.0)]
    admin = dataclasses.replace(ALICE, admin=True)
    every = [(o["kind"], o["name"]) for o in parts.ctl.op_cloud_status(admin)["owners"]]
    # Most used first: other $9 of $10, carol $9 of $50 (by '*', once she spent), alice $5 of $50...
    assert every == [("group", "other"), ("user", "carol"), ("user", ALICE.user), ("group", ALICE.group),
                     ("user", "bob")]
