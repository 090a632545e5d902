"""Recovery from checkpoints: a node dies mid-training without notice; the job resumes elsewhere
from the last periodic sync and ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import require
from tests.integration.nodes import SshLab
from tests.integration.workloads import TRAIN, have_torch, submit
from tests.waiting import wait_for

STEPS = 80


def synced_step(lab: SshLab, job: str) -> int:
    """The step of the checkpoint the controller holds for `job` (-1 if none yet)."""
    import torch

    ckpt = lab.controller.home / "checkpoints" / job / "ckpt.pt"
    if not ckpt.exists():
        return -1
    return int(torch.load(ckpt, weights_only=True)["step"])


def test_node_lost_without_notice_resumes_from_last_sync_with_identical_result(lab: SshLab, tmp_path: Path) -> None:
    require(have_torch(), "needs torch (pip install torch==2.13.0)")
    import torch

    out = tmp_path / "final.pt"
    cmd = f"{sys.executable} {TRAIN} --steps {STEPS} --ckpt-every 4 --step-time 0.1 --out {out}"
    job = submit(lab, "--gpus", "A100:1", "--env", "OMP_NUM_THREADS=1", "--", cmd)  # default spec: max_restarts 0
    first = lab.wait_state(job, "RUNNING")["nodes"]
    wait_for(lambda: synced_step(lab, job) >= 20, 120, what="a synced checkpoint at step >= 20")
    lab.nodes[first].stop()  # the machine dies: sshd, agent and the job's processes, no notice
    at_death = synced_step(lab, job)
    t = wait_for(lambda: (x := lab.task(job))["state"] in ("RUNNING", "SUCCEEDED") and x["attempt"] == 1 and x,
                 120, what="the job running again on another node")
    assert t["nodes"] != first
    t = lab.wait_state(job, "SUCCEEDED", "FAILED", timeout=180)
    assert t["state"] == "SUCCEEDED"
    log = lab.controller.cli("logs", job, check=True).stdout
    resumed = int(log.split("resumed from step ")[1].split()[0])
    assert resumed >= at_death >= 20  # lost work: at most what ran after the last sync
    assert f"done at step {STEPS}" in log
    ref = tmp_path / "ref.pt"
    subprocess.run([sys.executable, str(TRAIN), "--steps", str(STEPS), "--ckpt-every", "4", "--out", str(ref)],
                   check=True, capture_output=True, cwd=tmp_path,
                   env={"HYBRIDCTL_CHECKPOINT_DIR": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"})
    a, b = torch.load(out, weights_only=True), torch.load(ref, weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # same steps, same order: bit-identical
    events = [e["to"] for e in lab.controller.cli_json("show", job)["events"]]
    assert events.count("NODE_LOST") == 1 and events[-1] == "SUCCEEDED"
    shown = lab.controller.cli_json("show", job)["tasks"][0]
    assert (shown["recoveries"], shown["recovery_causes"], shown["restarts"]) == (1, {"node loss": 1}, 0)
