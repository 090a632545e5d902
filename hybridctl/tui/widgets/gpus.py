"""The GPU table's columns and cells, shared by the node screen (one node's GPUs) and the GPUs
view (every GPU of the fleet, with a NODE column in front)."""

from __future__ import annotations

from typing import Sequence

from rich.text import Text

from hybridctl.tui import cells
from hybridctl.tui.model import GpuRow, gpu_state
from hybridctl.tui.widgets.table import Cell, Column, Palette

GPU_COLUMNS = [
    Column("gpu", "GPU", 3, align="right", keep=9),
    Column("model", "MODEL", 8, keep=4),
    Column("state", "STATE", 7, keep=8),
    Column("util", "UTIL", 14, keep=7),
    Column("mem", "MEMORY", 13, align="right", keep=6),
    Column("temp", "TEMP", 5, align="right", keep=5),
    Column("power", "POWER", 9, align="right", keep=4),
    Column("job", "JOB", 8, keep=7),
    Column("user", "USER", 8, keep=3, flex=True),
]
GPU_STATE_STYLE = {"FREE": "ok", "BUSY": "accent", "FOREIGN": "warn", "FAULT": "bad"}


def gpu_cells(r: GpuRow, pal: Palette) -> Sequence[Cell]:
    state = gpu_state(r)
    util: Cell = "–"
    if r.util is not None:
        util = Text(cells.spark(r.hist.series("util", 9) if r.hist else (), 100, 9), pal.accent)
        util.append(f" {r.util:3.0f}%")
    mem = "–" if r.mem_used is None else f"{cells.mib(r.mem_used)}/{cells.mib(r.mem_total)}"
    power = cells.watts(r.power) + (f"/{cells.watts(r.power_limit)}" if r.power_limit else "")
    hot: Cell = cells.celsius(r.temp)
    if r.temp is not None and r.temp >= 85:
        hot = Text(f"{hot}!", pal.bad)
    return [str(r.index), r.model, Text(state, getattr(pal, GPU_STATE_STYLE[state])), util, mem, hot, power,
            r.jobs or "", r.users or (r.reason if not r.healthy else "")]
