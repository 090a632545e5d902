"""The NVML source against a fake pynvml with named failure scenarios (no driver needed), plus a
check of the real NVML path against `nvidia-smi` where a GPU is present."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any, Dict, List, Optional

import pytest

from hybridctl_agent.gpus import JobView, SourceUnavailable
from hybridctl_agent.gpus_nvml import NvmlGpus, nvml_query
from hybridctl_agent.health import HealthTracker
from tests.agent.fake_pynvml import FakeNvml


class NoJobs:
    def lookup(self, pid: int) -> Optional[str]:
        return None


VIEW = JobView(owners=NoJobs(), running=[])


def source(scenario: str, recover_after_s: float = 60.0) -> NvmlGpus:
    return NvmlGpus(HealthTracker(True, recover_after_s), lib=FakeNvml(scenario))


def sample(src: NvmlGpus, now: float = 0.0) -> List[Dict[str, Any]]:
    return src.sample(VIEW, now)


def test_fake_nvml_choke_point_returns_the_default_and_collects_the_error() -> None:
    lib = FakeNvml("healthy")
    lib.lost = {0}
    errors: List[BaseException] = []
    assert nvml_query(lib, "nvmlDeviceGetTemperature", 0, 0, default="NA", errors=errors) == "NA"
    assert [getattr(e, "value", None) for e in errors] == [15]
    assert nvml_query(lib, "nvmlDeviceGetTemperature", 1, 0) == 41
    assert nvml_query(lib, "nvmlNoSuchFunction", default=-1) == -1  # an older pynvml
    assert nvml_query(lib, "nvmlDeviceGetName", 1) == "NVIDIA A100-SXM4-80GB"  # bytes decoded


def test_fake_nvml_healthy_reports_every_metric() -> None:
    src = source("healthy")
    assert [g.to_dict() for g in src.inventory()] == [
        {"index": i, "uuid": f"GPU-fake-{i}", "name": "NVIDIA A100-SXM4-80GB",
         "memory_total_mb": 81920} for i in range(2)]
    g0 = sample(src)[0]
    assert (g0["util_gpu"], g0["util_mem"], g0["mem_used_mb"], g0["mem_total_mb"]) == \
        (50, 20, 1000, 81920)
    assert (g0["temp_c"], g0["power_w"], g0["power_limit_w"], g0["clock_sm_mhz"]) == \
        (40, 123.5, 400.0, 1410)
    assert g0["fan_pct"] is None  # NOT_SUPPORTED is a missing metric, not a failure
    assert (g0["healthy"], g0["health_reason"], g0["processes"]) == (True, None, [])
    src.close()
    assert src.lib.shut_down


def test_fake_nvml_no_driver_is_source_unavailable_with_the_error_text() -> None:
    with pytest.raises(SourceUnavailable, match="Driver Not Loaded"):
        source("no_driver")


def test_fake_nvml_not_supported_metrics_are_null() -> None:
    g = sample(source("not_supported"))[1]
    assert g["power_w"] is None and g["fan_pct"] is None
    assert g["util_gpu"] == 51 and g["healthy"] is True


def test_fake_nvml_gpu_lost_marks_only_that_gpu_unhealthy() -> None:
    src = source("healthy")
    src.lib.lost = {1}  # falls off the bus after start-up
    g0, g1 = sample(src)
    assert g0["healthy"] and g0["util_gpu"] == 50
    assert g1["healthy"] is False and "GPU is lost" in g1["health_reason"]
    assert g1["util_gpu"] is None and g1["temp_c"] is None and g1["processes"] == []
    assert sample(src, 1000.0)[1]["healthy"] is False  # still lost: no recovery


def test_fake_nvml_handle_lost_at_start_lists_the_gpu_as_unhealthy() -> None:
    src = source("handle_lost")
    info = src.inventory()[1]
    assert (info.index, info.uuid, info.name, info.memory_total_mb) == (1, None, "unknown GPU",
                                                                       None)
    g1 = sample(src)[1]
    assert g1["healthy"] is False and "GPU is lost" in g1["health_reason"]


def test_fake_nvml_xid_event_makes_gpu_unhealthy_then_it_recovers() -> None:
    src = source("xid", recover_after_s=30)
    assert src.lib.registered == [0, 1]
    g0, g1 = sample(src, now=100.0)
    assert (g0["healthy"], g0["health_reason"]) == (False, "Xid 79")
    assert g1["healthy"] is True  # Xid 13 is an application error, not the GPU's
    assert sample(src, now=110.0)[0]["healthy"] is False
    assert sample(src, now=131.0)[0]["healthy"] is True


@pytest.mark.parametrize("scenario, words", [
    ("ecc_uncorrected", "2 uncorrected ECC error(s)"),
    ("retired_pages_pending", "retired pages pending"),
    ("remap_failure", "row remapping failed"),
    ("hw_thermal_slowdown", "hardware thermal slowdown"),
])
def test_fake_nvml_health_conditions(scenario: str, words: str) -> None:
    g0, g1 = sample(source(scenario))
    assert g0["healthy"] is False and words in g0["health_reason"]
    assert g1["healthy"] is True and g1["health_reason"] is None


def test_fake_nvml_processes_carry_user_memory_and_job() -> None:
    class Mine:
        def lookup(self, pid: int) -> Optional[str]:
            return "7_0.1" if pid == os.getpid() else None

    g0 = NvmlGpus(HealthTracker(), lib=FakeNvml("processes")).sample(
        JobView(owners=Mine(), running=[]), 0.0)[0]
    me, parent = g0["processes"]
    assert (me["pid"], me["used_mem_mb"], me["job"]) == (os.getpid(), 512, "7_0.1")
    assert me["user"]  # resolved through psutil
    assert (parent["pid"], parent["used_mem_mb"], parent["job"]) == (os.getppid(), None, None)


def _smi() -> Optional[List[List[str]]]:
    if shutil.which("nvidia-smi") is None:
        return None
    query = "index,uuid,name,memory.total,temperature.gpu,power.limit"
    res = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in res.stdout.strip().splitlines()]


@pytest.mark.gpu
def test_nvml_matches_nvidia_smi() -> None:
    rows = _smi()
    if not rows:
        pytest.skip("no NVIDIA driver here: nvidia-smi is missing or fails")
    src = NvmlGpus(HealthTracker())
    try:
        inv = src.inventory()
        samples = sample(src)
    finally:
        src.close()
    assert len(inv) == len(rows)
    for info, g, row in zip(inv, samples, rows):
        index, uuid, name, mem_total, temp, power_limit = row
        assert (info.index, info.uuid, info.name) == (int(index), uuid, name)
        assert abs((info.memory_total_mb or 0) - int(mem_total)) <= 1
        if temp not in ("[N/A]", "N/A"):
            assert abs(g["temp_c"] - int(temp)) <= 5
        if power_limit not in ("[N/A]", "N/A"):
            assert abs(g["power_limit_w"] - float(power_limit)) <= 1.0
        assert 0 <= g["util_gpu"] <= 100 and g["mem_used_mb"] <= g["mem_total_mb"]
