"""`LogTail`: a job's output, followed by byte offset like `tail -f`, with a stdout/stderr toggle.
The screen fetches (`request()`), the widget appends what came back (`apply()`); a reply for an
offset the widget has moved past is ignored, so overlapping refreshes never duplicate lines."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Label, Log

from hybridctl.core.errors import HybridctlError
from hybridctl.tui.data import Request

TAIL_BYTES = 64 * 1024
"""A first read starts this far from the end of the log."""


class LogTail(Vertical):
    DEFAULT_CSS = """
    LogTail { height: 1fr; }
    LogTail > Label { width: 1fr; height: 1; background: $panel; }
    LogTail > Log { height: 1fr; }
    """

    def __init__(self, job: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.job = job
        self.stream = "stdout"
        self.read_offset = -TAIL_BYTES
        self.note = "waiting for the first read"
        self.size_read = 0

    def compose(self) -> ComposeResult:
        yield Label(self._title(), id="log-title")
        yield Log(max_lines=20000, auto_scroll=True)

    def _title(self) -> str:
        other = "stderr" if self.stream == "stdout" else "stdout"
        note = f" · {self.note}" if self.note else ""
        return f" {self.stream} of job {self.job}{note}   (t: show {other})"

    def request(self) -> Request:
        return Request.of(f"logs:{self.job}:{self.stream}:{self.read_offset}", "logs", job=self.job, stream=self.stream,
                          offset=self.read_offset, max_bytes=TAIL_BYTES)

    def apply(self, results: dict[str, Any]) -> None:
        got = results.get(self.request().key)
        if got is None:
            return
        if isinstance(got, HybridctlError):
            self.note = got.message
        else:
            data = got.get("data") or ""
            if data:
                self.query_one(Log).write(data)
                self.size_read += len(data.encode())
            self.read_offset = int(got.get("offset", self.read_offset))
            state = got.get("state", "")
            self.note = got.get("note") or (f"{state}, ended" if got.get("eof") else f"{state}, following")
        self.query_one("#log-title", Label).update(self._title())

    def toggle(self) -> None:
        self.stream = "stderr" if self.stream == "stdout" else "stdout"
        self.read_offset = -TAIL_BYTES
        self.note = "loading"
        self.query_one(Log).clear()
        self.query_one("#log-title", Label).update(self._title())
