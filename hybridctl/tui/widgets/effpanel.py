"""`EffPanel`: the job screen's efficiency panel — the `eff` record in text (GPU util mean/p95,
memory peak vs capacity, GPU-hours used vs held, CPU efficiency, peak RSS) beside sparklines of
the job's GPU utilisation and of what it logged with `hybridctl.job.log` (loss, tokens/s …), from
the `history` op. The screen fetches both (`requests`); the panel only draws (`show`)."""

from __future__ import annotations

from typing import Any, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Sparkline, Static

from hybridctl.core.errors import HybridctlError
from hybridctl.tui.data import Request
from hybridctl.tui.model import eff_text, gpu_util_chart, metric_charts, metric_value

CHARTS = 4
"""Sparkline rows: GPU utilisation and up to three logged metrics."""


def eff_requests(job: str) -> list[Request]:
    """What the panel needs on every refresh (read in the poll worker, never on the UI thread)."""
    return [Request.of(f"eff:{job}", "eff", job=job), Request.of(f"history:{job}", "history", job=job)]


class SparkRow(Horizontal):
    """label · sparkline · latest value (and the range the sparkline spans: its scale is the
    data's own min..max, so the numbers say what the shape means)."""

    DEFAULT_CSS = """
    SparkRow { height: 1; }
    SparkRow > .spark-label { width: 13; color: $text-muted; }
    SparkRow > Sparkline { width: 1fr; }
    SparkRow > .spark-value { width: 21; padding: 0 0 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", classes="spark-label")
        yield Sparkline([], summary_function=max)
        yield Static("", classes="spark-value")

    def show(self, label: str, values: Sequence[float], value: str) -> None:
        self.query_one(".spark-label", Static).update(label)
        self.query_one(Sparkline).data = list(values)
        self.query_one(".spark-value", Static).update(value)


class EffPanel(Horizontal):
    DEFAULT_CSS = """
    EffPanel { height: auto; max-height: 6; padding: 0 1; }
    EffPanel > #eff-text { width: 40; height: auto; }
    EffPanel > #eff-charts { width: 1fr; height: auto; }
    """

    def compose(self) -> ComposeResult:
        yield Static("efficiency: loading…", id="eff-text")
        with Vertical(id="eff-charts"):
            for i in range(CHARTS):
                yield SparkRow(id=f"spark-{i}")

    def show(self, eff: Any, history: Any) -> None:
        """Draw the latest replies; a refusal (a pending job, history off, another's job) is
        shown as the controller worded it, dimmed."""
        text = self.query_one("#eff-text", Static)
        if isinstance(eff, HybridctlError):
            text.update(Text(f"efficiency: {eff.message}", "dim"))
        elif isinstance(eff, dict):
            out = Text()
            for i, (label, value) in enumerate(eff_text(eff)):
                if i:
                    out.append("\n")
                out.append(f"{label:<11}", "bold red" if label == "IDLE" else "bold")
                out.append(value)
            text.update(out)
        charts: list[tuple[str, list[float], str]] = []
        if isinstance(history, dict):
            util = gpu_util_chart(history)
            if util:
                charts.append(("GPU util", util, f"{util[-1]:.0f}% ({min(util):.0f}–{max(util):.0f}%)"))
            for name, values in metric_charts(history, CHARTS - 1):
                charts.append((name, values, f"{metric_value(values[-1])} "
                                             f"({metric_value(min(values))}–{metric_value(max(values))})"))
        # without a chart (no samples yet, a refusal) the text takes the whole width
        self.query_one("#eff-charts").display = bool(charts)
        text.styles.width = 40 if charts else "1fr"
        for i in range(CHARTS):
            row = self.query_one(f"#spark-{i}", SparkRow)
            row.display = i < len(charts)
            if i < len(charts):
                row.show(*charts[i])
