"""Suite-wide test settings. With HYBRIDCTL_STRICT=1 (CI), a test that skips because a system part
is missing fails instead, so CI always runs the real-parts tests."""

from __future__ import annotations

import os

import pytest

STRICT = os.environ.get("HYBRIDCTL_STRICT") == "1"


def require(condition: bool, reason: str) -> None:
    """Skip (or, in strict mode, fail) unless `condition` holds. Use for missing system parts."""
    if condition:
        return
    if STRICT:
        pytest.fail(f"HYBRIDCTL_STRICT=1 but a required part is missing: {reason}")
    pytest.skip(reason)
