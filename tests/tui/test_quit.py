"""Leaving the TUI the way k9s users do: `q` on a view, `:q`, Ctrl-C from anywhere; while `q`
typed into the `:` prompt or a dialog's field stays a letter, and on an opened screen goes back."""

from __future__ import annotations

from typing import Any

from textual.widgets import Input

from hybridctl.tui.app import HybridApp
from hybridctl.tui.fake import NOW, FakeApi
from hybridctl.tui.screens.drain import ConfirmDrain
from hybridctl.tui.screens.fleet import FleetScreen
from hybridctl.tui.screens.node import NodeScreen
from hybridctl.tui.widgets.table import RowTable
from tests.tui.helpers import screen_text, shows, until

SIZE = (120, 36)


def lab() -> HybridApp:
    return HybridApp(FakeApi(), interval=3600, clock=lambda: NOW, cursor_blink=False)


async def gone(pilot: Any) -> None:
    """The app has exited (the same state `App.run()` returns from)."""
    app = pilot.app
    await until(pilot, lambda: app.return_code is not None, what="the app to exit")
    assert app.return_code == 0


async def test_q_on_the_fleet_view_quits_and_the_footer_says_so() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        text = await shows(pilot, "gpu04")
        assert "q Quit" in text.splitlines()[-1]  # the footer
        await pilot.press("q")
        await gone(pilot)


async def test_ctrl_c_quits_from_a_view_and_from_inside_the_prompt() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        await shows(pilot, "gpu04")
        await pilot.press("ctrl+c")
        await gone(pilot)
    async with lab().run_test(size=SIZE) as pilot:
        await shows(pilot, "gpu04")
        await pilot.press(":", "j")
        await pilot.press("ctrl+c")
        await gone(pilot)


async def test_q_typed_into_the_command_prompt_is_a_letter_and_colon_q_quits() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        app = pilot.app
        await shows(pilot, "gpu04")
        await pilot.press(":", "q")
        prompt = app.screen.query_one(Input)
        await until(pilot, lambda: prompt.value == "q", what="a q in the prompt")
        await pilot.pause()
        assert app.return_code is None and isinstance(app.screen, FleetScreen)
        await pilot.press("enter")  # `:q`
        await gone(pilot)


async def test_q_in_a_dialog_field_is_a_letter() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        app = pilot.app
        await shows(pilot, "gpu04")
        app.screen.query_one(RowTable).select_key("gpu01")
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmDrain), what="the drain dialog")
        await pilot.press("q")
        field = app.screen.query_one(Input)
        await until(pilot, lambda: field.value.endswith("q"), what="a q in the reason field")
        assert app.return_code is None
        await pilot.press("escape")  # Esc still closes a dialog
        await until(pilot, lambda: isinstance(app.screen, FleetScreen), what="back at the fleet")


async def test_q_on_an_opened_screen_goes_back_and_then_quits() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        app = pilot.app
        await shows(pilot, "gpu04")
        app.screen.query_one(RowTable).select_key("gpu01")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, NodeScreen), what="the node screen")
        await shows(pilot, "FOREIGN")
        assert "q Quit" not in screen_text(app)  # here q is Back (Esc is in the footer)
        await pilot.press("q")
        await until(pilot, lambda: isinstance(app.screen, FleetScreen), what="back at the fleet")
        assert app.return_code is None
        await pilot.press("q")
        await gone(pilot)


async def test_help_names_the_quit_keys() -> None:
    async with lab().run_test(size=SIZE) as pilot:
        await shows(pilot, "gpu04")
        await pilot.press("question_mark")
        text = await shows(pilot, "Keys here")
        quit_row = next(line for line in text.splitlines() if line.rstrip(" █").endswith("Quit"))
        assert "q," in quit_row and "^c" in quit_row
