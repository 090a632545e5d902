"""Jobs on real nodes: three real sshd processes on loopback, each with its own agent and state,
reached by a real controller over SSH. Links, agents, the controller and sshd are killed mid-job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import ctrl_c_reaches_it
from tests.integration.nodes import SshLab, solo_node
from tests.waiting import wait_for


def submit(lab: SshLab, *args: str) -> str:
    res = lab.controller.cli("submit", *args)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_node_add_reports_gpus_and_jobs_run_pinned_with_logs_and_exit_code(lab: SshLab) -> None:
    nodes = {n["name"]: n for n in lab.controller.cli_json("nodes")}
    assert [nodes[n]["gpus_total"] for n in ("node1", "node2", "node3")] == [8, 4, 4]
    assert all(n["state"] == "UP" for n in nodes.values())
    script = 'echo "CVD=$CUDA_VISIBLE_DEVICES NODE=$HYBRIDCTL_NODE JOB=$HYBRIDCTL_JOB_ID"; echo oops >&2; exit 3'
    job = submit(lab, "--gpus", "RTX3090:2", "--", script)
    t = lab.wait_state(job, "FAILED")
    assert t["exit_code"] == 3 and t["nodes"] == "node2"
    out = lab.controller.cli("logs", job, check=True).stdout
    assert out.strip() == f"CVD={t['gpu_ids']} NODE=node2 JOB={job}"
    assert lab.controller.cli("logs", job, "--stderr", check=True).stdout.strip() == "oops"
    ok = submit(lab, "--gpus", "A100:1", "--", "echo fine")
    assert lab.wait_state(ok, "SUCCEEDED")["exit_code"] == 0


def test_cut_ssh_link_mid_job_result_recorded_after_reconnect(lab: SshLab) -> None:
    job = submit(lab, "--gpus", "RTX3090:1", "--", "echo start; sleep 4; echo done")
    lab.wait_state(job, "RUNNING")
    assert lab.nodes["node2"].sshd.drop_connections() >= 1
    t = lab.wait_state(job, "SUCCEEDED", "FAILED")
    assert t["state"] == "SUCCEEDED"
    assert lab.controller.cli("logs", job, check=True).stdout.split() == ["start", "done"]  # ran once
    events = [e["to"] for e in lab.controller.cli_json("show", job)["events"]]
    assert events == ["PENDING", "STARTING", "RUNNING", "SUCCEEDED"]


def test_agent_restart_mid_job_keeps_the_job(lab: SshLab) -> None:
    job = submit(lab, "--gpus", "RTX3090:1", "--", "echo start; sleep 4; echo done; exit 7")
    lab.wait_state(job, "RUNNING")
    node = lab.nodes["node2"]
    node.kill_agent()
    node.start_agent()
    t = lab.wait_state(job, "FAILED", "SUCCEEDED")
    assert t["exit_code"] == 7
    assert lab.controller.cli("logs", job, check=True).stdout.split() == ["start", "done"]


def test_controller_killed_mid_job_adopts_and_records_on_restart(lab: SshLab) -> None:
    job = submit(lab, "--gpus", "RTX3090:1", "--", "echo start; sleep 3; echo done")
    lab.wait_state(job, "RUNNING")
    lab.controller.kill()
    # The job ends while no controller runs; its result waits on the node.
    wait_for(lambda: "done" in "".join(p.read_text() for p in lab.nodes["node2"].state_dir.rglob("stdout.log")),
             60, what="the job to finish on the node")
    lab.controller.start()
    t = lab.wait_state(job, "SUCCEEDED")
    assert t["nodes"] == "node2"
    events = [e["to"] for e in lab.controller.cli_json("show", job)["events"]]
    assert events.count("RUNNING") == 1


def test_node_lost_for_good_requeues_and_reruns_elsewhere(lab: SshLab) -> None:
    job = submit(lab, "--gpus", "A100:1", "--", "echo attempt=$HYBRIDCTL_ATTEMPT; sleep 600")  # max_restarts 0
    t = lab.wait_state(job, "RUNNING")
    first = t["nodes"]
    lab.nodes[first].sshd.stop()
    t = wait_for(lambda: (x := lab.task(job))["state"] == "RUNNING" and x["nodes"] != first and x, 90,
                 what="the job running on another node")
    assert t["attempt"] == 1
    nodes = {n["name"]: n for n in lab.controller.cli_json("nodes")}
    assert nodes[first]["state"] == "LOST"
    events = [e["to"] for e in lab.controller.cli_json("show", job)["events"]]
    assert "NODE_LOST" in events and events.index("NODE_LOST") < len(events) - 2
    wait_for(lambda: "attempt=1" in lab.controller.cli("logs", job).stdout, 30, what="attempt 1 output")
    lab.controller.cli("cancel", job, check=True)


def test_cancel_stops_the_running_processes_then_frees_the_gpus(lab: SshLab) -> None:
    import psutil

    job = submit(lab, "--gpus", "RTX3090:4", "--", "echo pid=$$; exec sleep 600")
    lab.wait_state(job, "RUNNING")
    line = wait_for(lambda: next((w for w in lab.controller.cli("logs", job).stdout.split() if w.startswith("pid=")),
                                 None), 30, what="the job's pid in its log")
    pid = int(line.removeprefix("pid="))
    assert psutil.pid_exists(pid)
    after = submit(lab, "--gpus", "RTX3090:4", "--", "echo next")  # needs the whole of node2
    assert lab.controller.cli("cancel", job, check=True).stdout
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 30,
             what="the cancelled job's process gone")
    assert lab.wait_state(after, "SUCCEEDED")["nodes"] == "node2"
    t = lab.task(job)
    assert t["state"] == "CANCELLED"
    events = [e["to"] for e in lab.controller.cli_json("show", job)["events"]]
    assert events[-1] == "CANCELLED" and "RUNNING" in events


def test_restart_on_the_same_node_finds_its_checkpoint_without_sending_it_again(lab: SshLab) -> None:
    script = ('c="$HYBRIDCTL_CHECKPOINT_DIR"; if [ -f "$c/state" ]; then echo "resumed $(cat "$c/state")"; exit 0; fi\n'
              'head -c 4000000 /dev/zero > "$c/big.bin"; echo step-5 > "$c/state"; exit 3')
    job = submit(lab, "--gpus", "RTX3090:1", "--max-restarts", "1", "--", script)  # RTX3090: node2 only
    t = lab.wait_state(job, "SUCCEEDED", "FAILED")
    assert (t["state"], t["attempt"], t["nodes"]) == ("SUCCEEDED", 1, "node2")
    assert lab.controller.cli("logs", job, check=True).stdout.strip() == "resumed step-5"
    log = lab.controller.log.read_text()
    assert f"checkpoint for {job}.a1.r0: 2 files already on node2, not sent again" in log
    assert not [line for line in log.splitlines() if "restored" in line and f"checkpoint for {job}." in line]
    # The copy the controller holds is whole, for a restart anywhere else.
    assert (lab.controller.home / "checkpoints" / job / "big.bin").stat().st_size == 4_000_000


def test_submit_wait_shows_progress_and_exits_with_the_jobs_exit_code(lab: SshLab) -> None:
    res = lab.controller.cli("submit", "--wait", "--gpus", "RTX3090:1", "--", "sleep 3; exit 7", timeout=120)
    job = res.stdout.strip()
    assert res.returncode == 7 and job.isdigit(), res.stderr
    progress = res.stderr.splitlines()
    assert f"job {job}: RUNNING on node2" in progress
    assert progress[-1] == f"job {job}: FAILED (exit code 7)"
    assert lab.task(job)["exit_code"] == 7

    ok = lab.controller.cli("submit", "--wait", "--gpus", "A100:1", "--", "true", timeout=120)
    assert ok.returncode == 0 and ok.stderr.splitlines()[-1] == f"job {ok.stdout.strip()}: SUCCEEDED (exit code 0)"

    # An array exits with its highest task exit code; --json prints the record as it ended.
    arr = lab.controller.cli("submit", "--wait", "--json", "--gpus", "A100:1", "--array", "1-3", "--",
                             "exit $HYBRIDCTL_ARRAY_TASK_ID", timeout=120)
    assert arr.returncode == 3, arr.stderr
    rec = json.loads(arr.stdout)
    assert sorted(t["exit_code"] for t in rec["tasks"]) == [1, 2, 3]
    assert arr.stderr.splitlines()[-1].endswith(": 3 FAILED")


def test_ctrl_c_stops_waiting_but_not_the_job(lab: SshLab) -> None:
    import signal
    import subprocess
    import sys
    import threading

    with subprocess.Popen([sys.executable, "-m", "hybridctl.cli.main", "submit", "--wait", "--gpus", "A100:1", "--",
                           "sleep 600"], env=lab.controller.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, text=True, preexec_fn=ctrl_c_reaches_it) as proc:
        try:
            assert proc.stderr is not None and proc.stdout is not None
            lines: list[str] = []  # stderr, read by a thread so that every wait below is bounded
            reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
            reader.start()
            job = wait_for(lambda: next((x.split(":")[0].split()[1] for x in lines if x.startswith("job ")), None),
                           60, what="the first progress line")
            line = wait_for(lambda: next((x for x in lines if "RUNNING" in x), None), 60, what="RUNNING progress")
            assert line.startswith(f"job {job}: RUNNING on ")
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=30) == 130
            reader.join(30)
            assert any(f"stopped waiting; job {job} goes on" in x for x in lines)
            assert proc.stdout.read().strip() == job
        finally:
            proc.kill()
    assert lab.task(job)["state"] == "RUNNING"
    lab.controller.cli("cancel", job, check=True)


def test_changed_host_key_refuses_the_node_loudly(lab: SshLab) -> None:
    node = lab.nodes["node1"]
    node.sshd.stop()
    node.sshd.new_host_key()
    node.sshd.start()
    n = wait_for(lambda: (x := {n["name"]: n for n in lab.controller.cli_json("nodes")}["node1"])["link_error"]
                 and "does not match" in x["link_error"] and x, 60, what="host key refusal")
    assert "known_hosts" in n["link_error"] or "pinned" in n["link_error"]
    log = lab.controller.log.read_text()
    assert "does not match" in log


def test_unhealthy_and_foreign_gpus_leave_scheduling_and_show_in_nodes(lab: SshLab) -> None:
    from hybridctl_agent.client import AgentClient

    with AgentClient(str(lab.nodes["node3"].socket)) as agent:
        agent.call("sim_fault", index=1, reason="Xid 79: GPU has fallen off the bus")
        agent.call("sim_foreign", index=2, pid=4242, user="mallory", used_mem_mb=20000)

    def flagged() -> dict[str, Any] | None:
        n = {n["name"]: n for n in lab.controller.cli_json("nodes")}["node3"]
        g = {x["index"]: x for x in n["gpus"]}
        return n if (not g[1].get("healthy", True) and g[2].get("foreign")) else None

    wait_for(flagged, 60, what="node3's GPU 1 unhealthy and GPU 2 foreign-busy")
    text = lab.controller.cli("nodes", check=True).stdout
    assert "GPU 1 unhealthy" in text and "GPU 2 foreign" in text
    # node3 has 4 A100s but only 2 usable now; node1 (8) is drained: a 3-GPU job must wait.
    lab.controller.cli("node", "drain", "node1", check=True)
    job = submit(lab, "--gpus", "A100:3", "--", "true")
    t = wait_for(lambda: (x := lab.task(job))["reason"] and x, 30, what="a pending reason")
    assert t["state"] == "PENDING" and "A100" in t["reason"]
    two = submit(lab, "--gpus", "A100:2", "--", "echo $CUDA_VISIBLE_DEVICES")
    assert lab.wait_state(two, "SUCCEEDED")["gpu_ids"] == "0,3"
    with AgentClient(str(lab.nodes["node3"].socket)) as agent:
        agent.call("sim_fault", index=1, reason=None)
        agent.call("sim_foreign", clear=True)
    assert lab.wait_state(job, "SUCCEEDED")["nodes"] == "node3"


def test_bridge_over_exec_channel_where_sshd_forbids_forwarding(tmp_path: Path) -> None:
    """`fleet.bridge: true`: the agent is reached through `hybridctl-agent bridge` on an exec
    channel, for servers whose sshd disables stream-local forwarding."""
    import sys

    fleet = {"poll_interval": 0.5, "bridge": True, "agent_command": f"{sys.executable} -m hybridctl_agent.cli"}
    with solo_node(tmp_path, fleet, allow_forwarding=False) as ctl:
        job = ctl.cli("submit", "--gpus", "1", "--", "echo via-bridge", check=True).stdout.strip()
        wait_for(lambda: ctl.cli_json("show", job)["tasks"][0]["state"] == "SUCCEEDED", 90, what="job done")
        assert ctl.cli("logs", job, check=True).stdout.strip() == "via-bridge"


def test_cancel_reaches_the_node_without_waiting_for_its_poll(tmp_path: Path) -> None:
    """With a 60 s poll, only the kick from `cancel` can stop the job within the 20 s allowed here."""
    import psutil

    fleet = {"poll_interval": 60.0, "unreachable_after": 600.0, "lost_after": 1200.0}
    with solo_node(tmp_path, fleet) as ctl:
        job = ctl.cli("submit", "--gpus", "1", "--", "echo pid=$$; exec sleep 600", check=True).stdout.strip()
        wait_for(lambda: ctl.cli_json("show", job)["tasks"][0]["state"] == "RUNNING", 60, what="job running")
        line = wait_for(lambda: next((w for w in ctl.cli("logs", job).stdout.split() if w.startswith("pid=")), None),
                        30, what="the job's pid in its log")
        pid = int(line.removeprefix("pid="))
        ctl.cli("cancel", job, check=True)
        wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 20,
                 what="the cancelled job's process gone before the next poll")
