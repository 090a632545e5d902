"""What the agent tests of a job's world share (tests/agent/test_envs.py, test_mounts.py)."""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, Iterator

import psutil
import pytest

from tests.agent.agent_harness import AgentProc


@pytest.fixture(autouse=True)
def no_orphan_preparations() -> Iterator[None]:
    """Environment builds and mount fetches run in sessions of their own (a cancel kills them, an
    agent stop does not): end those of agents this test removed, so a failed test leaks none."""
    yield
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if len(cmd) >= 2 and cmd[-2] in ("hybridctl_agent.envbuild", "hybridctl_agent.mounts") \
                and not os.path.isdir(cmd[-1]):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def launch(agent: AgentProc, key: str, run: str, **job: Any) -> Dict[str, Any]:
    job.setdefault("uid", os.getuid())
    return agent.call("launch", job={"key": key, "run": run, **job})["job"]


def log(agent: AgentProc, key: str, stream: str = "stdout") -> str:
    return agent.call("logs", key=key, stream=stream, max_bytes=1 << 20)["data"]
