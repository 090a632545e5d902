"""The job-world lab for integration tests: a controller and one 1-GPU node whose real agent (behind
a real sshd) has the settings a test gives it (a wheelhouse, uv, an S3 endpoint, a job_path)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.integration.harness import ControllerProc, make_controller
from tests.integration.nodes import LabNode
from tests.waiting import wait_for

AGENTS = str(Path(__file__).resolve().parents[2] / "agents")
if AGENTS not in sys.path:
    sys.path.insert(0, AGENTS)

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-2"}


class ConfiguredNode(LabNode):
    """A lab node whose agent reads `config` (as its --config file), with `env` added to its
    environment (also used by bench/locality.py)."""

    config: dict[str, Any] = {}
    env: dict[str, str] = {}

    def start_agent(self) -> None:
        cfg = self.base / "agent.json"
        cfg.write_text(json.dumps(self.config))
        log = open(self.base / "agent.log", "ab")
        self.agent = subprocess.Popen(
            [sys.executable, "-m", "hybridctl_agent.cli", "serve", "--socket", str(self.socket), "--state-dir",
             str(self.state_dir), "--simulate-gpus", self.gpus, "--name", self.name, "--interval", "0.5",
             "--config", str(cfg)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, **self.env, "PYTHONPATH": AGENTS},
        )
        log.close()
        wait_for(self.socket.exists, 30, what=f"agent socket of {self.name}")


class WorldNode(ConfiguredNode):
    """A lab node whose agent has a wheelhouse, uv and an S3 endpoint configured."""

    env = CREDS


@contextlib.contextmanager
def lab(tmp_path: Path, agent_config: dict[str, Any],
        ctl_config: dict[str, Any] | None = None) -> Iterator[tuple[ControllerProc, WorldNode]]:
    """A controller (with `ctl_config` added to its config) and one 1-GPU node (`solo`: real sshd,
    a real agent with `agent_config`), added."""
    from tests.integration.sshd import Sshd, keygen, require_sshd

    require_sshd()
    key = keygen(tmp_path / "id_ed25519")
    node = WorldNode("solo", tmp_path / "solo", "1:T4", Sshd(tmp_path / "solo" / "sshd", key))
    node.config = agent_config
    ctl = make_controller(tmp_path / "ctl", {"scheduler": {"tick_seconds": 1.0}, "fleet": {"poll_interval": 0.5},
                                             **(ctl_config or {})})
    try:
        node.sshd.start()
        node.start_agent()
        ctl.start()
        assert ctl.cli(*node.add_args(key), timeout=120).returncode == 0
        yield ctl, node
    finally:
        ctl.stop()
        node.stop()


def ended(ctl: ControllerProc, job: str) -> dict[str, Any]:
    def probe() -> Any:
        t = ctl.cli_json("show", job)["tasks"][0]
        return t if t["state"] in ("SUCCEEDED", "FAILED", "CANCELLED") else None

    return wait_for(probe, 120, what=f"job {job} to end")


def succeeded(ctl: ControllerProc, job_file: Path) -> tuple[str, str]:
    """Submit `job_file`, wait for it to end and check that it SUCCEEDED; its (stdout, stderr)."""
    job = ctl.cli("submit", str(job_file), check=True).stdout.strip()
    t = ended(ctl, job)
    err = ctl.cli("logs", job, "--stderr").stdout
    assert t["state"] == "SUCCEEDED", (t, err)
    return ctl.cli("logs", job, check=True).stdout, err
