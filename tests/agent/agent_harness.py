"""Test harness for the node agent: start a real `hybridctl-agent serve` process on a private
socket and state directory, talk to it with the package's stdlib client, kill and restart it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import psutil

AGENTS_DIR = Path(__file__).resolve().parents[2] / "agents"
if str(AGENTS_DIR) not in sys.path:
    sys.path.insert(0, str(AGENTS_DIR))

from hybridctl.sim.node import thaw_subtree  # noqa: E402
from hybridctl_agent.client import AgentCallError, AgentClient  # noqa: E402
from hybridctl_agent.containment import agent_parent  # noqa: E402

from tests.waiting import TIMEOUT, wait_for  # noqa: E402


def alive(pid: int) -> bool:
    """Running and not a zombie (zombies linger where pid 1 does not reap)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class AgentProc:
    """One agent process over a private socket/state dir; `restart()` keeps both."""

    def __init__(self, args: List[str], env: Optional[Dict[str, str]] = None,
                 base: Optional[str] = None, python: Optional[List[str]] = None) -> None:
        # Short paths: a Unix socket path must fit in 108 bytes.
        self.base = Path(base or tempfile.mkdtemp(prefix="hca-", dir="/tmp"))
        self.socket = str(self.base / "agent.sock")
        self.state_dir = str(self.base / "state")
        self.args = args
        self.python = python or [sys.executable]
        """Command that runs the agent's Python (e.g. prefixed by setpriv to drop root)."""
        self.env = {**os.environ, "PYTHONPATH": str(AGENTS_DIR), **(env or {})}
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.base / "agent.log"
        self._clients: List[AgentClient] = []

    def start(self) -> "AgentProc":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*self.python, "-m", "hybridctl_agent.cli", "serve", "--socket", self.socket,
             "--state-dir", self.state_dir, *self.args],
            env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        wait_for(self._hello, what="the agent to answer hello")
        return self

    def _hello(self) -> Optional[Dict[str, Any]]:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
        try:
            with AgentClient(self.socket, timeout=10) as c:
                return c.call("hello")
        except (OSError, AgentCallError):
            return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self) -> AgentClient:
        c = AgentClient(self.socket, timeout=TIMEOUT)
        self._clients.append(c)
        return c

    def call(self, op: str, **fields: Any) -> Dict[str, Any]:
        with AgentClient(self.socket, timeout=TIMEOUT) as c:
            return c.call(op, **fields)

    def job(self, key: str) -> Dict[str, Any]:
        jobs = {j["key"]: j for j in self.call("jobs")["jobs"]}
        return jobs[key]

    def wait_exited(self, key: str, timeout: float = TIMEOUT) -> Dict[str, Any]:
        return wait_for(lambda: (lambda j: j if j["state"] == "exited" else None)(self.job(key)), timeout,
                        what=f"job {key} to exit")

    def job_dir(self, key: str) -> Path:
        return Path(self.state_dir) / "jobs" / key

    def stop(self, sig: int = signal.SIGTERM) -> None:
        for c in self._clients:
            c.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> "AgentProc":
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the agent and every job it left (their supervisors outlive it on purpose)."""
        self.stop()
        jobs = Path(self.state_dir) / "jobs"
        for started in jobs.glob("*/started.json"):
            pgid = json.loads(started.read_text()).get("pgid")
            if pgid:
                try:
                    os.killpg(pgid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        for sup in jobs.glob("*/supervisor.json"):
            pid = json.loads(sup.read_text()).get("pid")
            try:
                if pid and "supervise" in " ".join(psutil.Process(pid).cmdline()):
                    os.kill(pid, signal.SIGKILL)
            except (psutil.Error, ProcessLookupError):
                pass  # gone (or a zombie) since the job was killed above
        # A supervisor killed between freezing its job's cgroup and thawing it leaves the job
        # frozen with its SIGKILL pending: thaw this agent's cgroups so those processes die.
        thaw_subtree(os.path.basename(agent_parent("", str(self.state_dir))))
        shutil.rmtree(self.base, ignore_errors=True)
