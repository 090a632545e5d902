"""`ViewScreen`: what every view shares — the top bar and banner, the `:`/`/` prompt, the
footer, Esc to go back, and the read-only switch that hides every action — and `Host`, all a screen
may use of the app around it. Plus the pieces several screens show: `SortCycle`, `JOB_STATE_STYLE`,
`ACTIVE_QUEUE` (the GPU table's columns live in `widgets/gpus.py`)."""

from __future__ import annotations

import time
from typing import Any, Callable, ClassVar, Iterable, Protocol, cast

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input

from hybridctl.tui.cells import clock
from hybridctl.tui.data import Request, State
from hybridctl.tui.model import Filter, parse_filter
from hybridctl.tui.widgets.prompt import PromptBar
from hybridctl.tui.widgets.table import RowTable
from hybridctl.tui.widgets.topbar import Banner, TopBar


class Host(Protocol):
    """What a screen may use of the app that hosts it (`HybridApp`), and nothing more: screens
    never import the app. Actions go through `act` (which refuses under --readonly)."""

    @property
    def readonly(self) -> bool: ...

    @property
    def interval(self) -> float: ...

    @property
    def state(self) -> State: ...

    @property
    def user_names(self) -> Callable[[int], str]: ...

    def clock(self) -> float: ...

    def poll_now(self) -> None: ...

    def run_command(self, line: str) -> None: ...

    def act(self, op: str, args: dict[str, Any], done: Callable[[Any], str]) -> None: ...


ACTIVE_QUEUE = Request.of("active", "queue", every=3, all=True, states=("STARTING", "RUNNING"))
"""Every placed job: which job holds which GPU (the node, GPU and GPUs screens share it). At
8000 running jobs it is the largest reply, and it changes only when jobs start or end: read it
every third refresh (telemetry stays at every refresh)."""
JOB_STATE_STYLE = {
    "PENDING": "warn", "STARTING": "accent", "RUNNING": "ok", "SUCCEEDED": "dim", "FAILED": "bad",
    "CANCELLED": "dim", "TIMEOUT": "bad", "PREEMPTED": "warn", "NODE_LOST": "bad",
}
"""A job state's palette colour (the queue's STATE column, the job screen's timeline)."""
WRITE_ACTIONS = frozenset({"submit", "cancel", "priority", "drain", "resume"})
"""Actions that change the controller's state: hidden and disabled under --readonly."""
VIEW_KEY_ACTIONS = frozenset({"back", "filter", "command", "help", "quit"})
"""The actions of `view_key`s: off while a text field has focus (its keys are text, Esc its own)."""


def view_key(key: str, action: str, description: str, *, show: bool = True,
             key_display: str | None = None) -> list[Binding]:
    """A key that moves focus or changes screens (Esc, `:`, `/`, `?`, `q`), bound twice.

    Textual hands each key to the widget focused when the app reads it, and runs ordinary
    bindings only when the key comes back up from that widget, by which time the keys read after
    it have already been handed out. So `Esc :nodes`, arriving in one read (tmux send-keys, a
    paste, a fast typist), routed `:nodes` to the table of the screen Esc was closing, and `:jobs`
    its letters to the table rather than the prompt `:` opens. As a priority binding the key acts
    when the app reads it, before the next key is routed. The ordinary, hidden copy (no
    description, so not in the help) takes the key when it reaches the view the slow way: handed
    to a dialog that the key before it was closing, it comes back up once this view is on top."""
    return [Binding(key, action, description, show=show, key_display=key_display, priority=True),
            Binding(key, action, "", show=False)]


class ViewScreen(Screen[None]):
    crumb: ClassVar[str] = ""
    """This screen's breadcrumb (screens showing one object override `crumbs`)."""
    filterable: ClassVar[bool] = True

    BINDINGS: ClassVar[list[BindingType]] = [
        *view_key("escape", "back", "Back"),
        *view_key("slash", "filter", "Filter", key_display="/"),
        *view_key("colon", "command", "Cmd", key_display=":"),
        *view_key("question_mark", "help", "Help", key_display="?"),
        # k9s's keys: `q` on a top view (and Ctrl-C, bound on the app) ends the session; on a
        # screen opened from a view, `q` goes back like Esc (the first pair is disabled there,
        # so the second, hidden one takes the key). Bound on the views, not the app: a dialog is a
        # screen of its own and an Input takes printable keys first, so a typed `q` stays a `q`.
        *view_key("q", "quit", "Quit"),
        *view_key("q", "back", "Back", show=False),
    ]

    filter_text = reactive("", init=False)

    @property
    def host(self) -> Host:
        return cast(Host, self.app)

    def compose(self) -> ComposeResult:
        yield TopBar()
        yield Banner(id="banner")
        yield from self.body()
        yield PromptBar()
        yield Footer(show_command_palette=False, compact=True)

    def body(self) -> Iterable[Widget]:
        return ()

    # ---- data ----------------------------------------------------------------------------------

    def requests(self) -> list[Request]:
        """What this screen reads on each refresh, besides `nodes` (always read, for the history)."""
        return []

    def update_view(self, state: State) -> None:
        """Show the latest state. Subclasses extend this; it must be cheap (it runs every second)."""
        ident = state.identity
        who = f"{ident.get('user', '?')}{' (admin)' if ident.get('admin') else ''}" if ident else ""
        mode = " · READ-ONLY" if self.host.readonly else ""
        link = "connected" if state.connected else "OFFLINE"
        self.query_one(TopBar).show(self.crumbs(), f"{who}{mode} · {link} · {clock(self.host.clock())}")
        banner = ""
        if not state.connected and state.error:
            since = clock(state.lost_at) if state.lost_at else "?"
            shown = f" Showing data from {clock(state.polled_at)}." if state.polled_at else ""
            banner = (f"⚠ Controller unreachable since {since}: {state.error} "
                      f"Reconnecting by itself every {self.host.interval:g}s.{shown}")
        elif state.fleet_error:
            shown = f"Shown as read at {clock(state.fleet_at)}; retrying" if state.fleet_at else "Retrying"
            banner = (f"⚠ The controller could not list the fleet: {state.fleet_error.rstrip('.')}."
                      f" {shown} at every refresh.")
        self.query_one(Banner).show(banner)

    def crumbs(self) -> list[str]:
        out = []
        for s in self.app.screen_stack:
            if isinstance(s, ViewScreen):
                out.append(s.crumb)
        return out

    @property
    def filter(self) -> Filter:
        return parse_filter(self.filter_text)

    def watch_filter_text(self) -> None:
        self.update_view(self.host.state)

    def on_screen_resume(self) -> None:
        self.update_view(self.host.state)
        self.host.poll_now()

    # ---- keys ------------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in VIEW_KEY_ACTIONS and isinstance(self.focused, Input):
            # The prompt has focus: `/`, `?`, `q` are letters of what is typed (`:gpu gpu01/0`), Esc
            # is the prompt's own Cancel. Priority bindings would otherwise take them first.
            return False
        if action in WRITE_ACTIONS and self.host.readonly:
            return False
        if action == "filter" and not self.filterable:
            return False
        if action == "quit" and self.is_pushed:
            return False
        return True

    @property
    def is_pushed(self) -> bool:
        """Opened from another view (a node, a job, logs), not a view of its own (`:nodes`, ...)."""
        stack = self.app.screen_stack
        return bool(stack) and stack[0] is not self

    def action_back(self) -> None:
        if self.filter_text:
            self.filter_text = ""
        elif len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    def action_quit(self) -> None:
        self.app.exit()

    def action_filter(self) -> None:
        self.query_one(PromptBar).open("/", self.filter_text)

    def action_command(self) -> None:
        self.query_one(PromptBar).open(":")

    def action_help(self) -> None:
        from hybridctl.tui.screens.help import HelpScreen

        self.app.push_screen(HelpScreen(self))

    @on(PromptBar.Changed)
    def _prompt_changed(self, event: PromptBar.Changed) -> None:
        if event.mode == "/":
            self.filter_text = event.value

    @on(PromptBar.Submitted)
    def _prompt_submitted(self, event: PromptBar.Submitted) -> None:
        self._focus_main()
        if event.mode == "/":
            self.filter_text = event.value.strip()
        elif event.mode == ":" and event.value.strip():
            self.host.run_command(event.value)

    @on(PromptBar.Cancelled)
    def _prompt_cancelled(self, event: PromptBar.Cancelled) -> None:
        if event.mode == "/":
            self.filter_text = ""
        self._focus_main()

    def _focus_main(self) -> None:
        """After the prompt: the prompt already gave focus back to what had it before (at once, so
        keys typed right after Enter or Esc go there); only if nothing has it, the first table."""
        if self.focused is not None and not isinstance(self.focused, Input):
            return
        tables = list(self.query(RowTable))
        if tables:
            tables[0].focus()

    def now(self) -> float:
        return self.host.clock() if self.is_attached else time.time()


class SortCycle:
    """`s` moves to the next sort column, `S` flips the direction; a header click picks one."""

    sort: str
    reverse: bool
    SORTS: ClassVar[list[str]] = []
    """The columns `s` cycles through, in order."""

    def cycle(self, columns: list[str], step: int = 1) -> None:
        i = columns.index(self.sort) if self.sort in columns else -1
        self.sort = columns[(i + step) % len(columns)]

    def refresh_sorted(self) -> None:
        view = cast(ViewScreen, self)
        view.update_view(view.host.state)

    def sort_by_header(self, column: str, sortable: Any) -> None:
        """A header click: sort by that column, or flip the direction if it already is."""
        if column in sortable:
            self.reverse = not self.reverse if self.sort == column else False
            self.sort = column
            self.refresh_sorted()

    def action_sort(self) -> None:
        self.cycle(self.SORTS)
        self.refresh_sorted()

    def action_sort_reverse(self) -> None:
        self.reverse = not self.reverse
        self.refresh_sorted()
