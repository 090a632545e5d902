"""GPU: one GPU's history charts, taller than on the node screen, and the processes on it;
Enter on a process opens its job (node → GPU → process → job → logs)."""

from __future__ import annotations

from typing import Iterable

from textual import on
from textual.widget import Widget
from textual.widgets import Static

from hybridctl.tui import cells
from hybridctl.tui.data import Request, State
from hybridctl.tui.model import gpu_rows, gpu_state, proc_rows
from hybridctl.tui.screens.base import ViewScreen
from hybridctl.tui.screens.base import ACTIVE_QUEUE
from hybridctl.tui.screens.node import active_allocations, charts, open_job, procs_table, set_procs, show_charts
from hybridctl.tui.widgets.table import RowTable


class GpuScreen(ViewScreen):
    filterable = False

    def __init__(self, node: str, index: int) -> None:
        super().__init__()
        self.node = node
        self.index = index
        self.crumb = f"GPU {index}"  # type: ignore[misc]

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="info", classes="summary")
        yield charts()
        yield procs_table("no processes, no job placed")

    def requests(self) -> list[Request]:
        return [ACTIVE_QUEUE]

    def update_view(self, state: State) -> None:
        super().update_view(state)
        n = state.node(self.node)
        allocs = active_allocations(state)
        row = next((r for r in gpu_rows(n, state.history, allocs) if r.index == self.index), None) if n else None
        if n is None or row is None:
            self.query_one("#info", Static).update("loading…" if not state.nodes
                                                   else f"GPU {self.node}/{self.index} is not reported")
            return
        health = "healthy" if row.healthy else f"FAULT: {row.reason}"
        info = (f"{self.node} GPU {self.index} · {row.model} · {gpu_state(row)} · {health}"
                f" · util {cells.percent(row.util)} · mem {cells.mib(row.mem_used)}/{cells.mib(row.mem_total)}"
                f" · {cells.celsius(row.temp)} · {cells.watts(row.power)}")
        if row.jobs:
            info += f" · job {row.jobs} ({row.users})"
        self.query_one("#info", Static).update(info)
        show_charts(self, row.hist, row)
        set_procs(self.query_one("#procs", RowTable), proc_rows(n, allocs, gpu=self.index))

    @on(RowTable.Selected, "#procs")
    def _open_job(self, event: RowTable.Selected) -> None:
        open_job(self, event.row)
