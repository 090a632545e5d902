"""Host telemetry through psutil: CPU, load, memory, disk of the state directory, network rates
and uptime. Every call here is cheap and non-blocking (CPU % is measured between samples)."""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional, Tuple

import psutil

from hybridctl_agent import __version__

_MIB = 1024 * 1024


class HostSampler:
    """Keeps the previous counters so rates cover the time between two samples."""

    def __init__(self, disk_path: str) -> None:
        self.disk_path = disk_path
        psutil.cpu_percent(interval=None)  # the first call only primes the counter
        self._net: Optional[Tuple[float, int, int]] = None
        self._boot = psutil.boot_time()
        self._net_rates()

    def _net_rates(self) -> Tuple[Optional[float], Optional[float]]:
        try:
            c = psutil.net_io_counters()
        except (OSError, RuntimeError):
            return None, None
        if c is None:
            return None, None
        now, prev = time.monotonic(), self._net
        self._net = (now, c.bytes_recv, c.bytes_sent)
        if prev is None or now <= prev[0]:
            return None, None
        dt = now - prev[0]
        return max(0.0, (c.bytes_recv - prev[1]) / dt), max(0.0, (c.bytes_sent - prev[2]) / dt)

    def sample(self) -> Dict[str, Any]:
        vm = psutil.virtual_memory()
        try:
            du = psutil.disk_usage(self.disk_path)
            disk: Tuple[Optional[int], Optional[int]] = (du.total // _MIB, du.used // _MIB)
        except OSError:
            disk = (None, None)
        try:
            load = os.getloadavg()
        except OSError:
            load = (None, None, None)  # type: ignore[assignment]
        rx, tx = self._net_rates()
        return {
            "cpu_percent": psutil.cpu_percent(interval=None),
            "load1": load[0], "load5": load[1], "load15": load[2],
            "memory_total_mb": vm.total // _MIB,
            "memory_used_mb": (vm.total - vm.available) // _MIB,
            "disk_total_mb": disk[0], "disk_used_mb": disk[1],
            "net_rx_bps": None if rx is None else round(rx, 1),
            "net_tx_bps": None if tx is None else round(tx, 1),
            "uptime_s": round(time.time() - self._boot, 1),
            "agent_version": __version__,
        }


CONTAINER_RUNTIMES = ("podman", "apptainer", "singularity")
"""Container runtimes a node may offer for `image_id: docker:IMAGE` jobs, in order of preference."""


def runtimes(job_path: str, uv: Optional[str]) -> Dict[str, str]:
    """What this node can build or run jobs with, by name -> path: `uv` (Python environments,
    envs.py) and the container runtimes found on the jobs' PATH. Reported in `hello`, so the
    controller places jobs that need one only where it exists."""
    import shutil

    found: Dict[str, str] = {}
    if uv:
        found["uv"] = uv
    for name in CONTAINER_RUNTIMES:
        path = shutil.which(name, path=job_path)
        if path:
            found[name] = path
    return found
