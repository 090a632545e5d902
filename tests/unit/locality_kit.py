"""Shared setup for the locality tests (test_locality_inflight.py, control/test_world_need.py):
`memo`, an autouse fixture giving each test an empty control/mounts read memo (`mounts._TREES`)
and putting the one before back afterwards."""

from __future__ import annotations

from typing import Iterator

import pytest

from hybridctl.control import mounts


@pytest.fixture(autouse=True)
def memo() -> Iterator[dict]:
    saved = dict(mounts._TREES)
    mounts._TREES.clear()
    yield mounts._TREES
    mounts._TREES.clear()
    mounts._TREES.update(saved)
