"""Telemetry through a real agent: the sample ring buffer, simulated GPUs reacting to job load,
foreign processes and fault injection, and the no-driver path."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any, Callable, Dict, Optional

import pytest

from hybridctl_agent.client import AgentCallError
from hybridctl_agent.config import SimConfig
from hybridctl_agent.gpus import JobView
from hybridctl_agent.gpus_sim import SimGpus
from hybridctl_agent.health import HealthTracker
from tests.agent.agent_harness import AgentProc
from tests.waiting import wait_for

HOST_KEYS = {"cpu_percent", "load1", "load5", "load15", "memory_total_mb", "memory_used_mb",
             "disk_total_mb", "disk_used_mb", "net_rx_bps", "net_tx_bps", "uptime_s",
             "agent_version"}
GPU_KEYS = {"index", "uuid", "name", "util_gpu", "util_mem", "mem_used_mb", "mem_total_mb",
            "temp_c", "power_w", "power_limit_w", "fan_pct", "clock_sm_mhz", "healthy",
            "health_reason", "processes", "clock_mem_mhz", "sm_util", "pcie_tx_kbps",
            "pcie_rx_kbps", "ecc_corrected", "ecc_uncorrected"}


def gpu_when(agent: AgentProc, index: int, cond: Callable[[Dict[str, Any]], bool],
             what: str) -> Dict[str, Any]:
    """Wait for a fresh sample in which GPU `index` satisfies `cond`."""
    def probe() -> Optional[Dict[str, Any]]:
        gpu = agent.call("sample")["samples"][-1]["gpus"][index]
        return gpu if cond(gpu) else None
    return wait_for(probe, what=what)


def test_samples_come_from_a_ring_buffer_with_sequence_numbers(agent: AgentProc) -> None:
    newest = agent.call("sample")
    assert len(newest["samples"]) == 1 and newest["samples"][0]["seq"] == newest["seq"]
    sample = newest["samples"][0]
    assert set(sample["host"]) == HOST_KEYS
    assert sample["host"]["memory_total_mb"] > 0 and sample["host"]["disk_total_mb"] > 0
    assert len(sample["gpus"]) == 4 and set(sample["gpus"][0]) == GPU_KEYS
    seq = newest["seq"]
    wait_for(lambda: agent.call("sample")["seq"] >= seq + 3, what="three more samples")
    newer = agent.call("sample", since=seq)
    seqs = [s["seq"] for s in newer["samples"]]
    assert seqs == sorted(seqs) and seqs[0] == seq + 1 and seqs[-1] == newer["seq"]
    everything = agent.call("sample", since=0)["samples"]
    assert 1 <= len(everything) <= 60 / 0.2
    with pytest.raises(AgentCallError) as err:
        agent.call("sample", since="yesterday")
    assert err.value.code == "bad_request"


def test_simulated_gpus_heat_up_under_a_job_and_cool_down_after(agent: AgentProc) -> None:
    idle = gpu_when(agent, 2, lambda g: g["util_gpu"] < 10, "GPU 2 idle")
    agent.call("launch", job={"key": "40", "run": "sleep 300", "gpus": [2], "uid": os.getuid()})
    busy = gpu_when(agent, 2, lambda g: g["util_gpu"] > 50 and g["temp_c"] > idle["temp_c"] + 10
                    and g["processes"], "GPU 2 busy with job 40")
    job = agent.job("40")
    assert busy["power_w"] > idle["power_w"] and busy["mem_used_mb"] > idle["mem_used_mb"]
    (proc,) = busy["processes"]
    assert (proc["pid"], proc["user"], proc["job"]) == (job["pid"], job["user"], "40")
    assert proc["used_mem_mb"] > 0
    others = agent.call("sample")["samples"][-1]["gpus"]
    assert others[0]["util_gpu"] < 10 and others[0]["processes"] == []
    assert busy["fan_pct"] is None  # A100s have no fan of their own: a metric that is null
    agent.call("cancel", key="40", grace=1)
    agent.wait_exited("40")
    gpu_when(agent, 2, lambda g: g["util_gpu"] < 10 and not g["processes"], "GPU 2 idle again")


def test_foreign_processes_are_marked_and_job_processes_mapped(agent: AgentProc) -> None:
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        agent.call("launch", job={"key": "41", "run": "sleep 300 & echo $! > child.pid; wait",
                                  "gpus": [1], "uid": os.getuid()})
        pid_file = agent.job_dir("41") / "work" / "child.pid"
        child = int(wait_for(lambda: pid_file.read_text() if pid_file.exists() else None, what="child pid"))
        agent.call("sim_foreign", index=0, pid=stranger.pid, user="mallory", used_mem_mb=2048)
        agent.call("sim_foreign", index=3, pid=child)  # a job's grandchild seen on another GPU
        g0 = gpu_when(agent, 0, lambda g: bool(g["processes"]), "foreign process on GPU 0")
        assert g0["processes"] == [{"pid": stranger.pid, "user": "mallory",
                                    "used_mem_mb": 2048, "job": None, "sm_util": g0["sm_util"]}]
        assert g0["util_gpu"] > 50  # foreign load counts as load
        g3 = gpu_when(agent, 3, lambda g: bool(g["processes"]), "job child on GPU 3")
        assert g3["processes"][0]["job"] == "41"
        agent.call("sim_foreign", clear=True)
        gpu_when(agent, 0, lambda g: not g["processes"], "foreign process cleared")
    finally:
        stranger.kill()
        stranger.wait()


def test_injected_fault_makes_a_gpu_unhealthy_then_it_recovers(make_agent: Any) -> None:
    base = make_agent("--simulate-gpus", "2:H100", start=False)
    cfg = base.base / "agent.json"
    cfg.write_text(json.dumps({"interval": 0.2, "health": {"auto_recover": True,
                                                           "recover_after_s": 0.5}}))
    base.args += ["--config", str(cfg)]
    agent = base.start()
    agent.call("sim_fault", index=1, reason="Xid 79 (injected)")
    bad = gpu_when(agent, 1, lambda g: not g["healthy"], "GPU 1 unhealthy")
    assert bad["health_reason"] == "Xid 79 (injected)"
    assert agent.call("sample")["samples"][-1]["gpus"][0]["healthy"] is True
    agent.call("sim_fault", index=1, reason=None)
    good = gpu_when(agent, 1, lambda g: g["healthy"], "GPU 1 healthy again")
    assert good["health_reason"] is None
    with pytest.raises(AgentCallError) as err:
        agent.call("sim_fault", index=9, reason="x")
    assert err.value.code == "bad_request"


def test_without_auto_recover_a_fault_latches(make_agent: Any) -> None:
    base = make_agent("--simulate-gpus", "1", start=False)
    cfg = base.base / "agent.json"
    cfg.write_text(json.dumps({"interval": 0.1, "health": {"auto_recover": False,
                                                           "recover_after_s": 0}}))
    base.args += ["--config", str(cfg)]
    agent = base.start()
    agent.call("sim_fault", index=0, reason="thermal")
    gpu_when(agent, 0, lambda g: not g["healthy"], "GPU 0 unhealthy")
    agent.call("sim_fault", index=0, reason=None)
    seq = agent.call("sample")["seq"]
    wait_for(lambda: agent.call("sample")["seq"] >= seq + 5, what="five more samples")
    gpu = agent.call("sample")["samples"][-1]["gpus"][0]
    assert (gpu["healthy"], gpu["health_reason"]) == (False, "thermal")


def test_no_driver_means_zero_gpus_and_the_nvml_error(make_agent: Any) -> None:
    agent = make_agent("--interval", "0.2",
                       env={"HYBRIDCTL_AGENT_NVML_LIBRARY": "/nonexistent/libnvidia-ml.so.1"})
    hello = agent.call("hello")
    assert (hello["gpu_source"], hello["gpus"]) == ("none", [])
    assert "NVML Shared Library Not Found" in hello["gpu_error"]
    assert "/nonexistent/libnvidia-ml.so.1" in hello["gpu_error"]
    assert agent.call("sample")["samples"][-1]["gpus"] == []
    agent.call("launch", job={"key": "50", "run": "echo cpu-only", "uid": os.getuid()})
    assert agent.wait_exited("50")["exit_code"] == 0
    for op in ("sim_fault", "sim_foreign"):
        with pytest.raises(AgentCallError) as err:
            agent.call(op, index=0, reason="x", pid=1)
        assert err.value.code == "refused"
    with pytest.raises(AgentCallError) as err:
        agent.call("launch", job={"key": "51", "run": "true", "gpus": [0], "uid": os.getuid()})
    assert err.value.code == "refused"


def _readings(seed: int, busy_from: int) -> list:
    sim = SimGpus(SimConfig(count=2, model="RTX4090", memory_gb=24, seed=seed), "n1",
                  HealthTracker())
    out = []
    for tick in range(20):
        running = [{"key": "j", "gpus": [0], "pid": 1234, "user": "u"}] if tick >= busy_from \
            else []
        view = JobView(owners=_NoOwners(), running=running)
        out.append(sim.sample(view, float(tick)))
    return out


class _NoOwners:
    def lookup(self, pid: int) -> Optional[str]:
        return None


def test_simulated_readings_are_deterministic_given_a_seed() -> None:
    assert _readings(7, 10) == _readings(7, 10)
    assert _readings(7, 10) != _readings(8, 10)
    busy = _readings(7, 10)
    assert busy[19][0]["util_gpu"] > 50 and busy[5][0]["util_gpu"] < 10
    assert busy[19][1]["util_gpu"] < 10  # the GPU nobody holds stays idle
    assert busy[19][0]["fan_pct"] is not None  # a desktop card reports a fan; an A100 does not
