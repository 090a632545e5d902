"""Queue: jobs (one row per task of an array) with wait and run times; `/` filters by user, state
or text, `s`/`S` or a header click sorts by any column, `m` shows mine vs all, `f` finished ones.
A job the idle rule flags wears an IDLE badge in STATE; a job with a backfill reservation shows
its expected start (`~14:05`) in RUN. Enter opens a job; `n` submits, `c` cancels, `p` changes priority."""

from __future__ import annotations

from typing import ClassVar, Iterable, Sequence

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import Static

from hybridctl.tui import cells
from hybridctl.tui.data import Request, State
from hybridctl.tui.model import JOB_SORT, JobRow, JobRowCache, job_rows
from hybridctl.tui.screens.base import JOB_STATE_STYLE, SortCycle, ViewScreen
from hybridctl.tui.screens.job import JobScreen, ask_cancel, ask_priority
from hybridctl.tui.widgets.table import Cell, Column, Palette, RowTable

COLUMNS = [
    Column("id", "ID", 8, keep=9),
    Column("user", "USER", 8, keep=8),
    Column("name", "NAME", 12, keep=6),
    Column("state", "STATE", 13, keep=9),
    Column("gpus", "GPUS", 6, keep=7),
    Column("node", "NODE", 8, keep=6),
    Column("wait", "WAIT", 8, align="right", keep=6),
    Column("run", "RUN", 8, align="right", keep=6),
    Column("attempt", "ATT", 3, align="right", keep=5),
    Column("priority", "PRI", 4, align="right", keep=2),
    Column("reason", "REASON", 12, keep=3, flex=True),
]
SORTS = [c.key for c in COLUMNS]


def job_cells(r: JobRow, pal: Palette, now: float) -> Sequence[Cell]:
    state = Text(r.state, getattr(pal, JOB_STATE_STYLE.get(r.state, "dim")))
    if r.idle_s is not None:
        state.append(" IDLE", pal.bad)
    starts = r.starts
    run: Cell = Text(starts, pal.accent) if starts else cells.duration(r.run(now))
    return [r.label, r.user, r.name, state, r.gpus, r.node, cells.duration(r.wait(now)), run, str(r.attempt),
            str(r.priority), r.reason]


class QueueScreen(ViewScreen, SortCycle):
    SORTS = SORTS
    crumb = "Queue"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("n", "submit", "Submit"),
        Binding("c", "cancel", "Cancel"),
        Binding("p", "priority", "Priority"),
        Binding("m", "mine", "Mine"),
        Binding("f", "finished", "Finished", show=False),
        Binding("s", "sort", "Sort", show=False),
        Binding("S", "sort_reverse", "Reverse", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort, self.reverse = "id", False
        self.mine = False
        self.finished = False
        self.cache = JobRowCache()

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="summary", classes="summary")
        yield RowTable(COLUMNS, lambda r, pal: job_cells(r, pal, self.now()), key=lambda r: r.label,
                       empty="no jobs", id="jobs")

    def requests(self) -> list[Request]:
        return [self._request()]

    def _request(self) -> Request:
        return Request.of(f"queue:{self.mine}:{self.finished}", "queue", all=not self.mine, finished=self.finished)

    def update_view(self, state: State) -> None:
        super().update_view(state)
        got = state.get(self._request().key)
        table = self.query_one(RowTable)
        if not isinstance(got, list):
            self.query_one("#summary", Static).update("loading…" if got is None else f"queue: {got}")
            return
        rows = job_rows(got, self.now(), self.filter, self.sort, self.reverse, cache=self.cache)
        table.set_rows(rows, sort=(self.sort, self.reverse))
        counts: dict[str, int] = {}
        for r in rows:
            counts[r.state] = counts.get(r.state, 0) + 1
        who = "my jobs" if self.mine else "all users"
        parts = [f"{len(rows)} of {len(got)} jobs" if self.filter_text else f"{len(got)} jobs", who]
        parts += [f"{n} {s.lower()}" for s, n in sorted(counts.items())]
        if self.finished:
            parts.append("with finished")
        if self.filter_text:
            parts.append(f"filter: {self.filter_text}")
        self.query_one("#summary", Static).update(" · ".join(parts))

    def _job(self) -> JobRow | None:
        row: JobRow | None = self.query_one(RowTable).selected
        return row

    @on(RowTable.Selected)
    def _open(self, event: RowTable.Selected) -> None:
        self.app.push_screen(JobScreen(event.row.label))

    @on(RowTable.HeaderClicked)
    def _header(self, event: RowTable.HeaderClicked) -> None:
        self.sort_by_header(event.column, JOB_SORT)

    def action_mine(self) -> None:
        self.mine = not self.mine
        self.notify("showing my jobs" if self.mine else "showing every user's jobs", timeout=2)
        self.update_view(self.host.state)
        self.host.poll_now()

    def action_finished(self) -> None:
        self.finished = not self.finished
        self.host.poll_now()

    def action_submit(self) -> None:
        from hybridctl.tui.screens.submit import SubmitDialog, SubmitRequest

        host = self.host

        def answered(req: SubmitRequest | None) -> None:
            if req is not None:
                for w in req.warnings:
                    self.app.notify(w, severity="warning")
                host.act("submit", {"spec": req.spec, "source": req.source}, lambda r: f"submitted job {r['id']}")

        if not host.readonly:
            self.app.push_screen(SubmitDialog(), answered)

    def action_cancel(self) -> None:
        row = self._job()
        if row is not None:
            ask_cancel(self, row.label, f"{row.name or 'unnamed'}, {row.user}, {row.state}")

    def action_priority(self) -> None:
        row = self._job()
        if row is not None:
            ask_priority(self, str(row.job_id), row.priority)
