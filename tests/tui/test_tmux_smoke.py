"""The TUI in a real terminal: `scripts/tui-smoke` runs `hybridctl` inside tmux against a fresh
controller, sends keys and checks the captured panes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]


def test_tui_in_tmux(tmp_path: Path) -> None:
    require(shutil.which("tmux") is not None, "tmux is not installed (apt-get install tmux)")
    env = dict(os.environ, PYTHON=sys.executable)
    res = subprocess.run([str(REPO / "scripts" / "tui-smoke"), str(tmp_path / "panes")], env=env,
                         capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tui-smoke: ok" in res.stdout
    panes = sorted((tmp_path / "panes").glob("*.txt"))
    assert len(panes) == 10 and "smoke-job" in panes[2].read_text()
