"""Events: the audit log — every job state change and priority change, who made it and when,
newest first. `/` filters (`user:` matches the actor or the job's owner); Enter opens the job."""

from __future__ import annotations

from typing import Iterable, Sequence

from rich.text import Text
from textual import on
from textual.widget import Widget
from textual.widgets import Static

from hybridctl.tui import cells
from hybridctl.tui.data import Request, State
from hybridctl.tui.model import EventRow, event_rows
from hybridctl.tui.screens.base import ViewScreen
from hybridctl.tui.widgets.table import Cell, Column, Palette, RowTable

LIMIT = 1000
COLUMNS = [
    Column("time", "TIME", 14, keep=9),
    Column("actor", "BY", 10, keep=8),
    Column("job", "JOB", 8, keep=8),
    Column("owner", "OWNER", 8, keep=5),
    Column("change", "CHANGE", 20, keep=7),
    Column("reason", "REASON", 12, keep=6, flex=True),
]


def event_cells(e: EventRow, pal: Palette) -> Sequence[Cell]:
    actor = Text(e.actor, pal.dim) if e.actor == "controller" else Text(e.actor, "bold")
    return [cells.stamp(e.time), actor, e.job, e.owner, e.change, e.reason]


class EventsScreen(ViewScreen):
    crumb = "Events"

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="summary", classes="summary")
        yield RowTable(COLUMNS, event_cells, key=lambda e: str(e.id), empty="no events yet", id="events")

    def requests(self) -> list[Request]:
        return [Request.of("events", "events", limit=LIMIT)]

    def update_view(self, state: State) -> None:
        super().update_view(state)
        got = state.get("events")
        if not isinstance(got, list):
            self.query_one("#summary", Static).update("loading…" if got is None else f"events: {got}")
            return
        rows = event_rows(got, self.filter)
        self.query_one(RowTable).set_rows(rows)
        text = f"latest {len(got)} events, newest first"
        if self.filter_text:
            text += f" · {len(rows)} match · filter: {self.filter_text}"
        self.query_one("#summary", Static).update(text)

    @on(RowTable.Selected)
    def _open(self, event: RowTable.Selected) -> None:
        from hybridctl.tui.screens.job import JobScreen

        self.app.push_screen(JobScreen(event.row.job))
