"""`demo.sweep_killed`: a demo killed outright (SIGKILL, the OOM killer) cannot remove its
directory; the next demo of the same user does, and nothing else: not a running demo's, not one
kept with `--keep`, not another user's, not through a link."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from hybridctl import demo


def _demo_dir(tmp: Path, name: str, pid: int, started: str | None) -> Path:
    d = tmp / f"{demo.PREFIX}{name}"
    (d / "home").mkdir(parents=True)
    (d / "home" / "controller.log").write_text("...")
    (d / demo.LIVE).write_text(f"{pid} {started}\n")
    return d


def test_a_killed_demos_directory_goes_and_a_running_or_kept_one_stays(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    started = demo._started(gone.pid)
    assert started is not None
    killed = _demo_dir(tmp_path, "killed", gone.pid, started)
    gone.kill()
    gone.wait()
    running = _demo_dir(tmp_path, "running", os.getpid(), demo._started(os.getpid()))
    reused = _demo_dir(tmp_path, "reused", os.getpid(), "1")  # its pid is now another process's
    kept = tmp_path / f"{demo.PREFIX}kept"  # --keep removes demo.pid
    (kept / "home").mkdir(parents=True)
    other = tmp_path / "not-a-demo"
    _demo_dir(other, "elsewhere", gone.pid, started)
    link = tmp_path / f"{demo.PREFIX}link"
    link.symlink_to(other / f"{demo.PREFIX}elsewhere")
    linked_record = _demo_dir(tmp_path, "linked-record", os.getpid(), "x")
    (linked_record / demo.LIVE).unlink()
    (linked_record / demo.LIVE).symlink_to(killed / demo.LIVE)
    assert demo.sweep_killed(tmp_path) == [killed, reused]
    assert not killed.exists() and not reused.exists()
    assert running.is_dir() and kept.is_dir() and linked_record.is_dir()
    assert link.is_symlink() and (other / f"{demo.PREFIX}elsewhere" / "home" / "controller.log").exists()
    assert demo.sweep_killed(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory of another user's needs root")
def test_another_users_killed_demo_is_theirs_to_remove(tmp_path: Path) -> None:
    theirs = _demo_dir(tmp_path, "theirs", 2**22 + 1, "1")  # above pid_max's default: no such process
    for p in (theirs, theirs / "home", theirs / "home" / "controller.log", theirs / demo.LIVE):
        os.lchown(p, 65534, 65534)
    assert demo.sweep_killed(tmp_path) == []
    assert theirs.is_dir()


def test_without_start_times_nothing_is_swept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a process's start time cannot be read, a running demo looks like a killed one."""
    killed = _demo_dir(tmp_path, "killed", 2**22 + 1, "1")
    monkeypatch.setattr(demo, "_started", lambda pid: None)
    assert demo.sweep_killed(tmp_path) == []
    assert killed.is_dir()
