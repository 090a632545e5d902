"""Rootless mode (an agent under `systemd --user`): started here as user nobody, every job runs
as the agent's own user whatever uid the request names, and hello says `rootless: true`."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional

import pytest

from tests.agent.agent_harness import AGENTS_DIR, AgentProc, alive
from tests.conftest import require
from tests.waiting import wait_for

NOBODY = pwd.getpwnam("nobody")


def _as_nobody() -> List[str]:
    return ["setpriv", f"--reuid={NOBODY.pw_uid}", f"--regid={NOBODY.pw_gid}", "--clear-groups"]


def _python_for_nobody(agents_dir: str) -> Optional[str]:
    """An interpreter user nobody can run that has psutil (the test venv usually lives under
    /root, mode 700, so it may not qualify; Debian's python3 + python3-psutil does, and .ci/run
    installs them)."""
    for cand in (os.environ.get("HYBRIDCTL_TEST_ROOTLESS_PYTHON"), sys.executable,
                 "/usr/bin/python3"):
        if not cand or shutil.which("setpriv") is None:
            continue
        probe = ("import psutil, subprocess, sys, hybridctl_agent; "
                 "subprocess.run([sys.executable, '-c', 'import psutil'], check=True)")
        res = subprocess.run([*_as_nobody(), cand, "-c", probe], capture_output=True,
                             env=dict(os.environ, PYTHONPATH=agents_dir), timeout=60)
        if res.returncode == 0:
            return cand
    return None


def _rootless_agent() -> AgentProc:
    """An agent (not yet started) that runs as user nobody, with its own copy of the agent."""
    require(os.geteuid() == 0, "needs root to start an agent as user nobody")
    base = tempfile.mkdtemp(prefix="hca-", dir="/tmp")
    os.chown(base, NOBODY.pw_uid, NOBODY.pw_gid)
    # The checkout may sit under a directory nobody cannot enter: give it its own copy of the agent.
    agents_dir = os.path.join(base, "agents")
    shutil.copytree(AGENTS_DIR / "hybridctl_agent", os.path.join(agents_dir, "hybridctl_agent"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    for root, dirs, files in os.walk(agents_dir):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    python = _python_for_nobody(agents_dir)
    require(python is not None, "no Python with psutil that user nobody can run "
            "(apt-get install python3-psutil, or set HYBRIDCTL_TEST_ROOTLESS_PYTHON)")
    assert python is not None
    return AgentProc(["--simulate-gpus", "2:T4", "--interval", "0.2"], base=base,
                     python=[*_as_nobody(), python], env={"PYTHONPATH": agents_dir})


@pytest.mark.needs_root
def test_rootless_agent_runs_every_job_as_its_own_user() -> None:
    agent = _rootless_agent()
    try:
        agent.start()
        hello = agent.call("hello")
        assert (hello["rootless"], hello["uid"]) == (True, NOBODY.pw_uid)
        assert os.stat(agent.socket).st_uid == NOBODY.pw_uid
        rec = agent.call("launch", job={"key": "60", "run": "id -u; echo $USER",
                                        "uid": 0, "gpus": [1]})["job"]
        assert rec["uid"] == NOBODY.pw_uid and rec["user"] == "nobody"
        done = agent.wait_exited("60")
        assert done["exit_code"] == 0
        out = agent.call("logs", key="60")["data"]
        assert out == f"{NOBODY.pw_uid}\nnobody\n"
    finally:
        agent.cleanup()


@pytest.mark.needs_root
def test_rootless_agent_reports_no_containment_and_still_kills_the_process_group() -> None:
    agent = _rootless_agent()
    try:
        agent.start()
        assert agent.call("hello")["containment"].startswith("none: rootless agent")
        run = "sleep 300 & echo $! > child.pid\nsleep 300"
        agent.call("launch", job={"key": "61", "run": run, "time_limit": 1, "kill_grace": 1})
        pid_file = agent.job_dir("61") / "work" / "child.pid"
        child = int(wait_for(lambda: pid_file.exists() and
                             pid_file.read_text().strip(), what="the job's child"))
        done = agent.wait_exited("61")
        assert done["reason"] == "timeout"
        wait_for(lambda: not alive(child), what="the job's child to be killed with its process group")
    finally:
        agent.cleanup()
