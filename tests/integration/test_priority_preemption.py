"""Priority preemption through the real controller and real agents over SSH (the lab): a
priority-500 job takes the GPUs of a running preemptible priority -5 job, which gets SIGTERM, is
requeued as a recovery (never charged to max_restarts) and later finishes."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.integration.nodes import SshLab


def test_high_priority_job_preempts_and_victim_requeues_then_finishes(lab: SshLab, tmp_path: Path) -> None:
    victim_spec = tmp_path / "victim.yaml"
    victim_spec.write_text(yaml.safe_dump({
        "name": "low",
        "priority": -5,
        "preemptible": True,
        "resources": {"accelerators": "RTX3090:4"},
        "run": 'echo "attempt=$HYBRIDCTL_ATTEMPT"; [ "$HYBRIDCTL_ATTEMPT" -ge 1 ] && exit 0; sleep 600',
    }))  # fmt: skip
    res = lab.controller.cli("submit", str(victim_spec))
    assert res.returncode == 0, res.stderr
    victim = res.stdout.strip()
    lab.wait_state(victim, "RUNNING")

    res = lab.controller.cli("submit", "--priority", "500", "--gpus", "RTX3090:4", "--", "sleep 1; echo high")
    assert res.returncode == 0, res.stderr
    high = res.stdout.strip()

    t = lab.wait_state(high, "SUCCEEDED", "FAILED", timeout=120)
    assert t["state"] == "SUCCEEDED" and t["nodes"] == "node2"
    v = lab.wait_state(victim, "SUCCEEDED", "FAILED", timeout=120)
    assert v["state"] == "SUCCEEDED" and v["attempt"] == 1
    shown = lab.controller.cli_json("show", victim)
    events = [(e["to"], e["reason"]) for e in shown["events"]]
    assert ("PREEMPTED", f"preempted by job {high} (priority 500) on node2") in events
    assert v["restarts"] == 0  # a recovery, not a restart
    assert "preemption" in str(v.get("recovery_causes"))
    assert lab.controller.cli("logs", victim, check=True).stdout.split() == ["attempt=1"]
