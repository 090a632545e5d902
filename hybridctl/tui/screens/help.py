"""`?`: every key of the current view and the `:` commands, in one modal (k9s's help)."""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

from hybridctl.tui.commands import VIEWS

NAMES = {"question_mark": "?", "slash": "/", "colon": ":", "escape": "Esc", "enter": "Enter", "space": "Space",
         "pageup": "PgUp", "pagedown": "PgDn", "tab": "Tab"}
HIDDEN = {"scroll_left", "scroll_right", "page_left", "page_right", "scroll_up", "scroll_down", "scroll_home",
          "scroll_end", "page_up", "page_down"}
"""Scrolling bindings the tables replace with their own cursor keys."""
COMMANDS = [
    (":nodes  :fleet", "fleet: one row per node"),
    (":jobs   :queue", "the job queue"),
    (":gpus", "every GPU of the fleet"),
    (":cloud", "cloud nodes, spend, decisions, offers"),
    (":events :audit", "the audit log"),
    (":waste  :idle", "GPU-hours held idle, by job and by user"),
    (":node NAME", "open a node"),
    (":job ID", "open a job (42 or 42_7)"),
    (":gpu NODE/INDEX", "open one GPU"),
    (":help  :quit (:q)", "this help; leave"),
]
GRAMMAR = [
    ("Enter", "drill down: node → GPU → process → job → logs"),
    ("Esc", "back (and clear the filter first)"),
    ("q / Ctrl-C", "quit (q on an opened screen goes back, like Esc)"),
    ("/", "filter: words, user:NAME (@NAME), state:run,pend, node:NAME"),
    ("s / S / click header", "sort by the next column / reverse / that column"),
    ("mouse", "click a row to select it, click it again to open it; wheel scrolls"),
]


def key_name(key: str) -> str:
    return ", ".join(NAMES.get(k, k.replace("ctrl+", "^")) for k in key.split(","))


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, view: Screen) -> None:
        super().__init__()
        self.view = view

    def compose(self) -> ComposeResult:
        with VerticalScroll(classes="dialog wide help"):
            yield Static(self._text())

    def _text(self) -> Text:
        t = Text()
        t.append("Keys here", "bold underline")
        t.append("\n")
        readonly = bool(getattr(self.app, "readonly", False))
        grouped: dict[str, list[str]] = {}
        info: dict[str, tuple[str, bool]] = {}
        for key, active in self.view.active_bindings.items():
            b = active.binding
            if not b.description or b.action in HIDDEN:
                continue
            grouped.setdefault(b.action, []).append(b.key_display or key)
            info[b.action] = (b.description, active.enabled)
        for action, keys in grouped.items():
            description, enabled = info[action]
            off = "" if enabled else "  (disabled: --readonly)" if readonly else "  (not here)"
            t.append(f"  {key_name(','.join(keys)):<18}", "bold")
            t.append(f"{description}{off}\n")
        t.append("\nMoving around", "bold underline")
        t.append("\n")
        for k, what in GRAMMAR:
            t.append(f"  {k:<18}", "bold")
            t.append(f"{what}\n")
        t.append("\nCommands (type : then one of these)", "bold underline")
        t.append("\n")
        for k, what in COMMANDS:
            t.append(f"  {k:<20}", "bold")
            t.append(f"{what}\n")
        aliases = "; ".join(f"{mode}: {', '.join(a)}" for mode, a in VIEWS.items())
        t.append(f"\n  aliases: {aliases}\n", "italic")
        t.append("\nEsc or ? closes this help.")
        return t

    def action_dismiss(self) -> None:
        self.dismiss(None)
