"""`HistoryChart`: one metric's recent history as a column chart on a fixed scale, with its label
and current value in text (the chart's shape adds to the number, never replaces it)."""

from __future__ import annotations

from typing import ClassVar, Sequence

from rich.text import Text
from textual.widget import Widget

from hybridctl.tui.cells import column_chart

LABEL = 6
VALUE = 16


class HistoryChart(Widget):
    COMPONENT_CLASSES: ClassVar[set[str]] = {"chart--bars", "chart--label"}
    DEFAULT_CSS = """
    HistoryChart {
        height: 1;
        & > .chart--bars { color: $text-accent; }
        & > .chart--label { color: $text-muted; }
    }
    """

    def __init__(self, label: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.label = label
        self.values: Sequence[float | None] = ()
        self.top = 100.0
        self.current = "–"

    def show(self, values: Sequence[float | None], top: float, current: str) -> None:
        self.values, self.top, self.current = values, top, current
        self.refresh()

    def render(self) -> Text:
        w, h = self.size.width, max(1, self.size.height)
        chart_w = max(1, w - LABEL - VALUE - 2)
        rows = column_chart(list(self.values), self.top, chart_w, h)
        label_style = self.get_component_rich_style("chart--label")
        bars_style = self.get_component_rich_style("chart--bars")
        out = Text(no_wrap=True, overflow="crop")
        for r, row in enumerate(rows):
            if r:
                out.append("\n")
            out.append((self.label if r == 0 else "").ljust(LABEL)[:LABEL] + " ", label_style)
            out.append(row, bars_style)
            out.append(" " + (self.current if r == 0 else "").ljust(VALUE)[:VALUE])
        return out
