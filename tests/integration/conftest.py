from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.integration.harness import SMALL_FLEET, ControllerProc, make_controller
from tests.integration.nodes import SshLab
from tests.integration.other_user import AsUser, readable_package
from tests.integration.sshd import require_sshd


@pytest.fixture
def start_controller(tmp_path: Path) -> Iterator[Callable[..., ControllerProc]]:
    started: list[ControllerProc] = []

    def start(config: dict[str, Any] | None = None) -> ControllerProc:
        c = make_controller(tmp_path / f"c{len(started)}", SMALL_FLEET if config is None else config)
        c.start()
        started.append(c)
        return c

    yield start
    for c in started:
        c.stop()


@pytest.fixture
def controller(start_controller: Callable[..., ControllerProc]) -> ControllerProc:
    return start_controller()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[SshLab]:
    """Three real sshd + agent nodes (node1 8×A100, node2 4×RTX3090, node3 4×A100) and a controller."""
    require_sshd()
    lab = SshLab(tmp_path)
    try:
        lab.start()
        yield lab
    finally:
        lab.stop()


@pytest.fixture(scope="session")
def as_user() -> Iterator[AsUser]:
    """Run the real CLI as another uid (needs root); see tests/integration/other_user.py."""
    import os

    from tests.conftest import require

    require(os.geteuid() == 0, "needs root to run a client as another uid")
    for package, preload in readable_package():
        yield AsUser(package, preload)
