"""Logs: a job's output full screen, followed live (`t` switches stdout/stderr)."""

from __future__ import annotations

from typing import ClassVar, Iterable

from textual.binding import Binding, BindingType
from textual.widget import Widget

from hybridctl.tui.data import Request, State
from hybridctl.tui.screens.base import ViewScreen
from hybridctl.tui.widgets.logtail import LogTail


class LogScreen(ViewScreen):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("t", "toggle_stream", "stdout/stderr")]
    filterable = False

    def __init__(self, job: str, stream: str = "stdout") -> None:
        super().__init__()
        self.job = job
        self.stream = stream
        self.crumb = "logs"  # type: ignore[misc]

    def body(self) -> Iterable[Widget]:
        tail = LogTail(self.job, id="log")
        tail.stream = self.stream
        yield tail

    def requests(self) -> list[Request]:
        return [self.query_one(LogTail).request()]

    def update_view(self, state: State) -> None:
        super().update_view(state)
        self.query_one(LogTail).apply(state.results)

    def action_toggle_stream(self) -> None:
        self.query_one(LogTail).toggle()
        self.host.poll_now()
