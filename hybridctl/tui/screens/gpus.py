"""GPUs: every GPU of the fleet in one table (k9s-style `:gpus`), sortable by util, memory, heat
or holder; Enter opens the GPU."""

from __future__ import annotations

from typing import ClassVar, Iterable, Sequence

from textual import on
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import Static

from hybridctl.tui.data import Request, State
from hybridctl.tui.model import GPU_SORT, GpuRow, allocations, gpu_rows, gpu_state, sort_rows
from hybridctl.tui.screens.base import ACTIVE_QUEUE, SortCycle, ViewScreen
from hybridctl.tui.widgets.gpus import GPU_COLUMNS, gpu_cells
from hybridctl.tui.widgets.table import Cell, Column, Palette, RowTable

COLUMNS = [Column("node", "NODE", 10, keep=9), *GPU_COLUMNS]
SORTS = [c.key for c in COLUMNS]


def cells_with_node(r: GpuRow, pal: Palette) -> Sequence[Cell]:
    return [r.node, *gpu_cells(r, pal)]


class GpusScreen(ViewScreen, SortCycle):
    SORTS = SORTS
    crumb = "GPUs"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "sort", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort, self.reverse = "node", False

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="summary", classes="summary")
        yield RowTable(COLUMNS, cells_with_node, key=lambda r: r.key, empty="no GPUs", id="gpus")

    def requests(self) -> list[Request]:
        return [ACTIVE_QUEUE]

    def update_view(self, state: State) -> None:
        super().update_view(state)
        active = state.get(ACTIVE_QUEUE.key)
        allocs = allocations(active if isinstance(active, list) else None)
        rows = [g for n in state.nodes for g in gpu_rows(n, state.history, allocs)]
        flt = self.filter
        if not flt.empty:
            rows = [r for r in rows if flt.match(r.users.split(",")[0] if r.users else "", gpu_state(r), r.node,
                                                 r.search)]
        if self.sort != "node" or self.reverse:  # else: the controller's order (node name, GPU index)
            rows = sort_rows(rows, GPU_SORT, self.sort, self.reverse)
        self.query_one(RowTable).set_rows(rows, sort=(self.sort, self.reverse))
        states: dict[str, int] = {}
        for r in rows:
            st = gpu_state(r)
            states[st] = states.get(st, 0) + 1
        parts = [f"{len(rows)} GPUs"] + [f"{n} {s.lower()}" for s, n in sorted(states.items())]
        if self.filter_text:
            parts.append(f"filter: {self.filter_text}")
        self.query_one("#summary", Static).update(" · ".join(parts))

    @on(RowTable.Selected)
    def _open(self, event: RowTable.Selected) -> None:
        from hybridctl.tui.screens.gpu import GpuScreen

        self.app.push_screen(GpuScreen(event.row.node, event.row.index))

    @on(RowTable.HeaderClicked)
    def _header(self, event: RowTable.HeaderClicked) -> None:
        self.sort_by_header(event.column, GPU_SORT)
