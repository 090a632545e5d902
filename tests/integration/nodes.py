"""Test GPU nodes: each a real sshd on loopback plus a real `hybridctl-agent` with simulated GPUs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psutil

from tests.integration.harness import ControllerProc, make_controller
from tests.integration.sshd import Sshd, keygen
from tests.waiting import wait_for


@dataclass
class LabNode:
    name: str
    base: Path
    gpus: str  # "8:A100"
    sshd: Sshd
    agent: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.base / "agent.sock"

    @property
    def state_dir(self) -> Path:
        return self.base / "state"

    def start_agent(self) -> None:
        log = open(self.base / "agent.log", "ab")
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "hybridctl_agent.cli", "serve", "--socket", str(self.socket), "--state-dir",
             str(self.state_dir), "--simulate-gpus", self.gpus, "--name", self.name, "--interval", "0.5"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        wait_for(self.socket.exists, 30, what=f"agent socket of {self.name}")

    def kill_agent(self) -> None:
        assert self.agent is not None
        self.agent.send_signal(signal.SIGKILL)
        self.agent.wait(timeout=30)
        self.socket.unlink(missing_ok=True)

    def add_args(self, key: Path) -> list[str]:
        return ["node", "add", self.name, "--host", "127.0.0.1", "--port", str(self.sshd.port), "--identity",
                str(key), "--agent-socket", str(self.socket), "--accept-new"]

    def stop(self) -> None:
        self.sshd.stop()
        if self.agent is not None and self.agent.poll() is None:
            self.agent.kill()
            self.agent.wait()
        # Job supervisors outlive the agent on purpose; end the ones this test started.
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if str(self.state_dir) in cmd and p.pid != os.getpid():
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    p.kill()
                except psutil.Error:
                    pass


FLEET_CONFIG: dict[str, Any] = {
    "scheduler": {"tick_seconds": 1.0},
    "fleet": {"poll_interval": 0.5, "unreachable_after": 3.0, "lost_after": 8.0, "checkpoint_sync_interval": 1.0},
}

SHAPES = {"node1": "8:A100", "node2": "4:RTX3090", "node3": "4:A100"}


class SshLab:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.key = keygen(base / "id_ed25519")
        self.nodes = {
            name: LabNode(name, base / name, gpus, Sshd(base / name / "sshd", self.key))
            for name, gpus in SHAPES.items()
        }
        self.controller: ControllerProc = make_controller(base / "ctl", FLEET_CONFIG)

    def start(self) -> None:
        for n in self.nodes.values():
            n.sshd.start()
            n.start_agent()
        self.controller.start()
        for n in self.nodes.values():
            res = self.controller.cli(*n.add_args(self.key), timeout=120)
            assert res.returncode == 0, res.stderr

    def stop(self) -> None:
        self.controller.stop()
        for n in self.nodes.values():
            n.stop()

    def task(self, job: str) -> dict[str, Any]:
        return self.controller.cli_json("show", job)["tasks"][0]

    def wait_state(self, job: str, *states: str, timeout: float = 90) -> dict[str, Any]:
        return wait_for(lambda: (t := self.task(job))["state"] in states and t, timeout,
                        what=f"job {job} in {states} (controller log: {self.controller.log})")


@contextlib.contextmanager
def solo_node(tmp_path: Path, fleet: dict[str, Any], allow_forwarding: bool = True) -> Iterator[Any]:
    """A controller with its own fleet settings and one 2-GPU node (`solo`, real sshd), added."""
    from tests.integration.sshd import require_sshd

    require_sshd()
    key = keygen(tmp_path / "id_ed25519")
    node = LabNode("solo", tmp_path / "solo", "2:T4", Sshd(tmp_path / "solo" / "sshd", key,
                                                            allow_forwarding=allow_forwarding))
    ctl = make_controller(tmp_path / "ctl", {"scheduler": {"tick_seconds": 1.0}, "fleet": fleet})
    try:
        node.sshd.start()
        node.start_agent()
        ctl.start()
        res = ctl.cli(*node.add_args(key), timeout=120)
        assert res.returncode == 0, res.stderr
        assert "2 GPUs" in res.stdout
        yield ctl
    finally:
        ctl.stop()
        node.stop()
