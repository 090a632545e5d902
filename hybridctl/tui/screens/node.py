"""Node: one row per GPU (util, memory, heat, power, health, holder), the highlighted GPU's history
charts, nvitop's process table with foreign processes flagged, and what the node's content cache
holds (environments, data; what cache-aware placement reads). Enter on a GPU opens it, Enter on a
process opens its job."""

from __future__ import annotations

from typing import ClassVar, Iterable, Sequence

from rich.text import Text
from textual import on
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.widget import Widget
from textual.widgets import Static

from hybridctl.tui import cells
from hybridctl.tui.data import Request, State
from hybridctl.tui.history import GpuHistory
from hybridctl.tui.model import GpuRow, ProcRow, allocations, gpu_rows, proc_rows, site_text
from hybridctl.tui.screens.base import ACTIVE_QUEUE, ViewScreen
from hybridctl.tui.widgets.chart import HistoryChart
from hybridctl.tui.widgets.gpus import GPU_COLUMNS, gpu_cells
from hybridctl.tui.widgets.table import Cell, Column, Palette, RowTable

PROC_COLUMNS = [
    Column("gpu", "GPU", 3, align="right", keep=9),
    Column("pid", "PID", 8, align="right", keep=8),
    Column("user", "USER", 10, keep=7),
    Column("job", "JOB", 9, keep=8),
    Column("mem", "GPU MEM", 8, align="right", keep=6),
    Column("sm", "SM", 4, align="right", keep=5),
    Column("kind", "KIND", 20, keep=4, flex=True),
]
def proc_cells(p: ProcRow, pal: Palette) -> Sequence[Cell]:
    if p.foreign:
        kind: Cell = Text("FOREIGN (not a hybridctl job)", pal.warn)
    elif p.pid is None:
        kind = Text("placed (no process seen)", pal.dim)
    else:
        kind = "job"
    return [str(p.gpu), "–" if p.pid is None else str(p.pid), p.user, p.job or "–", cells.mib(p.mem),
            cells.percent(p.sm), kind]


def show_charts(screen: Widget, hist: GpuHistory | None, r: GpuRow | None) -> None:
    """Fill the four charts of a GPU screen or node screen from the GPU's history."""
    empty: tuple[float | None, ...] = ()
    specs = [
        ("#chart-util", hist.util if hist else empty, 100.0, cells.percent(r.util if r else None)),
        ("#chart-mem", hist.mem if hist else empty, (r.mem_total if r else None) or 1.0,
         f"{cells.mib(r.mem_used if r else None)} of {cells.mib(r.mem_total if r else None)}"),
        ("#chart-temp", hist.temp if hist else empty, 100.0, cells.celsius(r.temp if r else None)),
        ("#chart-power", hist.power if hist else empty, (r.power_limit if r else None) or 700.0,
         cells.watts(r.power if r else None) + (f" of {cells.watts(r.power_limit)}" if r and r.power_limit else "")),
    ]
    for sel, values, top, current in specs:
        screen.query_one(sel, HistoryChart).show(values, top, current)


def charts() -> Vertical:
    return Vertical(HistoryChart("util", id="chart-util"), HistoryChart("memory", id="chart-mem"),
                    HistoryChart("temp", id="chart-temp"), HistoryChart("power", id="chart-power"),
                    classes="charts")


def set_procs(table: RowTable, rows: list[ProcRow]) -> None:
    """Fill the process table; its SM column only where some process reports SM use (NVML's
    process utilisation: the agent's `sm_util`; drivers and vGPUs without it leave it out)."""
    table.hidden = frozenset() if any(p.sm is not None for p in rows) else frozenset({"sm"})
    table.set_rows(rows)


def procs_table(empty: str) -> RowTable:
    """The GPU-process table of the node and GPU screens (Enter opens the process's job)."""
    return RowTable(PROC_COLUMNS, proc_cells, key=lambda p: p.key, empty=empty, id="procs")


def active_allocations(state: State) -> dict[tuple[str, int], list[dict]]:
    """Which job holds which GPU, from the polled queue of running jobs."""
    active = state.get(ACTIVE_QUEUE.key)
    return allocations(active if isinstance(active, list) else None)


CACHE_QUERY = Request.of("cache", "nodes", every=5, cache=True)
"""Every node's cache items (`nodes --cache`), for the node screen: read every 5th refresh (the
largest 200 per node; they change only when a job brings new data or an env is built)."""
CACHE_LINES = 4
"""Cache items the node screen lists (largest first); `hybridctl nodes --cache` lists them all."""


def cache_text(n: dict, items: list[dict] | None) -> Text | None:
    """'cache 1.3 GB of 53.7 GB: 1 env 1.0 GB, 3 data objects 300 MB' and the largest items,
    one a line (kind, content id, size); None when the node's agent reports no cache."""
    c = n.get("cache")
    if not isinstance(c, dict):
        return None
    from hybridctl.core.locality import size_text

    used = (c.get("object_bytes") or 0) + (c.get("env_bytes") or 0)
    t = Text()
    t.append("cache ", "bold")
    t.append(size_text(used))
    t.append(f" of {size_text(c['max_bytes'])}" if c.get("max_bytes") else " (no cap)")
    parts = []
    if c.get("envs"):
        parts.append(f"{c['envs']} env{'s' if c['envs'] != 1 else ''} {size_text(c.get('env_bytes') or 0)}")
    if c.get("objects"):
        parts.append(f"{c['objects']} data object{'s' if c['objects'] != 1 else ''} "
                     f"{size_text(c.get('object_bytes') or 0)}")
    t.append(": " + ", ".join(parts) if parts else ": empty")
    shown = sorted(items or [], key=lambda i: -(i.get("bytes") or 0))
    for i in shown[:CACHE_LINES]:
        t.append(f"\n  {i.get('kind', '?'):<10} {str(i.get('id', ''))[:16]:<16} {size_text(i.get('bytes') or 0):>8}")
    if len(shown) > CACHE_LINES:
        t.append(f"\n  … {len(shown) - CACHE_LINES} more (hybridctl nodes --cache)", "dim")
    return t


def node_info(n: dict, state: State, now: float) -> Text:
    t = Text()
    t.append(n["name"], "bold")
    t.append(f" · {site_text(n)} · ")
    t.append(n.get("state", "?"))
    cpus, free = n.get("cpus") or 0, n.get("cpus_free") or 0
    t.append(f" · GPUs {n.get('gpus_used', 0)}/{n.get('gpus_total', 0)} · CPUs {cpus - free:g}/{cpus:g} in use")
    if n.get("memory_mb"):
        t.append(f" · RAM {cells.mib(n['memory_mb'])}")
    if n.get("last_seen"):
        t.append(f" · seen {cells.duration(now - n['last_seen'])} ago")
    if n.get("simulated"):
        t.append(" · simulated (no telemetry)")
    if n.get("state_reason"):
        t.append(f"\nreason: {n['state_reason']}")
    if n.get("link_error"):
        t.append(f"\nlink: {n['link_error']}")
    return t


class NodeScreen(ViewScreen):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("d", "drain", "Drain"),
        Binding("r", "resume", "Resume"),
        Binding("tab", "app.focus_next", "Switch table", show=False),
    ]
    filterable = False

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node
        self.crumb = node  # type: ignore[misc]

    def body(self) -> Iterable[Widget]:
        yield Static("loading…", id="info", classes="summary")
        yield Static("", id="cache", classes="summary")
        yield RowTable(GPU_COLUMNS, gpu_cells, key=lambda r: str(r.index), empty="no GPUs reported", id="gpus")
        yield charts()
        yield procs_table("no GPU processes, no jobs placed")

    def requests(self) -> list[Request]:
        n = self.host.state.node(self.node)  # its cache items only where its agent reports a cache
        return [ACTIVE_QUEUE, CACHE_QUERY] if n is not None and n.get("cache") else [ACTIVE_QUEUE]

    def update_view(self, state: State) -> None:
        super().update_view(state)
        n = state.node(self.node)
        if n is None:
            gone = "loading…" if not state.nodes else f"node {self.node} is not in the fleet (removed?)"
            self.query_one("#info", Static).update(gone)
            return
        self.query_one("#info", Static).update(node_info(n, state, self.now()))
        listed = state.get(CACHE_QUERY.key)
        mine = next((x.get("cache_items") for x in listed if x.get("name") == self.node), None) \
            if isinstance(listed, list) else None
        cache = cache_text(n, mine)
        box = self.query_one("#cache", Static)
        box.display = cache is not None
        if cache is not None:
            box.update(cache)
        allocs = active_allocations(state)
        gpus = self.query_one("#gpus", RowTable)
        gpus.set_rows(gpu_rows(n, state.history, allocs))
        set_procs(self.query_one("#procs", RowTable), proc_rows(n, allocs))
        self._charts()

    def _charts(self) -> None:
        r: GpuRow | None = self.query_one("#gpus", RowTable).selected
        show_charts(self, r.hist if r else None, r)

    @on(RowTable.Highlighted, "#gpus")
    def _gpu_moved(self) -> None:
        self._charts()

    @on(RowTable.Selected, "#gpus")
    def _open_gpu(self, event: RowTable.Selected) -> None:
        from hybridctl.tui.screens.gpu import GpuScreen

        self.app.push_screen(GpuScreen(self.node, event.row.index))

    @on(RowTable.Selected, "#procs")
    def _open_job(self, event: RowTable.Selected) -> None:
        open_job(self, event.row)

    def action_drain(self) -> None:
        ask_drain(self, self.node)

    def action_resume(self) -> None:
        ask_resume(self, self.node)


# ---- the node actions (this screen and the fleet view offer them) --------------------------------


def ask_drain(view: ViewScreen, node: str) -> None:
    from hybridctl.tui.screens.drain import ConfirmDrain

    host = view.host

    def answered(reason: str | None) -> None:
        if reason is not None:
            host.act("drain", {"node": node, "reason": reason}, lambda r: f"node {r['node']}: {r['state']}")

    if not host.readonly:
        view.app.push_screen(ConfirmDrain(node), answered)


def ask_resume(view: ViewScreen, node: str) -> None:
    from hybridctl.tui.screens.confirm import Confirm

    host = view.host

    def answered(yes: bool | None) -> None:
        if yes:
            host.act("resume", {"node": node}, lambda r: f"node {r['node']}: {r['state']}")

    if not host.readonly:
        view.app.push_screen(Confirm(f"Resume node {node}? New jobs may be placed on it again.", "Resume"), answered)


def open_job(screen: ViewScreen, p: ProcRow) -> None:
    if not p.job:
        screen.notify(f"pid {p.pid} (user {p.user}) is not a hybridctl job: nothing to open", severity="warning")
        return
    from hybridctl.tui.screens.job import JobScreen

    screen.app.push_screen(JobScreen(p.job))
