"""A small hybrid lab for the cloud tests: one on-prem simulated machine with one A100 reached
over SSH, a real controller process (`hybridctl server`), and the simulated provider, whose
instances are real machines (agent + SSH server on loopback)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path
from typing import Any

import yaml

from hybridctl.cloud.simulated import SimulatedProvider
from hybridctl.sim import node as simnode
from hybridctl.sim.keys import client_key, pin
from tests.cloud.conftest import CATALOG, small_catalog
from tests.integration.harness import ControllerProc, make_controller
from tests.waiting import wait_for

CLUSTER = "e2e"


class CloudLab:
    """One on-prem simulated machine with one A100, a controller, and a simulated cloud."""

    def __init__(self, base: Path, burst: dict[str, Any], simulated: dict[str, Any] | None = None,
                 cloud: dict[str, Any] | None = None, fleet: dict[str, Any] | None = None,
                 recovery: dict[str, Any] | None = None, agent: dict[str, Any] | None = None) -> None:
        """`agent`: settings of every machine's agent, prem1's and the cloud's (uv_path, ...)."""
        self.base = base
        self.key = client_key(base / "keys")
        self.cloud_dir = base / "sim"
        catalog = base / "offers.yaml"
        catalog.write_text(yaml.safe_dump(CATALOG))
        agent_file = None
        if agent:
            agent_file = base / "agent.json"
            agent_file.write_text(json.dumps(agent))
            simulated = {"agent_config": agent, **(simulated or {})}
        self.prem: subprocess.Popen[bytes] | None = None
        self.prem, info = simnode.start(base / "prem1", "prem1", "1:A100", Path(f"{self.key}.pub"), interval=0.5,
                                        agent_config=agent_file)
        config = {
            "scheduler": {"tick_seconds": 0.5},
            "fleet": {"poll_interval": 0.5, "unreachable_after": 10.0, "lost_after": 60.0, **(fleet or {})},
            "nodes": [{"name": "prem1", "host": "127.0.0.1", "port": info["port"], "identity": str(self.key),
                       "agent_socket": info["socket"]}],
            "cloud": {
                "enabled": True, "providers": ["simulated"], "catalog": str(catalog), "cluster": CLUSTER,
                "poll_interval": 0.5, "leak_grace": 1.0, "bootstrap_timeout": 90.0, "orphan_timeout": 0.0,
                "workdir_cap_mb": 1, "preemption_grace": 2.0, "default_market": "spot",
                "burst": {"after": 2.0, "idle_timeout": 5.0, "max_nodes": 2, "max_hourly_usd": 10.0,
                          "budget_usd": 100.0, **burst},
                "simulated": {"dir": str(self.cloud_dir), "launch_delay": 0.0, "agent_interval": 0.5,
                              "preemption_rate_per_h": 0.0, **(simulated or {})},
                **(cloud or {}),
            },
        }
        if recovery is not None:
            config["recovery"] = recovery
        self.ctl: ControllerProc = make_controller(base / "ctl", config)
        pin(self.ctl.home / "known_hosts", info["port"], info["host_key"])

    def provider(self) -> SimulatedProvider:
        return SimulatedProvider(self.cloud_dir, small_catalog())

    def start(self) -> None:
        self.ctl.start()
        wait_for(lambda: self.node("prem1")["state"] == "UP", 60, what="prem1 UP")

    def stop(self) -> None:
        self.ctl.stop()
        p = self.provider()
        for inst in p.list({}):
            p.terminate(inst.id)
        if self.prem is not None and self.prem.poll() is None:
            self.prem.send_signal(signal.SIGTERM)
            self.prem.wait(30)

    def node(self, name: str) -> dict[str, Any]:
        return next((n for n in self.ctl.cli_json("nodes") if n["name"] == name), {"state": "absent"})

    def submit(self, *args: str) -> str:
        res = self.ctl.cli("submit", *args)
        assert res.returncode == 0, res.stderr
        return res.stdout.strip()

    def task(self, job: str) -> dict[str, Any]:
        return self.ctl.cli_json("show", job)["tasks"][0]

    def wait_state(self, job: str, *states: str, timeout: float = 90) -> dict[str, Any]:
        return wait_for(lambda: (t := self.task(job))["state"] in states and t, timeout, interval=0.2,
                        what=f"job {job} in {states} (controller log: {self.ctl.log})")

    def status(self) -> dict[str, Any]:
        return json.loads(self.ctl.cli("cloud", "status", "--json", check=True).stdout)
