"""hybridctl.job: what a training script sees inside a job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hybridctl import job


def test_restart_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDCTL_CHECKPOINT_DIR", str(tmp_path / "c"))
    monkeypatch.setenv("HYBRIDCTL_ATTEMPT", "0")
    assert job.checkpoint_dir() == tmp_path / "c" and not job.is_restart()
    (tmp_path / "c" / "last.pt").write_bytes(b"x")
    assert job.is_restart()
    monkeypatch.setenv("HYBRIDCTL_ATTEMPT", "2")
    assert job.attempt() == 2


def test_sigterm_runs_the_callback_then_exits_143(tmp_path: Path) -> None:
    code = (
        "import os, signal, time\n"
        "from hybridctl import job\n"
        f"job.on_preempt(lambda: open({str(tmp_path / 'saved')!r}, 'w').write('ok'))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 143
    p.stdout.close()
    assert (tmp_path / "saved").read_text() == "ok"


def test_importing_it_pulls_nothing_heavy() -> None:
    out = subprocess.run([sys.executable, "-c", "import sys, hybridctl.job; print(sorted(sys.modules))"],
                         capture_output=True, text=True, check=True, env={**os.environ}).stdout
    for heavy in ("torch", "asyncssh", "textual", "sqlite_utils", "yaml"):
        assert f"'{heavy}'" not in out
