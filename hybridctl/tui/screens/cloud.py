"""Cloud: cloud nodes with their price, spend so far against the budget, the burst and
scale-down decisions with their reasons, and current offers — from the controller's
`cloud_status` request. A controller without one (or without a provider configured) says so
plainly instead of showing empty tables."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from rich.text import Text
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Static

from hybridctl.core.errors import HybridctlError
from hybridctl.tui import cells
from hybridctl.tui.data import Request, State
from hybridctl.tui.model import NodeRow, node_rows
from hybridctl.tui.screens.base import ViewScreen
from hybridctl.tui.screens.fleet import state_cell
from hybridctl.tui.widgets.table import Cell, Column, Palette, RowTable

STATUS = Request.of("cloud", "cloud_status")
NOT_CONFIGURED = ("no cloud provider configured: this controller does not burst to the cloud. "
                  "Add a `cloud:` section to its config (see config/hybridctl.example.yaml) to enable it.")

NODE_COLUMNS = [
    Column("name", "NODE", 12, keep=9), Column("site", "PROVIDER", 10, keep=5), Column("state", "STATE", 11, keep=8),
    Column("gpus", "GPUS", 5, align="right", keep=7), Column("price", "$/H", 7, align="right", keep=9),
    Column("reason", "REASON", 10, keep=2, flex=True),
]
DECISION_COLUMNS = [
    Column("time", "TIME", 14, keep=9), Column("action", "ACTION", 10, keep=9),
    Column("node", "NODE", 12, keep=5), Column("reason", "REASON", 20, keep=8, flex=True),
]
OFFER_COLUMNS = [
    Column("provider", "PROVIDER", 9, keep=5), Column("type", "INSTANCE", 14, keep=9),
    Column("gpus", "GPUS", 8, keep=8), Column("region", "REGION", 10, keep=4),
    Column("price", "$/H", 8, align="right", keep=9), Column("spot", "SPOT", 4, keep=6),
]


def node_cells(r: NodeRow, pal: Palette) -> Sequence[Cell]:
    return [r.name, r.site.partition(":")[2] or "cloud", state_cell(r.state, pal), f"{r.gpus_used}/{r.gpus_total}",
            cells.money(r.price), r.reason]


def decision_cells(d: dict[str, Any], pal: Palette) -> Sequence[Cell]:
    action = str(d.get("action") or d.get("kind") or "?")
    return [cells.stamp(d.get("time")), Text(action, "bold"), str(d.get("node") or ""), str(d.get("reason") or "")]


def offer_cells(o: dict[str, Any], pal: Palette) -> Sequence[Cell]:
    gpus = o.get("gpus")
    gtext = f"{o.get('gpu_type') or ''}:{gpus}" if gpus is not None else "–"
    price = o.get("price_per_hour", o.get("price"))
    return [str(o.get("provider") or ""), str(o.get("instance_type") or o.get("name") or "?"), gtext,
            str(o.get("region") or ""), cells.money(price), "yes" if o.get("spot", True) else "no"]


def spend_text(status: dict[str, Any]) -> Text:
    spent = status.get("spent", status.get("spend"))
    budget = status.get("budget")
    t = Text()
    t.append(f"provider {status.get('provider', '?')}", "bold")
    t.append(f" · now {cells.money(status.get('per_hour', status.get('rate')))}/h")
    if spent is not None:
        t.append(f" · spent {cells.money(spent)}")
        if budget:
            frac = float(spent) / float(budget)
            t.append(f" of {cells.money(budget)} budget ({frac:.0%}) ")
            t.append(cells.bar(spent, budget, 20).replace(" ", "·"), "bold" if frac < 0.9 else "reverse")
    if status.get("period"):
        t.append(f" · per {status['period']}")
    return t


class CloudScreen(ViewScreen):
    crumb = "Cloud"

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="summary", classes="summary")
        yield RowTable(NODE_COLUMNS, node_cells, key=lambda r: r.name, empty="no cloud nodes running", id="cloud-nodes")
        with Horizontal(id="cloud-lower"):
            with Vertical():
                yield Label("Burst and scale-down decisions", classes="section")
                yield RowTable(DECISION_COLUMNS, decision_cells, key=lambda d: f"{d.get('time')}{d.get('node')}",
                               empty="no burst or scale-down decisions yet", id="decisions")
            with Vertical():
                yield Label("Current offers", classes="section")
                yield RowTable(OFFER_COLUMNS, offer_cells,
                               key=lambda o: f"{o.get('provider')}{o.get('instance_type') or o.get('name')}"
                                             f"{o.get('region')}",
                               empty="no offers", id="offers")

    def requests(self) -> list[Request]:
        return [STATUS]

    def update_view(self, state: State) -> None:
        super().update_view(state)
        cloud = [n for n in state.nodes if n.get("site") == "cloud"]
        rows = node_rows(cloud, state.history, self.filter, "price", True)
        self.query_one("#cloud-nodes", RowTable).set_rows(rows)
        got = state.get(STATUS.key)
        summary = self.query_one("#summary", Static)
        if got is None:
            summary.update("loading…")
            return
        if isinstance(got, HybridctlError):
            unknown = "unknown request" in got.message
            summary.update(NOT_CONFIGURED if unknown else f"cloud status unavailable: {got.message}")
            self.set_class(True, "-no-cloud")
            return
        if not got or got.get("configured") is False or not got.get("provider"):
            summary.update(NOT_CONFIGURED)
            self.set_class(True, "-no-cloud")
            return
        self.set_class(False, "-no-cloud")
        summary.update(spend_text(got))
        self.query_one("#decisions", RowTable).set_rows(list(got.get("decisions") or []))
        self.query_one("#offers", RowTable).set_rows(list(got.get("offers") or []))
