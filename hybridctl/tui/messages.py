"""Messages the data layer posts to the app from its thread workers (named for what happened)."""

from __future__ import annotations

from typing import Any

from textual.message import Message


class Polled(Message):
    """One refresh came back: `results` maps each request key to its result or its HybridctlError."""

    def __init__(self, results: dict[str, Any], at: float) -> None:
        super().__init__()
        self.results = results
        self.at = at

    def can_replace(self, message: Message) -> bool:
        # A newer poll makes an older, not yet handled one stale: keep only the latest.
        return isinstance(message, Polled)


class ControllerLost(Message):
    """The controller did not answer (not running, socket gone, connection dropped)."""

    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, ControllerLost)


class ActionDone(Message):
    """A user action (cancel, drain, ...) was accepted by the controller; `text` says what happened."""

    def __init__(self, op: str, result: Any, text: str) -> None:
        super().__init__()
        self.op = op
        self.result = result
        self.text = text
