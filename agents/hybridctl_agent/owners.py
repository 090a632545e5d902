"""Processes by job: which job a process belongs to (the telemetry sampler's per-GPU process
lists: the job's cgroup, its session, or its supervisor's descendants), and the killing of what a
lost job left. Apart from jobs.py, which keeps to job records."""

from __future__ import annotations

import os
import signal
from typing import Any, Dict, Optional, Sequence

import psutil

from hybridctl_agent import jobfiles as jf
from hybridctl_agent.containment import job_of


def kill_orphans(pgid: int, not_before: int) -> None:
    """SIGKILL every process of group `pgid` started no earlier than the job's bash (so a reused
    group id is never hit); `not_before` is in start_time's clock ticks."""
    for pid in psutil.pids():
        try:
            started = jf.start_time(pid)
            if started is not None and started >= not_before and os.getpgid(pid) == pgid:
                os.kill(pid, signal.SIGKILL)
        except OSError:
            continue


class Owners:
    """Maps a pid to the key of the job it belongs to: in the job's cgroup (which setsid and
    double-forked processes cannot leave), same session as the job's bash (jobs run in their own
    session), or a descendant of the job's supervisor."""

    def __init__(self, running: Sequence[Dict[str, Any]], cgroup_dir: Optional[str] = None) -> None:
        self.keys = {r["key"] for r in running}
        self.cgroup_dir = cgroup_dir
        """This agent's cgroup subtree name (`agent-<id>`), None without cgroups."""
        self.by_sid = {r["pgid"]: r["key"] for r in running if r.get("pgid")}
        self.by_ancestor = dict(self.by_sid)
        self.by_ancestor.update({r["supervisor_pid"]: r["key"] for r in running
                                 if r.get("supervisor_pid")})

    def lookup(self, pid: int) -> Optional[str]:
        if not self.by_sid:
            return None
        key = job_of(pid, self.cgroup_dir, self.keys) if self.cgroup_dir else None
        if key is not None:
            return key
        try:
            key = self.by_sid.get(os.getsid(pid))
            if key is not None:
                return key
            for parent in psutil.Process(pid).parents():
                if parent.pid in self.by_ancestor:
                    return self.by_ancestor[parent.pid]
        except (OSError, psutil.Error):
            return None
        return None
