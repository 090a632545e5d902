"""Driving the TUI against a real controller process (shared by test_pilot.py and
test_efficiency.py): the controller's own answers, a submit, the app and opening a view."""

from __future__ import annotations

from typing import Any

from hybridctl.control.client import Client
from hybridctl.core.spec import apply_flags
from hybridctl.tui.app import HybridApp
from hybridctl.tui.data import SocketApi
from tests.integration.harness import ControllerProc
from tests.tui.helpers import shows, until

SIZE = (120, 36)


def ask(c: ControllerProc, op: str, **args: Any) -> Any:
    """The controller's own answer, through the same local API the CLI uses (faster than a CLI
    process per check, which matters inside polling loops)."""
    with Client(c.socket) as client:
        return client.call(op, **args)


def submit(c: ControllerProc, name: str, gpus: str = "1") -> str:
    spec = apply_flags({}, gpus=gpus, name=name, run=["sleep", "100"])
    return str(ask(c, "submit", spec=spec, source="test")["id"])


def app_for(c: ControllerProc, **kw: Any) -> HybridApp:
    return HybridApp(SocketApi(c.socket), interval=0.25, cursor_blink=False, **kw)


async def open_view(pilot: Any, command: str, screen: type, text: str = "") -> None:
    await pilot.press(*f":{command}", "enter")
    await until(pilot, lambda: isinstance(pilot.app.screen, screen), what=f":{command}")
    if text:
        await shows(pilot, text)
