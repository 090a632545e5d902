"""Fixtures for the TUI tests: one real controller for the Pilot tests of a module (simulated
nodes: jobs get placed and never run, so the state only changes when a test changes it)."""

from __future__ import annotations

import os
import time
from typing import Any, Iterator

import pytest

from tests.integration.harness import ControllerProc, make_controller

FLEET: dict[str, Any] = {
    "scheduler": {"tick_seconds": 1.0},
    "nodes": [
        {"name": "gpu01", "gpus": "8xA100", "cpus": 64, "memory": "512G", "simulated": True},
        {"name": "gpu02", "gpus": "2xRTX3090,1xA6000", "cpus": 32, "memory": "128G", "simulated": True},
        {"name": "gpu03", "gpus": "4xV100", "cpus": 32, "memory": "256G", "simulated": True},
    ],
}


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControllerProc]:
    c = make_controller(tmp_path_factory.mktemp("tui"), FLEET)
    c.start()
    yield c
    c.stop()


@pytest.fixture
def utc() -> Iterator[None]:
    """Snapshots show wall-clock times: render them in UTC whatever the machine's zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()

