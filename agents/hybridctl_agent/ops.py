"""The protocol's operations (docs/AGENT_PROTOCOL.md), one method each: they check request
fields and call the job manager, the telemetry buffer or the GPU source. No socket code here."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import stat
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List

import psutil

from hybridctl_agent import PROTOCOL_VERSION, __version__
from hybridctl_agent import jobfiles as jf
from hybridctl_agent.config import AgentConfig
from hybridctl_agent.gpus import GpuSource
from hybridctl_agent.jobs import JobManager
from hybridctl_agent.jobspec import plan_launch
from hybridctl_agent.logs import read_range
from hybridctl_agent.protocol import BAD_REQUEST, REFUSED, AgentError, field
from hybridctl_agent.staging import Staging, identity
from hybridctl_agent.telemetry import Telemetry

Answer = Dict[str, Any]


def _version(jobs: List[Dict[str, Any]]) -> str:
    """A short digest of what a watcher cares about: which jobs exist, whether each has started
    (its pid is known) and how it ended."""
    parts = sorted(f"{j.get('key')}:{j.get('state')}:{j.get('pid')}:{j.get('exit_code')}:"
                   f"{j.get('reason')}" for j in jobs)
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:16]


class Ops:
    """Answers requests; `dispatch` picks the method named by the request's `op`."""

    def __init__(self, cfg: AgentConfig, gpus: GpuSource, jobs: JobManager,
                 telemetry: Telemetry) -> None:
        self.cfg = cfg
        self.gpus = gpus
        self.jobs = jobs
        self.telemetry = telemetry
        self.boot_id = uuid.uuid4().hex
        self.staging = Staging(cfg.state_dir, cfg.allowed_group)
        self.last_request = time.monotonic()
        """When the last request was served (the orphan guard's clock)."""
        self.table: Dict[str, Callable[[Dict[str, Any]], Awaitable[Answer]]] = {
            "hello": self.hello, "sample": self.sample, "launch": self.launch,
            "jobs": self.list_jobs, "cancel": self.cancel, "logs": self.logs,
            "forget": self.forget, "checkpoint_files": self.checkpoint_files,
            "stage_open": self.stage_open, "stage_done": self.stage_done, "stage_pull": self.stage_pull,
            "stage_push": self.stage_push, "stage_unpack": self.stage_unpack, "sim_fault": self.sim_fault, "sim_foreign": self.sim_foreign,
        }

    async def dispatch(self, req: Dict[str, Any]) -> Answer:
        self.last_request = time.monotonic()
        op = req.get("op")
        handler = self.table.get(op) if isinstance(op, str) else None
        if handler is None:
            raise AgentError(BAD_REQUEST, f"unknown op {op!r}; known ops: {', '.join(self.table)}")
        return await handler(req)

    async def hello(self, req: Dict[str, Any]) -> Answer:
        return {
            "protocol": PROTOCOL_VERSION, "agent_version": __version__, "node": self.cfg.name,
            "boot_id": self.boot_id, "gpu_source": self.gpus.kind, "gpu_error": self.gpus.error,
            "gpus": [g.to_dict() for g in self.gpus.inventory()],
            "cpus": os.cpu_count() or 1,
            "memory_mb": psutil.virtual_memory().total // (1024 * 1024),
            "uid": os.geteuid(), "rootless": self.cfg.rootless,
            # "cgroup-v1", "cgroup-v2 (<what is not enforced>)" or "none: <why>"
            "containment": self.jobs.containment.describe(),
            "checkpoint_root": str(Path(self.cfg.state_dir) / "checkpoints"),
            "interval_s": self.cfg.interval, "history_s": self.cfg.history,
        }

    async def sample(self, req: Dict[str, Any]) -> Answer:
        since = field(req, "since", int)
        return {"seq": self.telemetry.seq, "samples": self.telemetry.since(since)}

    async def launch(self, req: Dict[str, Any]) -> Answer:
        job = field(req, "job", dict, required=True)
        key = job.get("key")
        if jf.valid_key(key):  # a known key answers its record whatever else the request says
            try:
                return {"job": self.jobs.record(key)}
            except AgentError:
                pass
        plan = plan_launch(job, node=self.cfg.name,
                           gpu_indices=[g.index for g in self.gpus.inventory()],
                           rootless=self.cfg.rootless, job_path=self.cfg.job_path,
                           kill_grace=self.cfg.kill_grace, containment=self.jobs.containment,
                           pids_max=self.cfg.job_pids_max,
                           device_rules=self.cfg.gpu_device_rules)
        ckpt = self.jobs.checkpoint_dir(plan.key)
        ckpt.mkdir(parents=True, exist_ok=True, mode=0o700)
        if plan.run_as is not None:  # restored files are written as the job's user (stage_push)
            os.chown(ckpt, plan.run_as.uid, plan.run_as.gid)  # the parent is the agent's: no link here
        plan.env["HYBRIDCTL_CHECKPOINT_DIR"] = str(ckpt)
        return {"job": await self.jobs.launch(plan)}

    async def checkpoint_files(self, req: Dict[str, Any]) -> Answer:
        """The files of a job's checkpoint directory with size and mtime in nanoseconds: SFTP's
        whole-second mtimes miss a rewrite within the second, and the final checkpoint written in a
        preemption's grace period is exactly such a rewrite."""
        key = field(req, "key", str, required=True)
        if not jf.valid_key(key):
            raise AgentError(BAD_REQUEST, f"field 'key' must match {jf.KEY_RE.pattern} and not start with '.'")
        root = self.jobs.checkpoint_dir(key)
        files: Dict[str, Any] = {}
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                path = os.path.join(dirpath, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue  # replaced under us (a temp file renamed): the next sync sees it
                if stat.S_ISREG(st.st_mode):
                    files[os.path.relpath(path, root)] = [st.st_size, st.st_mtime_ns]
        return {"root": str(root), "files": files}

    # ---- transfers of a job's files (staging.py, stage.py) ---------------------------------------

    def _stage_key(self, req: Dict[str, Any]) -> str:
        key = field(req, "key", str, required=True)
        if not jf.valid_key(key):
            raise AgentError(BAD_REQUEST, f"field 'key' must match {jf.KEY_RE.pattern} and not start with '.'")
        return key

    async def stage_open(self, req: Dict[str, Any]) -> Answer:
        """A fresh staging directory for a push: the controller writes its files there."""
        token, path = self.staging.open()
        return {"token": token, "path": str(path)}

    async def stage_done(self, req: Dict[str, Any]) -> Answer:
        """Remove a staging directory (after the controller read a pull's files); idempotent."""
        self.staging.close(field(req, "token", str, required=True))
        return {}

    async def stage_pull(self, req: Dict[str, Any]) -> Answer:
        """List a job's directory (`kind`: checkpoint, output) as the job's user and stage the files
        that differ from `have`; see docs/AGENT_PROTOCOL.md."""
        have = field(req, "have", dict, {})
        max_bytes = field(req, "max_bytes", int)
        return await self.staging.pull(field(req, "kind", str, "checkpoint"), self._stage_key(req), have,
                                       field(req, "copy", bool, True), max_bytes)

    async def stage_push(self, req: Dict[str, Any]) -> Answer:
        """Copy a staging directory's `files` ({path: size}) into a job's directory (`kind`:
        checkpoint, workdir, output; made if missing) as the job's user (`uid`, `gid`, `user`)."""
        key = self._stage_key(req)
        files = field(req, "files", dict, {})
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in files.values()):
            raise AgentError(BAD_REQUEST, "field 'files' must map paths to sizes in bytes")
        who = identity(req, self.cfg.rootless, self.cfg.name)
        return await self.staging.push(field(req, "kind", str, "checkpoint"), key, who,
                                       field(req, "token", str), files)

    async def stage_unpack(self, req: Dict[str, Any]) -> Answer:
        """Extract a staged tar (`tar`, a workdir from the controller) into a job's directory as the
        job's user; regular files and directories only."""
        key = self._stage_key(req)
        who = identity(req, self.cfg.rootless, self.cfg.name)
        return await self.staging.unpack(field(req, "kind", str, "workdir"), key, who,
                                         field(req, "token", str, required=True),
                                         field(req, "tar", str, required=True))

    async def list_jobs(self, req: Dict[str, Any]) -> Answer:
        """Every job record, and a `version` digest of their states. With `since` (a version the
        caller already has) and `wait` seconds, answer only when something changed or the wait is
        over: a long poll, woken by the supervisors' reports (plus a slow rescan), so the
        controller learns of a job's start or end within milliseconds, not a poll period."""
        wait = field(req, "wait", float, 0.0)
        since = field(req, "since", str)
        if not 0.0 <= wait <= 60.0:
            raise AgentError(BAD_REQUEST, f"field 'wait' must be between 0 and 60 seconds, got {wait}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            change = self.jobs.next_change()
            jobs = self.jobs.refresh()
            version = _version(jobs)
            now = loop.time()
            if since is None or version != since or now >= deadline:
                return {"jobs": jobs, "version": version}
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(change.wait(), min(deadline - now, self.cfg.jobs_rescan))

    async def cancel(self, req: Dict[str, Any]) -> Answer:
        key = field(req, "key", str, required=True)
        grace = field(req, "grace", float, 10.0)
        if grace < 0:
            raise AgentError(BAD_REQUEST, f"field 'grace' must be >= 0, got {grace}")
        return {"job": self.jobs.cancel(key, grace)}

    async def logs(self, req: Dict[str, Any]) -> Answer:
        key = field(req, "key", str, required=True)
        stream = field(req, "stream", str, "stdout")
        if stream not in ("stdout", "stderr"):
            raise AgentError(BAD_REQUEST, f"field 'stream' must be stdout or stderr, "
                                          f"got {stream!r}")
        offset = field(req, "offset", int, 0)
        max_bytes = field(req, "max_bytes", int, 65536)
        if max_bytes <= 0:
            raise AgentError(BAD_REQUEST, f"field 'max_bytes' must be > 0, got {max_bytes}")
        ended = self.jobs.record(key)["state"] == "exited"
        path = self.jobs.job_dir(key) / (jf.STDOUT if stream == "stdout" else jf.STDERR)
        try:
            return read_range(path, offset, max_bytes, ended)
        except PermissionError as exc:
            raise AgentError(REFUSED, f"job {key}: {exc}") from exc

    async def forget(self, req: Dict[str, Any]) -> Answer:
        self.jobs.forget(field(req, "key", str, required=True))
        return {}

    def _sim(self) -> Any:
        if self.gpus.kind != "simulated":
            raise AgentError(REFUSED, "only allowed with simulated GPUs (gpu_source: simulated)")
        return self.gpus

    async def sim_fault(self, req: Dict[str, Any]) -> Answer:
        sim = self._sim()
        try:
            sim.set_fault(field(req, "index", int, required=True), field(req, "reason", str))
        except IndexError as exc:
            raise AgentError(BAD_REQUEST, str(exc)) from exc
        return {}

    async def sim_foreign(self, req: Dict[str, Any]) -> Answer:
        sim = self._sim()
        index = field(req, "index", int)
        try:
            if field(req, "clear", bool, False):
                sim.clear_foreign(index)
            else:
                if index is None:
                    raise AgentError(BAD_REQUEST, "field 'index' is required")
                sim.add_foreign(index, field(req, "pid", int, required=True),
                                field(req, "user", str), field(req, "used_mem_mb", int, 1024))
        except IndexError as exc:
            raise AgentError(BAD_REQUEST, str(exc)) from exc
        return {}
