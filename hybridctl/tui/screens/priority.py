"""`PriorityDialog`: a job's new priority, checked (-1000..1000) before it is sent."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label

from hybridctl.tui.widgets.prompt import FieldInput


class PriorityDialog(ModalScreen["int | None"]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Cancel")]

    def __init__(self, job: str, current: int) -> None:
        super().__init__()
        self.job = job
        self.current = current

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(f"Priority of job {self.job} (now {self.current}); higher runs first, "
                        f"-1000..1000, above 100 admins only:", classes="question")
            yield FieldInput(str(self.current), id="priority")
            yield Label("", id="error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Set", variant="primary", id="set")
                yield Button("Cancel (esc)", id="cancel")

    def on_mount(self) -> None:
        field = self.query_one("#priority", Input)
        field.focus()
        field.select_all()  # typing replaces the current value

    @on(Input.Submitted)
    def _submitted(self) -> None:
        self._done()

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "set":
            self._done()
        else:
            self.dismiss(None)

    def _done(self) -> None:
        text = self.query_one("#priority", Input).value.strip()
        try:
            value = int(text)
        except ValueError:
            self.query_one("#error", Label).update(f"{text!r} is not a whole number")
            return
        if not -1000 <= value <= 1000:
            self.query_one("#error", Label).update(f"{value} is outside -1000..1000")
            return
        self.dismiss(value)

    def action_back(self) -> None:
        self.dismiss(None)
