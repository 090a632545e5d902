"""The telemetry ring buffer and the sampler loop that fills it every `interval` seconds with
one host + GPU sample. `sample` answers come from the buffer, so a slow client never makes the
agent touch NVML more often."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Deque, Dict, List, Optional

from hybridctl_agent.gpus import GpuSource, JobView
from hybridctl_agent.host import HostSampler
from hybridctl_agent.jobusage import JobUsage

log = logging.getLogger("hybridctl_agent.telemetry")


class Telemetry:
    """Samples host and GPUs; keeps the last `history` seconds of samples."""

    def __init__(self, gpus: GpuSource, host: HostSampler, job_view: Callable[[], JobView],
                 interval: float, history: float, jobs_root: Optional[str] = None) -> None:
        self.gpus = gpus
        self.host = host
        self.job_view = job_view
        self.usage = JobUsage(jobs_root or os.path.join(host.disk_path, "jobs"))
        """Per-job CPU, memory and logged metrics (the jobs directory defaults to the one
        under the state directory the host sampler measures)."""
        self.interval = interval
        self.ring: Deque[Dict[str, Any]] = collections.deque(
            maxlen=max(1, int(round(history / interval))))
        self.seq = 0

    async def sample_once(self) -> Dict[str, Any]:
        view = self.job_view()
        now = time.time()
        try:
            jobs = self.usage.sample(view.running, time.monotonic())
        except Exception:  # per-job usage is extra: never lose the node's sample over it
            log.exception("job usage sample failed")
            jobs = {}
        view = dataclasses.replace(view, usage=jobs)
        if self.gpus.blocking:
            gpus = await asyncio.to_thread(self.gpus.sample, view, now)
        else:
            gpus = self.gpus.sample(view, now)
        self.seq += 1
        sample = {"seq": self.seq, "time": round(now, 3), "host": self.host.sample(),
                  "gpus": gpus, "jobs": {k: {n: v for n, v in e.items() if n != "sim_util"}
                                         for k, e in jobs.items()}}
        self.ring.append(sample)
        return sample

    def since(self, seq: Optional[int]) -> List[Dict[str, Any]]:
        """Samples newer than `seq`; only the newest when `seq` is None. A `seq` beyond the newest
        comes from an earlier agent run (seq restarts at 1): answer the whole buffer."""
        if seq is None:
            return list(self.ring)[-1:]
        if seq > self.seq:
            return list(self.ring)
        return [s for s in self.ring if s["seq"] > seq]

    async def run(self) -> None:
        """Sample at a fixed rate; if a sample overruns, skip the missed ticks."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval
            try:
                await self.sample_once()
            except Exception:  # one bad sample must not end telemetry; log it and go on
                log.exception("telemetry sample failed")
            now = loop.time()
            if next_at < now:
                next_at = now + self.interval
            await asyncio.sleep(next_at - now)
