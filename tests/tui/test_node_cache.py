"""The node screen lists the node's content cache (issue 15: "the TUI node screen lists a node's
cache"): its use against its cap, its environments and data objects, and the largest items by
kind, content id and size, read with `nodes` `cache=True` only for a node that reports a cache.
Driven by Textual's Pilot over the fake controller (tui/fake.py), whose replies the contract
test keeps in step with the real controller's."""

from __future__ import annotations

from typing import Any

from textual.widgets import Static

from hybridctl.tui.app import HybridApp
from hybridctl.tui.fake import FakeApi
from hybridctl.tui.screens.node import NodeScreen
from hybridctl.tui.widgets.table import RowTable
from tests.tui.helpers import until

ENV, OBJ = "3f" * 32, "a1" * 32


def lab_with_cache() -> tuple[HybridApp, FakeApi]:
    api = FakeApi()
    node = next(n for n in api.nodes if n["name"] == "gpu01")
    node["cache"] = {"objects": 5, "object_bytes": 300_000_000, "envs": 1, "env_bytes": 1_000_000_000,
                     "max_bytes": 53_700_000_000}
    node["cache_items"] = [{"kind": "env", "id": ENV[:16], "bytes": 1_000_000_000}] + [
        {"kind": "data", "id": f"{i:x}" * 16, "bytes": 60_000_000} for i in range(5)]
    return HybridApp(api, interval=0.25, cursor_blink=False), api


async def test_the_node_screen_lists_the_node_cache() -> None:
    app, api = lab_with_cache()
    async with app.run_test(size=(120, 40)) as pilot:
        await open_node(pilot, "gpu01")
        box = app.screen.query_one("#cache", Static)
        await until(pilot, lambda: "env" in str(box.render()), what="the node's cache items")
        text = str(box.render())
        assert text.startswith("cache 1.3 GB of 53.7 GB: 1 env 1 GB, 5 data objects 300 MB")
        assert f"env        {ENV[:16]}     1 GB" in text
        assert text.count("data  ") == 3 and "… 2 more (hybridctl nodes --cache)" in text
        assert ("nodes", {"cache": True}) in api.calls

        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, NodeScreen), what="back to the fleet")
        await open_node(pilot, "gpu02")  # its agent reports no cache: no cache line
        await until(pilot, lambda: "gpu02" in str(app.screen.query_one("#info", Static).render()))
        assert app.screen.query_one("#cache", Static).display is False


async def open_node(pilot: Any, name: str) -> None:
    app = pilot.app
    await until(pilot, lambda: app.polls >= 1, what="first refresh")
    app.screen.query_one(RowTable).select_key(name)
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, NodeScreen) and app.screen.node == name, what=f"node {name}")


def test_the_fake_lists_cache_items_only_when_asked() -> None:
    _, api = lab_with_cache()
    plain: Any = api.call("nodes", {})
    assert all("cache_items" not in n for n in plain)
    asked: Any = api.call("nodes", {"cache": True})
    assert [len(n["cache_items"]) for n in asked if n["name"] == "gpu01"] == [6]
