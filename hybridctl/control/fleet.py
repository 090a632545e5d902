"""The fleet: one persistent link per node, kept alive with capped exponential backoff.

Each node session polls its agent's telemetry every `poll_interval`, and hands the agent's job
list to the reconciler whenever either side may have changed: the job watcher (a long poll on a
second channel) saw a new job-list version, or the database's active ranks for the node differ
from the last converge (placements, cancels, requeues). Dispatch, adoption after a reconnect,
and recording results are one code path. A monitor turns silence into UNREACHABLE (keep jobs)
and, much later, LOST (requeue them)."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import TYPE_CHECKING, Any

from hybridctl.core.model import JobStatus, NodeState
from hybridctl.core.reconcile import (
    AgentJob,
    Finished,
    Forget,
    Launch,
    Started,
    Stop,
    Vanished,
    parse_key,
    reconcile,
)
from hybridctl.ssh.link import AgentLink, AgentRefused, HostKeyRefused, NodeUnreachable, Target, connect

if TYPE_CHECKING:
    from hybridctl.control.service import Controller

log = logging.getLogger("hybridctl.fleet")


class NodeSession:
    """The controller's side of one node: its link, latest telemetry and liveness."""

    def __init__(self, fleet: Fleet, name: str) -> None:
        self.fleet = fleet
        self.name = name
        self.kick = asyncio.Event()
        self.link: AgentLink | None = None
        self.hello: dict[str, Any] | None = None
        self.latest: dict[str, Any] | None = None
        self.seq: int | None = None
        self.last_ok = time.monotonic()
        self.error = "not contacted yet"
        self.task: asyncio.Task[None] | None = None
        self._files: Any = None
        self._last_sync = time.monotonic()
        self._syncing: asyncio.Task[None] | None = None
        """The periodic checkpoint pulls in flight: their own task, so that a large checkpoint
        never holds up this node's telemetry and job reconciliation."""
        self._sync_lock = asyncio.Lock()
        """One checkpoint pull at a time per node (the final one waits for a periodic one)."""
        self.watch_version: str | None = None
        """The agent's job-list version as the watcher last saw it; None while no watch runs."""
        self._settled: tuple[Any, list[Any]] | None = None
        """(job-list version, active ranks) of the last converge that had nothing to do."""

    async def run(self) -> None:
        backoff = 0.25
        while True:
            try:
                async with self.fleet.connect_slots:
                    self.link = await connect(self.fleet.target(self.name))
                self.hello = await self.link.call("hello")
                self.fleet.on_hello(self, self.hello)
                backoff = 0.25
                self._settled = None
                watcher = asyncio.create_task(self.watch(await self.link.second_channel()), name=f"watch:{self.name}")
                try:
                    while True:
                        await self.poll()
                        try:
                            await asyncio.wait_for(self.kick.wait(), self.fleet.interval)
                        except asyncio.TimeoutError:
                            pass
                        self.kick.clear()
                        if watcher.done():
                            watcher.result()  # re-raises why the watch channel broke
                finally:
                    watcher.cancel()
                    if self._syncing is not None:
                        self._syncing.cancel()
            except HostKeyRefused as exc:
                self.error = exc.message
                log.error("%s", exc.message)
                self.fleet.on_silence(self, exc.message, force=True)
                backoff = 30.0
            except NodeUnreachable as exc:
                self.error = exc.message
                log.warning("%s", exc.message)
            finally:
                self._files = None
                if self.link is not None:
                    await self.link.close()
                    self.link = None
            await asyncio.sleep(backoff * (0.8 + 0.4 * random.random()))
            backoff = min(backoff * 2, 15.0)

    async def watch(self, channel: AgentLink) -> None:
        """Long-poll the agent's job list on a second channel; kick the session the moment a job
        changes state, so a job's end is recorded (and its GPUs reused) within milliseconds."""
        version = None
        try:
            while True:
                wait = min(60.0, max(1.0, self.fleet.interval * 4))  # the agent accepts 0-60 s
                res = await channel.call("jobs", timeout=wait + 30, wait=wait,
                                         **({} if version is None else {"since": version}))
                if version is not None and res.get("version") != version:
                    self.kick.set()
                version = self.watch_version = res.get("version")
        finally:
            self.watch_version = None
            await channel.close()

    async def poll(self) -> None:
        link = self.link
        assert link is not None
        sample = await link.call("sample", **({} if self.seq is None else {"since": self.seq}))
        if sample.get("samples"):
            self.latest = sample["samples"][-1]
            self.seq = sample.get("seq", self.seq)
            self.fleet.on_sample(self, self.latest)
        self.last_ok = time.monotonic()
        self.error = ""
        self.fleet.on_alive(self)
        # While the watcher runs, an unchanged job-list version and unchanged active ranks mean
        # the last converge still holds: skip the listing. Without a watcher, every poll lists.
        ranks = self.fleet.controller.active_ranks(self.name)
        if self.watch_version is None or (self.watch_version, ranks) != self._settled:
            listing = await link.call("jobs")
            acted = await self.converge(listing.get("jobs", []))
            self._settled = None if acted else (listing.get("version"), ranks)
        due = time.monotonic() - self._last_sync >= self.fleet.controller.settings.fleet.checkpoint_sync_interval
        if due and (self._syncing is None or self._syncing.done()):
            self._last_sync = time.monotonic()
            keys = [r.key for r in self.fleet.controller.active_ranks(self.name)
                    if r.rank == 0 and r.state is JobStatus.RUNNING]
            if keys:
                self._syncing = asyncio.create_task(self._sync_all(keys), name=f"sync:{self.name}")

    async def _sync_all(self, keys: list[str]) -> None:
        try:
            for key in keys:
                await self.sync_checkpoint(key)
        except Exception:  # a bug, not a transfer error (those are logged in sync_checkpoint)
            log.exception("checkpoint sync on %s failed", self.name)

    async def files(self) -> Any:
        """File access to the node (SFTP on the node's connection, or the local filesystem)."""
        from hybridctl.control.checkpoints import LocalFiles, SftpFiles
        from hybridctl.ssh.link import NodeUnreachable as _Unreachable

        if self._files is None:
            assert self.link is not None
            conn = self.link.ssh_connection
            if conn is None:
                self._files = LocalFiles()
            else:
                try:
                    self._files = SftpFiles(await conn.start_sftp_client())
                except Exception as exc:  # asyncssh errors stop here
                    raise _Unreachable(f"node {self.name}: SFTP is not available: {exc}") from exc
        return self._files

    def _remote_checkpoint_dir(self, key: str) -> str | None:
        root = (self.hello or {}).get("checkpoint_root")
        return f"{root}/{key.split('.', 1)[0]}" if root else None

    async def sync_checkpoint(self, key: str) -> None:
        """Pull rank 0's checkpoint directory (changed files only) into the controller's store."""
        from hybridctl.control.checkpoints import pull
        from hybridctl.core.reconcile import parse_key

        parsed = parse_key(key)
        remote = self._remote_checkpoint_dir(key)
        if parsed is None or parsed[3] != 0 or remote is None:
            return
        link = self.link
        try:
            async with self._sync_lock:
                assert link is not None
                listing = await link.call("checkpoint_files", key=key)
                copied = await pull(await self.files(), listing["root"], listing["files"],
                                    self.fleet.controller.checkpoint_path(key), self.name)
        except (OSError, NodeUnreachable) as exc:
            log.warning("checkpoint sync of %s from %s failed: %s", key, self.name, exc)
            return
        except Exception as exc:
            if type(exc).__module__.startswith("asyncssh"):
                log.warning("checkpoint sync of %s from %s failed: %s", key, self.name, exc)
                return
            raise
        if copied:
            self.fleet.controller.checkpoint_synced(key, copied)

    async def restore_checkpoint(self, key: str) -> None:
        """Put the controller's latest copy of a job's checkpoint on this node before it starts."""
        from hybridctl.control.checkpoints import adopt, push

        local = self.fleet.controller.checkpoint_path(key)
        remote = self._remote_checkpoint_dir(key)
        link = self.link
        if remote is None or not local.is_dir() or link is None:
            return
        before = (await link.call("checkpoint_files", key=key))["files"]
        sent, kept = await push(await self.files(), local, remote, before, self.name)
        if sent:
            after = (await link.call("checkpoint_files", key=key))["files"]
            adopt(local, sent, after, self.name)
            log.info("restored %d bytes of checkpoint for %s onto %s",
                     sum(after.get(rel, [0])[0] for rel in sent), key, self.name)
        if kept:
            log.info("checkpoint for %s: %d files already on %s, not sent again", key, len(kept), self.name)

    async def prepare_launch(self, rank: Any) -> dict[str, Any] | None:
        """Put on this node what a rank needs before it starts (its latest checkpoint) and return
        its launch payload; None when preparing failed the job. Cloud sessions add uploads."""
        await self.restore_checkpoint(rank.key)
        return self.fleet.controller.launch_payload(rank, self.name)

    async def converge(self, records: list[dict[str, Any]]) -> bool:
        """Act on the differences between the database and the agent's `records`; return whether
        anything was done. A task turns RUNNING once the agent reports its processes started (a
        pid): `launch` answers before that, and the watcher reports the start."""
        ctl = self.fleet.controller
        link = self.link
        assert link is not None
        agent_jobs = [
            AgentJob(r["key"], r.get("state") == "running", r.get("exit_code"), r.get("signal"), r.get("reason"))
            for r in records
        ]
        not_started = {parsed[:2] for r in records if r.get("state") == "running" and r.get("pid") is None
                       and (parsed := parse_key(r["key"])) is not None}
        no_checkpoint = {r["key"] for r in records if r.get("has_checkpoint") is False}  # absent: older agent
        changed = False
        actions = [a for a in reconcile(ctl.active_ranks(self.name), agent_jobs)
                   if not (isinstance(a, Started) and (a.job_id, a.task) in not_started)]
        for action in actions:
            if isinstance(action, Launch):
                payload = await self.prepare_launch(action.rank)
                if payload is None:  # the job failed while being prepared (the reason is recorded)
                    changed = True
                    continue
                try:
                    answer = await link.call("launch", job=payload)
                except AgentRefused as exc:
                    ctl.finish(action.rank.job_id, action.rank.task, None, f"launch refused by {self.name}: {exc}")
                    changed = True
                    continue
                rec = answer.get("job") or {}
                if rec.get("state") == "running":
                    if rec.get("pid") is not None:
                        ctl.mark_running(action.rank.job_id, action.rank.task)
                else:
                    self.kick.set()  # already exited (or failed to launch): the next listing records it
            elif isinstance(action, Started):
                ctl.mark_running(action.job_id, action.task)
            elif isinstance(action, Finished):
                if action.key not in no_checkpoint:
                    await self.sync_checkpoint(action.key)
                await self.pull_logs(action.key)
                ctl.rank_finished(action.key, action.exit_code, action.reason, action.status)
                await link.call("forget", key=action.key)
                changed = True
            elif isinstance(action, Vanished):
                ctl.requeue_or_fail(action.job_id, action.task, f"the agent on {self.name} has no record of it")
                changed = True
            elif isinstance(action, Stop):
                await link.call("cancel", key=action.key, grace=ctl.settings.fleet.poll_interval * 10)
            elif isinstance(action, Forget):
                if parse_key(action.key) is not None:
                    if action.key not in no_checkpoint:
                        await self.sync_checkpoint(action.key)  # e.g. the final checkpoint of a preempted job
                    await self.pull_logs(action.key)  # a stopped rank or a straggler: keep its output too
                await link.call("forget", key=action.key)
                ctl.release(action.key)
        if changed:
            ctl.on_change()
        return bool(actions)

    async def pull_logs(self, key: str) -> None:
        """Copy a finished job's logs to the controller, so `hybridctl logs` works after the node
        forgets the job, goes away, or (cloud) is terminated. Capped per stream."""
        link = self.link
        assert link is not None
        cap = self.fleet.controller.settings.fleet.log_pull_cap_mb * 1024 * 1024
        for stream in ("stdout", "stderr"):
            dest = self.fleet.controller.log_path(key, stream)
            dest.parent.mkdir(parents=True, exist_ok=True)
            offset = 0
            with open(dest, "w", encoding="utf-8") as f:
                while offset < cap:
                    res = await link.call("logs", key=key, stream=stream, offset=offset, max_bytes=1 << 20)
                    f.write(res.get("data", ""))
                    if res.get("offset", offset) == offset:
                        break
                    offset = res["offset"]
                if offset >= cap:
                    f.write(f"\n[hybridctl: log truncated at {cap >> 20} MiB; the rest is on the node]\n")


class Fleet:
    """All node sessions of one controller."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        cfg = controller.settings.fleet
        self.interval = cfg.poll_interval
        self.connect_slots = asyncio.Semaphore(cfg.connect_concurrency)
        self.sessions: dict[str, NodeSession] = {}

    def target(self, name: str) -> Target:
        n = self.controller.store.node(name)
        cfg = self.controller.settings.fleet
        return Target(
            name=n.name, host=n.host, port=n.port, user=n.ssh_user, identity=n.identity, agent_socket=n.agent_socket,
            known_hosts=str(self.controller.settings.known_hosts_path), bridge=cfg.bridge,
            agent_command=cfg.agent_command,
        )

    def sync(self) -> None:
        """Start sessions for new real nodes, stop those of removed ones."""
        wanted = {n.name for n in self.controller.store.nodes() if not n.simulated}
        for name in wanted - self.sessions.keys():
            s = NodeSession(self, name)
            s.task = asyncio.create_task(s.run(), name=f"node:{name}")
            self.sessions[name] = s
        for name in self.sessions.keys() - wanted:
            s = self.sessions.pop(name)
            if s.task is not None:
                s.task.cancel()

    def kick(self, name: str) -> None:
        s = self.sessions.get(name)
        if s is not None:
            s.kick.set()

    async def monitor(self) -> None:
        """Turn silence into UNREACHABLE, then LOST. Runs forever."""
        while True:
            await asyncio.sleep(min(1.0, self.interval))
            for s in list(self.sessions.values()):
                self.on_silence(s, s.error or "no answer")

    def on_silence(self, s: NodeSession, why: str, force: bool = False) -> None:
        cfg = self.controller.settings.fleet
        silent = time.monotonic() - s.last_ok
        n = self.controller.store.node(s.name)
        if silent >= cfg.lost_after and n.link_state is not NodeState.LOST:
            reason = f"silent for {silent:.0f}s: {why}"
            log.error("node %s LOST (%s); requeueing its jobs", s.name, reason)
            self.controller.node_lost(s.name, reason)
        elif (silent >= cfg.unreachable_after or force) and n.link_state is NodeState.UP:
            self.controller.set_link(s.name, NodeState.UNREACHABLE, why)

    def on_alive(self, s: NodeSession) -> None:
        n = self.controller.store.node(s.name)
        if n.link_state is not NodeState.UP:
            log.info("node %s is back", s.name)
            self.controller.set_link(s.name, NodeState.UP, "")

    def on_hello(self, s: NodeSession, hello: dict[str, Any]) -> None:
        gpus = [{"index": g["index"], "model": g.get("name", "GPU"), "memory_mb": g.get("memory_total_mb")}
                for g in hello.get("gpus", [])]
        self.controller.node_hardware(s.name, gpus, float(hello.get("cpus") or 1), int(hello.get("memory_mb") or 0))

    def on_sample(self, s: NodeSession, sample: dict[str, Any]) -> None:
        """Fold GPU health and foreign processes into the node's GPU list (written only on change)."""
        busy_foreign = self.controller.settings.fleet.foreign_gpu_busy
        health = {}
        for g in sample.get("gpus", []):
            foreign = busy_foreign and any(p.get("job") is None for p in g.get("processes") or [])
            health[g["index"]] = (bool(g.get("healthy", True)), g.get("health_reason") or "", foreign)
        self.controller.node_gpu_health(s.name, health)

    def telemetry(self) -> dict[str, dict[str, Any]]:
        """Latest sample per node (for `nodes` and the TUI)."""
        return {name: s.latest for name, s in self.sessions.items() if s.latest is not None}
