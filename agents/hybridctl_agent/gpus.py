"""What every GPU source offers (NVML, simulated, none) and the choice between them. The
sampler only sees this interface; the per-source modules hold the details."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence

import psutil

from hybridctl_agent.config import AgentConfig
from hybridctl_agent.health import HealthTracker


class SourceUnavailable(Exception):
    """No GPU telemetry here; the message is NVML's error text (shown as `gpu_error`)."""


@dataclass(frozen=True)
class GpuInfo:
    """A GPU as listed in `hello`."""

    index: int
    uuid: Optional[str]
    name: str
    memory_total_mb: Optional[int]

    def to_dict(self) -> Dict[str, Any]:
        return {"index": self.index, "uuid": self.uuid, "name": self.name,
                "memory_total_mb": self.memory_total_mb}


class Owners(Protocol):
    def lookup(self, pid: int) -> Optional[str]:
        """The key of the job `pid` belongs to, or None for a foreign process."""


@dataclass(frozen=True)
class JobView:
    """What a GPU sample needs to know about the agent's jobs."""

    owners: Owners
    running: Sequence[Dict[str, Any]]
    """Running job records (key, gpus, pid, user, ...)."""
    usage: Mapping[str, Dict[str, Any]] = field(default_factory=dict)
    """Per running job key: what jobusage measured (cpu_percent, rss_mb, sim_util, ...)."""


class GpuSource(Protocol):
    kind: str
    """`nvml`, `simulated` or `none` (hello's `gpu_source`)."""
    error: Optional[str]
    """NVML's error text when there is no driver, else None."""
    blocking: bool
    """sample() blocks (NVML): the sampler runs it in a thread."""

    def inventory(self) -> List[GpuInfo]: ...

    def sample(self, view: JobView, now: float) -> List[Dict[str, Any]]:
        """One sample per GPU in the protocol's shape; a missing metric is None."""

    def close(self) -> None: ...


def gpu_entry(info: GpuInfo, **metrics: Any) -> Dict[str, Any]:
    """A sample's GPU object with every protocol key present (None where not given)."""
    entry: Dict[str, Any] = {"index": info.index, "uuid": info.uuid, "name": info.name,
                             "mem_total_mb": info.memory_total_mb}
    for key in ("util_gpu", "util_mem", "mem_used_mb", "temp_c", "power_w", "power_limit_w",
                "fan_pct", "clock_sm_mhz", "clock_mem_mhz", "sm_util", "pcie_tx_kbps",
                "pcie_rx_kbps", "ecc_corrected", "ecc_uncorrected", "health_reason"):
        entry[key] = metrics.get(key)
    entry["healthy"] = metrics.get("healthy", True)
    entry["processes"] = metrics.get("processes", [])
    return entry


def process_user(pid: int) -> Optional[str]:
    try:
        return psutil.Process(pid).username()
    except (psutil.Error, OSError, KeyError):
        return None


class NoGpus:
    """No GPUs: no driver, no pynvml, or `gpu_source: none`."""

    kind = "none"
    blocking = False

    def __init__(self, error: Optional[str]) -> None:
        self.error = error

    def inventory(self) -> List[GpuInfo]:
        return []

    def sample(self, view: JobView, now: float) -> List[Dict[str, Any]]:
        return []

    def close(self) -> None:
        pass


def open_source(cfg: AgentConfig) -> GpuSource:
    """The configured source. NVML failing to start is not an error: the node has no GPUs."""
    health = HealthTracker(cfg.health.auto_recover, cfg.health.recover_after_s)
    if cfg.gpu_source == "simulated":
        from hybridctl_agent.gpus_sim import SimGpus
        return SimGpus(cfg.simulate, cfg.name, health)
    if cfg.gpu_source == "none":
        return NoGpus(None)
    from hybridctl_agent.gpus_nvml import NvmlGpus
    try:
        return NvmlGpus(health, library=cfg.nvml_library)
    except SourceUnavailable as exc:
        return NoGpus(str(exc))
