"""The Cloud screen's spend line names the user or group budget nearest its end
(`cloud.burst.user_budget_usd`, `group_budget_usd`), from `cloud status`'s `owners`."""

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
