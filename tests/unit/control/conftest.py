from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.unit.control.parts import Parts, build


@pytest.fixture
def parts(tmp_path: Path) -> Iterator[Parts]:
    p = build(tmp_path)
    yield p
    p.store.close()
