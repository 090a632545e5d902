"""Simulated GPUs for demos and tests: plausible readings that rise on GPUs held by running jobs
(or by injected foreign processes) and relax when idle, with faults injectable through the
`sim_fault` op. The noise comes from a seeded RNG, so a seed and a load history fix the readings."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hybridctl_agent.config import SimConfig
from hybridctl_agent.gpus import GpuInfo, JobView, gpu_entry
from hybridctl_agent.health import HealthTracker

_POWER_LIMIT_W = {"A100": 400, "H100": 700, "H200": 700, "V100": 300, "T4": 70, "L4": 72,
                  "A10": 150, "A10G": 150, "L40S": 350, "A6000": 300, "RTX4090": 450}
_MEM_CLOCK_MHZ = {"A100": 1593, "H100": 2619, "H200": 3201, "V100": 877, "T4": 5001, "L4": 6251,
                  "A10": 6251, "A10G": 6251, "L40S": 9001, "A6000": 8001, "RTX4090": 10501}
_PCIE_KBPS = 4_000_000.0
"""A busy GPU's simulated PCIe traffic (KB/s each way, about a quarter of a Gen4 x16 link)."""
# A job's SIMULATED_GPU_UTIL env var (read by jobusage.py into JobView.usage) sets the utilisation
# (%) its GPUs show: 0 = a job that holds GPUs and sleeps. Without it a held GPU runs at ~93 %.
_PASSIVE = {"A100", "H100", "H200", "V100", "T4", "L4", "A10", "A10G", "L40S"}
"""Data-centre cards without a fan of their own: fan speed is reported as null, like NVML."""


@dataclass
class _Foreign:
    pid: int
    user: Optional[str]
    used_mem_mb: int


@dataclass
class _GpuState:
    rng: random.Random
    temp: float = 33.0
    power: float = 0.0
    fault: Optional[str] = None
    foreign: List[_Foreign] = field(default_factory=list)


class SimGpus:
    """`count` GPUs of one model; see the module docstring."""

    kind = "simulated"
    error: Optional[str] = None
    blocking = False

    def __init__(self, sim: SimConfig, node: str, health: HealthTracker) -> None:
        model = sim.model
        self.health = health
        self.limit_w = float(_POWER_LIMIT_W.get(model.upper(), 300))
        self.mem_clock = _MEM_CLOCK_MHZ.get(model.upper(), 1500)
        self.has_fan = model.upper() not in _PASSIVE
        self.gpus = [GpuInfo(index=i, name=f"NVIDIA {model}", memory_total_mb=sim.memory_gb * 1024,
                             uuid="GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node}/{i}")))
                     for i in range(sim.count)]
        self.state = [_GpuState(rng=random.Random(sim.seed * 1009 + i), power=0.15 * self.limit_w)
                      for i in range(sim.count)]

    def inventory(self) -> List[GpuInfo]:
        return list(self.gpus)

    def _check(self, index: int) -> _GpuState:
        if not 0 <= index < len(self.state):
            raise IndexError(f"no simulated GPU {index} (have {len(self.state)})")
        return self.state[index]

    def set_fault(self, index: int, reason: Optional[str]) -> None:
        """Inject a fault on GPU `index` (reason None clears it; recovery then follows the
        health policy)."""
        self._check(index).fault = reason

    def add_foreign(self, index: int, pid: int, user: Optional[str], used_mem_mb: int) -> None:
        """Pretend process `pid` uses GPU `index`; it is reported as foreign unless it belongs to
        one of the agent's jobs."""
        st = self._check(index)
        st.foreign = [f for f in st.foreign if f.pid != pid] + [_Foreign(pid, user, used_mem_mb)]

    def clear_foreign(self, index: Optional[int]) -> None:
        for i, st in enumerate(self.state):
            if index is None or i == index:
                st.foreign = []

    def sample(self, view: JobView, now: float) -> List[Dict[str, Any]]:
        holders: Dict[int, List[Dict[str, Any]]] = {}
        for rec in view.running:
            for g in rec.get("gpus") or ():
                holders.setdefault(g, []).append(rec)
        out = []
        for info, st in zip(self.gpus, self.state):
            rng, total = st.rng, float(info.memory_total_mb or 0)
            procs: List[Dict[str, Any]] = []
            jobs = [r for r in holders.get(info.index, []) if r.get("pid")]
            for rec in jobs:
                procs.append({"pid": rec["pid"], "user": rec.get("user"),
                              "used_mem_mb": int(total * 0.7 / len(jobs)), "job": rec["key"]})
            for f in st.foreign:
                procs.append({"pid": f.pid, "user": f.user, "used_mem_mb": f.used_mem_mb,
                              "job": view.owners.lookup(f.pid)})
            busy = bool(procs)
            util = min(100, int(rng.gauss(93, 3))) if busy else (1 if rng.random() < 0.1 else 0)
            asked = [view.usage.get(r["key"], {}).get("sim_util") for r in jobs]
            if busy and asked and all(a is not None for a in asked) and not st.foreign:
                util = max(0, min(100, int(round(max(asked) + (rng.gauss(0, 1) if max(asked) else 0)))))
                busy = util > 5
            used = sum(p["used_mem_mb"] for p in procs) + 3 + int(rng.random() * 2)
            sm = max(0, min(100, int(util * 0.85 + rng.gauss(0, 2)))) if util else 0
            for p in procs:  # NVML's process utilisation: the TUI's SM column
                p["sm_util"] = sm // len(procs)
            st.temp += ((74.0 if busy else 33.0) - st.temp) * 0.3 + rng.gauss(0, 0.3)
            target_w = self.limit_w * (0.85 if busy else 0.15)
            st.power += (target_w - st.power) * 0.5 + rng.gauss(0, self.limit_w * 0.01)
            healthy, reason = self.health.observe(info.index, [st.fault] if st.fault else [], now)
            out.append(gpu_entry(
                info, util_gpu=max(0, util), util_mem=max(0, int(util * 0.6 + rng.gauss(0, 2))),
                mem_used_mb=min(int(total), used), temp_c=int(round(st.temp)),
                power_w=round(max(0.0, st.power), 1), power_limit_w=self.limit_w,
                fan_pct=(int(30 + (st.temp - 30) * 0.8) if self.has_fan else None),
                clock_sm_mhz=1410 if busy else 210, clock_mem_mhz=self.mem_clock,
                sm_util=sm,
                pcie_tx_kbps=round(_PCIE_KBPS * util / 100 * (0.9 + 0.2 * rng.random())),
                pcie_rx_kbps=round(_PCIE_KBPS * util / 100 * (0.9 + 0.2 * rng.random())),
                ecc_corrected=0, ecc_uncorrected=1 if st.fault and "ECC" in st.fault else 0,
                healthy=healthy, health_reason=reason, processes=procs))
        return out

    def close(self) -> None:
        pass
