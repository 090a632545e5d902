"""Real GPUs through NVML (nvidia-ml-py's `pynvml`). Every NVML call goes through `nvml_query`,
which returns a default instead of raising (nvitop's `nvmlQuery(..., default=NA)`), so a metric a
GPU cannot report is None and a GPU that falls off the bus is marked unhealthy, never a crash.
All calls block; the sampler runs `sample()` in a worker thread. PCIe throughput is read every
PCIE_EVERY seconds only (the driver samples it for ~20 ms per counter)."""

from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any, Callable, Dict, List, Optional

from hybridctl_agent.gpus import GpuInfo, JobView, SourceUnavailable, gpu_entry, process_user
from hybridctl_agent.health import HealthTracker

GPU_IS_LOST = 15
"""NVML_ERROR_GPU_IS_LOST."""
NOT_AVAILABLE = 2 ** 64 - 1
"""NVML_VALUE_NOT_AVAILABLE (unsigned long long), e.g. usedGpuMemory without permission."""
BENIGN_XIDS = frozenset({13, 31, 43, 45, 68, 109})
"""Xids caused by applications, not the GPU (same list as the Kubernetes device plugin)."""
_HW_SLOWDOWN = ((0x08, "hardware slowdown"), (0x40, "hardware thermal slowdown"),
                (0x80, "hardware power brake slowdown"))
_MIB = 1024 * 1024
NOT_FOUND = 6
PCIE_EVERY = 10.0
"""Seconds between PCIe throughput readings (each costs the driver ~20 ms per counter)."""
"""NVML_ERROR_NOT_FOUND: nvmlDeviceGetProcessUtilization has no sample since the timestamp."""


def nvml_query(lib: Any, name: str, *args: Any, default: Any = None,
               errors: Optional[List[BaseException]] = None) -> Any:
    """Call `lib.<name>(*args)`; on an NVMLError (or a function this pynvml lacks) return
    `default`, appending the error to `errors` when given. The one place NVML can fail."""
    func: Optional[Callable[..., Any]] = getattr(lib, name, None)
    if func is None:
        return default
    try:
        value = func(*args)
    except lib.NVMLError as exc:
        if errors is not None:
            errors.append(exc)
        return default
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def _load_pynvml(library: Optional[str]) -> ModuleType:
    """Import pynvml, pointing it at `library` (a libnvidia-ml path) when given."""
    try:
        import pynvml
    except ImportError as exc:
        raise SourceUnavailable(f"nvidia-ml-py (pynvml) is not installed: {exc}") from exc
    if library:
        try:
            pynvml.nvmlLib = ctypes.CDLL(library)
        except OSError as exc:
            raise SourceUnavailable(f"NVML Shared Library Not Found: {exc}") from exc
    return pynvml


def _is_lost(errors: List[BaseException]) -> bool:
    return any(getattr(e, "value", None) == GPU_IS_LOST for e in errors)


class NvmlGpus:
    """GPUs of this host as NVML sees them; see the module docstring. `lib` is a pynvml-like
    module (tests pass a fake); by default pynvml, loading libnvidia-ml from `library` if given.
    Raises SourceUnavailable when NVML cannot start (no driver, no library)."""

    kind = "nvml"
    error: Optional[str] = None
    blocking = True

    def __init__(self, health: HealthTracker, library: Optional[str] = None,
                 lib: Any = None) -> None:
        self.lib: Any = lib if lib is not None else _load_pynvml(library)
        self.health = health
        try:
            self.lib.nvmlInit()
        except self.lib.NVMLError as exc:
            raise SourceUnavailable(str(exc) or type(exc).__name__) from exc
        lib = self.lib
        self.handles: List[Any] = []
        self.gpus: List[GpuInfo] = []
        self.init_faults: Dict[int, str] = {}
        count = nvml_query(lib, "nvmlDeviceGetCount", default=0)
        for i in range(count):
            errs: List[BaseException] = []
            h = nvml_query(lib, "nvmlDeviceGetHandleByIndex", i, errors=errs)
            if h is None:
                self.init_faults[i] = f"no NVML handle: {errs[0] if errs else 'unknown error'}"
            mem = nvml_query(lib, "nvmlDeviceGetMemoryInfo", h) if h is not None else None
            self.handles.append(h)
            self.gpus.append(GpuInfo(
                index=i, uuid=nvml_query(lib, "nvmlDeviceGetUUID", h) if h is not None else None,
                name=(nvml_query(lib, "nvmlDeviceGetName", h) if h is not None else None)
                or "unknown GPU",
                memory_total_mb=int(mem.total // _MIB) if mem is not None else None))
        self.events = self._register_events()
        self.pcie: Dict[int, tuple] = {}
        """Per GPU index: (when, tx KB/s, rx KB/s) of the last PCIe reading."""
        self.proc_seen: Dict[int, int] = {}
        """Per GPU index: the newest process-utilisation timestamp read (µs), to ask for newer."""

    def _register_events(self) -> Any:
        """An event set for Xid errors, or None where events are unsupported."""
        lib = self.lib
        evset = nvml_query(lib, "nvmlEventSetCreate")
        if evset is None:
            return None
        xid = getattr(lib, "nvmlEventTypeXidCriticalError", 0x8)
        for h in self.handles:
            if h is not None:
                nvml_query(lib, "nvmlDeviceRegisterEvents", h, xid, evset)
        return evset

    def inventory(self) -> List[GpuInfo]:
        return list(self.gpus)

    def _drain_xids(self) -> Dict[int, List[int]]:
        """Xid events since the last sample, per GPU index (non-blocking: timeout 0)."""
        found: Dict[int, List[int]] = {}
        if self.events is None:
            return found
        by_uuid = {g.uuid: g.index for g in self.gpus}
        for _ in range(1000):  # bounded: never spin on a misbehaving driver
            data = nvml_query(self.lib, "nvmlEventSetWait", self.events, 0)
            if data is None:  # NVML_ERROR_TIMEOUT: nothing (more) pending
                break
            index = by_uuid.get(nvml_query(self.lib, "nvmlDeviceGetUUID", data.device))
            if index is not None and int(data.eventData) not in BENIGN_XIDS:
                found.setdefault(index, []).append(int(data.eventData))
        return found

    def _faults(self, h: Any) -> List[str]:
        """Health conditions NVML reports for one GPU right now."""
        lib, faults = self.lib, []
        unc = nvml_query(lib, "nvmlDeviceGetTotalEccErrors", h,
                         getattr(lib, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
                         getattr(lib, "NVML_VOLATILE_ECC", 0))
        if unc:
            faults.append(f"{unc} uncorrected ECC error(s) since driver load")
        if nvml_query(lib, "nvmlDeviceGetRetiredPagesPendingStatus", h) == 1:
            faults.append("retired pages pending (GPU reset needed)")
        rows = nvml_query(lib, "nvmlDeviceGetRemappedRows", h)
        if rows is not None and rows[3]:
            faults.append("row remapping failed")
        elif rows is not None and rows[2]:
            faults.append("row remapping pending (GPU reset needed)")
        reasons = nvml_query(lib, "nvmlDeviceGetCurrentClocksEventReasons", h)
        if reasons is None:
            reasons = nvml_query(lib, "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        for bit, text in _HW_SLOWDOWN:
            if reasons and reasons & bit:
                faults.append(text)
        return faults

    def _processes(self, h: Any, view: JobView,
                   sm: Optional[Dict[int, int]] = None) -> List[Dict[str, Any]]:
        procs = nvml_query(self.lib, "nvmlDeviceGetComputeRunningProcesses", h, default=[]) or []
        out = []
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            entry = {"pid": int(p.pid), "user": process_user(int(p.pid)),
                     "used_mem_mb": None if used in (None, NOT_AVAILABLE) else used // _MIB,
                     "job": view.owners.lookup(int(p.pid))}
            if sm is not None:
                entry["sm_util"] = sm.get(int(p.pid), 0)
            out.append(entry)
        return out

    def _sm_util(self, index: int, h: Any) -> Optional[Dict[int, int]]:
        """Per pid, the newest SM utilisation (%) NVML sampled since the last call; {} when no
        process ran; None where the GPU or driver does not support process utilisation."""
        errs: List[BaseException] = []
        samples = nvml_query(self.lib, "nvmlDeviceGetProcessUtilization", h,
                             self.proc_seen.get(index, 0), errors=errs)
        if samples is None:
            return {} if any(getattr(e, "value", None) == NOT_FOUND for e in errs) else None
        newest: Dict[int, tuple] = {}
        for s in samples:
            ts = int(getattr(s, "timeStamp", 0))
            pid = int(getattr(s, "pid", 0))
            if pid and (pid not in newest or ts >= newest[pid][0]):
                newest[pid] = (ts, int(getattr(s, "smUtil", 0)))
            self.proc_seen[index] = max(self.proc_seen.get(index, 0), ts)
        return {pid: min(100, max(0, v)) for pid, (_ts, v) in newest.items()}

    def _one(self, info: GpuInfo, h: Any, xids: List[int], view: JobView,
             now: float) -> Dict[str, Any]:
        lib = self.lib
        errs: List[BaseException] = []

        def q(name: str, *args: Any) -> Any:
            return nvml_query(lib, name, h, *args, errors=errs)

        util = q("nvmlDeviceGetUtilizationRates")
        mem = q("nvmlDeviceGetMemoryInfo")
        temp = q("nvmlDeviceGetTemperature", getattr(lib, "NVML_TEMPERATURE_GPU", 0))
        power = q("nvmlDeviceGetPowerUsage")
        limit = q("nvmlDeviceGetEnforcedPowerLimit")
        fan = q("nvmlDeviceGetFanSpeed")
        clock = q("nvmlDeviceGetClockInfo", getattr(lib, "NVML_CLOCK_SM", 1))
        mem_clock = q("nvmlDeviceGetClockInfo", getattr(lib, "NVML_CLOCK_MEM", 2))
        # Each PCIe counter makes the driver sample for ~20 ms: read them every PCIE_EVERY seconds
        # and repeat the last reading in between (8 GPUs would otherwise add ~0.3 s per sample).
        last = self.pcie.get(info.index)
        if last is None or now - last[0] >= PCIE_EVERY or now < last[0]:
            last = (now, q("nvmlDeviceGetPcieThroughput", getattr(lib, "NVML_PCIE_UTIL_TX_BYTES", 0)),
                    q("nvmlDeviceGetPcieThroughput", getattr(lib, "NVML_PCIE_UTIL_RX_BYTES", 1)))
            self.pcie[info.index] = last
        _at, tx, rx = last
        ecc = [q("nvmlDeviceGetTotalEccErrors", getattr(lib, name, code),
                 getattr(lib, "NVML_VOLATILE_ECC", 0))
               for name, code in (("NVML_MEMORY_ERROR_TYPE_CORRECTED", 0),
                                  ("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1))]
        faults = [f"Xid {x}" for x in xids]
        procs: List[Dict[str, Any]] = []
        sm: Optional[Dict[int, int]] = None
        if _is_lost(errs):
            faults.insert(0, "GPU is lost (fell off the bus)")
        else:
            faults += self._faults(h)
            sm = self._sm_util(info.index, h)
            procs = self._processes(h, view, sm)
            if _is_lost(errs):
                faults.insert(0, "GPU is lost (fell off the bus)")
        healthy, reason = self.health.observe(info.index, faults, now)
        return gpu_entry(
            info, util_gpu=getattr(util, "gpu", None), util_mem=getattr(util, "memory", None),
            mem_used_mb=mem.used // _MIB if mem is not None else None, temp_c=temp,
            power_w=round(power / 1000.0, 1) if power is not None else None,
            power_limit_w=round(limit / 1000.0, 1) if limit is not None else None,
            fan_pct=fan, clock_sm_mhz=clock, clock_mem_mhz=mem_clock,
            sm_util=None if sm is None else min(100, sum(sm.values())),
            pcie_tx_kbps=tx, pcie_rx_kbps=rx, ecc_corrected=ecc[0], ecc_uncorrected=ecc[1],
            healthy=healthy, health_reason=reason, processes=procs)

    def sample(self, view: JobView, now: float) -> List[Dict[str, Any]]:
        xids = self._drain_xids()
        out = []
        for info, h in zip(self.gpus, self.handles):
            if h is None:
                healthy, reason = self.health.observe(info.index, [self.init_faults[info.index]],
                                                      now)
                out.append(gpu_entry(info, healthy=healthy, health_reason=reason))
                continue
            out.append(self._one(info, h, xids.get(info.index, []), view, now))
        return out

    def close(self) -> None:
        if self.events is not None:
            nvml_query(self.lib, "nvmlEventSetFree", self.events)
        nvml_query(self.lib, "nvmlShutdown")

