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
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import psutil

from hybridctl_agent import PROTOCOL_VERSION, __version__
from hybridctl_agent import envs, host, mounts
from hybridctl_agent.cache import SHA_RE, CacheError, ContentCache, add_staged, pinned_by
from hybridctl_agent import jobfiles as jf
from hybridctl_agent.config import AgentConfig
from hybridctl_agent.gpus import GpuSource
from hybridctl_agent.jobs import JobManager
from hybridctl_agent.jobspec import LaunchPlan, plan_launch, setup_once
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
            "cache_list": self.cache_list, "cache_add": self.cache_add,
        }
        self.cache = ContentCache(cfg.state_dir, int(cfg.cache_max_gb * (1 << 30)))

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
            # {"uv": path, "podman": path, ...}: what jobs' environments and images need
            "runtimes": host.runtimes(self.cfg.job_path,
                                      envs.find_uv(self.cfg.uv_path, self.cfg.job_path)),
            "shared_paths": self.cfg.shared_paths,  # file_mounts under these are used in place
            "env_offline": self.cfg.env_offline,  # no package index: the controller ships wheels
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
        plan, env_files = await self._world(plan, job)
        ckpt = self.jobs.checkpoint_dir(plan.key)
        ckpt.mkdir(parents=True, exist_ok=True, mode=0o700)
        if plan.run_as is not None:  # restored files are written as the job's user (stage_push)
            os.chown(ckpt, plan.run_as.uid, plan.run_as.gid)  # the parent is the agent's: no link here
        plan.env["HYBRIDCTL_CHECKPOINT_DIR"] = str(ckpt)
        return {"job": await self.jobs.launch(plan, env_files)}

    async def _world(self, plan: LaunchPlan, job: Dict[str, Any]) -> Tuple[LaunchPlan, Dict[str, bytes]]:
        """The job's environment (envs.py) and whether its setup still has to run here."""
        files: Dict[str, bytes] = {}
        digest = None
        if job.get("environment") is not None:
            uv = envs.find_uv(self.cfg.uv_path, self.cfg.job_path)
            try:
                plan, files = await asyncio.to_thread(
                    envs.plan_environment, plan, job["environment"], self.jobs.envs, uv=uv,
                    wheelhouse=self.cfg.env_wheelhouse, jobs_root=str(self.jobs.root),
                    max_bytes=int(self.cfg.env_cache_max_gb * (1 << 30)), offline=self.cfg.env_offline)
            except envs.EnvError as exc:
                raise AgentError(BAD_REQUEST if exc.bad_request else REFUSED, exc.message) from None
            assert plan.environment is not None
            digest = plan.environment["digest"]
        if job.get("file_mounts"):
            try:
                plan = mounts.plan_mounts(plan, job["file_mounts"], self.cfg, str(self.jobs.root))
            except mounts.MountError as exc:
                raise AgentError(BAD_REQUEST, str(exc)) from None
        plan = setup_once(plan, job, digest, str(self.jobs.setup_done),
                          str(self.jobs.root / plan.key))
        return plan, files

    async def cache_list(self, req: Dict[str, Any]) -> Answer:
        """What this node holds for jobs' worlds: data objects and built environments (the
        controller's cache index and the locality score read it)."""
        objects = await asyncio.to_thread(self.cache.listing)
        return {"objects": objects, "envs": self.jobs.envs.listing(),
                "max_bytes": self.cache.max_bytes}

    async def cache_add(self, req: Dict[str, Any]) -> Answer:
        """Enter files the controller staged (stage_open + SFTP) into the data cache, each checked
        against `files`: {name in the staging directory: [sha256, size]}; the staging directory
        is removed. Idempotent: content already cached counts as present."""
        token = field(req, "token", str, required=True)
        files = field(req, "files", dict, required=True)
        for name, v in files.items():
            if not (isinstance(name, str) and "/" not in name and name not in ("", ".", "..")
                    and isinstance(v, list) and len(v) == 2 and isinstance(v[0], str)
                    and SHA_RE.match(v[0]) and isinstance(v[1], int) and v[1] >= 0):
                raise AgentError(BAD_REQUEST, f"files[{name!r}] must be [sha256, size] for a "
                                              "plain file name")
        keep = req.get("keep") or []  # what the same launch uses and the node already has: not evicted for it
        if not (isinstance(keep, list) and len(keep) <= 1_000_000
                and all(isinstance(k, str) and SHA_RE.match(k) for k in keep)):
            raise AgentError(BAD_REQUEST, "keep must be a list of sha256 hex digests")
        path = self.staging.path(token)
        try:
            pinned = await asyncio.to_thread(pinned_by, self.jobs.root)
            pinned.update(keep)
            await asyncio.to_thread(self.cache.evict, pinned, sum(v[1] for v in files.values()))
            counts = await asyncio.to_thread(add_staged, self.cache, path, files)
        except (OSError, CacheError) as exc:
            raise AgentError(REFUSED, f"cache_add: {exc}") from None
        finally:
            self.staging.close(token)
        return counts

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
                                       field(req, "copy", bool, True), max_bytes, _chunks(req))

    async def stage_push(self, req: Dict[str, Any]) -> Answer:
        """Copy a staging directory's `files` ({path: size}) into a job's directory (`kind`:
        checkpoint, workdir, output; made if missing) as the job's user (`uid`, `gid`, `user`)."""
        key = self._stage_key(req)
        files = field(req, "files", dict, {})
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in files.values()):
            raise AgentError(BAD_REQUEST, "field 'files' must map paths to sizes in bytes")
        who = identity(req, self.cfg.rootless, self.cfg.name)
        return await self.staging.push(field(req, "kind", str, "checkpoint"), key, who,
                                       field(req, "token", str), files, _patch(req, files), _chunks(req))

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


def _chunks(req: Dict[str, Any]) -> Any:
    """The `chunks` field of stage_pull/stage_push ({size, have: {PATH: [SHA256...]}}), checked;
    None when absent (whole files, as agents before 0.4 move them)."""
    from hybridctl_agent.chunks import HEX_LEN, MAX_CHUNK, MAX_CHUNKS, MIN_CHUNK

    chunks = field(req, "chunks", dict)
    if chunks is None:
        return None
    size = chunks.get("size")
    if not (isinstance(size, int) and not isinstance(size, bool) and MIN_CHUNK <= size <= MAX_CHUNK
            and size & (size - 1) == 0):
        raise AgentError(BAD_REQUEST, f"field 'chunks.size' must be a power of two from {MIN_CHUNK} to "
                                      f"{MAX_CHUNK} bytes, got {size!r}")
    have = chunks.get("have", {})
    if not isinstance(have, dict):
        raise AgentError(BAD_REQUEST, f"field 'chunks.have' must map paths to lists of SHA-256 hex digests, "
                                      f"got {type(have).__name__}")
    for rel, hashes in have.items():
        if not (isinstance(hashes, list) and len(hashes) <= MAX_CHUNKS
                and all(isinstance(h, str) and len(h) == HEX_LEN for h in hashes)):
            raise AgentError(BAD_REQUEST, f"field 'chunks.have[{str(rel)[:100]!r}]' must be a list of at most "
                                          f"{MAX_CHUNKS} SHA-256 hex digests")
    return {"size": size, "have": have}


def _patch(req: Dict[str, Any], files: Dict[str, Any]) -> Any:
    """stage_push's `patch` field ({chunk, files: {PATH: {size, sent, hashes}}}), checked: each
    PATH among `files`, whose staged size is that of its chunks `sent` (ascending), one SHA-256
    per chunk sent. None when absent."""
    from hybridctl_agent.chunks import HEX_LEN, MAX_CHUNK, MAX_CHUNKS, MIN_CHUNK, chunk_count

    patch = field(req, "patch", dict)
    if patch is None:
        return None
    chunk = patch.get("chunk")
    if not (isinstance(chunk, int) and not isinstance(chunk, bool) and MIN_CHUNK <= chunk <= MAX_CHUNK
            and chunk & (chunk - 1) == 0):
        raise AgentError(BAD_REQUEST, f"field 'patch.chunk' must be a power of two from {MIN_CHUNK} to {MAX_CHUNK}, "
                                      f"got {chunk!r}")
    entries = patch.get("files")
    if not isinstance(entries, dict):
        raise AgentError(BAD_REQUEST, "field 'patch.files' must map paths to {size, sent, hashes}")
    for rel, p in entries.items():
        what = f"field 'patch.files[{str(rel)[:100]!r}]'"
        if rel not in files or not isinstance(p, dict):
            raise AgentError(BAD_REQUEST, f"{what} must name a file of 'files' and be {{size, sent, hashes}}")
        size, sent, hashes = p.get("size"), p.get("sent"), p.get("hashes")
        if not (isinstance(size, int) and not isinstance(size, bool) and 0 <= size
                and chunk_count(size, chunk) <= MAX_CHUNKS):
            raise AgentError(BAD_REQUEST, f"{what}.size must be a size in bytes of at most {MAX_CHUNKS} chunks")
        n = chunk_count(size, chunk)
        if not (isinstance(sent, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in sent)
                and all(a < b for a, b in zip(sent, sent[1:])) and all(0 <= i < n for i in sent)):
            raise AgentError(BAD_REQUEST, f"{what}.sent must be ascending chunk indices below {n}")
        if not (isinstance(hashes, list) and len(hashes) == len(sent)
                and all(isinstance(h, str) and len(h) == HEX_LEN for h in hashes)):
            raise AgentError(BAD_REQUEST, f"{what}.hashes must be one SHA-256 hex digest per chunk sent")
        if files[rel] != sum(min(chunk, size - i * chunk) for i in sent):
            raise AgentError(BAD_REQUEST, f"{what}: files[...] must be the bytes of the chunks sent")
    return {"chunk": chunk, "files": entries}
