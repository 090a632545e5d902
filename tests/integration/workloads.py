"""The training workload the multi-node, recovery and preemption tests run, and how they submit it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "scripts" / "examples" / "train.py"


def have_torch() -> bool:
    return subprocess.run([sys.executable, "-c", "import torch.distributed as d; assert d.is_gloo_available()"],
                          capture_output=True).returncode == 0


def submit(lab: Any, *args: str) -> str:
    """`hybridctl submit ARGS` against a `nodes.SshLab`; the job id."""
    res = lab.controller.cli("submit", *args)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


class FakeFleet:
    """A stand-in for the controller's fleet (FleetView's telemetry and kick) whose samples a test
    writes directly: a node that says whatever the test wants."""

    def __init__(self, samples: "dict[str, dict[str, Any]] | None" = None) -> None:
        self.samples: dict[str, dict[str, Any]] = {} if samples is None else samples
        self.kicked: list[str] = []

    def telemetry(self) -> dict[str, dict[str, Any]]:
        return self.samples

    def kick(self, node: str) -> None:
        self.kicked.append(node)
