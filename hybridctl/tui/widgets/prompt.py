"""The one-line prompt under a view: `:` for commands (with completion of view names) and `/`
for the live filter, as in k9s and vim."""

from __future__ import annotations

from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal
from textual.message import Message
from textual.suggester import SuggestFromList
from textual.widgets import Input, Label

from hybridctl.tui.commands import SUGGESTIONS


class FieldInput(Input):
    """An Input whose cursor blink follows the app's `cursor_blink` (off in snapshot tests)."""

    def on_mount(self) -> None:
        self.cursor_blink = bool(getattr(self.app, "cursor_blink", True))


class PromptBar(Horizontal):
    DEFAULT_CSS = """
    PromptBar { height: 1; display: none; }
    PromptBar.-open { display: block; }
    PromptBar > Label { width: 2; text-style: bold; }
    PromptBar > Input, PromptBar > Input:focus { border: none; height: 1; padding: 0; width: 1fr; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]

    class Submitted(Message):
        def __init__(self, mode: str, value: str) -> None:
            super().__init__()
            self.mode = mode
            self.value = value

    class Changed(Message):
        def __init__(self, mode: str, value: str) -> None:
            super().__init__()
            self.mode = mode
            self.value = value

    class Cancelled(Message):
        def __init__(self, mode: str) -> None:
            super().__init__()
            self.mode = mode

    def __init__(self) -> None:
        super().__init__()
        self.mode = ""

    def compose(self) -> ComposeResult:
        yield Label(":")
        yield FieldInput(placeholder="")

    def open(self, mode: str, value: str = "") -> None:
        """mode ':' (command) or '/' (filter)."""
        self.mode = mode
        self.query_one(Label).update(mode)
        inp = self.query_one(FieldInput)
        inp.suggester = SuggestFromList(SUGGESTIONS, case_sensitive=False) if mode == ":" else None
        inp.placeholder = ("nodes, jobs, gpus, cloud, events, job ID, node NAME, help, quit" if mode == ":"
                           else "words, user:NAME, state:run,pend, node:NAME")
        with inp.prevent(Input.Changed):
            inp.value = value
        inp.cursor_position = len(value)
        self.add_class("-open")
        # Focus now, not via focus()'s call_later: keys typed right after ':' (a paste, tmux
        # send-keys) are already queued and must land in the prompt, not trigger view bindings.
        self.screen.set_focus(inp)

    def close(self) -> None:
        self.remove_class("-open")
        self.mode = ""

    @property
    def is_open(self) -> bool:
        return self.has_class("-open")

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        mode = self.mode
        self.close()
        self.post_message(self.Submitted(mode, event.value))

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        event.stop()
        if self.mode:
            self.post_message(self.Changed(self.mode, event.value))

    def action_cancel(self) -> None:
        mode = self.mode
        self.close()
        self.post_message(self.Cancelled(mode))
