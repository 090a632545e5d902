"""Screens use the app only through `screens.base.Host`: the app must provide all of it."""

from __future__ import annotations

import inspect

from hybridctl.tui.app import HybridApp
from hybridctl.tui.fake import FakeApi
from hybridctl.tui.screens.base import Host


def test_the_app_provides_every_member_of_host() -> None:
    members = [n for n in vars(Host) if not n.startswith("_")]
    assert {"readonly", "state", "act", "poll_now", "run_command", "clock", "user_names"} <= set(members)
    app = HybridApp(FakeApi())
    for name in members:
        assert hasattr(app, name), name
        wanted = getattr(Host, name)
        if inspect.isfunction(wanted):
            got = getattr(app, name)
            assert callable(got), name
            if name != "clock":  # time.time by default: a builtin without a signature
                assert list(inspect.signature(got).parameters) == list(inspect.signature(wanted).parameters)[1:], name
