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
from textual.widget import Widget
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
    # Priority, like the view's Esc: the prompt closes and hands focus back when the app reads the
    # key, so a key typed right after it (`: x Esc Esc` in one burst) is routed to the view.
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", priority=True)]

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
        self._return_focus: Widget | None = None
        """What had focus before the prompt opened: it gets it back when the prompt closes."""

    def compose(self) -> ComposeResult:
        yield Label(":")
        yield FieldInput(placeholder="")

    def open(self, mode: str, value: str = "") -> None:
        """mode ':' (command) or '/' (filter)."""
        inp = self.query_one(FieldInput)
        if self.screen.focused is not inp:
            self._return_focus = self.screen.focused
        self.mode = mode
        self.query_one(Label).update(mode)
        inp.suggester = SuggestFromList(SUGGESTIONS, case_sensitive=False) if mode == ":" else None
        inp.placeholder = ("nodes, jobs, gpus, cloud, events, waste, job ID, node NAME, help, quit" if mode == ":"
                           else "words, user:NAME, state:run,pend, node:NAME")
        with inp.prevent(Input.Changed):
            inp.value = value
        inp.cursor_position = len(value)
        self.add_class("-open")
        # Focus now, not via focus()'s call_later: `:` and `/` are priority bindings, so this runs
        # as the app reads the key, and the keys read right after it (a paste, tmux send-keys, a
        # fast typist) are routed to whatever has focus once it returns: it must be the prompt.
        self.screen.set_focus(inp)

    def close(self) -> None:
        """Hide the prompt and give focus back, at once for the same reason `open` takes it at once."""
        self.remove_class("-open")
        self.mode = ""
        back, self._return_focus = self._return_focus, None
        if self.screen.focused is self.query_one(FieldInput):
            usable = back is not None and back.is_attached and back.screen is self.screen and back.focusable
            self.screen.set_focus(back if usable else None)

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
