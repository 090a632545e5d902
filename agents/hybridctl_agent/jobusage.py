"""Per-job usage for telemetry: CPU and memory of each running job's process tree, and the last
values the job logged with `hybridctl.job.log` (read from the metrics file the agent gave it).

The metrics file lives in the job directory (agent-owned, mode 0711), created by the agent and
owned by the job's user: the job can write it but not replace it with a link. It is still read
defensively (O_NOFOLLOW, a regular file, a bounded tail) because the agent may run as root."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import psutil

METRICS_FILE = "metrics.jsonl"
"""`<state_dir>/jobs/<key>/metrics.jsonl`; its path reaches the job as HYBRIDCTL_METRICS_FILE."""
METRICS_ENV = "HYBRIDCTL_METRICS_FILE"
SIM_UTIL_ENV = "SIMULATED_GPU_UTIL"
MAX_READ = 256 * 1024
"""Bytes of new metric lines read per job per sample (a job logging faster is read later)."""
MAX_SPEC = 4 * 1024 * 1024
"""Bytes of spec.json read for SIMULATED_GPU_UTIL; a larger file is ignored."""
MAX_NAMES = 32
"""Distinct metric names kept per job; later names are ignored."""
NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}\Z")
_MIB = 1024 * 1024


@dataclass
class _JobState:
    offset: int = 0
    metrics: Dict[str, float] = field(default_factory=dict)
    metrics_time: Optional[float] = None
    cpu_prev: Optional[tuple] = None
    """(monotonic seconds, CPU seconds of the tree) at the previous sample."""
    peak_rss_mb: int = 0
    sim_util: Optional[float] = None
    spec_read: bool = False


def parse_lines(data: bytes, into: Dict[str, float]) -> tuple:
    """Fold complete JSON lines of `data` into `into` (last value wins); returns (bytes consumed,
    the newest `t`). A torn last line is left for the next read; bad lines are skipped."""
    end = data.rfind(b"\n") + 1
    newest = None
    for line in data[:end].splitlines():
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):  # deep nesting ('[[[[...') raises RecursionError
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("v"), dict):
            continue
        t = obj.get("t")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t):
            newest = float(t)
        for name, value in obj["v"].items():
            if not isinstance(name, str) or not NAME_RE.match(name):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if name in into or len(into) < MAX_NAMES:
                into[name] = float(value)
    return end, newest


class JobUsage:
    """Measures each running job once per telemetry sample; forgets jobs that stopped."""

    def __init__(self, jobs_root: str) -> None:
        self.root = Path(jobs_root)
        self.state: Dict[str, _JobState] = {}

    def sample(self, running: Sequence[Dict[str, Any]], now_mono: float) -> Dict[str, Dict[str, Any]]:
        out: Dict[str, Dict[str, Any]] = {}
        keys = set()
        for rec in running:
            key = rec.get("key")
            if not isinstance(key, str):
                continue
            keys.add(key)
            st = self.state.setdefault(key, _JobState())
            if not st.spec_read:
                st.sim_util = self._sim_util(key)
                st.spec_read = True
            entry: Dict[str, Any] = {}
            self._tree(rec.get("pid"), st, now_mono, entry)
            self._metrics(key, st)
            if st.metrics:
                entry["metrics"] = dict(st.metrics)
                entry["metrics_time"] = st.metrics_time
            if st.sim_util is not None:
                entry["sim_util"] = st.sim_util
            out[key] = entry
        for key in list(self.state):
            if key not in keys:
                del self.state[key]
        return out

    def _sim_util(self, key: str) -> Optional[float]:
        """SIMULATED_GPU_UTIL from the job's spec.json. Under a rootless agent the job's user owns
        the job directory and may swap spec.json for a FIFO or a link: opened without following a
        link and without blocking, read only if a regular file, and only MAX_SPEC bytes."""
        try:
            fd = os.open(str(self.root / key / "spec.json"), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.pread(fd, MAX_SPEC + 1, 0)
        except OSError:
            return None
        finally:
            os.close(fd)
        if len(data) > MAX_SPEC:
            return None
        try:
            env = json.loads(data).get("env") or {}
            return float(env[SIM_UTIL_ENV]) if SIM_UTIL_ENV in env else None
        except (ValueError, TypeError, AttributeError, RecursionError):
            return None

    @staticmethod
    def _tree(pid: Any, st: _JobState, now_mono: float, entry: Dict[str, Any]) -> None:
        """CPU % (of one core) since the last sample and RSS of the job's process tree."""
        if not isinstance(pid, int) or pid <= 0:
            return
        try:
            root = psutil.Process(pid)
            procs: List[psutil.Process] = [root] + root.children(recursive=True)
        except (psutil.Error, OSError):
            return
        cpu, rss = 0.0, 0
        for p in procs:
            try:
                with p.oneshot():
                    t = p.cpu_times()
                    cpu += t.user + t.system + t.children_user + t.children_system
                    rss += p.memory_info().rss
            except (psutil.Error, OSError):
                continue
        rss_mb = rss // _MIB
        st.peak_rss_mb = max(st.peak_rss_mb, rss_mb)
        entry["rss_mb"] = rss_mb
        entry["peak_rss_mb"] = st.peak_rss_mb
        entry["cpu_seconds"] = round(cpu, 3)
        if st.cpu_prev is not None and now_mono > st.cpu_prev[0]:
            entry["cpu_percent"] = round(max(0.0, (cpu - st.cpu_prev[1]) / (now_mono - st.cpu_prev[0]) * 100), 1)
        st.cpu_prev = (now_mono, cpu)

    def _metrics(self, key: str, st: _JobState) -> None:
        path = self.root / key / METRICS_FILE
        try:
            fd = os.open(str(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return
            if info.st_size < st.offset:  # the job truncated it (job.log keeps it bounded)
                st.offset = 0
            if info.st_size == st.offset:
                return
            data = os.pread(fd, min(MAX_READ, info.st_size - st.offset), st.offset)
        except OSError:
            return
        finally:
            os.close(fd)
        used, newest = parse_lines(data, st.metrics)
        if used == 0 and len(data) >= MAX_READ:
            used = len(data)  # one line longer than a whole read: skip it, never stall
        st.offset += used
        if newest is not None:
            st.metrics_time = newest
