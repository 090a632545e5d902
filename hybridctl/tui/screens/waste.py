"""Waste (`:waste`): who holds GPUs and does not use them. Running jobs by GPU-hours held idle
(held − used, from each job's `eff`), with the idle rule's IDLE flag; below, users by the same
figure over the last week (`usage --by user`, its USED column). Enter on a job opens it; Enter on
a user filters the jobs to theirs; `/` filters both."""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Sequence

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import Static

from hybridctl.core.errors import HybridctlError
from hybridctl.fmt import job_label
from hybridctl.tui.data import Request, State
from hybridctl.tui.model import ACTIVE, WasteRow, idle_text, waste_jobs, waste_users
from hybridctl.tui.screens.base import ACTIVE_QUEUE, ViewScreen
from hybridctl.tui.widgets.table import Cell, Column, Palette, RowTable

USAGE = Request.of("usage:user", "usage", every=5, by="user")
"""GPU-hours per user over the controller's default window (7 days); slow to change."""
EFF_EVERY = 5
"""Each running job's `eff` is read every fifth refresh (it reads the history file)."""
MAX_EFF = 200
"""At most this many running jobs are asked for their efficiency per refresh: those holding the
most GPU-time (GPUs × run time), so a 8000-job fleet costs a bounded number of reads."""

JOB_COLUMNS = [
    Column("key", "JOB", 8, keep=9),
    Column("user", "USER", 8, keep=8),
    Column("name", "NAME", 12, keep=4),
    Column("gpus", "GPUS", 7, keep=6),
    Column("held", "HELD h", 8, align="right", keep=7),
    Column("used", "USED h", 8, align="right", keep=7),
    Column("wasted", "IDLE h", 8, align="right", keep=9),
    Column("util", "UTIL", 5, align="right", keep=6),
    Column("flag", "FLAG", 10, keep=5, flex=True),
]
USER_COLUMNS = [
    Column("user", "USER", 12, keep=9),
    Column("held", "HELD h", 9, align="right", keep=7),
    Column("used", "USED h", 9, align="right", keep=7),
    Column("wasted", "IDLE h", 9, align="right", keep=9),
    Column("util", "UTIL", 5, align="right", keep=6),
    Column("rest", "", 1, keep=1, flex=True),
]


def hours(value: float | None) -> str:
    """GPU-hours: two decimals, three under one hour (a demo's minutes are not all '0.00')."""
    if value is None:
        return "–"
    return f"{value:.2f}" if value >= 1 or value == 0 else f"{value:.3f}"


def _wasted(r: WasteRow, pal: Palette) -> Cell:
    w = r.wasted
    return Text(hours(w), pal.bad if w and r.util is not None and r.util < 20 else pal.warn if w else pal.dim)


def job_cells(r: WasteRow, pal: Palette) -> Sequence[Cell]:
    util = "–" if r.util is None else f"{r.util:.0f}%"
    flag: Cell = Text(idle_text(r.idle_s), pal.bad) if r.idle_s is not None else ""
    return [r.key, r.user, r.name, r.gpus, hours(r.held), hours(r.used), _wasted(r, pal), util, flag]


def user_cells(r: WasteRow, pal: Palette) -> Sequence[Cell]:
    util = "–" if r.util is None else f"{r.util:.0f}%"
    return [r.user, hours(r.held), hours(r.used), _wasted(r, pal), util, ""]


def eff_targets(active: Sequence[dict[str, Any]] | None, identity: dict[str, Any], now: float) -> list[str]:
    """The placed jobs (starting or running: both hold their GPUs) whose `eff` to read: GPU jobs
    the caller may see (an admin: all; a user: their own), the most GPU-time held first, at most
    MAX_EFF."""
    mine = None if identity.get("admin") else identity.get("user")
    rows = [r for r in active or () if r.get("gpus") and r.get("state") in ACTIVE
            and (mine is None or r.get("user") == mine)]
    rows.sort(key=lambda r: -(int(r.get("gpus") or 0) * int(r.get("num_nodes") or 1)
                              * (now - float(r.get("started_at") or now))))
    return [job_label(r) for r in rows[:MAX_EFF]]


class WasteScreen(ViewScreen):
    crumb = "Waste"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("tab", "app.focus_next", "Switch table", show=False),
    ]

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="summary", classes="summary")
        yield RowTable(JOB_COLUMNS, job_cells, key=lambda r: r.key, empty="no running job holds GPUs",
                       id="waste-jobs")
        yield Static("Users, last 7 days (GPU-hours the telemetry saw them hold and use)", classes="section")
        yield RowTable(USER_COLUMNS, user_cells, key=lambda r: r.key, empty="no GPU use recorded",
                       id="waste-users")

    def _active(self, state: State) -> list[dict[str, Any]] | None:
        got = state.get(ACTIVE_QUEUE.key)
        return got if isinstance(got, list) else None

    def requests(self) -> list[Request]:
        state = self.host.state
        effs = [Request.of(f"eff:{label}", "eff", every=EFF_EVERY, job=label)
                for label in eff_targets(self._active(state), state.identity, self.now())]
        return [ACTIVE_QUEUE, USAGE, *effs]

    def update_view(self, state: State) -> None:
        super().update_view(state)
        active = self._active(state)
        effs = {k.partition(":")[2]: v for k, v in state.results.items() if k.startswith("eff:")}
        jobs = waste_jobs(active, effs, self.filter)
        self.query_one("#waste-jobs", RowTable).set_rows(jobs, sort=("wasted", True))
        usage = state.get(USAGE.key)
        users = waste_users(usage if isinstance(usage, list) else None, self.filter)
        self.query_one("#waste-users", RowTable).set_rows(users, sort=("wasted", True))
        self.query_one("#summary", Static).update(self._summary(active, jobs, usage, effs))
        if state.connected and any(f"eff:{label}" not in state.results
                                   for label in eff_targets(active, state.identity, self.now())):
            self.host.poll_now()  # the running jobs just arrived: read their efficiency now, not in a second

    def _summary(self, active: list[dict[str, Any]] | None, jobs: list[WasteRow], usage: Any,
                 effs: dict[str, Any]) -> Text:
        if active is None:
            return Text("loading…")
        running = sum(1 for r in active if r.get("gpus") and r.get("state") in ACTIVE)
        idle_now = sum(r.wasted or 0.0 for r in jobs)
        flagged = sum(1 for r in jobs if r.idle_s is not None)
        t = Text(f"{running} placed GPU jobs · {hours(idle_now)} GPU-hours held idle so far")
        if flagged:
            t.append(f" · {flagged} flagged IDLE", "bold red")
        refused = next((v for v in effs.values() if isinstance(v, HybridctlError)), None)
        if refused is not None and not jobs:
            t.append(f"\nefficiency: {refused.message}", "dim")
        if isinstance(usage, HybridctlError):
            t.append(f"\nusage: {usage.message}", "dim")
        elif isinstance(usage, list) and usage and "gpu_hours_observed" not in usage[0]:
            t.append("\nthis controller keeps no telemetry history (metrics.history is off): "
                     "no held-vs-used figures per user", "dim")
        if self.filter_text:
            t.append(f" · filter: {self.filter_text}")
        return t

    @on(RowTable.Selected, "#waste-jobs")
    def _open(self, event: RowTable.Selected) -> None:
        from hybridctl.tui.screens.job import JobScreen

        self.app.push_screen(JobScreen(event.row.key))

    @on(RowTable.Selected, "#waste-users")
    def _user(self, event: RowTable.Selected) -> None:
        self.filter_text = f"user:{event.row.user}"
        self.query_one("#waste-jobs", RowTable).focus()
