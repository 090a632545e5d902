"""The TUI's cloud view against a real controller that has just burst to a simulated spot node:
the node with its price and spend, the budget line, the offers; Enter opens the node."""

from __future__ import annotations

from typing import Any

from tests.cloud.lab import CloudLab
from tests.tui.helpers import same_keys, screen_text, shows, until

from hybridctl.control.client import Client
from hybridctl.tui.app import HybridApp
from hybridctl.tui.fake import FakeApi
from hybridctl.tui.data import SocketApi
from hybridctl.tui.screens.node import NodeScreen
from hybridctl.tui.widgets.table import RowTable


async def test_cloud_view_shows_the_burst_node_its_price_and_opens_it(make_lab: Any) -> None:
    lab: CloudLab = make_lab(burst={})
    lab.submit("--gpus", "A100:1", "--", "sleep 300")  # on-prem is full: the next job bursts
    job = lab.submit("--gpus", "A100:1", "--", "sleep 300")
    node = lab.wait_state(job, "RUNNING", timeout=120)["nodes"]
    price = next(i["price_hourly"] for i in lab.status()["instances"] if i["node"] == node)
    with Client(lab.ctl.socket) as c:  # tui/fake.py's cloud replies keep the controller's keys
        status, offers = c.call("cloud_status", ended=20), c.call("cloud_offers")
    fake = FakeApi(cloud=True)
    same_keys("cloud_status", status, fake.call("cloud_status", {"ended": 20}))
    same_keys("cloud_status: instances", status["instances"], fake.call("cloud_status", {})["instances"])
    same_keys("cloud_offers", offers, fake.call("cloud_offers", {}))
    app = HybridApp(SocketApi(lab.ctl.socket), interval=0.25, cursor_blink=False, mode="cloud")
    async with app.run_test(size=(150, 40)) as pilot:
        text = await shows(pilot, node)
        assert f"${price:.2f}" in text and "spot" in text and "up" in text
        assert "simulated · 1/2 nodes" in text and "of $100.00 per month" in text
        await shows(pilot, "sim.a100x1")  # the offers, cheapest first
        table = app.screen.query_one("#cloud-nodes", RowTable)
        table.focus()
        table.select_key(next(r["instance_id"] for r in table.rows if r["node"] == node))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen), what="the node view")
        await shows(pilot, node)
    app = HybridApp(SocketApi(lab.ctl.socket), interval=0.25, cursor_blink=False)
    async with app.run_test(size=(150, 40)) as pilot:  # the fleet view prices cloud nodes too
        await shows(pilot, node)
        assert f"${price:.2f}" in screen_text(app)
    lab.ctl.cli("cancel", "--all-mine", check=True)
