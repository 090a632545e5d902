"""What the agent's environment tests share (test_envs.py, test_env_cache.py, test_env_wheels.py):
uv, a world-readable directory with a wheelhouse of a tiny wheel, and the probe a job runs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from hybridctl_agent import envs
from hybridctl_agent.slurmjob import runnable_by_all
from tests.agent.tiny_wheel import make_wheel

UV = envs.find_uv(None, os.environ.get("PATH", ""))
PY = "import hctiny, os, sys; print(hctiny.VERSION, os.environ['VIRTUAL_ENV'] == sys.prefix)"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Path]:
    """A world-readable directory with a wheelhouse (hctiny 1.0) and a requirements file."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"hcenv-{os.getpid()}-{tmp_path.name}"
    base.mkdir(mode=0o755)
    make_wheel(base / "wheels")
    (base / "requirements.txt").write_text("hctiny==1.0\n")
    for p in (base, base / "wheels", *base.rglob("*")):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def uv_for_all(world: Path) -> str:
    """uv where every job's user may run it: the test's own (in a venv under a checkout that
    may be private, as CI's is) or a copy in the world-readable `world`."""
    assert UV is not None
    if runnable_by_all(os.path.realpath(UV)):
        return UV
    copy = world / "bin" / "uv"
    if copy.exists():
        return str(copy)
    copy.parent.mkdir(mode=0o755)
    shutil.copy2(UV, copy)
    os.chmod(copy, 0o755)
    return str(copy)
