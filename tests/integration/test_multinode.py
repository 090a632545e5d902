"""Multi-node jobs: gang-scheduled ranks on two real nodes (sshd + agent each) running real
torch.distributed (gloo, CPU), compared with the same seeded training in one process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.nodes import SshLab
from tests.integration.workloads import TRAIN, have_torch, submit
from tests.waiting import wait_for

def test_two_node_ddp_matches_single_process_training(lab: SshLab, tmp_path: Path) -> None:
    require(have_torch(), "needs torch with gloo (pip install torch==2.13.0)")
    import torch

    out = tmp_path / "ddp.pt"
    cmd = f"{sys.executable} {TRAIN} --steps 40 --ckpt-every 10 --out {out}"
    job = submit(lab, "--nodes", "2", "--gpus", "A100:1", "--env", "OMP_NUM_THREADS=1", "--", cmd)
    t = lab.wait_state(job, "SUCCEEDED", "FAILED", timeout=240)
    assert t["state"] == "SUCCEEDED", lab.controller.cli("logs", job, "--stderr").stdout
    assert sorted(t["nodes"].split(",")) == ["node1", "node3"]  # both A100 nodes, never the RTX one
    rank1 = lab.controller.cli("logs", job, "--rank", "1", check=True).stdout
    assert "rank 1: done at step 40" in rank1
    ref = tmp_path / "single.pt"
    subprocess.run([sys.executable, str(TRAIN), "--steps", "40", "--ckpt-every", "10", "--out", str(ref)],
                   check=True, cwd=tmp_path, capture_output=True, env={"HYBRIDCTL_CHECKPOINT_DIR": str(tmp_path / "c"),
                                                                       "PATH": "/usr/bin:/bin"})
    a, b = torch.load(out, weights_only=True), torch.load(ref, weights_only=True)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k  # float sums in a different order: 1e-5


def test_rendezvous_env_and_one_failing_rank_stops_the_other(lab: SshLab) -> None:
    script = ('echo "M=$MASTER_ADDR:$MASTER_PORT N=$NNODES R=$NODE_RANK W=$WORLD_SIZE P=$NPROC_PER_NODE '
              'S=$SKYPILOT_NODE_RANK G=$GLOO_SOCKET_IFNAME"; '
              'if [ "$NODE_RANK" = 1 ]; then exit 5; fi; sleep 600')
    job = submit(lab, "--nodes", "2", "--gpus", "A100:2", "--", script)
    t = lab.wait_state(job, "FAILED", "SUCCEEDED", timeout=120)
    assert t["state"] == "FAILED" and t["exit_code"] == 5
    show = lab.controller.cli_json("show", job)
    assert "rank 1" in show["events"][-1]["reason"]
    r0 = lab.controller.cli("logs", job, "--rank", "0").stdout
    assert "N=2 R=0 W=4 P=2 S=0 G=lo" in r0 and "M=127.0.0.1:" in r0
    # Rank 0 (sleep 600) is stopped and its GPUs come back.
    wait_for(lambda: all(n["gpus_used"] == 0 for n in lab.controller.cli_json("nodes")), 60,
             what="every GPU free again")


def test_gang_never_starts_partially(lab: SshLab) -> None:
    # Only two nodes have A100s; a 3-node A100 job can never fit and is refused at submit.
    res = lab.controller.cli("submit", "--nodes", "3", "--gpus", "A100:1", "--", "true")
    assert res.returncode == 2 and "3" in res.stderr
    # A 2-node job while node3 is busy waits whole, holding nothing.
    hog = submit(lab, "--gpus", "A100:4", "--", "sleep 600")
    lab.wait_state(hog, "RUNNING")
    job = submit(lab, "--nodes", "2", "--gpus", "A100:1", "--", "true")
    t = wait_for(lambda: (x := lab.task(job))["reason"] and x, 30, what="a pending reason")
    assert t["state"] == "PENDING"
    assert sum(n["gpus_used"] for n in lab.controller.cli_json("nodes")) == 4
    lab.controller.cli("cancel", hog, check=True)
    assert lab.wait_state(job, "SUCCEEDED", timeout=120)["state"] == "SUCCEEDED"
