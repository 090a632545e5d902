"""Spot preemption with notice, end to end with real torch: a seeded training job runs on a cloud
node, the simulated market reclaims that node with notice; the job gets SIGTERM, writes a
checkpoint, the controller pulls it, and the job resumes on the on-prem machine from exactly that
step, ending with the weights of an uninterrupted run."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.cloud.lab import CLUSTER, CloudLab
from tests.conftest import require
from tests.integration.workloads import TRAIN, have_torch
from tests.waiting import wait_for

from hybridctl.cloud.base import TAG_CLUSTER

STEPS = 60
SYNC_INTERVAL = 1.0


def synced_step(lab: CloudLab, job: str) -> int:
    """The step of the checkpoint the controller holds for `job` (-1 if none yet)."""
    import torch

    ckpt = lab.ctl.home / "checkpoints" / job / "ckpt.pt"
    try:
        return int(torch.load(ckpt, weights_only=True)["step"])
    except (OSError, RuntimeError, EOFError):
        return -1


def test_preempted_training_resumes_from_its_final_checkpoint_with_identical_weights(
        make_lab: Any, tmp_path: Path) -> None:
    require(have_torch(), "needs torch (pip install torch==2.13.0)")
    import torch

    lab: CloudLab = make_lab(burst={}, cloud={"preemption_grace": 20.0},
                        fleet={"checkpoint_sync_interval": SYNC_INTERVAL})
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 600")  # the on-prem GPU is busy: the job bursts
    lab.wait_state(hog, "RUNNING")
    out = tmp_path / "final.pt"
    job = lab.submit("--gpus", "A100:1", "--env", "OMP_NUM_THREADS=1", "--",  # the default spec: max_restarts 0
                     f"{sys.executable} {TRAIN} --steps {STEPS} --ckpt-every 2 --step-time 0.1 --out {out}")
    first = lab.wait_state(job, "RUNNING", timeout=120)["nodes"]
    assert first.startswith("cloud-")
    wait_for(lambda: synced_step(lab, job) >= 10, 120, what="a periodic checkpoint sync at step >= 10")

    [inst] = lab.provider().list({TAG_CLUSTER: CLUSTER})
    lab.provider().preempt(inst.id, time.time() + 30)  # reclaimed in 30 s; the notice comes now
    wait_for(lambda: any(e["to"] == "PREEMPTED" for e in lab.ctl.cli_json("show", job)["events"]), 60,
             interval=0.1, what="the job PREEMPTED")
    lab.ctl.cli("cancel", hog, check=True)  # free the on-prem GPU: the job may come back on-prem
    t = wait_for(lambda: (x := lab.task(job))["state"] in ("RUNNING", "SUCCEEDED") and x["attempt"] == 1 and x,
                 120, what="the job running again")
    assert t["nodes"] == "prem1"
    t = lab.wait_state(job, "SUCCEEDED", "FAILED", timeout=180)
    assert t["state"] == "SUCCEEDED", lab.ctl.cli("logs", job).stdout

    before = lab.ctl.cli("logs", job, "--attempt", "0", check=True).stdout
    after = lab.ctl.cli("logs", job, check=True).stdout
    assert "SIGTERM at step " in before, before[-1500:] + "\n--- attempt 1:\n" + after[:300]
    stopped = int(before.split("SIGTERM at step ")[1].split(":")[0])
    resumed = int(after.split("resumed from step ")[1].split()[0])
    assert 10 <= stopped < STEPS
    assert resumed == stopped  # the final checkpoint, written in the grace period, was synced: no lost work
    assert f"done at step {STEPS}" in after
    events = [e["to"] for e in lab.ctl.cli_json("show", job)["events"]]
    assert events == ["PENDING", "STARTING", "RUNNING", "PREEMPTED", "PENDING", "STARTING", "RUNNING", "SUCCEEDED"]
    shown = lab.ctl.cli_json("show", job)["tasks"][0]
    assert (shown["recoveries"], shown["recovery_causes"], shown["restarts"]) == (1, {"preemption": 1}, 0)
    assert "recovered 1 time (preemption), restarts 0/0" in lab.ctl.cli("show", job, check=True).stdout

    ref = tmp_path / "ref.pt"
    subprocess.run([sys.executable, str(TRAIN), "--steps", str(STEPS), "--ckpt-every", "2", "--out", str(ref)],
                   check=True, capture_output=True, cwd=tmp_path,
                   env={"HYBRIDCTL_CHECKPOINT_DIR": str(tmp_path / "c"), "PATH": "/usr/bin:/bin"})
    a, b = torch.load(out, weights_only=True), torch.load(ref, weights_only=True)
    for k in a:
        assert torch.equal(a[k], b[k]), k  # same steps in the same order: bit-identical
