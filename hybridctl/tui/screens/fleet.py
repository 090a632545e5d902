"""Fleet: one row per node (k9s's `:nodes`), GPU use, live util sparkline, memory, heat, power and
cloud price; Enter drills into a node, `d`/`r` drain and resume it."""

from __future__ import annotations

from typing import Any, ClassVar, Iterable, Sequence

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.widget import Widget
from textual.widgets import Static

from hybridctl.tui import cells
from hybridctl.tui.data import State
from hybridctl.tui.model import NODE_SORT, NodeRow, node_rows
from hybridctl.tui.screens.base import SortCycle, ViewScreen
from hybridctl.tui.screens.node import NodeScreen, ask_drain, ask_resume
from hybridctl.tui.widgets.table import Cell, Column, Palette, RowTable

COLUMNS = [
    Column("name", "NODE", 12, keep=9),
    Column("site", "SITE", 9, keep=4),
    Column("state", "STATE", 11, keep=9),
    Column("gpus", "GPUS", 5, align="right", keep=8),
    Column("util", "UTIL", 12, keep=7),
    Column("mem", "GPU MEM", 11, align="right", keep=6),
    Column("temp", "TEMP", 5, align="right", keep=5),
    Column("power", "POWER", 6, align="right", keep=3),
    Column("price", "$/H", 6, align="right", keep=4),
    Column("reason", "REASON", 12, keep=1, flex=True),
]
SORTS = [c.key for c in COLUMNS]
STATE_STYLE = {"UP": "ok", "DRAINING": "warn", "DRAINED": "warn", "UNREACHABLE": "bad", "LOST": "bad"}


def state_cell(state: str, pal: Palette) -> Text:
    return Text(state, getattr(pal, STATE_STYLE.get(state, "dim")))


def node_cells(r: NodeRow, pal: Palette) -> Sequence[Cell]:
    gpus = Text(f"{r.gpus_used}/{r.gpus_total}")
    if r.unhealthy or r.foreign:
        gpus.append("!", pal.bad)
    util: Cell = "–"
    if r.util is not None:
        util = Text(cells.spark(r.util_hist, 100, 7), pal.accent)
        util.append(f" {r.util:3.0f}%")
    mem = "–" if r.mem_used is None else f"{cells.mib(r.mem_used)}/{cells.mib(r.mem_total)}"
    temp: Cell = cells.celsius(r.temp_max)
    if r.temp_max is not None and r.temp_max >= 85:
        temp = Text(temp + "!", pal.bad)
    price = cells.money(r.price) if r.site.startswith("cloud") else ""
    reason = r.reason
    if r.unhealthy:
        reason = f"{r.unhealthy} GPU fault" + (f"; {reason}" if reason else "")
    if r.foreign:
        reason = f"{r.foreign} GPU foreign" + (f"; {reason}" if reason else "")
    return [r.name, r.site, state_cell(r.state, pal), gpus, util, mem, temp, cells.watts(r.power), price,
            Text(reason, pal.warn) if reason else ""]


def fleet_summary(rows: Sequence[NodeRow], total: int, filter_text: str) -> str:
    used = sum(r.gpus_used for r in rows)
    gpus = sum(r.gpus_total for r in rows)
    states: dict[str, int] = {}
    for r in rows:
        states[r.state] = states.get(r.state, 0) + 1
    parts = [f"{len(rows)} of {total} nodes" if filter_text else f"{total} nodes", f"GPUs {used}/{gpus} in use"]
    parts += [f"{n} {s.lower()}" for s, n in sorted(states.items()) if s != "UP"]
    cloud = sum(1 for r in rows if r.site.startswith("cloud"))
    if cloud:
        rate = sum(r.price or 0 for r in rows)
        parts.append(f"{cloud} cloud ({cells.money(rate)}/h)")
    if filter_text:
        parts.append(f"filter: {filter_text}")
    return " · ".join(parts)


class FleetScreen(ViewScreen, SortCycle):
    SORTS = SORTS
    crumb = "Fleet"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "drain", "Drain"),
        Binding("r", "resume", "Resume"),
        Binding("s", "sort", "Sort"),
        Binding("S", "sort_reverse", "Reverse", show=False),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.sort, self.reverse = "name", False

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="summary", classes="summary")
        yield RowTable(COLUMNS, node_cells, key=lambda r: r.name, empty="no nodes (yet)", id="nodes")

    def update_view(self, state: State) -> None:
        super().update_view(state)
        nodes: list[dict[str, Any]] = state.nodes
        rows = node_rows(nodes, state.history, self.filter, self.sort, self.reverse)
        self.query_one("#summary", Static).update(fleet_summary(rows, len(nodes), self.filter_text))
        self.query_one(RowTable).set_rows(rows, sort=(self.sort, self.reverse))

    def _node(self) -> NodeRow | None:
        row: NodeRow | None = self.query_one(RowTable).selected
        return row

    @on(RowTable.Selected)
    def _open(self, event: RowTable.Selected) -> None:
        self.app.push_screen(NodeScreen(event.row.name))

    @on(RowTable.HeaderClicked)
    def _header(self, event: RowTable.HeaderClicked) -> None:
        self.sort_by_header(event.column, NODE_SORT)

    def action_drain(self) -> None:
        row = self._node()
        if row is not None:
            ask_drain(self, row.name)

    def action_resume(self) -> None:
        row = self._node()
        if row is not None:
            ask_resume(self, row.name)
