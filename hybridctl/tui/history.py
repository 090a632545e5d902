"""Client-side telemetry history: the controller keeps only each node's latest sample, so the TUI
remembers the last few minutes of every GPU from its own 1 Hz polls, for sparklines and charts."""

from __future__ import annotations

from collections import deque
import itertools
from typing import Any, Iterable

METRICS = ("util", "mem", "temp", "power")
"""What is kept per GPU: util_gpu %, mem_used_mb, temp_c, power_w."""


class GpuHistory:
    """One GPU's samples, oldest first: (util %, memory MiB, temperature °C, power W), None where
    the GPU could not report it. One deque of tuples (one append per GPU per refresh, which
    matters at 8000 GPUs); a metric's series is taken out only for what is drawn."""

    __slots__ = ("samples",)

    def __init__(self, size: int) -> None:
        self.samples: deque[tuple[float | None, ...]] = deque(maxlen=size)

    def add(self, g: dict[str, Any]) -> None:
        self.samples.append((g.get("util_gpu"), g.get("mem_used_mb"), g.get("temp_c"), g.get("power_w")))

    def series(self, metric: str, last: int | None = None) -> list[float | None]:
        i = METRICS.index(metric)
        if last is None or last >= len(self.samples):
            return [s[i] for s in self.samples]
        return [s[i] for s in itertools.islice(self.samples, len(self.samples) - last, None)]

    @property
    def util(self) -> list[float | None]:
        return self.series("util")

    @property
    def mem(self) -> list[float | None]:
        return self.series("mem")

    @property
    def temp(self) -> list[float | None]:
        return self.series("temp")

    @property
    def power(self) -> list[float | None]:
        return self.series("power")


class History:
    """Per node: the mean GPU util over time, and per GPU its four metrics. `size` samples each."""

    def __init__(self, size: int = 300) -> None:
        self.size = size
        self._seen: dict[str, Any] = {}
        self.node_util: dict[str, deque[float | None]] = {}
        self.gpus: dict[tuple[str, int], GpuHistory] = {}

    def add(self, nodes: Iterable[dict[str, Any]]) -> None:
        """Fold one `nodes` reply in. A sample already seen (same agent time) is not added twice,
        so polling faster than the agents sample does not stretch the charts."""
        for n in nodes:
            sample = n.get("telemetry")
            if not sample:
                continue
            name = n["name"]
            when = sample.get("time", sample.get("seq"))
            if when is not None and self._seen.get(name) == when:
                continue
            self._seen[name] = when
            utils = []
            for g in sample.get("gpus") or ():
                key = (name, int(g["index"]))
                h = self.gpus.get(key)
                if h is None:
                    h = self.gpus[key] = GpuHistory(self.size)
                h.add(g)
                if g.get("util_gpu") is not None:
                    utils.append(float(g["util_gpu"]))
            nu = self.node_util.get(name)
            if nu is None:
                nu = self.node_util[name] = deque(maxlen=self.size)
            nu.append(sum(utils) / len(utils) if utils else None)

    def forget(self, keep: set[str]) -> None:
        """Drop nodes no longer in the fleet."""
        for name in [n for n in self.node_util if n not in keep]:
            del self.node_util[name]
            self._seen.pop(name, None)
        for key in [k for k in self.gpus if k[0] not in keep]:
            del self.gpus[key]

    def gpu(self, node: str, index: int) -> GpuHistory | None:
        return self.gpus.get((node, index))
