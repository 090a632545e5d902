"""Keys typed in one burst, as `tmux send-keys`, a paste or a fast typist delivers them: `Esc :nodes`
right after a drill-down, `:jobs Enter` on a settled view, `/gpu01`. `pilot.press` waits for the
app to go idle after every key, which hides the race; `burst` posts every key before the app reads
the first, as the terminal driver does with one read of several keys."""

from __future__ import annotations

from typing import Any

from textual import events
from textual.widgets import Input

from hybridctl.tui.app import HybridApp
from hybridctl.tui.fake import NOW, FakeApi
from hybridctl.tui.screens.base import ViewScreen
from hybridctl.tui.screens.fleet import FleetScreen
from hybridctl.tui.screens.node import NodeScreen
from hybridctl.tui.screens.queue import QueueScreen
from hybridctl.tui.widgets.prompt import PromptBar
from hybridctl.tui.widgets.table import RowTable
from tests.tui.helpers import shows, until

SIZE = (120, 36)
WITHIN = 10.0  # seconds; a fast machine settles in milliseconds
NAMED = {"escape": "\x1b", "enter": "\r"}
PUNCTUATION = {":": "colon", "/": "slash", "?": "question_mark", " ": "space"}


def lab() -> HybridApp:
    return HybridApp(FakeApi(), interval=3600, clock=lambda: NOW, cursor_blink=False)


def burst(app: HybridApp, *keys: str) -> None:
    """Queue every key on the app at once, with no turn of the event loop in between (what the
    driver does with `Esc:nodes` read in one go). Keys: one character, or `escape` / `enter`."""
    for k in keys:
        if k in NAMED:
            event = events.Key(k, NAMED[k])
        else:
            event = events.Key(PUNCTUATION.get(k, k), k)
        event.set_sender(app)
        app.post_message(event)


def prompt(app: HybridApp) -> Input:
    return app.screen.query_one(PromptBar).query_one(Input)


async def on_a_node(pilot: Any) -> HybridApp:
    """The fleet view, then gpu01 opened with Enter, settled."""
    app: HybridApp = pilot.app
    await shows(pilot, "gpu04")
    app.screen.query_one(RowTable).select_key("gpu01")
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(app.screen, NodeScreen), what="the node screen")
    await shows(pilot, "FOREIGN")
    return app


async def test_esc_then_a_command_in_one_burst_lands_in_the_prompt() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        app = await on_a_node(pilot)
        burst(app, "escape", *":nodes")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen) and prompt(app).value == "nodes",
                    WITHIN, "`nodes` in the fleet view's prompt")
        assert app.focused is prompt(app)


async def test_esc_then_a_command_and_enter_in_one_burst_runs_it_and_nothing_else() -> None:
    api = FakeApi()
    async with HybridApp(api, interval=3600, clock=lambda: NOW, cursor_blink=False).run_test(size=SIZE) as pilot:
        app = await on_a_node(pilot)
        fleet = app.screen_stack[0]
        assert isinstance(fleet, FleetScreen)
        cursor = fleet.query_one(RowTable).cursor
        burst(app, "escape", *":jobs", "enter")
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), WITHIN, "the queue after `Esc :jobs Enter`")
        await pilot.pause()
        # the letters never reached a view's own keys (j: down, s: sort, d: drain and its dialog)
        assert [type(s) for s in app.screen_stack] == [QueueScreen]
        assert fleet.query_one(RowTable).cursor == cursor and fleet.sort == "name"
        assert not [op for op, _ in api.calls if op == "drain"]


async def test_a_command_in_one_burst_on_a_settled_view() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        app = pilot.app
        await shows(pilot, "gpu04")
        burst(app, *":jobs", "enter")
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), WITHIN, "the queue after `:jobs Enter`")


async def test_a_filter_in_one_burst() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        app = pilot.app
        await shows(pilot, "gpu04")
        burst(app, *"/gpu01")
        screen = app.screen
        assert isinstance(screen, ViewScreen)
        await until(pilot, lambda: screen.filter_text == "gpu01", WITHIN, "the filter `gpu01`")


async def test_the_views_keys_are_letters_inside_the_prompt() -> None:
    """`:`, `/`, `?` and `q` act at once on a view, but typed into the prompt they are text
    (`:gpu NODE/INDEX` needs the slash), in a burst and one by one alike."""
    typed = "gpu gpu01/0?q:"
    async with lab().run_test(size=SIZE) as pilot:
        app = pilot.app
        await shows(pilot, "gpu04")
        burst(app, ":", *typed)
        await until(pilot, lambda: prompt(app).value == typed, WITHIN, f"{typed!r} in the prompt")
        await pilot.press("escape")
        await until(pilot, lambda: not app.screen.query_one(PromptBar).is_open, WITHIN, "the prompt to close")
        await pilot.press(":", *typed)
        assert prompt(app).value == typed
        assert isinstance(app.screen, FleetScreen) and len(app.screen_stack) == 1 and app.return_code is None
        assert app.screen.query_one(PromptBar).mode == ":"


async def test_esc_in_the_prompt_cancels_it_and_gives_focus_back_at_once() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        app = await on_a_node(pilot)
        await pilot.press("tab")  # the node's second table (its processes)
        second = app.focused
        assert isinstance(second, RowTable) and second is not app.screen.query(RowTable).first()
        burst(app, *":x", "escape")
        bar = app.screen.query_one(PromptBar)
        await until(pilot, lambda: prompt(app).value == "x" and not bar.is_open, WITHIN, "`:x` then Esc")
        assert app.focused is second and isinstance(app.screen, NodeScreen)
        await pilot.pause()
        assert app.focused is second
        # and Esc once more, in the same burst as the one that closed the prompt, goes back
        burst(app, *":x", "escape", "escape")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen), WITHIN, "back on the fleet")


async def test_keys_routed_to_a_closing_dialog_still_reach_the_view() -> None:
    """`? Esc Esc` in one burst: the second Esc is routed to the help while it is still open and
    comes back up once the help has gone; the node view under it must still take it as Back."""
    async with lab().run_test(size=SIZE) as pilot:
        app = await on_a_node(pilot)
        burst(app, "?", "escape", "escape")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen), WITHIN, "back on the fleet")
        await pilot.pause()
        assert len(app.screen_stack) == 1
