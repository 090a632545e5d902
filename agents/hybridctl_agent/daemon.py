"""The agent's lifecycle: wire config, GPU source, jobs, telemetry and the socket server; run the
named side tasks; stop cleanly on SIGTERM/SIGINT. Stopping the agent never stops jobs: they
belong to their supervisors."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from typing import Dict, Optional

from hybridctl_agent import cgroup, containment
from hybridctl_agent.config import AgentConfig
from hybridctl_agent.gpus import GpuSource, JobView, open_source
from hybridctl_agent.host import HostSampler
from hybridctl_agent.jobs import JobManager
from hybridctl_agent.ops import Ops
from hybridctl_agent.server import AgentServer, ServerError
from hybridctl_agent.telemetry import Telemetry

log = logging.getLogger("hybridctl_agent")


class Agent:
    """One agent process; `run()` returns the process exit code."""

    def __init__(self, cfg: AgentConfig, gpus: Optional[GpuSource] = None) -> None:
        self.cfg = cfg
        os.makedirs(cfg.state_dir, mode=0o700 if cfg.rootless else 0o711, exist_ok=True)
        self.gpus = gpus if gpus is not None else open_source(cfg)
        # Before any job starts: creates (and proves writable) the parent of the job cgroups.
        self.containment = containment.detect(
            enabled=cfg.cgroup_enable, root=cfg.cgroup_root,
            parent=containment.agent_parent(cfg.cgroup_parent, cfg.state_dir))
        self.jobs = JobManager(cfg.state_dir, self.containment)
        self.telemetry = Telemetry(self.gpus, HostSampler(cfg.state_dir), self._job_view,
                                   cfg.interval, cfg.history)
        self.ops = Ops(cfg, self.gpus, self.jobs, self.telemetry)
        self.server = AgentServer(cfg.socket, self.ops.dispatch, cfg.allowed_group)

    def _job_view(self) -> JobView:
        # Refreshing here also settles jobs whose supervisor died, once per sample.
        self.jobs.refresh()
        return JobView(owners=self.jobs.owner_map(), running=self.jobs.running())

    def _lock_state_dir(self) -> int:
        """Hold an exclusive lock on the state dir for the agent's lifetime: two agents on one
        state dir would fight over the same jobs."""
        path = os.path.join(self.cfg.state_dir, "agent.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ServerError(f"another agent already uses the state directory "
                              f"{self.cfg.state_dir}; stop it or pass --state-dir DIR") from None
        return fd

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        lock = self._lock_state_dir()
        try:
            return await self._serve(stop)
        finally:
            os.close(lock)

    async def _serve(self, stop: asyncio.Event) -> int:
        self.jobs.prepare()
        self.jobs.open_events()
        if self.gpus.error:
            log.warning("no GPU telemetry: %s", self.gpus.error)
        (log.warning if self.containment.mode == cgroup.MODE_NONE else log.info)(
            "job containment: %s", self.containment.describe())
        # The first sample exists before the first client can ask for one.
        await self.telemetry.sample_once()
        await self.server.start()
        log.info("agent %s up: node %s, %d GPU(s) from %s, state in %s", self.ops.boot_id,
                 self.cfg.name, len(self.gpus.inventory()), self.gpus.kind, self.cfg.state_dir)
        tasks: Dict[str, asyncio.Task] = {
            "telemetry": asyncio.create_task(self.telemetry.run(), name="telemetry"),
        }
        if self.cfg.orphan_timeout > 0:
            tasks["orphan"] = asyncio.create_task(self._orphan_guard(stop), name="orphan")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        code = 0
        try:
            done, _ = await asyncio.wait([stopper, *tasks.values()],
                                         return_when=asyncio.FIRST_COMPLETED)
            for name, task in tasks.items():
                if task in done:  # side tasks run forever; ending means failing
                    exc = task.exception()
                    log.error("side task %s stopped: %r; shutting down", name, exc)
                    code = 1
        finally:
            log.info("stopping (running jobs continue under their supervisors)")
            await self.server.close()
            await self.jobs.close()
            containment.remove_parents(self.containment)
            for task in [stopper, *tasks.values()]:
                task.cancel()
            for task in [stopper, *tasks.values()]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if self.gpus.blocking:
                await asyncio.to_thread(self.gpus.close)
            else:
                self.gpus.close()
        return code

    async def _orphan_guard(self, stop: asyncio.Event) -> None:
        """With no request for `orphan_timeout`, run `orphan_command` (power the instance off) and
        stop. Never returns: the stop event ends the agent."""
        limit = self.cfg.orphan_timeout
        while True:
            idle = time.monotonic() - self.ops.last_request
            if idle >= limit:
                break
            await asyncio.sleep(max(0.1, min(limit - idle, 5.0)))
        log.warning("no request from the controller for %.0fs (orphan timeout); %s", idle,
                    f"running {self.cfg.orphan_command!r} and stopping" if self.cfg.orphan_command
                    else "stopping")
        if self.cfg.orphan_command:
            proc = await asyncio.create_subprocess_shell(self.cfg.orphan_command,
                                                         stdin=asyncio.subprocess.DEVNULL)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(proc.wait(), 60)
        stop.set()
        await asyncio.Event().wait()
