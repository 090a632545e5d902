"""Bursting end to end with real processes: a real controller (`hybridctl server`), one small
on-prem machine reached over SSH, and the simulated provider, whose instances are real machines
(agent + SSH server on loopback). Only the real CLI talks to the controller."""

from __future__ import annotations

import grp
import json
import os
import pwd
import time
from pathlib import Path
from typing import Any

from hybridctl.cloud.base import TAG_CLUSTER, LaunchSpec
from tests.cloud.conftest import fake_cloud_script
from tests.cloud.lab import CLUSTER, CloudLab
from tests.waiting import wait_for


def test_burst_runs_on_cloud_then_scales_down(make_lab: Any, tmp_path: Path) -> None:
    # The cheapest pool refuses (a capacity error): the next offer must be used.
    lab: CloudLab = make_lab(burst={}, simulated={"capacity_errors": ["sim-east-a/sim.a100x1"]})
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 300")
    assert lab.wait_state(hog, "RUNNING")["nodes"] == "prem1"
    work = tmp_path / "work"
    (work / ".git").mkdir(parents=True)
    (work / ".git" / "big").write_bytes(b"x" * 1024)  # excluded from the upload
    (work / "input.txt").write_text("payload from the lab\n")
    script = 'cat input.txt; ls -a | grep -c git; echo result > "$HYBRIDCTL_OUTPUT_DIR/out.txt"; echo done'
    job = lab.submit("--gpus", "A100:1", "--workdir", str(work), "--", script)
    big = tmp_path / "big"
    big.mkdir()
    (big / "weights.bin").write_bytes(b"w" * (2 << 20))
    too_big = lab.submit("--gpus", "A100:1", "--workdir", str(big), "--", "echo never")
    shown = lab.ctl.cli("show", job, check=True).stdout
    assert "wait/pay   local: ~" in shown and "cloud: A100 spot in sim-east at $" in shown

    t = lab.wait_state(job, "SUCCEEDED", "FAILED", timeout=120)
    assert t["state"] == "SUCCEEDED", lab.ctl.log.read_text()[-3000:]
    cloud_node = t["nodes"]
    assert cloud_node.startswith("cloud-")
    assert lab.ctl.cli("logs", job, check=True).stdout.split("\n")[:3] == ["payload from the lab", "0", "done"]
    assert lab.wait_state(too_big, "FAILED", "SUCCEEDED", timeout=60)["state"] == "FAILED"
    why = lab.ctl.cli_json("show", too_big)["events"][-1]["reason"]
    assert why.startswith("workdir upload to cloud-") and "over 1 MiB (cloud.workdir_cap_mb)" in why
    key = f"{job}.a0.r0"
    assert (lab.ctl.home / "outputs" / key / "out.txt").read_text() == "result\n"

    status = lab.status()
    # Spot prices drift: the refused pool may or may not have been the cheapest at burst time.
    # Either way nothing runs there, and a refusal (if one happened) backs off that pool only.
    assert {b["pool"] for b in status["backoffs"]} <= {"simulated/sim-east-a/sim.a100x1/spot"}
    [inst] = [i for i in status["instances"] if i["node"] == cloud_node] or [None]
    if inst is not None:  # not yet given back
        assert (inst["zone"], inst["market"]) == ("sim-east-b", "spot")

    # Idle for burst.idle_timeout: drained, terminated, gone from the fleet and the provider.
    wait_for(lambda: not lab.provider().list({TAG_CLUSTER: CLUSTER}), 60, interval=0.2, what="scale-down")
    wait_for(lambda: lab.status()["instances"] == [], 30, interval=0.2, what="no cloud instances left")
    assert lab.node(cloud_node)["state"] == "absent"
    assert lab.ctl.cli("logs", job, check=True).stdout.startswith("payload from the lab")  # after scale-down

    by_job = {r["job"]: r for r in json.loads(lab.ctl.cli("cloud", "cost", "--by", "job", "--json", check=True).stdout)}
    # The job ran for milliseconds: its share may round to $0.0000; the node's idle time may not.
    assert job in by_job and by_job[job]["usd"] >= 0 and by_job["(idle)"]["usd"] > 0
    by_node = json.loads(lab.ctl.cli("cloud", "cost", "--json", check=True).stdout)
    assert cloud_node in [r["node"] for r in by_node] and all(r["usd_per_hour"] == 0 for r in by_node)
    assert sum(r["usd"] for r in by_node) > 0
    assert lab.task(hog)["state"] == "RUNNING"  # the on-prem job never moved
    lab.ctl.cli("cancel", hog, check=True)


def test_limit_blocks_burst_visibly_and_leaks_are_terminated(make_lab: Any) -> None:
    lab: CloudLab = make_lab(burst={"max_nodes": 0})
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 300")
    lab.wait_state(hog, "RUNNING")
    job = lab.submit("--gpus", "A100:1", "--", "echo never")
    blocked = wait_for(lambda: lab.status()["blocked"], 30, interval=0.2, what="a blocked burst")
    assert blocked == [{"job": job, "reason": blocked[0]["reason"]}]
    assert "max_nodes: 0 of 0 cloud nodes" in blocked[0]["reason"]
    assert "max_nodes" in lab.ctl.cli("cloud", "status", check=True).stdout
    assert lab.task(job)["state"] == "PENDING"
    offers = json.loads(lab.ctl.cli("cloud", "offers", "--gpus", "A100:2", "--json", check=True).stdout)
    assert {o["instance_type"] for o in offers} == {"sim.a100x2"} and len(offers) == 4  # 2 zones x spot + 2 on-demand
    assert [o["price_hourly"] for o in offers] == sorted(o["price_hourly"] for o in offers)
    assert "sim.l40sx1" in lab.ctl.cli("cloud", "offers", "--spot", check=True).stdout

    # Something launched outside the controller's records, with its tag: terminated after the grace.
    p = lab.provider()
    offer = next(o for o in p.offers() if o.instance_type == "sim.l40sx1")
    pub = Path(f"{lab.key}.pub").read_text()
    leaked = p.launch(LaunchSpec(offer, "intruder", {TAG_CLUSTER: CLUSTER}, pub))
    wait_for(lambda: p.describe(leaked.id).state == "terminated", 30, interval=0.2, what="leak terminated")
    p.close()
    assert "leak:" in lab.ctl.log.read_text() and leaked.id in lab.ctl.log.read_text()
    leaks = wait_for(lambda: lab.status()["leaks"], 30, interval=0.2, what="the leak in cloud status")
    assert [x["instance_id"] for x in leaks] == [leaked.id]
    assert lab.provider().list({TAG_CLUSTER: CLUSTER}) == []
    assert lab.task(job)["state"] == "PENDING"
    lab.ctl.cli("cancel", hog, job, check=True)


def test_a_user_over_their_cloud_budget_waits_on_prem_and_is_told_why(make_lab: Any) -> None:
    me, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
    lab: CloudLab = make_lab(burst={"user_budget_usd": {"*": 0.0}, "group_budget_usd": {group: 1000.0}})
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 300")
    lab.wait_state(hog, "RUNNING")
    job = lab.submit("--gpus", "A100:1", "--", "echo never")
    blocked = wait_for(lambda: lab.status()["blocked"], 30, interval=0.2, what="a burst refused for the budget")
    assert blocked[0]["job"] == job and blocked[0]["reason"].startswith(
        f"cloud: user {me}'s budget: $0.00 of $0.00 spent or committed this month; this run needs $")
    why = wait_for(lambda: "user_budget_usd" in (r := lab.task(job)["reason"] or "") and r, 30, interval=0.2,
                   what="the budget in the job's reason")
    assert "cloud.burst.user_budget_usd" in why  # queue and show tell the user, not only cloud status
    status = lab.status()
    assert status["owners"] == [{"kind": "group", "name": group, "spent_usd": 0.0, "used_usd": 0.0, "budget_usd": 1000.0}]
    assert (f"group   {group}: $0.00 spent, $0.00 with what running jobs will still cost, of $1000.00 this month"
            in lab.ctl.cli("cloud", "status", check=True).stdout)
    assert status["instances"] == [] and lab.task(job)["state"] == "PENDING"
    lab.ctl.cli("cancel", hog, job, check=True)


def test_preemption_notice_requeues_the_job_and_it_reruns_on_a_new_node(make_lab: Any) -> None:
    lab: CloudLab = make_lab(burst={})
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 300")
    lab.wait_state(hog, "RUNNING")
    job = lab.submit("--gpus", "A100:1", "--", "echo attempt=$HYBRIDCTL_ATTEMPT; sleep 300")  # max_restarts 0
    first = lab.wait_state(job, "RUNNING", timeout=90)["nodes"]
    assert first.startswith("cloud-")
    [inst] = lab.provider().list({TAG_CLUSTER: CLUSTER})
    lab.provider().preempt(inst.id, time.time() + 4)  # the market reclaims it, with notice

    again = wait_for(lambda: (t := lab.task(job))["state"] == "RUNNING" and t["nodes"] != first and t, 90,
                     interval=0.2, what="the job rerunning on another cloud node")
    assert again["attempt"] == 1 and again["nodes"].startswith("cloud-")
    events = [e["to"] for e in lab.ctl.cli_json("show", job)["events"]]
    assert events[events.index("PREEMPTED") - 1] == "RUNNING" and events[events.index("PREEMPTED") + 1] == "PENDING"
    wait_for(lambda: lab.provider().describe(inst.id).state == "terminated", 30, interval=0.2, what="reclaimed")
    wait_for(lambda: lab.node(first)["state"] == "absent", 30, interval=0.2, what=f"{first} removed")
    wait_for(lambda: "attempt=1" in lab.ctl.cli("logs", job).stdout, 30, interval=0.2, what="attempt 1 output")
    [row] = [r for r in lab.ctl.cli_json("queue") if str(r["job_id"]) == job]
    assert (row["recoveries"], row["recovery_causes"], row["restarts"]) == (1, {"preemption": 1}, 0)
    lab.ctl.cli("cancel", hog, job, check=True)


def test_a_job_preempted_more_often_than_the_cap_fails_naming_the_cap(make_lab: Any) -> None:
    lab: CloudLab = make_lab(burst={}, recovery={"max_recoveries": 1})
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 300")
    lab.wait_state(hog, "RUNNING")
    job = lab.submit("--gpus", "A100:1", "--max-restarts", "3", "--", "sleep 300")  # restarts left do not help
    nodes = []
    for n in range(2):
        t = wait_for(lambda: (t := lab.task(job))["state"] == "RUNNING" and t["attempt"] == n and t, 90,
                     interval=0.2, what=f"attempt {n} running on a cloud node")
        nodes.append(t["nodes"])
        [inst] = [i for i in lab.provider().list({TAG_CLUSTER: CLUSTER}) if i.name == t["nodes"]]
        lab.provider().preempt(inst.id, time.time() + 4)
    t = lab.wait_state(job, "FAILED", timeout=60)
    assert (t["recoveries"], t["restarts"], t["attempt"]) == (1, 0, 1)
    reason = lab.ctl.cli_json("show", job)["events"][-1]["reason"]
    assert "already recovered 1 time, the most recovery.max_recoveries (1) allows" in reason, reason
    assert nodes[0] != nodes[1] and all(n.startswith("cloud-") for n in nodes)
    assert "recovered 1 time (preemption), restarts 0/3" in lab.ctl.cli("show", job, check=True).stdout
    lab.ctl.cli("cancel", hog, check=True)


def test_failed_bootstrap_terminates_the_instance_and_tries_another_offer(make_lab: Any, tmp_path: Path) -> None:
    """A command-provider cloud whose instances never answer SSH (port 1 on loopback)."""
    cmd, env = fake_cloud_script(tmp_path / "fake")
    script_env = " ".join(f"{k}={v}" for k, v in env.items())
    command = f"env {script_env} {cmd}"
    lab: CloudLab = make_lab(burst={}, cloud={"providers": ["command"],
                                         "command": {"create": command, "delete": command, "list": command}})
    hog = lab.submit("--gpus", "A100:1", "--", "sleep 300")
    lab.wait_state(hog, "RUNNING")
    job = lab.submit("--gpus", "A100:1", "--", "echo never")
    pools = wait_for(lambda: len(b := lab.status()["backoffs"]) >= 2 and b, 60, interval=0.2,
                     what="two pools backed off after failed bootstraps")
    assert all("bootstrap failed" in b["reason"] for b in pools)
    assert all(p["pool"].startswith("command/") for p in pools)
    state = json.loads((tmp_path / "fake" / "state.json").read_text())
    wait_for(lambda: not json.loads((tmp_path / "fake" / "state.json").read_text())["instances"], 30,
             interval=0.2, what="every failed instance deleted")
    assert state["next"] >= 3  # at least two launches
    assert lab.task(job)["state"] == "PENDING"
    assert "bootstrap failed" in lab.ctl.log.read_text()
    lab.ctl.cli("cancel", hog, job, check=True)
