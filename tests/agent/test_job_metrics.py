"""Metrics from inside a job (`hybridctl.job.log`) and each job's CPU and memory reach the agent's
telemetry samples; a simulated GPU shows the utilisation a job asks for (0: a job that sleeps)."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Dict

from hybridctl_agent.jobusage import MAX_NAMES, parse_lines
from tests.agent.agent_harness import AgentProc
from tests.waiting import wait_for

ROOT = str(Path(__file__).resolve().parents[2])


def job_entry(agent: AgentProc, key: str) -> Dict[str, Any] | None:
    return agent.call("sample")["samples"][-1].get("jobs", {}).get(key)


def test_a_logged_loss_and_the_jobs_cpu_and_memory_reach_the_sample(agent: AgentProc) -> None:
    script = ("from hybridctl import job; import time\n"
              "for step in range(1, 4): job.log(step=step, loss=1.0 / step, bad=float('nan'), word='x')\n"
              "job.flush()\n"
              "end = time.time() + 300\n"
              "while time.time() < end: sum(range(10000))\n")
    agent.call("launch", job={"key": "50", "gpus": [1], "uid": os.getuid(), "envs": {"PYTHONPATH": ROOT},
                              "run": f"{sys.executable} -c {shlex.quote(script)}"})
    entry = wait_for(lambda: (e := job_entry(agent, "50")) and e.get("metrics") and e.get("cpu_percent", 0) > 20 and e, what="job 50's metrics and CPU in a sample")
    assert entry["metrics"] == {"step": 3.0, "loss": 1.0 / 3}
    assert entry["rss_mb"] > 1 and entry["peak_rss_mb"] >= entry["rss_mb"]
    assert entry["metrics_time"] > 0
    spec = agent.job("50")
    assert spec["state"] == "running"
    agent.call("cancel", key="50", grace=1)
    agent.wait_exited("50")
    wait_for(lambda: job_entry(agent, "50") is None, what="job 50 gone from samples")


def test_a_job_that_asks_for_zero_utilisation_leaves_its_simulated_gpu_idle(agent: AgentProc) -> None:
    agent.call("launch", job={"key": "51", "run": "sleep 300", "gpus": [3], "uid": os.getuid(),
                              "envs": {"SIMULATED_GPU_UTIL": "0"}})

    def held_idle() -> Any:
        g = agent.call("sample")["samples"][-1]["gpus"][3]
        return g if g["processes"] and g["util_gpu"] == 0 else None

    g = wait_for(held_idle, what="GPU 3 held by job 51 and idle")
    assert g["processes"][0]["job"] == "51" and g["sm_util"] == 0
    agent.call("cancel", key="51", grace=1)
    agent.wait_exited("51")


def test_metric_lines_keep_the_last_numeric_value_and_leave_a_torn_line() -> None:
    into: Dict[str, float] = {}
    data = (b'{"t": 5, "v": {"loss": 2, "ok": true, "x y": 1}}\n'
            b'not json\n{"t": 6, "v": {"loss": 1.5}}\n{"t": 7, "v": {"lo')
    used, newest = parse_lines(data, into)
    assert into == {"loss": 1.5} and newest == 6.0
    assert data[used:] == b'{"t": 7, "v": {"lo'
    many = b"".join(json.dumps({"v": {f"m{i}": i}}).encode() + b"\n" for i in range(MAX_NAMES + 5))
    parse_lines(many, into)
    assert len(into) == MAX_NAMES
