"""Recall end to end (`cloud.burst.recall`): a long job with a checkpoint_dir bursts to a cloud node
while the on-prem machine is busy; once that machine frees, the controller stops the cloud job as
at a reclaim notice (SIGTERM, the grace, the final checkpoint), requeues it without using
max_restarts, it resumes on the on-prem machine from its checkpoint, and the idle cloud node is
given back. Real controller, real agents over SSH on loopback, the simulated provider."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hybridctl.cloud.base import TAG_CLUSTER
from tests.cloud.lab import CLUSTER, CloudLab
from tests.waiting import wait_for

SCRIPT = """ckpt="$HYBRIDCTL_CHECKPOINT_DIR/state"
if [ -f "$ckpt" ]; then echo "resumed from: $(cat "$ckpt")"; exit 0; fi
trap 'echo "SIGTERM: checkpoint saved"; echo "the checkpoint written at SIGTERM" > "$ckpt"; exit 143' TERM
echo started > "$HYBRIDCTL_CHECKPOINT_DIR/started"
echo "running on $HYBRIDCTL_NODE"
while true; do sleep 0.1; done
"""


def test_a_cloud_job_is_recalled_on_prem_once_the_fleet_frees_and_its_node_goes_back(
        make_lab: Any, tmp_path: Path) -> None:
    # wait_value_usd 0: the job bursts on the `after` timer, whatever a 3 h run would cost.
    lab: CloudLab = make_lab(burst={"wait_value_usd": 0}, fleet={"checkpoint_sync_interval": 1.0})
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 600")  # no time limit: never a recall candidate
    assert lab.wait_state(hog, "RUNNING")["nodes"] == "prem1"
    spec = tmp_path / "long.yaml"
    spec.write_text(yaml.safe_dump({"resources": {"accelerators": "A100:1"}, "time_limit": "3h",
                                    "checkpoint_dir": str(tmp_path / "ckpt"), "run": SCRIPT}))
    job = lab.submit(str(spec))  # max_restarts 0 (the default)
    first = lab.wait_state(job, "RUNNING", timeout=60)
    assert first["nodes"].startswith("cloud-") and first["attempt"] == 0
    cloud_node = first["nodes"]
    wait_for(lambda: "running on" in lab.ctl.cli("logs", job).stdout, 30, interval=0.2, what="the job's first line")

    lab.ctl.cli("cancel", hog, check=True)  # prem1 frees: the cloud job can come back
    t = wait_for(lambda: (x := lab.task(job))["attempt"] == 1 and x["state"] in ("RUNNING", "SUCCEEDED") and x,
                 60, interval=0.2, what=f"the job running again (controller log: {lab.ctl.log})")
    assert t["nodes"] == "prem1"
    t = lab.wait_state(job, "SUCCEEDED", "FAILED", timeout=60)
    assert t["state"] == "SUCCEEDED", lab.ctl.cli("logs", job).stdout
    assert "resumed from: the checkpoint written at SIGTERM" in lab.ctl.cli("logs", job, check=True).stdout
    assert "SIGTERM: checkpoint saved" in lab.ctl.cli("logs", job, "--attempt", "0", check=True).stdout

    shown = lab.ctl.cli_json("show", job)
    events = shown["events"]
    assert [e["to"] for e in events] == ["PENDING", "STARTING", "RUNNING", "PREEMPTED", "PENDING", "STARTING",
                                         "RUNNING", "SUCCEEDED"]
    [stop] = [e for e in events if e["to"] == "PREEMPTED"]
    assert stop["reason"].startswith("recalled: ") and "on-prem" in stop["reason"], stop
    task = shown["tasks"][0]
    assert (task["restarts"], task["recoveries"]) == (0, 1)  # max_restarts untouched
    assert stop["reason"] in lab.ctl.cli("show", job, check=True).stdout  # the history says why

    # The cloud node, idle after the recall, goes back by the idle path (burst.idle_timeout 5 s).
    wait_for(lambda: not lab.provider().list({TAG_CLUSTER: CLUSTER}), 30, interval=0.2, what="the cloud node given back")
    wait_for(lambda: lab.node(cloud_node)["state"] == "absent", 30, interval=0.2, what="the cloud node forgotten")
