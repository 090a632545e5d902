"""How numbers become short, readable table cells: bars, sparklines, sizes, durations.

Pure functions (no Textual): every cell states its value in text too, so nothing is carried by
colour alone, and the same helpers serve the tables, the charts and the tests."""

from __future__ import annotations

from typing import Iterable, Sequence

from hybridctl.fmt import duration

__all__ = ["bar", "spark", "mib", "watts", "celsius", "money", "percent", "duration", "column_chart"]

BLOCKS = " ▁▂▃▄▅▆▇█"
"""Eighths of a cell, for sparklines and column charts."""
NA = "–"
"""What a metric the GPU cannot report (None) shows."""


def level(value: float | None, top: float, steps: int) -> int:
    """0..steps: how full `value` is on a fixed scale 0..top (None and negatives are 0)."""
    if value is None or top <= 0:
        return 0
    frac = min(1.0, max(0.0, float(value) / top))
    return int(round(frac * steps))


def bar(value: float | None, top: float, width: int) -> str:
    """A horizontal bar on a fixed scale: '█████▌    ' (width cells, eighth-cell resolution)."""
    if width <= 0:
        return ""
    eighths = level(value, top, width * 8)
    full, part = divmod(eighths, 8)
    text = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return text.ljust(width)[:width]


def spark(values: Iterable[float | None], top: float, width: int) -> str:
    """The last `width` values as a one-line sparkline on a fixed scale, right-aligned.

    A fixed scale (not min..max of the data) keeps 5 % from looking like 100 %."""
    vals = list(values)[-width:] if width > 0 else []
    out = "".join(" " if v is None else BLOCKS[max(1, level(v, top, 8))] for v in vals)
    return out.rjust(width)


def column_chart(values: Sequence[float | None], top: float, width: int, height: int) -> list[str]:
    """A `height`-row column chart of the last `width` values (top row first), fixed scale 0..top."""
    vals = list(values)[-width:] if width > 0 else []
    cols = [0 if v is None else max(1, level(v, top, height * 8)) for v in vals]
    rows = []
    for r in range(height - 1, -1, -1):
        base = r * 8
        line = "".join(BLOCKS[min(8, max(0, c - base))] for c in cols)
        rows.append(line.rjust(width))
    return rows


def mib(value: float | None) -> str:
    """MiB -> '812M', '12.3G', '1.2T'."""
    if value is None:
        return NA
    v = float(value)
    if v < 1024:
        return f"{v:.0f}M"
    if v < 1024 * 1024:
        g = v / 1024
        return f"{g:.1f}G" if g < 100 else f"{g:.0f}G"
    return f"{v / 1024 / 1024:.1f}T"


def percent(value: float | None) -> str:
    return NA if value is None else f"{float(value):.0f}%"


def celsius(value: float | None) -> str:
    return NA if value is None else f"{float(value):.0f}°C"


def watts(value: float | None) -> str:
    if value is None:
        return NA
    v = float(value)
    return f"{v / 1000:.1f}kW" if v >= 10000 else f"{v:.0f}W"


def money(value: float | None) -> str:
    """Dollars: '$3.06', '$1,234'."""
    if value is None:
        return NA
    v = float(value)
    return f"${v:,.0f}" if v >= 1000 else f"${v:.2f}"


def clock(ts: float | None) -> str:
    """Local wall time of a timestamp, 'HH:MM:SS' (the date is in the events view's tooltip)."""
    import time

    return "" if ts is None else time.strftime("%H:%M:%S", time.localtime(ts))


def stamp(ts: float | None) -> str:
    import time

    return "" if ts is None else time.strftime("%m-%d %H:%M:%S", time.localtime(ts))
