"""Cloud: cloud nodes (and the last ones given back) with price and spend, spend against the budget,
jobs the autoscaler holds back with the reason, and the cheapest offers — from the controller's
`cloud_status` request. A controller without one (or without a provider configured) says so
plainly instead of showing empty tables."""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from rich.text import Text
from textual import on
from textual.containers import Horizontal, Vertical
from textual.widget import Widget
from textual.widgets import Label, Static

from hybridctl.core.errors import HybridctlError
from hybridctl.fmt import reclaim_rate
from hybridctl.tui import cells
from hybridctl.tui.data import Request, State
from hybridctl.tui.screens.base import ViewScreen
from hybridctl.tui.widgets.table import Cell, Column, Palette, RowTable

STATUS = Request.of("cloud", "cloud_status", ended=20)
OFFERS = Request.of("offers", "cloud_offers", every=30)
NOT_CONFIGURED = ("no cloud provider configured: this controller does not burst to the cloud. "
                  "Add a `cloud:` section to its config (see config/hybridctl.example.yaml) to enable it.")

NODE_COLUMNS = [
    Column("node", "NODE", 12, keep=9), Column("provider", "PROVIDER", 9, keep=5),
    Column("type", "INSTANCE", 13, keep=6), Column("zone", "ZONE", 11, keep=3), Column("market", "MARKET", 9, keep=4),
    Column("state", "STATE", 13, keep=8), Column("jobs", "JOBS", 4, align="right", keep=7),
    Column("price", "$/H", 7, align="right", keep=9), Column("spent", "SPENT", 8, align="right", keep=6),
    Column("when", "LAUNCHED", 9, keep=2), Column("reason", "REASON", 10, keep=2, flex=True),
]
HELD_COLUMNS = [Column("job", "JOB", 9, keep=9), Column("reason", "WHY", 20, keep=8, flex=True)]
OFFER_COLUMNS = [
    Column("provider", "PROVIDER", 9, keep=5), Column("type", "INSTANCE", 14, keep=9),
    Column("gpus", "GPUS", 8, keep=8), Column("zone", "ZONE", 11, keep=4),
    Column("price", "$/H", 8, align="right", keep=9), Column("market", "MARKET", 9, keep=6),
]
_STATE_STYLE = {"up": "bold", "terminated": "dim", "failed": "red", "draining": "yellow", "launching": "cyan",
                "bootstrapping": "cyan"}


def node_cells(i: dict[str, Any], pal: Palette) -> Sequence[Cell]:
    return [str(i["node"]), str(i["provider"]), str(i["instance_type"]), str(i["zone"]), str(i["market"]),
            Text(str(i["state"]), _STATE_STYLE.get(str(i["state"]), "")), str(i["jobs"]),
            cells.money(i["price_hourly"]), cells.money(i["spent_usd"]), cells.clock(i["launched_at"]),
            str(i.get("reason") or "")]


def held_cells(h: dict[str, Any], pal: Palette) -> Sequence[Cell]:
    return [str(h["job"]), str(h["reason"])]


def offer_cells(o: dict[str, Any], pal: Palette) -> Sequence[Cell]:
    return [str(o["provider"]), str(o["instance_type"]), f"{o.get('gpu_type') or 'GPU'}:{o['gpus']}",
            str(o["zone"]), cells.money(o["price_hourly"]), str(o["market"])]


def spend_text(status: dict[str, Any]) -> Text:
    """'simulated · 2/3 nodes · $2.14/h now (max $40) · spent $0.20 of $25 per day ███··· · burst after 4s…',
    then the user or group budget nearest its end, errors and notes, a line each."""
    spent, budget = float(status["spent_usd"]), float(status["budget_usd"] or 0)
    t = Text()
    t.append(", ".join(status["providers"]), "bold")
    t.append(f" · {status['nodes']}/{status['max_nodes']} nodes · {cells.money(status['hourly_usd'])}/h now"
             f" (max {cells.money(status['max_hourly_usd'])})")
    t.append(f" · spent {cells.money(spent)}")
    if budget:
        frac = spent / budget
        t.append(f" of {cells.money(budget)} per {status['period']} ({frac:.0%}) ")
        t.append(cells.bar(spent, budget, 20).replace(" ", "·"), "bold" if frac < 0.9 else "reverse")
    t.append(f" · burst after {status['after_s']:g}s, idle nodes go after {status['idle_timeout_s']:g}s")
    owners = status.get("owners") or []
    if owners:  # the budget of a user or group nearest its end (cloud.burst.user_budget_usd / group_budget_usd)
        o = owners[0]
        more = f" (+{len(owners) - 1} more budgets)" if len(owners) > 1 else ""
        t.append(f"\nnearest its budget: {o['kind']} {o['name']} {cells.money(o['spent_usd'])} spent"
                 f" ({cells.money(o.get('used_usd', o['spent_usd']))} with running jobs) of"
                 f" {cells.money(o['budget_usd'])}{more}")
    # The spot pool that reclaimed the most (the list is by observed rate, highest first) beyond
    # what its priced rate explains by chance: the catalog's `interruptions:` may want fixing.
    worst = next((r for r in status.get("reclaims") or [] if r.get("above_price")), None)
    if worst:
        rate = reclaim_rate(worst)
        rate = f"{rate}, " if rate else ""
        t.append(f"\nreclaims above their price: {worst['pool']} {worst['reclaims']} in {worst['node_hours']:.2f}"
                 f" node-h ({rate}priced at {worst['priced_per_node_hour']:g}/h; cloud status lists all)", "yellow")
    for provider, error in sorted((status.get("errors") or {}).items()):
        t.append(f"\n{provider}: {error}", "bold red")
    for note in status.get("notes") or []:
        t.append(f"\n{note}", "italic")
    return t


class CloudScreen(ViewScreen):
    crumb = "Cloud"

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="summary", classes="summary")
        yield RowTable(NODE_COLUMNS, node_cells, key=lambda i: str(i["instance_id"]),
                       empty="no cloud nodes yet", id="cloud-nodes")
        with Horizontal(id="cloud-lower"):
            with Vertical():
                yield Label("Jobs held back from the cloud, and why", classes="section")
                yield RowTable(HELD_COLUMNS, held_cells, key=lambda h: str(h["job"]),
                               empty="none: every pending job fits or is covered", id="held")
            with Vertical():
                yield Label("Offers, cheapest first", classes="section")
                yield RowTable(OFFER_COLUMNS, offer_cells, key=lambda o: str(o["pool"]), empty="no offers", id="offers")

    def requests(self) -> list[Request]:
        return [STATUS, OFFERS]

    def update_view(self, state: State) -> None:
        super().update_view(state)
        got = state.get(STATUS.key)
        summary = self.query_one("#summary", Static)
        if got is None:
            summary.update("loading…")
            return
        if isinstance(got, HybridctlError) or not got.get("enabled"):
            unknown = isinstance(got, HybridctlError) and "unknown request" not in got.message
            summary.update(f"cloud status unavailable: {got.message}" if unknown else NOT_CONFIGURED)
            self.set_class(True, "-no-cloud")
            return
        self.set_class(False, "-no-cloud")
        summary.update(spend_text(got))
        instances = list(got["instances"])  # live first, then those given back, newest first
        instances.sort(key=lambda i: (i["state"] in ("terminated", "failed"), -(i.get("ended_at") or i["launched_at"])))
        flt = self.filter
        if not flt.empty:
            instances = [i for i in instances if flt.match("", str(i["state"]), str(i["node"]),
                                                           f"{i['node']} {i['instance_type']} {i['zone']} {i['reason']}")]
        self.query_one("#cloud-nodes", RowTable).set_rows(instances)
        held = list(got.get("blocked") or []) + [{"job": c["job"], "reason": f"covered: waits for {c['node']}"}
                                                for c in got.get("covered") or []]
        self.query_one("#held", RowTable).set_rows(held)
        offers = state.get(OFFERS.key)
        self.query_one("#offers", RowTable).set_rows([] if isinstance(offers, HybridctlError) else list(offers or [])[:30])

    @on(RowTable.Selected, "#cloud-nodes")
    def _open_node(self, event: RowTable.Selected) -> None:
        from hybridctl.tui.screens.node import NodeScreen

        if event.row["state"] not in ("terminated", "failed"):  # a node given back has no view
            self.app.push_screen(NodeScreen(str(event.row["node"])))

    @on(RowTable.Selected, "#held")
    def _open_job(self, event: RowTable.Selected) -> None:
        from hybridctl.tui.screens.job import JobScreen

        self.app.push_screen(JobScreen(str(event.row["job"])))
