"""The Cloud screen's spend line names the user or group budget nearest its end
(`cloud.burst.user_budget_usd`, `group_budget_usd`), from `cloud status`'s `owners`, and the spot
pool that reclaims most above the rate a reclaim there is priced at, from its `reclaims`."""

from __future__ import annotations

from hybridctl.tui.fake import FakeApi
from hybridctl.tui.screens.cloud import spend_text


def test_the_budget_nearest_its_end_is_on_the_spend_line() -> None:
    status = FakeApi(cloud=True).op_cloud_status()
    assert "budget:" not in spend_text(status).plain  # no owner budgets: no line
    status["owners"] = [{"kind": "user", "name": "alice", "spent_usd": 412.0, "used_usd": 480.0, "budget_usd": 500.0},
                        {"kind": "group", "name": "vision", "spent_usd": 10.0, "used_usd": 10.0, "budget_usd": 5000.0}]
    lines = spend_text(status).plain.splitlines()
    assert lines[1] == "nearest its budget: user alice $412.00 spent ($480.00 with running jobs) of $500.00 (+1 more budgets)"


def test_a_pool_reclaiming_above_its_price_is_on_the_spend_line() -> None:
    """The controller marks a pool `above_price` (`fmt.reclaims_above_price`, tested with its
    cases in test_fmt_reclaims and end to end in test_reclaim_record); the line names the first
    marked pool, not the one with the highest rate."""
    status = FakeApi(cloud=True).op_cloud_status()
    assert "reclaims above" not in spend_text(status).plain
    quiet = {"pool": "aws/us-east-1b/p4d.24xlarge/spot", "node_hours": 90.0, "reclaims": 2,
             "per_node_hour": 0.0222, "priced_per_node_hour": 0.06, "priced_from": "catalog", "above_price": False}
    status["reclaims"] = [quiet]
    assert "reclaims above" not in spend_text(status).plain  # below its price: nothing to fix
    loud = {**quiet, "pool": "aws/us-east-1a/p4d.24xlarge/spot", "node_hours": 40.0, "reclaims": 6,
            "per_node_hour": 0.15, "above_price": True}
    # Above the price, but within chance: 2 where 1.2 were expected come 34 % of the time.
    chance = {**loud, "pool": "aws/us-east-1c/p4d.24xlarge/spot", "node_hours": 10.0, "reclaims": 2,
              "per_node_hour": 0.2, "above_price": False}
    status["reclaims"] = [chance, loud, quiet]
    assert spend_text(status).plain.splitlines()[-1] == (
        "reclaims above their price: aws/us-east-1a/p4d.24xlarge/spot 6 in 40.00 node-h (0.150/h, priced at"
        " 0.06/h; cloud status lists all)")
    status["reclaims"] = [chance, quiet]
    assert "reclaims above" not in spend_text(status).plain
    short = {**loud, "node_hours": 0.01, "reclaims": 1, "per_node_hour": 100.0}  # one in 36 s: no rate
    status["reclaims"] = [short]
    assert spend_text(status).plain.splitlines()[-1] == (
        "reclaims above their price: aws/us-east-1a/p4d.24xlarge/spot 1 in 0.01 node-h (priced at 0.06/h;"
        " cloud status lists all)")
