"""A fake `pynvml` with named failure scenarios (in the spirit of gpustat's test_gpustat.py), to
drive the agent's NVML source without a driver. Only what gpus_nvml.py calls is provided."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any, List, Set

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_TIMEOUT = 10
NVML_ERROR_GPU_IS_LOST = 15
NVML_VALUE_NOT_AVAILABLE = 2 ** 64 - 1
MIB = 1024 * 1024

SCENARIOS = ("healthy", "no_driver", "not_supported", "handle_lost", "xid", "ecc_uncorrected",
             "retired_pages_pending", "remap_failure", "hw_thermal_slowdown", "processes")
"""A GPU falling off the bus mid-run is not a scenario: add its index to `FakeNvml.lost`."""


class NVMLError(Exception):
    _names = {NVML_ERROR_NOT_SUPPORTED: "Not Supported",
              NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
              NVML_ERROR_TIMEOUT: "Timeout", NVML_ERROR_GPU_IS_LOST: "GPU is lost"}

    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return self._names.get(self.value, f"NVML error {self.value}")


class FakeNvml:
    """Two fake A100s; `scenario` decides what breaks. `lost` may be changed mid-test."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_CLOCK_MEM = 2
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    nvmlEventTypeXidCriticalError = 0x8

    def __init__(self, scenario: str, count: int = 2) -> None:
        assert scenario in SCENARIOS, scenario
        self.scenario = scenario
        self.count = count
        self.lost: Set[int] = set()
        self.events: List[Any] = []
        if scenario == "xid":
            self.events = [SimpleNamespace(device=0, eventType=0x8, eventData=79),
                           SimpleNamespace(device=1, eventType=0x8, eventData=13)]
        self.registered: List[int] = []
        self.shut_down = False

    def _dev(self, h: int) -> int:
        if h in self.lost:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return h

    # ---- init and inventory -------------------------------------------------------------

    def nvmlInit(self) -> None:
        if self.scenario == "no_driver":
            raise NVMLError(NVML_ERROR_DRIVER_NOT_LOADED)

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        if self.scenario == "handle_lost" and i == 1:
            raise NVMLError(NVML_ERROR_GPU_IS_LOST)
        return i

    def nvmlDeviceGetUUID(self, h: int) -> str:
        return f"GPU-fake-{self._dev(h)}"

    def nvmlDeviceGetName(self, h: int) -> bytes:
        self._dev(h)
        return b"NVIDIA A100-SXM4-80GB"  # old pynvml versions return bytes

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        self._dev(h)
        return SimpleNamespace(total=81920 * MIB, used=(1000 + h) * MIB, free=0)

    # ---- metrics ------------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return SimpleNamespace(gpu=50 + self._dev(h), memory=20)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> int:
        return 40 + self._dev(h)

    def nvmlDeviceGetPowerUsage(self, h: int) -> int:
        if self.scenario == "not_supported":
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return 123456 + self._dev(h)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> int:
        self._dev(h)
        return 400000

    def nvmlDeviceGetFanSpeed(self, h: int) -> int:
        self._dev(h)
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)  # data-centre GPUs have no fan

    def nvmlDeviceGetClockInfo(self, h: int, kind: int) -> int:
        return (1593 if kind == self.NVML_CLOCK_MEM else 1410) + self._dev(h)

    def nvmlDeviceGetPcieThroughput(self, h: int, counter: int) -> int:
        if self.scenario == "not_supported":
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        return (1000 if counter == 0 else 2000) + self._dev(h)  # KB/s

    def nvmlDeviceGetProcessUtilization(self, h: int, last_seen: int) -> List[Any]:
        self._dev(h)
        if self.scenario == "not_supported":
            raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
        if self.scenario != "processes" or h != 0 or last_seen >= 2000:
            raise NVMLError(NVML_ERROR_NOT_FOUND)  # no sample newer than last_seen
        return [SimpleNamespace(pid=os.getpid(), timeStamp=1000, smUtil=20, memUtil=5),
                SimpleNamespace(pid=os.getpid(), timeStamp=2000, smUtil=35, memUtil=5)]

    def nvmlDeviceGetComputeRunningProcesses(self, h: int) -> List[Any]:
        self._dev(h)
        if self.scenario == "processes" and h == 0:
            return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=512 * MIB),
                    SimpleNamespace(pid=os.getppid(), usedGpuMemory=NVML_VALUE_NOT_AVAILABLE)]
        return []

    # ---- health -------------------------------------------------------------------------

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> int:
        self._dev(h)
        if kind == 0:  # corrected: counted, never a fault
            return 7 if self.scenario == "ecc_uncorrected" and h == 0 else 0
        return 2 if self.scenario == "ecc_uncorrected" and h == 0 else 0

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: int) -> int:
        self._dev(h)
        return 1 if self.scenario == "retired_pages_pending" and h == 0 else 0

    def nvmlDeviceGetRemappedRows(self, h: int) -> tuple:
        self._dev(h)
        return (0, 1, 0, 1) if self.scenario == "remap_failure" and h == 0 else (0, 0, 0, 0)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> int:
        self._dev(h)
        return 0x40 | 0x1 if self.scenario == "hw_thermal_slowdown" and h == 0 else 0x1

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceRegisterEvents(self, h: int, types: int, evset: str) -> None:
        self.registered.append(h)

    def nvmlEventSetWait(self, evset: str, timeout_ms: int) -> Any:
        assert timeout_ms == 0, "the sampler must never block on events"
        if not self.events:
            raise NVMLError(NVML_ERROR_TIMEOUT)
        return self.events.pop(0)

    def nvmlEventSetFree(self, evset: str) -> None:
        pass

