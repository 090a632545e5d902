"""Containment seen from the controller: a job's resources.memory and resources.cpus travel in the
launch request to the node's cgroup, and `hybridctl nodes` shows how each node contains jobs.
Real controller, sshd and root agents (tests/integration/nodes.py's lab)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require
from tests.integration.nodes import SshLab
from tests.integration.conftest import lab  # noqa: F401 - real sshd and agents (root agents use cgroups)
from tests.waiting import wait_for


@pytest.mark.needs_root
@pytest.mark.needs_sshd
def test_memory_and_cpus_reach_the_job_cgroup_and_nodes_shows_containment(lab: SshLab) -> None:
    require(os.geteuid() == 0, "root agents (cgroups) need root")
    def hellos() -> Any:
        rows = lab.controller.cli_json("nodes")
        return rows if rows and all(r.get("containment") for r in rows) else None
    nodes = {n["name"]: n for n in wait_for(hellos, 60, what="every node's hello")}
    mode = nodes["node2"]["containment"]
    require(mode.startswith("cgroup-"), f"the agents found no cgroups here: {mode}")
    table = lab.controller.cli("nodes", check=True).stdout.splitlines()
    col = table[0].index("CGROUP")
    assert all(line[col:].split()[0] == mode.split()[0].removeprefix("cgroup-")
               for line in table[1:])
    res = lab.controller.cli("submit", "--gpus", "RTX3090:1", "--cpus", "1.5", "--memory", "1G",
                             "--", "sleep 300")
    assert res.returncode == 0, res.stderr
    job = res.stdout.strip()
    lab.wait_state(job, "RUNNING")
    (spec_path,) = Path(lab.nodes["node2"].state_dir, "jobs").glob("*/spec.json")
    limits = json.loads(spec_path.read_text())["cgroup"]["limits"]
    assert (limits["cpus"], limits["memory_bytes"]) == (1.5, 1 << 30)
    assert len(limits["deny_gpus"]) == 3  # the node's three other RTX 3090s
    lab.controller.cli("cancel", job, check=True)
    lab.wait_state(job, "CANCELLED")
