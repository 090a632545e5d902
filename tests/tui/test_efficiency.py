"""The TUI's efficiency parts (issue #16): the job screen's efficiency panel and sparklines, the
`:waste` view, the queue's IDLE badge and reservation start, the SM column only where reported.
Against a real controller process (Pilot) where the data crosses it, on `FakeApi` where the case
needs telemetry a simulated fleet never sends (an idle flag, logged metrics, NVML's SM use)."""

from __future__ import annotations

from typing import Any

from textual.widgets import Sparkline

from hybridctl.tui.app import HybridApp
from hybridctl.tui.fake import NOW, FakeApi, seed_history
from hybridctl.tui.screens.job import JobScreen
from hybridctl.tui.screens.node import NodeScreen
from hybridctl.tui.screens.waste import WasteScreen
from hybridctl.tui.widgets.table import RowTable
from tests.integration.harness import ControllerProc
from tests.tui.helpers import screen_text, shows, until
from tests.tui.pilot_kit import SIZE, app_for, ask, open_view, submit


async def test_job_screen_shows_the_controllers_efficiency_record(controller: ControllerProc) -> None:
    job = submit(controller, "eff-panel", gpus="A100:2")
    async with app_for(controller).run_test(size=SIZE) as pilot:
        app = pilot.app
        await pilot.press(*f":job {job}", "enter")
        await until(pilot, lambda: isinstance(app.screen, JobScreen))
        text = await shows(pilot, "GPU-hours")
        # the simulated fleet sends no telemetry: the record exists, every measured figure unknown
        eff = ask(controller, "eff", job=job)
        assert f"{eff['gpu_hours_used']:.2f} used / {eff['gpu_hours_held']:.2f} held" in text
        assert "mean – · p95 –" in text and f"of {eff['cpus']:g} CPUs" in text
        assert f"runtime estimate: {ask(controller, 'show', job=job)['runtime']}" in text
        # no samples: no sparkline rows drawn, nothing blank pretending to be a chart
        assert not any(row.display for row in app.screen.query("SparkRow"))


async def test_waste_view_lists_placed_gpu_jobs_and_opens_one(controller: ControllerProc) -> None:
    job = submit(controller, "waste-me", gpus="1")
    async with app_for(controller).run_test(size=SIZE) as pilot:
        app = pilot.app
        await open_view(pilot, "waste", WasteScreen, "waste-me")
        table = app.screen.query_one("#waste-jobs", RowTable)
        await until(pilot, lambda: any(r.key == job and r.held is not None for r in table.rows),
                    what="the job's eff read")
        users = app.screen.query_one("#waste-users", RowTable)
        await until(pilot, lambda: [r.user for r in users.rows] == [u["user"] for u in ask(controller, "usage")],
                    what="users from usage")
        assert "GPU-hours held idle so far" in screen_text(app)
        table.select_key(job)
        table.focus()
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, JobScreen) and app.screen.job == job)
        await shows(pilot, "waste-me")
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, WasteScreen))
        await pilot.press("question_mark")
        await shows(pilot, "Keys here")
        assert ":waste  :idle" in app.screen._text().plain  # the help lists the view (below the fold here)


def fake_app(api: FakeApi | None = None, **kw: Any) -> HybridApp:
    api = api or FakeApi()
    app = HybridApp(api, interval=3600, clock=lambda: NOW, cursor_blink=False, **kw)
    seed_history(app.state, api)
    return app


class Growing(FakeApi):
    """Job 12 logs one more loss value at every `history` read."""

    def __init__(self) -> None:
        super().__init__()
        self.extra = 0

    def op_history(self, job: str | None = None, node: str | None = None, seconds: float = 3600.0) -> dict[str, Any]:
        out = super().op_history(job, node, seconds)
        if job == "12":
            self.extra += 1
            out["metrics"]["loss"] += [[NOW + i, 0.25] for i in range(self.extra)]
        return out


async def test_sparklines_follow_each_refresh_and_name_their_range() -> None:
    api = Growing()
    async with fake_app(api, mode="queue").run_test(size=SIZE) as pilot:
        app = pilot.app
        await pilot.press(*":job 12", "enter")
        text = await shows(pilot, "tokens_per_s")
        assert "GPU util" in text and "loss" in text and "(0.25–2.8)" in text
        rows = [r for r in app.screen.query("SparkRow") if r.display]
        assert len(rows) == 3  # GPU util, loss, tokens_per_s (`step` is not charted)
        loss = rows[1].query_one(Sparkline)
        before = len(loss.data or [])
        await pilot.press("ctrl+r")  # a refresh reads `history` again, in the poll worker
        await until(pilot, lambda: len(loss.data or []) > before, what="the loss sparkline grows")


async def test_a_pending_job_says_why_it_has_no_efficiency() -> None:
    async with fake_app(mode="queue").run_test(size=SIZE) as pilot:
        await pilot.press(*":job 16", "enter")
        await shows(pilot, "efficiency: job 16 has not held any node yet")


async def test_recoveries_candidates_and_idle_on_the_job_screen() -> None:
    async with fake_app(mode="queue").run_test(size=SIZE) as pilot:
        await pilot.press(*":job 14_3", "enter")
        await shows(pilot, "recoveries 1 (node lost 1)")
        await pilot.press("escape", *":job 12", "enter")
        await shows(pilot, "H100:4 > A100:4 GPU, 8 CPU (took A100)")
        await pilot.press("escape", *":job 13", "enter")
        text = await shows(pilot, "IDLE       every GPU idle for 42:00")
        assert "· IDLE 42:00" in text


async def test_queue_badges_idle_jobs_and_shows_reserved_starts() -> None:
    async with fake_app(mode="queue").run_test(size=SIZE) as pilot:
        text = await shows(pilot, "ablation")
        line13 = next(line for line in text.splitlines() if line.startswith("13 "))
        line16 = next(line for line in text.splitlines() if line.startswith("16 "))
        assert "RUNNING IDLE" in line13 and "~23:40" in line16


async def test_sm_column_only_where_an_agent_reports_it() -> None:
    async with fake_app().run_test(size=SIZE) as pilot:
        app = pilot.app
        await shows(pilot, "gpu04")
        for name, has_sm in (("gpu01", True), ("gpu02", False)):
            await pilot.press(*f":node {name}", "enter")
            await until(pilot, lambda: isinstance(app.screen, NodeScreen) and app.screen.node == name)
            procs = app.screen.query_one("#procs", RowTable)
            await until(pilot, lambda: procs.rows)
            header = next(line for line in screen_text(app).splitlines() if "GPU MEM" in line)
            assert (" SM " in header) is has_sm, header
            await pilot.press("escape")
