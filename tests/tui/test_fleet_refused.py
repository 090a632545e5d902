"""A `nodes` read the controller refuses, while it still answers: every screen reads the fleet,
so the TUI keeps the last list on screen and says why in the banner, instead of emptying the
tables (it used to keep the refusal as the fleet's rows). The controller is `FakeApi` made to
misbehave on purpose: a real one refuses `nodes` only when something inside it fails."""

from __future__ import annotations

from typing import Any

from hybridctl.core.errors import HybridctlError
from hybridctl.tui.app import HybridApp
from hybridctl.tui.fake import NOW, FakeApi
from tests.tui.helpers import screen_text, shows, until
from tests.tui.pilot_kit import SIZE


class RefusesNodes(FakeApi):
    """A controller whose `nodes` fails while `broken` is set."""

    broken = False

    def op_nodes(self, cache: bool = False) -> list[dict[str, Any]]:
        if self.broken:
            raise HybridctlError("internal controller error: database disk image is malformed [/] [b]")
        return super().op_nodes(cache)


async def test_a_refused_fleet_read_keeps_the_last_fleet_and_says_why() -> None:
    api = RefusesNodes()
    app = HybridApp(api, interval=3600, clock=lambda: NOW, cursor_blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await shows(pilot, "gpu01")
        api.broken = True
        await pilot.press("ctrl+r")
        text = " ".join((await shows(pilot, "could not list the fleet")).split())
        assert "database disk image is malformed [/] [b]. Shown as read at " in text, text
        assert "gpu01" in text and "aws-g5-1" in text and "connected" in text
        assert isinstance(app.state.results["nodes"], list)
        api.broken = False
        await pilot.press("ctrl+r")
        await until(pilot, lambda: "could not list the fleet" not in screen_text(app), what="the banner gone")
        assert "gpu01" in screen_text(app)


async def test_a_fleet_never_read_shows_the_refusal_and_no_rows() -> None:
    api = RefusesNodes()
    api.broken = True
    app = HybridApp(api, interval=3600, clock=lambda: NOW, cursor_blink=False)
    async with app.run_test(size=SIZE) as pilot:
        text = " ".join((await shows(pilot, "could not list the fleet")).split())
        assert "malformed [/] [b]. Retrying at every refresh" in text and "Shown as read" not in text and "gpu01" not in text
