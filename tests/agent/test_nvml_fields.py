"""The NVML fields beyond the basics: SM activity (process utilisation), memory clock, PCIe
throughput and ECC counters; through fake NVML scenarios, and against nvidia-smi on a real GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any, Dict, List, Optional

import pytest

from hybridctl_agent.gpus import JobView
from hybridctl_agent.gpus_nvml import NvmlGpus
from hybridctl_agent.health import HealthTracker
from tests.agent.fake_pynvml import FakeNvml


class Nobody:
    def lookup(self, pid: int) -> Optional[str]:
        return None


VIEW = JobView(owners=Nobody(), running=[])


def sample(src: NvmlGpus) -> List[Dict[str, Any]]:
    return src.sample(VIEW, 0.0)


def test_healthy_gpus_report_clocks_pcie_ecc_and_zero_sm_activity_without_processes() -> None:
    g0, g1 = sample(NvmlGpus(HealthTracker(), lib=FakeNvml("healthy")))
    assert (g0["clock_sm_mhz"], g0["clock_mem_mhz"]) == (1410, 1593)
    assert (g1["pcie_tx_kbps"], g1["pcie_rx_kbps"]) == (1001, 2001)
    assert (g0["ecc_corrected"], g0["ecc_uncorrected"]) == (0, 0)
    assert g0["sm_util"] == 0  # NOT_FOUND: no process sampled, so nothing ran on the SMs


def test_sm_activity_takes_each_process_newest_sample_and_only_newer_ones_next_time() -> None:
    src = NvmlGpus(HealthTracker(), lib=FakeNvml("processes"))
    g0 = sample(src)[0]
    assert g0["sm_util"] == 35
    assert [p.get("sm_util") for p in g0["processes"]] == [35, 0]
    assert sample(src)[0]["sm_util"] == 0  # asked for samples after timestamp 2000: none


def test_unsupported_fields_are_null_not_errors() -> None:
    g = sample(NvmlGpus(HealthTracker(), lib=FakeNvml("not_supported")))[0]
    assert g["sm_util"] is None and g["pcie_tx_kbps"] is None and g["pcie_rx_kbps"] is None
    assert g["healthy"] is True and g["util_gpu"] == 50


def test_ecc_counters_are_metrics_as_well_as_a_fault() -> None:
    g0 = sample(NvmlGpus(HealthTracker(), lib=FakeNvml("ecc_uncorrected")))[0]
    assert (g0["ecc_corrected"], g0["ecc_uncorrected"]) == (7, 2)
    assert g0["healthy"] is False


@pytest.mark.gpu
def test_new_fields_match_nvidia_smi_on_a_real_gpu() -> None:
    """Clocks and ECC against `nvidia-smi --query-gpu`; prints the figures for the record."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA driver here: nvidia-smi is missing")
    query = "index,clocks.sm,clocks.mem,ecc.errors.corrected.volatile.total,ecc.errors.uncorrected.volatile.total"
    res = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        pytest.skip(f"nvidia-smi failed: {res.stderr.strip()}")
    rows = [[c.strip() for c in line.split(",")] for line in res.stdout.strip().splitlines()]
    src = NvmlGpus(HealthTracker())
    try:
        t0 = time.perf_counter()
        samples = sample(src)
        took = time.perf_counter() - t0
    finally:
        src.close()
    print(json.dumps({"sample_s": round(took, 4), "nvml": samples, "smi": rows}, default=str))
    for g, (index, sm, mem, ecc_c, ecc_u) in zip(samples, rows):
        assert g["index"] == int(index)
        assert abs(g["clock_mem_mhz"] - int(mem)) <= max(50, int(mem) // 10)
        assert g["clock_sm_mhz"] is not None and int(sm) >= 0
        if ecc_c not in ("[N/A]", "N/A"):
            assert g["ecc_corrected"] == int(ecc_c) and g["ecc_uncorrected"] == int(ecc_u)
        assert g["sm_util"] is None or 0 <= g["sm_util"] <= 100
        assert g["pcie_tx_kbps"] is None or g["pcie_tx_kbps"] >= 0
    assert os.environ.get("HYBRIDCTL_GPU_RUN") is None or samples


def test_pcie_is_read_every_ten_seconds_not_every_sample() -> None:
    lib = FakeNvml("healthy")
    calls = []
    real = lib.nvmlDeviceGetPcieThroughput
    lib.nvmlDeviceGetPcieThroughput = lambda h, c: calls.append((h, c)) or real(h, c)  # type: ignore[method-assign]
    src = NvmlGpus(HealthTracker(), lib=lib)
    for now in (0.0, 1.0, 9.0):
        assert src.sample(VIEW, now)[0]["pcie_tx_kbps"] == 1000
    assert len(calls) == 4  # 2 GPUs x 2 counters, once
    src.sample(VIEW, 10.0)
    assert len(calls) == 8
