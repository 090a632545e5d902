"""`ConfirmDrain`: drain a node, with the reason other admins will read in the node list."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from hybridctl.tui.widgets.prompt import FieldInput


class ConfirmDrain(ModalScreen["str | None"]):
    """Returns the reason (possibly empty) to drain with, or None when the user backs out."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Cancel")]

    def __init__(self, node: str, running: int = 0) -> None:
        super().__init__()
        self.node = node
        self.running = running

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Drain node {self.node}? No new jobs will be placed on it; "
                        f"running jobs finish.", classes="question")
            yield Label("Reason (shown in the node list):")
            yield FieldInput(placeholder="e.g. fan noise, driver update", id="reason")
            with Horizontal(classes="buttons"):
                yield Button("Drain", variant="error", id="drain")
                yield Button("Cancel (esc)", variant="primary", id="cancel")

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self.dismiss(self.query_one("#reason", Input).value.strip())

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.query_one("#reason", Input).value.strip() if event.button.id == "drain" else None)

    def action_back(self) -> None:
        self.dismiss(None)
