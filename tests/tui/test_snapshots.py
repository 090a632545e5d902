"""Snapshot tests of every screen (pytest-textual-snapshot) on a fixed, in-memory lab
(`tui.fake.FakeApi`): fixed clock, seeded history, UTC, no cursor blink, no refresh timer."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import pytest
from textual.pilot import Pilot

from hybridctl.core.errors import ControllerUnavailable
from hybridctl.tui.app import HybridApp
from hybridctl.tui.fake import NOW, FakeApi, seed_history
from hybridctl.tui.widgets.table import RowTable
from tests.tui.helpers import shows, until

pytestmark = pytest.mark.usefixtures("utc")

WIDE = (120, 36)
SMALL = (80, 24)


def lab(**kw: Any) -> HybridApp:
    api = FakeApi(cloud=kw.pop("cloud", False), admin=kw.pop("admin", True))
    app = HybridApp(api, interval=3600, clock=lambda: NOW, cursor_blink=False, **kw)
    seed_history(app.state, api)
    return app


def steps(*keys: str, wait: str = "", select: str = "") -> Callable[[Pilot[Any]], Awaitable[None]]:
    """run_before: wait for the first refresh, optionally put the cursor on a row, press keys, and
    wait for `wait` to be on screen (each key that changes screens triggers a refresh)."""

    async def run(pilot: Pilot[Any]) -> None:
        app: Any = pilot.app
        await until(pilot, lambda: app.polls >= 1, what="first refresh")
        if select:
            app.screen.query_one(RowTable).select_key(select)
        if keys:
            await pilot.press(*keys)
        if wait:
            await shows(pilot, wait)
        await pilot.pause()

    return run


def test_fleet_wide(snap_compare: Any) -> None:
    assert snap_compare(lab(), terminal_size=WIDE, run_before=steps(wait="gpu04"))


def test_fleet_80x24(snap_compare: Any) -> None:
    assert snap_compare(lab(), terminal_size=SMALL, run_before=steps(wait="gpu04"))


def test_fleet_light_theme(snap_compare: Any) -> None:
    app = lab()

    async def light(pilot: Pilot[Any]) -> None:
        app.theme = "textual-light"
        await steps(wait="gpu04")(pilot)

    assert snap_compare(app, terminal_size=WIDE, run_before=light)


def test_node_with_foreign_process(snap_compare: Any) -> None:
    assert snap_compare(lab(), terminal_size=WIDE, run_before=steps("enter", wait="FOREIGN", select="gpu01"))


def test_node_80x24(snap_compare: Any) -> None:
    assert snap_compare(lab(), terminal_size=SMALL, run_before=steps("enter", wait="FOREIGN", select="gpu01"))


def test_gpu(snap_compare: Any) -> None:
    assert snap_compare(lab(), terminal_size=WIDE, run_before=steps("enter", "enter", wait="GPU 0 ·", select="gpu01"))


def test_gpus(snap_compare: Any) -> None:
    assert snap_compare(lab(mode="gpus"), terminal_size=WIDE, run_before=steps(wait="FAULT"))


def test_queue_filtered_and_sorted(snap_compare: Any) -> None:
    run = steps("slash", *"state:run,pend", "enter", "s", "s", "s", "s", "s", "s", "S", wait="filter: state:run,pend")
    assert snap_compare(lab(mode="queue"), terminal_size=WIDE, run_before=run)


def test_queue_80x24(snap_compare: Any) -> None:
    assert snap_compare(lab(mode="queue"), terminal_size=SMALL, run_before=steps(wait="ablation"))


def test_job_with_log_tail(snap_compare: Any) -> None:
    assert snap_compare(lab(mode="queue"), terminal_size=WIDE,
                        run_before=steps("enter", wait="epoch 11", select="12"))


def test_logs_stderr(snap_compare: Any) -> None:
    run = steps("enter", "l", "t", wait="deprecated", select="12")
    assert snap_compare(lab(mode="queue"), terminal_size=WIDE, run_before=run)


def test_events(snap_compare: Any) -> None:
    assert snap_compare(lab(mode="events"), terminal_size=WIDE, run_before=steps(wait="requeued"))


def test_cloud_not_configured(snap_compare: Any) -> None:
    assert snap_compare(lab(mode="cloud"), terminal_size=WIDE, run_before=steps(wait="no cloud provider configured"))


def test_cloud_configured(snap_compare: Any) -> None:
    assert snap_compare(lab(mode="cloud", cloud=True), terminal_size=WIDE, run_before=steps(wait="g5.xlarge"))


def test_help(snap_compare: Any) -> None:
    assert snap_compare(lab(), terminal_size=WIDE, run_before=steps("question_mark", wait="Keys here"))


def test_submit_form(snap_compare: Any) -> None:
    assert snap_compare(lab(mode="queue"), terminal_size=SMALL, run_before=steps("n", wait="Submit a job"))


def test_drain_dialog(snap_compare: Any) -> None:
    assert snap_compare(lab(), terminal_size=SMALL, run_before=steps("d", wait="Drain node aws-g5-1?"))


def test_command_prompt(snap_compare: Any) -> None:
    assert snap_compare(lab(), terminal_size=SMALL, run_before=steps("colon", "j", "o", wait=": jo"))


def test_readonly(snap_compare: Any) -> None:
    assert snap_compare(lab(mode="queue", readonly=True), terminal_size=SMALL, run_before=steps(wait="READ-ONLY"))


class Gone(FakeApi):
    """A controller that answered once and then went away."""

    def call(self, op: str, args: dict[str, Any], lane: str = "poll") -> Any:
        if len(self.calls) >= 3:
            raise ControllerUnavailable("the hybridctl controller is not running (no answer on /run/hybridctl.sock).")
        return super().call(op, args, lane)


def test_controller_unreachable_banner(snap_compare: Any) -> None:
    api = Gone()
    app = HybridApp(api, interval=3600, clock=lambda: NOW, cursor_blink=False)
    seed_history(app.state, api)
    assert snap_compare(app, terminal_size=SMALL, run_before=steps("ctrl+r", wait="Controller unreachable"))


def test_job_flagged_idle(snap_compare: Any) -> None:
    """An idle-flagged job: IDLE in the state line and the efficiency panel, its GPU-use sparkline
    falling to the floor."""
    assert snap_compare(lab(mode="queue"), terminal_size=WIDE,
                        run_before=steps("enter", wait="every GPU idle for", select="13"))


def test_waste(snap_compare: Any) -> None:
    assert snap_compare(lab(mode="waste"), terminal_size=WIDE, run_before=steps(wait="IDLE 42m"))
